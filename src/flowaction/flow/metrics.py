"""Optical-flow accuracy metrics, with and without ground truth.

Flows follow the project convention: arrays of shape ``(..., 2, H, W)``,
channel 0 = u (horizontal, +right), channel 1 = v (vertical, +down), in pixels; ``flow[t]`` lives
on the grid of frame t and points into frame t+1. Validity masks have shape ``(..., H, W)`` and are
boolean (True = pixel has usable ground truth). :func:`flow_metrics` computes the standard
benchmark metrics of one batch in NumPy float64 (torch tensors are accepted); :class:`FlowErrors`
accumulates end-point errors of several flows on the same pixels over many batches, in torch.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import torch

__all__ = [
    "METRIC_KEYS",
    "endpoint_error",
    "flow_metrics",
    "FlowErrors",
    "MOVING_THRESHOLD",
    "describe_flow_errors",
    "flow_summary",
    "photometric_errors",
]

#: Keys of the dict returned by :func:`flow_metrics`.
METRIC_KEYS: tuple[str, ...] = ("epe", "px1", "px3", "px5", "outlier", "angular_error")


def _to_numpy(array: Any) -> np.ndarray:
    """Return ``array`` as a NumPy array; torch tensors are detached and moved to the CPU."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _prepare(pred: Any, gt: Any, valid: Any | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check shapes; return float64 pred, gt ``(..., 2, H, W)`` and bool valid ``(..., H, W)``."""
    pred_np = _to_numpy(pred).astype(np.float64, copy=False)
    gt_np = _to_numpy(gt).astype(np.float64, copy=False)
    if pred_np.shape != gt_np.shape:
        raise ValueError(f"pred and gt shapes differ: {pred_np.shape} vs {gt_np.shape}")
    if pred_np.ndim < 3 or pred_np.shape[-3] != 2:
        raise ValueError(f"flows must have shape (..., 2, H, W), got {pred_np.shape}")
    pixel_shape = pred_np.shape[:-3] + pred_np.shape[-2:]
    if valid is None:
        valid_np = np.ones(pixel_shape, dtype=bool)
    else:
        valid_np = _to_numpy(valid).astype(bool, copy=False)
        try:
            valid_np = np.broadcast_to(valid_np, pixel_shape)
        except ValueError:
            raise ValueError(
                f"valid mask of shape {valid_np.shape} does not match "
                f"the flows' pixel shape {pixel_shape}"
            ) from None
    return pred_np, gt_np, valid_np


def _per_pixel(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel end-point error, gt magnitude and angular error (degrees), each ``(..., H, W)``."""
    du = pred[..., 0, :, :] - gt[..., 0, :, :]
    dv = pred[..., 1, :, :] - gt[..., 1, :, :]
    epe = np.sqrt(du * du + dv * dv)
    gt_mag = np.sqrt(gt[..., 0, :, :] ** 2 + gt[..., 1, :, :] ** 2)
    # Barron et al. / Middlebury angular error: the angle between the space-time vectors
    # (u, v, 1) of the two flows. The clip guards acos against rounding just above 1.
    dot = pred[..., 0, :, :] * gt[..., 0, :, :] + pred[..., 1, :, :] * gt[..., 1, :, :] + 1.0
    norms = np.sqrt((pred[..., 0, :, :] ** 2 + pred[..., 1, :, :] ** 2 + 1.0) * (gt_mag**2 + 1.0))
    angle = np.degrees(np.arccos(np.clip(dot / norms, -1.0, 1.0)))
    return epe, gt_mag, angle


def _sums(pred: Any, gt: Any, valid: Any | None) -> dict[str, float]:
    """Sums over valid pixels of every per-pixel statistic, plus the valid-pixel ``count``."""
    pred_np, gt_np, valid_np = _prepare(pred, gt, valid)
    epe, gt_mag, angle = _per_pixel(pred_np, gt_np)
    epe_v, mag_v, angle_v = epe[valid_np], gt_mag[valid_np], angle[valid_np]
    return {
        "count": float(epe_v.size),
        "epe": float(epe_v.sum()),
        "px1": float(np.count_nonzero(epe_v < 1.0)),
        "px3": float(np.count_nonzero(epe_v < 3.0)),
        "px5": float(np.count_nonzero(epe_v < 5.0)),
        # KITTI Fl: an outlier is wrong by more than 3 px AND by more than 5 % of the true motion.
        "outlier": float(np.count_nonzero((epe_v > 3.0) & (epe_v > 0.05 * mag_v))),
        "angular_error": float(angle_v.sum()),
    }


def _finalise(sums: dict[str, float]) -> dict[str, float]:
    """Turn sums into means/rates; NaN everywhere when there is no valid pixel."""
    count = sums["count"]
    if count == 0:
        return {key: math.nan for key in METRIC_KEYS}
    return {key: sums[key] / count for key in METRIC_KEYS}


def endpoint_error(pred: Any, gt: Any, valid: Any | None = None) -> float:
    """Mean end-point error (pixels) over valid pixels.

    Args:
        pred: predicted flow ``(..., 2, H, W)``, pixels.
        gt: ground-truth flow, same shape.
        valid: optional bool mask ``(..., H, W)`` (broadcast); None means every pixel.

    Returns:
        Mean of ``|pred - gt|_2`` over valid pixels (all batch items pooled, pixel-weighted);
        NaN if no pixel is valid.
    """
    return flow_metrics(pred, gt, valid)["epe"]


def flow_metrics(pred: Any, gt: Any, valid: Any | None = None) -> dict[str, float]:
    """Standard flow-benchmark metrics over valid pixels.

    Args:
        pred: predicted flow ``(..., 2, H, W)``, pixels.
        gt: ground-truth flow, same shape.
        valid: optional bool mask ``(..., H, W)``; None means every pixel.

    Returns:
        dict with ``epe`` (mean end-point error, px), ``px1`` / ``px3`` / ``px5`` (fraction of
        pixels with EPE below 1 / 3 / 5 px), ``outlier`` (fraction with EPE > 3 px and
        EPE > 5 % of the ground-truth magnitude, KITTI Fl-style) and ``angular_error`` (mean
        Barron/Middlebury angle between (u, v, 1) vectors, degrees). Rates are in [0, 1].
        All values are NaN if no pixel is valid.
    """
    return _finalise(_sums(pred, gt, valid))


#: A pixel "moves" when its ground-truth flow is longer than this (pixels). On a static background
#: zero flow is exact almost everywhere, so EPE over all valid pixels hides whether a flow is flow;
#: EPE over moving pixels does not.
MOVING_THRESHOLD = 0.1


class FlowErrors:
    """Pixel-weighted end-point errors of several flows against ground truth, over many batches:
    the one EPE accumulator of training, evaluation and the flow benchmarks.

    Every flow added with one :meth:`add` call is scored on exactly the same pixels: all valid
    pixels, and the moving ones (valid and ``|gt| > MOVING_THRESHOLD``). Sums of per-pixel errors
    are kept rather than per-batch means, so a batch weighs in proportion to its pixels, exactly as
    if the split were one big batch. :meth:`result` gives ``{"epe", "moving_epe"}`` for the flow
    named ``learned`` and ``{name}_epe``, ``{name}_moving_epe`` for the others (e.g. ``zero``,
    ``dis``), plus the pixel counts; with ``within=(1.0, ...)`` also ``{prefix}px1``, ...: the share
    of valid pixels whose error is under each threshold.
    """

    def __init__(self, within: tuple[float, ...] = ()) -> None:
        self.sums: dict[str, float] = {}
        self.within = tuple(within)

    def add(self, gt: torch.Tensor, valid: torch.Tensor, flows: dict[str, torch.Tensor]) -> None:
        """gt and each flow ``(M, 2, H, W)`` in pixels (any leading shape); valid ``(M, H, W)`` bool."""
        mask = valid.bool()
        moving = mask & (_length(gt.float()) > MOVING_THRESHOLD)
        self._add("valid_pixels", float(mask.sum()))
        self._add("moving_pixels", float(moving.sum()))
        for name, flow in flows.items():
            error = _length(flow.detach().float() - gt.float())
            prefix = "" if name == "learned" else f"{name}_"
            self._add(f"{prefix}epe", float(error[mask].sum()))
            self._add(f"{prefix}moving_epe", float(error[moving].sum()))
            for threshold in self.within:
                self._add(f"{prefix}px{threshold:g}", float((error[mask] < threshold).sum()))

    def _add(self, key: str, value: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value

    def merge(self, other: "FlowErrors") -> None:
        """Add another accumulator's sums (another batch, worker or rank)."""
        for key, value in other.sums.items():
            self._add(key, value)

    def result(self) -> dict[str, float | None]:
        """Means per pixel (None where no pixel counted) and the two pixel counts."""
        out: dict[str, float | None] = {}
        for key, value in self.sums.items():
            if key.endswith("_pixels"):
                out[key] = value
            else:
                count = self.sums["moving_pixels" if key.endswith("moving_epe") else "valid_pixels"]  # px*: valid
                out[key] = value / count if count else None
        return out


def _length(vectors: torch.Tensor) -> torch.Tensor:
    """Per-pixel lengths of flow vectors ``(..., 2, H, W)`` -> ``(..., H, W)``, elementwise: a norm
    reduced over the short, strided component axis is far slower on a CPU
    (``benchmarks/bench_flow_metrics.py`` measures both)."""
    return torch.hypot(vectors.select(-3, 0), vectors.select(-3, 1))


def flow_summary(errors: dict) -> dict[str, float | None]:
    """:meth:`FlowErrors.result` under report names: ``flow_epe``, ``flow_moving_epe``,
    ``zero_flow_epe``, ``zero_flow_moving_epe``, ``dis_epe``, ``dis_moving_epe`` (None without
    ground truth) and the pixel counts."""
    names = {"epe": "flow_epe", "moving_epe": "flow_moving_epe", "zero_epe": "zero_flow_epe",
             "zero_moving_epe": "zero_flow_moving_epe", "dis_epe": "dis_epe", "dis_moving_epe": "dis_moving_epe",
             "valid_pixels": "flow_valid_pixels", "moving_pixels": "flow_moving_pixels"}
    return {report: errors.get(key) for key, report in names.items()}


def describe_flow_errors(errors: dict) -> str:
    """One line: EPE over all valid and over moving pixels, learned beside zero flow and DIS."""

    def px(key: str) -> str:
        value = errors.get(key)
        return "n/a" if value is None else f"{value:.3f}"

    return (f"flow EPE all {px('epe')} (zero {px('zero_epe')}, DIS {px('dis_epe')}) | "
            f"moving {px('moving_epe')} (zero {px('zero_moving_epe')}, DIS {px('dis_moving_epe')}) px")


def photometric_errors(
    frame0: Any,
    frame1: Any,
    flow: Any,
    alpha: float = 0.45,
    eps: float = 1e-3,
) -> dict[str, float]:
    """Brightness-constancy errors of a flow, for data without ground-truth flow.

    Backward-warps ``frame1`` by ``flow`` (bilinear: ``warped(x) = frame1(x + flow(x))``) and
    compares it with ``frame0``. Only in-frame pixels count, i.e. those whose target ``x + flow``
    lies inside ``[0, W-1] x [0, H-1]``; outside it the warp would read padding, not image.

    Args:
        frame0: first frame ``(H, W)``, float intensities in [0, 1].
        frame1: second frame ``(H, W)``, same range.
        flow: flow ``(2, H, W)`` from frame0 into frame1, pixels.
        alpha: Charbonnier exponent, ``rho(x) = (x^2 + eps^2)^alpha``.
        eps: Charbonnier epsilon (intensity units).

    Returns:
        dict with ``charbonnier`` and ``l1`` (means over in-frame pixels, NaN if there are none)
        and ``in_frame`` (fraction of pixels that counted).
    """
    f0 = _to_numpy(frame0).astype(np.float32, copy=False)
    f1 = _to_numpy(frame1).astype(np.float32, copy=False)
    flow_np = _to_numpy(flow).astype(np.float32, copy=False)
    if f0.ndim != 2 or f0.shape != f1.shape:
        raise ValueError(f"frames must both be (H, W), got {f0.shape} and {f1.shape}")
    height, width = f0.shape
    if flow_np.shape != (2, height, width):
        raise ValueError(f"flow must be (2, {height}, {width}), got {flow_np.shape}")
    grid_x, grid_y = np.meshgrid(
        np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    )
    map_x = grid_x + flow_np[0]
    map_y = grid_y + flow_np[1]
    warped = cv2.remap(
        f1, map_x, map_y, interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0.0,
    )
    in_frame = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    diff = (warped.astype(np.float64) - f0)[in_frame]
    if diff.size == 0:
        return {"charbonnier": math.nan, "l1": math.nan, "in_frame": 0.0}
    return {
        "charbonnier": float(np.mean((diff * diff + eps * eps) ** alpha)),
        "l1": float(np.mean(np.abs(diff))),
        "in_frame": float(in_frame.mean()),
    }

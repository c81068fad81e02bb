"""Classical (non-learned) optical flow from OpenCV: DIS and Farneback.

These are the baselines the learned flow is compared against, and a source of flow for data
without ground truth. Output follows the project convention: ``(2, H, W)``
float32, channel 0 = u (+right), channel 1 = v (+down), pixels, on the grid of the first frame and
pointing into the second: ``frame0(x) ~ frame1(x + flow(x))``. That is exactly what OpenCV's
``calc(prev, next)`` returns (only the layout differs: OpenCV gives ``(H, W, 2)``).
"""

from __future__ import annotations

import math
import threading
from typing import Any

import cv2
import numpy as np
import torch

from flowaction.triplets import pair_starts

__all__ = ["METHODS", "DIS_PRESETS", "ClassicalFlow", "classical_flow", "clip_classical_flow", "stacked_classical_flow"]

METHODS: tuple[str, ...] = ("dis", "farneback")
DIS_PRESETS: dict[str, int] = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
# OpenCV's DIS rejects small images ("width or height >= 12"; in practice 11 x 11 and 5 x 100
# both fail). Below this side we upsample the pair by an integer factor, run DIS, then
# area-downsample the flow and divide it by the factor. 16 also leaves the medium preset's
# 8-pixel patches at least two positions per side, which 12 barely does.
DIS_MIN_SIDE = 16


def _as_gray(frame: Any, name: str) -> np.ndarray:
    """Validate a ``(H, W)`` frame (uint8, or float in [0, 1]; torch tensors allowed)."""
    if hasattr(frame, "detach"):
        frame = frame.detach().cpu().numpy()
    array = np.asarray(frame)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a grayscale (H, W) frame, got shape {array.shape}")
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must be uint8 or float in [0, 1], got dtype {array.dtype}")
    return array


def _to_uint8(frame: np.ndarray) -> np.ndarray:
    """uint8 as is; float [0, 1] -> rounded 0..255 (DIS only takes 8-bit images)."""
    if frame.dtype == np.uint8:
        return np.ascontiguousarray(frame)
    return np.clip(np.rint(frame.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def _to_float255(frame: np.ndarray) -> np.ndarray:
    """float32 on the 0..255 scale. Farneback accepts float input, so floats skip the 8-bit
    rounding, which would otherwise quantise low-contrast smooth textures."""
    if frame.dtype == np.uint8:
        return frame.astype(np.float32)
    return np.ascontiguousarray(frame, dtype=np.float32) * np.float32(255.0)


class ClassicalFlow:
    """A reusable OpenCV flow estimator: ``ClassicalFlow("dis")(frame0, frame1) -> (2, H, W)``.

    Holds one ``cv2.DISOpticalFlow`` (creating it per pair is wasteful in a loop over a clip).
    OpenCV algorithm objects are not meant to be shared between threads: use one instance per
    thread (``classical_flow`` does this for you).

    Args:
        method: ``"dis"`` or ``"farneback"``.
        preset: DIS preset, ``"ultrafast"``, ``"fast"`` or ``"medium"`` (ignored by Farneback).
    """

    def __init__(self, method: str = "dis", preset: str = "medium") -> None:
        if method not in METHODS:
            raise ValueError(f"unknown flow method {method!r}; choose from {METHODS}")
        if method == "dis" and preset not in DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose from {tuple(DIS_PRESETS)}")
        self.method = method
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset]) if method == "dis" else None

    def __repr__(self) -> str:
        return f"ClassicalFlow(method={self.method!r}, preset={self.preset!r})"

    def __call__(self, frame0: Any, frame1: Any) -> np.ndarray:
        """Flow from ``frame0`` to ``frame1``.

        Args:
            frame0, frame1: grayscale ``(H, W)`` frames, uint8 or float in [0, 1].

        Returns:
            ``(2, H, W)`` float32 flow in pixels, ``frame0(x) ~ frame1(x + flow(x))``.
        """
        first = _as_gray(frame0, "frame0")
        second = _as_gray(frame1, "frame1")
        if first.shape != second.shape:
            raise ValueError(f"frames differ in shape: {first.shape} vs {second.shape}")
        if self.method == "dis":
            flow_hw2 = self._dis_flow(_to_uint8(first), _to_uint8(second))
        else:
            flow_hw2 = self._farneback_flow(_to_float255(first), _to_float255(second))
        return np.ascontiguousarray(flow_hw2.transpose(2, 0, 1), dtype=np.float32)

    def _dis_flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """DIS on 8-bit frames, upsampling frames smaller than ``DIS_MIN_SIDE``; ``(H, W, 2)``."""
        assert self._dis is not None
        height, width = first.shape
        factor = math.ceil(DIS_MIN_SIDE / min(height, width))
        if factor <= 1:
            return self._dis.calc(first, second, None)
        size = (width * factor, height * factor)  # cv2 sizes are (width, height)
        big = self._dis.calc(
            cv2.resize(first, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(second, size, interpolation=cv2.INTER_LINEAR),
            None,
        )
        # Each factor x factor block is centred on one original pixel; averaging it and dividing
        # by the factor turns upsampled-pixel displacements back into original pixels.
        return cv2.resize(big, (width, height), interpolation=cv2.INTER_AREA) / factor

    @staticmethod
    def _farneback_flow(first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Farneback on float frames (0..255 scale); ``(H, W, 2)``."""
        # As many pyramid levels (halving each) as keep the coarsest level >= ~8 px, capped at 5:
        # more levels reach larger motions, but a level smaller than the 15-px window is noise.
        levels = int(np.clip(math.floor(math.log2(min(first.shape) / 8.0)) + 1, 1, 5))
        return cv2.calcOpticalFlowFarneback(
            first, second, None,
            pyr_scale=0.5, levels=levels, winsize=15, iterations=3,
            poly_n=5, poly_sigma=1.2, flags=0,
        )


# One estimator per (thread, method, preset), made on first use: no work at import time.
_local = threading.local()


def _estimator(method: str, preset: str) -> ClassicalFlow:
    cache: dict[tuple[str, str], ClassicalFlow] = _local.__dict__.setdefault("cache", {})
    key = (method, preset if method == "dis" else "")
    if key not in cache:
        cache[key] = ClassicalFlow(method, preset)
    return cache[key]


def classical_flow(
    frame0: Any, frame1: Any, method: str = "dis", preset: str = "medium"
) -> np.ndarray:
    """Flow between two grayscale frames with OpenCV DIS or Farneback.

    Args:
        frame0, frame1: ``(H, W)`` frames, uint8 or float in [0, 1].
        method: ``"dis"`` (fast, robust) or ``"farneback"`` (dense polynomial expansion).
        preset: DIS preset (``"ultrafast"``, ``"fast"``, ``"medium"``).

    Returns:
        ``(2, H, W)`` float32 flow in pixels on frame0's grid, pointing into frame1.
    """
    return _estimator(method, preset)(frame0, frame1)


def clip_classical_flow(frames: Any, method: str = "dis", preset: str = "medium") -> np.ndarray:
    """Flow between every consecutive pair of a clip.

    Args:
        frames: ``(T, H, W)`` grayscale frames, uint8 or float in [0, 1], T >= 2.
        method, preset: as in :func:`classical_flow`.

    Returns:
        ``(T-1, 2, H, W)`` float32; entry t is the flow from frame t into frame t+1.
    """
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().numpy()
    frames_np = np.asarray(frames)
    if frames_np.ndim != 3 or frames_np.shape[0] < 2:
        raise ValueError(f"frames must be (T, H, W) with T >= 2, got {frames_np.shape}")
    estimator = _estimator(method, preset)
    return np.stack([estimator(frames_np[t], frames_np[t + 1]) for t in range(len(frames_np) - 1)])


def stacked_classical_flow(frames: torch.Tensor, stride: int, method: str = "dis") -> torch.Tensor:
    """OpenCV flow on the pairs a model's flows relate, stacked like them: frames
    ``(B, 1, T, H, W)`` in [0, 1] -> ``(B, 2, N, H, W)`` pixels (pair ``j*s -> j*s+1``), on the
    frames' device."""
    images = (frames[:, 0].detach().cpu().numpy() * 255.0).round().astype(np.uint8)  # (B, T, H, W)
    starts = pair_starts(images.shape[1], stride)
    out = np.stack([np.stack([classical_flow(clip[p], clip[p + 1], method) for p in starts], axis=1)
                    for clip in images])
    return torch.from_numpy(out).to(frames.device)


"""Optical flow of any video file: the learned flow network of a checkpoint, or OpenCV's.

``flowaction flow VIDEO --checkpoint CKPT --out DIR`` and, from Python,
:func:`estimate_video_flow`. A video goes through the preprocessing the checkpoint was trained
with: decoded to gray at the training's stored short side (the generated benchmark's
``data.synthetic.size``, or the frame size of the prepared cache), centre-cropped to
``data.crop`` x ``data.crop``, scaled to [0, 1] (the model normalises internally).

Frame pairs come from triplets, as in the model: triplet ``j`` is frames
``(p, p+1, p+2)`` with ``p = j * stride``, and its flow relates the pair ``p -> p+1``; it lives on
the grid of frame ``p`` and points into frame ``p+1``, in pixels of the (cropped) frames. DIS and
Farneback are run on exactly the same pairs, so the methods compare frame for frame.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from flowaction.config import Config, from_dict

METHODS: tuple[str, ...] = ("learned", "dis", "farneback")
DISPLAY_NAMES = {"learned": "learned", "dis": "DIS", "farneback": "Farneback"}
PANEL_ROWS = 4  # pairs shown in panel.png, evenly spaced over the video
# A GIF grows by one image per pair; a few hundred pairs already make a large file.
ANIMATION_MAX_PAIRS = 240
PREPARE_DEFAULT_SHORT_SIDE = 64  # `flowaction prepare --size`'s default


@dataclass
class VideoFrames:
    """Decoded, preprocessed frames of one video.

    ``frames`` ``(L, H, W)`` uint8 grey levels (divide by 255 for [0, 1]); ``fps`` frames per
    second (0 if unknown); ``source_size`` the coded ``(height, width)``; ``decoded_size`` the
    size after scaling to ``short_side`` (before the crop); ``crop`` the centre-crop side (0: none).
    """

    frames: np.ndarray
    fps: float
    source_size: tuple[int, int]
    decoded_size: tuple[int, int]
    short_side: int
    crop: int


def resolve_methods(method: str) -> list[str]:
    """``"all"`` -> every method; otherwise the one method, checked."""
    if method == "all":
        return list(METHODS)
    if method not in METHODS:
        raise ValueError(f"unknown flow method {method!r}; choose one of {METHODS + ('all',)}")
    return [method]


def training_short_side(cfg: Config) -> int:
    """Short side (pixels) of the frames the run described by ``cfg`` was trained on.

    The generated benchmark stores ``data.synthetic.size`` square frames; a prepared cache records
    its frame size in its index. A cache that is no longer there falls back to ``prepare``'s
    default short side. Never less than ``data.crop``, which must fit inside the frame.
    """
    side = cfg.data.synthetic.size
    if cfg.data.cache:
        side = PREPARE_DEFAULT_SHORT_SIDE
        index = Path(cfg.data.cache) / "index.json"
        if index.is_file():
            import json

            try:
                side = min(json.loads(index.read_text())["frame_size"])
            except (ValueError, KeyError, TypeError):
                pass  # an unreadable index: keep the default rather than fail a flow command
    return max(int(side), cfg.data.crop)


def load_flow_model(checkpoint: str | Path, device: torch.device) -> tuple[torch.nn.Module, Config]:
    """Rebuild the joint model of a checkpoint (from the file alone), in eval mode on ``device``."""
    from flowaction.checkpoint import load_checkpoint, load_weights
    from flowaction.train import build_model

    state = load_checkpoint(checkpoint)
    cfg = from_dict(state["config"])
    model = build_model(cfg, len(state["classes"]))
    load_weights(model, state["model"], checkpoint)
    return model.to(device).eval(), cfg


def read_video_frames(
    video: str | Path, short_side: int, crop: int, max_frames: int | None = None
) -> VideoFrames:
    """Decode ``video`` to gray at short side ``short_side`` px, centre-cropped to ``crop`` px.

    Args:
        crop: side of the square centre crop; 0 keeps the whole (scaled) frame.
        max_frames: keep only the first ``max_frames`` frames (None: all).

    Raises:
        FileNotFoundError: no file at ``video``.
        flowaction.data.decode.DecodeError: the file is not a decodable video.
        ValueError: impossible sizes.
    """
    from flowaction.data.decode import centre_crop, decode_gray, frame_size_for, probe

    video = Path(video)
    if not video.is_file():
        raise FileNotFoundError(f"no video at {video}")
    if short_side < 1 or crop < 0:
        raise ValueError(f"size must be >= 1 and crop >= 0, got size {short_side}, crop {crop}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if crop > short_side:
        raise ValueError(f"crop {crop} exceeds the short side {short_side}: pass a larger --size")
    height, width = probe(video)
    size = frame_size_for(height, width, short_side)
    # decode_gray reads the whole file: --max-frames only bounds the flow work, not the decoding
    decoded = decode_gray(video, size)
    frames = decoded.frames[:max_frames] if max_frames else decoded.frames
    if crop:
        frames = centre_crop(frames, crop, crop)
    return VideoFrames(np.ascontiguousarray(frames), decoded.fps, (height, width), size, short_side, crop)


def triplet_pairs(num_frames: int, stride: int) -> np.ndarray:
    """First frame ``p`` of every pair ``p -> p+1`` that has a triplet ``(p, p+1, p+2)``.

    ``N = (L - 3) // stride + 1`` pairs for ``L`` frames; ``(N,)`` int64.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if num_frames < 3:
        raise ValueError(f"a flow needs a triplet of frames; the video has {num_frames}")
    return np.arange((num_frames - 3) // stride + 1, dtype=np.int64) * stride


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="pair", disable=not enabled, leave=False)


@torch.no_grad()
def learned_flows(
    model: torch.nn.Module,
    frames: np.ndarray,
    pairs: np.ndarray,
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """The model's flow for each pair ``p -> p+1``, from triplet ``(p, p+1, p+2)``.

    Args:
        model: a :class:`~flowaction.models.joint.JointModel` in eval mode.
        frames: ``(L, H, W)`` uint8.
        pairs: ``(N,)`` first frames of the pairs.
        batch_size: triplets per forward pass.

    Returns:
        ``(N, 2, H, W)`` float32 flows in pixels.
    """
    device = next(model.parameters()).device
    offsets = np.arange(3)
    out = np.empty((len(pairs), 2, *frames.shape[1:]), dtype=np.float32)
    with _progress(len(pairs), "learned", progress) as bar:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            groups = frames[chunk[:, None] + offsets]  # (n, 3, H, W)
            clips = torch.from_numpy(groups).to(device, torch.float32).div_(255.0).unsqueeze(1)
            # each triplet is passed as a 3-frame clip, so JointModel.flows does its own
            # normalisation and triplet grouping exactly as in training: (n, 2, 1, H, W)
            out[start : start + len(chunk)] = model.flows(clips)[:, :, 0].cpu().numpy()
            bar.update(len(chunk))
    return out


def classical_flows(frames: np.ndarray, pairs: np.ndarray, method: str, progress: bool = False) -> np.ndarray:
    """OpenCV's flow (``"dis"`` medium preset or ``"farneback"``) for each pair ``p -> p+1``.

    Args:
        frames: ``(L, H, W)`` uint8; pairs: ``(N,)`` first frames.

    Returns:
        ``(N, 2, H, W)`` float32 flows in pixels.
    """
    from flowaction.flow.classical import ClassicalFlow

    estimator = ClassicalFlow(method)
    out = np.empty((len(pairs), 2, *frames.shape[1:]), dtype=np.float32)
    with _progress(len(pairs), DISPLAY_NAMES[method], progress) as bar:
        for row, first in enumerate(pairs):
            out[row] = estimator(frames[first], frames[first + 1])
            bar.update(1)
    return out


def _settings(
    checkpoint: str | Path | None, methods: list[str], size: int | None, crop: int | None, device: str,
    log: Callable[[str], None] | None = None,
):
    """Model (or None), config, the methods to run and the resolved ``(short_side, crop)`` of a flow run.

    ``learned`` needs a checkpoint whose model holds a flow network; asked alone it is refused
    before any work, within ``all`` it is skipped (and said through ``log``).
    """
    from flowaction.checkpoint import load_checkpoint
    from flowaction.config import LEARNED_INPUTS

    if "learned" in methods and checkpoint is None:
        if len(methods) == 1:
            raise ValueError("the learned method needs --checkpoint (or use --method dis / farneback)")
        methods = [m for m in methods if m != "learned"]
        if log:
            log("skipped the learned method: no --checkpoint given")
    model, cfg = None, Config()
    if checkpoint is not None:
        cfg = from_dict(load_checkpoint(checkpoint)["config"])
        if "learned" in methods and cfg.model.input not in LEARNED_INPUTS:
            reason = (f"{checkpoint} has no flow network (model.input={cfg.model.input}): "
                      f"its model {'classifies frames' if cfg.model.input == 'frames' else 'reads OpenCV ' + cfg.model.input + ' flow'}")
            if len(methods) == 1:
                raise ValueError(f"{reason}; use --method dis, farneback or all")
            methods = [m for m in methods if m != "learned"]
            if log:
                log(f"skipped the learned method: {reason}")
        if "learned" in methods:
            from flowaction.train import resolve_device

            model, cfg = load_flow_model(checkpoint, resolve_device(device))
    crop = crop or 0  # the whole frame unless a crop is asked for
    short_side = size if size is not None else max(training_short_side(cfg), crop)
    return model, cfg, methods, short_side, crop


def _compute(method: str, model, video: VideoFrames, pairs: np.ndarray, batch_size: int, progress: bool):
    """``(flows (N, 2, H, W), mean milliseconds per pair)``; the time covers the flow work only."""
    if method == "learned":
        # one untimed batch first: the first pass at each input shape pays one-time costs
        # (oneDNN primitive creation: ~200 ms here) that would dominate a short video's mean
        learned_flows(model, video.frames, pairs[:batch_size], batch_size)
    started = time.perf_counter()
    if method == "learned":
        flows = learned_flows(model, video.frames, pairs, batch_size, progress)
        if next(model.parameters()).device.type == "cuda":
            torch.cuda.synchronize()
    else:
        flows = classical_flows(video.frames, pairs, method, progress)
    return flows, 1000.0 * (time.perf_counter() - started) / max(len(pairs), 1)


def estimate_video_flow(
    video: str | Path,
    method: str = "learned",
    checkpoint: str | Path | None = None,
    *,
    size: int | None = None,
    crop: int | None = None,
    stride: int = 1,
    max_frames: int | None = None,
    batch_size: int = 32,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Optical flow of a video file with one method.

    Args:
        video: any file PyAV decodes.
        method: ``"learned"`` (needs ``checkpoint``), ``"dis"`` or ``"farneback"``.
        checkpoint: a flowaction checkpoint; also sets the preprocessing for OpenCV's methods.
        size: short side (pixels) to decode at; None: the training's (see :func:`training_short_side`).
        crop: centre-crop side (pixels); None or 0: the whole frame (at the training scale).
        stride: triplet stride; 1 gives a flow for every frame but the last two.
        max_frames: use only the first ``max_frames`` frames.

    Returns:
        dict with ``flows`` ``(N, 2, H, W)`` float32 (pixels, pair ``pairs[i] -> pairs[i] + 1``),
        ``frames`` ``(L, H, W)`` float32 in [0, 1], ``pairs`` ``(N,)`` int64, ``ms_per_pair``,
        ``method``, ``fps``, ``source_size``, ``decoded_size``, ``short_side`` and ``crop``.
    """
    (method,) = resolve_methods(method)
    model, _, _, short_side, crop = _settings(checkpoint, [method], size, crop, device)
    decoded = read_video_frames(video, short_side, crop, max_frames)
    pairs = triplet_pairs(len(decoded.frames), stride)
    flows, ms = _compute(method, model, decoded, pairs, batch_size, progress)
    return {
        "method": method, "flows": flows, "frames": decoded.frames.astype(np.float32) / 255.0,
        "pairs": pairs, "ms_per_pair": ms, "fps": decoded.fps, "source_size": decoded.source_size,
        "decoded_size": decoded.decoded_size, "short_side": decoded.short_side, "crop": decoded.crop,
    }


def photometric_summary(frames: np.ndarray, flows: np.ndarray, pairs: np.ndarray) -> dict[str, float | None]:
    """Charbonnier and L1 brightness-constancy errors (intensities in [0, 1]), averaged over pairs.

    Args:
        frames: ``(L, H, W)`` uint8; flows: ``(N, 2, H, W)`` pixels; pairs: ``(N,)``.
    """
    from flowaction.flow.metrics import photometric_errors

    per_pair = [
        photometric_errors(frames[p] / 255.0, frames[p + 1] / 255.0, flow) for p, flow in zip(pairs, flows)
    ]
    summary: dict[str, float | None] = {}
    for key in ("charbonnier", "l1", "in_frame"):
        # NaN: no pixel of that pair stayed inside the frame; None if that held for every pair
        values = [item[key] for item in per_pair if not math.isnan(item[key])]
        summary[key] = float(np.mean(values)) if values else None
    return summary


def warp_error(first: np.ndarray, second: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``|W(second, flow) - first|`` ``(H, W)`` for frames in [0, 1]; 0 where the warp leaves the frame."""
    from flowaction.warp import backward_warp, in_frame_mask

    flow_t = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32))[None]
    warped = backward_warp(torch.from_numpy(second.astype(np.float32))[None, None], flow_t)[0, 0]
    error = (warped - torch.from_numpy(first.astype(np.float32))).abs() * in_frame_mask(flow_t)[0, 0]
    return error.numpy()


def _write_pictures(out: Path, video: VideoFrames, pairs: np.ndarray, flows: dict[str, np.ndarray]) -> list[str]:
    """``panel.png`` (a few pairs, every method, warp error) and ``flow_<method>.gif`` per method."""
    from flowaction.flow.viz import flow_animation, flow_panel

    written = []
    reference = "learned" if "learned" in flows else next(iter(flows))
    rows, labels = [], []
    for row in sorted({int(round(i)) for i in np.linspace(0, len(pairs) - 1, min(PANEL_ROWS, len(pairs)))}):
        first, second = video.frames[pairs[row]] / 255.0, video.frames[pairs[row] + 1] / 255.0
        cells: dict[str, np.ndarray] = {"frame": first}
        cells.update({DISPLAY_NAMES[name]: flow[row] for name, flow in flows.items()})
        cells[f"warp error ({DISPLAY_NAMES[reference]})"] = warp_error(first, second, flows[reference][row])
        rows.append(cells)
        labels.append(f"frames {pairs[row]}->{pairs[row] + 1}")
    panel = out / "panel.png"
    flow_panel(panel, rows, row_labels=labels, cmaps={list(rows[0])[-1]: "magma"})
    written.append(str(panel))

    shown = pairs[:ANIMATION_MAX_PAIRS]
    gif_frames = video.frames[np.append(shown, shown[-1] + 1)]
    # one robust colour scale for every method's GIF, so equal colours mean equal motion
    speeds = np.concatenate([np.hypot(f[: len(shown), 0], f[: len(shown), 1]).ravel() for f in flows.values()])
    scale = float(np.percentile(speeds, 99.0)) if speeds.size else 0.0
    for name, flow in flows.items():
        path = out / f"flow_{name}.gif"
        flow_animation(gif_frames, flow[: len(shown)], path, max_flow=scale if scale > 0 else None,
                       label=DISPLAY_NAMES[name], first_index=shown)
        written.append(str(path))
    return written


def run_flow(
    video: str | Path,
    out: str | Path,
    method: str = "learned",
    checkpoint: str | Path | None = None,
    *,
    size: int | None = None,
    crop: int | None = None,
    stride: int | None = 1,
    max_frames: int | None = None,
    batch_size: int = 32,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The ``flow`` command: flows of ``video`` by one method or ``"all"``, written under ``out``.

    Writes ``out/flo/<method>/NNNNNN.flo`` (NNNNNN = first frame of the pair), ``out/flow_<method>.gif``,
    ``out/panel.png`` and ``out/summary.json``; returns the summary. ``stride=None`` takes the
    checkpoint's ``model.triplet_stride``; other arguments as in :func:`estimate_video_flow`.
    """
    from flowaction.data.cache import atomic_write_json
    from flowaction.flow.io import write_flo

    asked = resolve_methods(method)
    model, cfg, methods, short_side, crop = _settings(checkpoint, asked, size, crop, device, log)
    stride = cfg.model.triplet_stride if stride is None else stride
    decoded = read_video_frames(video, short_side, crop, max_frames)
    pairs = triplet_pairs(len(decoded.frames), stride)
    if log:
        height, width = decoded.frames.shape[1:]
        log(f"{video}: {len(decoded.frames)} frames at {height}x{width}, {len(pairs)} pairs, methods {methods}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    flows, results = {}, {}
    for name in methods:
        flows[name], ms = _compute(name, model, decoded, pairs, batch_size, progress)
        folder = out / "flo" / name
        folder.mkdir(parents=True, exist_ok=True)
        for first, flow in zip(pairs, flows[name]):
            write_flo(folder / f"{first:06d}.flo", flow)
        speed = np.hypot(flows[name][:, 0], flows[name][:, 1])
        results[name] = {
            **photometric_summary(decoded.frames, flows[name], pairs),
            "ms_per_pair": ms,
            "mean_speed_px": float(speed.mean()),
            "mean_u_px": float(flows[name][:, 0].mean()),
            "mean_v_px": float(flows[name][:, 1].mean()),
        }
    zero = photometric_summary(decoded.frames, np.zeros_like(next(iter(flows.values()))), pairs)
    files = _write_pictures(out, decoded, pairs, flows)
    summary = {
        "video": str(video),
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "methods": results,
        "skipped": [name for name in asked if name not in methods],
        "zero_flow": zero,  # the reference: what doing nothing scores
        "num_frames": int(len(decoded.frames)),
        "num_pairs": int(len(pairs)),
        "stride": int(stride),
        "frame_size": list(decoded.frames.shape[1:]),
        "source_size": list(decoded.source_size),
        "decoded_size": list(decoded.decoded_size),
        "short_side": decoded.short_side,
        "crop": decoded.crop,
        "fps": decoded.fps,
        "batch_size": batch_size,
        "animation_pairs": int(min(len(pairs), ANIMATION_MAX_PAIRS)),
        "files": files + [str(out / "flo" / name) for name in methods],
    }
    atomic_write_json(out / "summary.json", summary)
    return summary

"""Optical flow of any video file: the learned flow network of a checkpoint, or OpenCV's.

:func:`estimate_video_flow` from Python; ``flowaction flow`` (``flowaction.commands.flow``) writes
the flows, pictures and a summary. A video goes through the preprocessing the checkpoint was trained
with: decoded to gray at the training's stored short side (the generated benchmark's
``data.synthetic.size``, or the frame size of the prepared cache), centre-cropped to
``data.crop`` x ``data.crop``, scaled to [0, 1] (the model normalises internally).

Frame pairs come from triplets, as in the model: triplet ``j`` is frames
``(p, p+1, p+2)`` with ``p = j * stride``, and its flow relates the pair ``p -> p+1``; it lives on
the grid of frame ``p`` and points into frame ``p+1``, in pixels of the (cropped) frames. DIS and
Farneback are run on exactly the same pairs, so the methods compare frame for frame.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from flowaction.checkpoint import load_checkpoint
from flowaction.config import LEARNED_INPUTS, Config, from_dict
from flowaction.data.decode import centre_crop, decode_gray, frame_size_for, probe
from flowaction.engine.device import resolve_device
from flowaction.flow.classical import ClassicalFlow
from flowaction.flow.metrics import photometric_errors
from flowaction.models.build import load_model_checkpoint
from flowaction.speedups import apply_cpu_speedups
from flowaction.triplets import pair_starts

METHODS: tuple[str, ...] = ("learned", "dis", "farneback")
DISPLAY_NAMES = {"learned": "learned", "dis": "DIS", "farneback": "Farneback"}
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
            try:
                side = min(json.loads(index.read_text())["frame_size"])
            except (ValueError, KeyError, TypeError):
                pass  # an unreadable index: keep the default rather than fail a flow command
    return max(int(side), cfg.data.crop)


def load_flow_model(checkpoint: str | Path, device: torch.device) -> tuple[torch.nn.Module, Config]:
    """Rebuild the joint model of a checkpoint (from the file alone), in eval mode on ``device``."""
    loaded = load_model_checkpoint(checkpoint)
    return apply_cpu_speedups(loaded.model, loaded.cfg).to(device).eval(), loaded.cfg


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


def video_pairs(num_frames: int, stride: int) -> np.ndarray:
    """First frame ``p`` of every pair ``p -> p+1`` that has a triplet ``(p, p+1, p+2)`` in a video
    of ``num_frames`` frames, ``(N,)`` int64."""
    if num_frames < 3:
        raise ValueError(f"a flow needs a triplet of frames; the video has {num_frames}")
    return pair_starts(num_frames, stride)


def _progress(total: int, desc: str, enabled: bool):
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
    estimator = ClassicalFlow(method)
    out = np.empty((len(pairs), 2, *frames.shape[1:]), dtype=np.float32)
    with _progress(len(pairs), DISPLAY_NAMES[method], progress) as bar:
        for row, first in enumerate(pairs):
            out[row] = estimator(frames[first], frames[first + 1])
            bar.update(1)
    return out


def flow_settings(
    checkpoint: str | Path | None, methods: list[str], size: int | None, crop: int | None, device: str,
    log: Callable[[str], None] | None = None,
):
    """Model (or None), config, the methods to run and the resolved ``(short_side, crop)`` of a flow run.

    ``learned`` needs a checkpoint whose model holds a flow network; asked alone it is refused
    before any work, within ``all`` it is skipped (and said through ``log``).
    """
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
            reads = {"dis": "reads OpenCV DIS flow", "farneback": "reads OpenCV Farneback flow",
                     "truth": "reads the ground-truth flow"}.get(cfg.model.input, "classifies frames")
            reason = f"{checkpoint} has no flow network (model.input={cfg.model.input}): its model {reads}"
            if len(methods) == 1:
                raise ValueError(f"{reason}; use --method dis, farneback or all")
            methods = [m for m in methods if m != "learned"]
            if log:
                log(f"skipped the learned method: {reason}")
        if "learned" in methods:
            model, cfg = load_flow_model(checkpoint, resolve_device(device))
    crop = crop or 0  # the whole frame unless a crop is asked for
    short_side = size if size is not None else max(training_short_side(cfg), crop)
    return model, cfg, methods, short_side, crop


def compute_flows(method: str, model, video: VideoFrames, pairs: np.ndarray, batch_size: int, progress: bool):
    """``(flows (N, 2, H, W), mean milliseconds per pair)``; the time covers the flow work only."""
    if method == "learned":
        # one untimed batch first: the first pass at each input shape pays one-time costs
        # (oneDNN primitive creation) that would dominate a short video's mean
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
    model, _, _, short_side, crop = flow_settings(checkpoint, [method], size, crop, device)
    decoded = read_video_frames(video, short_side, crop, max_frames)
    pairs = video_pairs(len(decoded.frames), stride)
    flows, ms = compute_flows(method, model, decoded, pairs, batch_size, progress)
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
    per_pair = [
        photometric_errors(frames[p] / 255.0, frames[p + 1] / 255.0, flow) for p, flow in zip(pairs, flows)
    ]
    summary: dict[str, float | None] = {}
    for key in ("charbonnier", "l1", "in_frame"):
        # NaN: no pixel of that pair stayed inside the frame; None if that held for every pair
        values = [item[key] for item in per_pair if not math.isnan(item[key])]
        summary[key] = float(np.mean(values)) if values else None
    return summary

"""Classify video files with a trained model: top-k per video, a timeline, the flow the model saw.

The preprocessing is evaluation's: the video is decoded to gray at the training data's stored
frame size (cover, centre crop, as ``prepare`` stores it), ``clips`` clips of ``data.num_frames``
frames with uniformly spaced starts are centre-cropped to ``data.crop``, and their softmax
probabilities are averaged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flowaction.config import FRAME_INPUTS
from flowaction.data.clips import clip_starts, frame_indices
from flowaction.data.decode import decode_gray
from flowaction.flow.viz import flow_animation, flow_panel
from flowaction.inference.loaded import InferenceModel
from flowaction.triplets import pair_starts

BATCH = 8  # clips per forward pass


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(probs: np.ndarray, classes: list[str], k: int) -> list[dict[str, Any]]:
    """``[{"label", "probability"}]``, most probable first."""
    order = np.argsort(-probs)[: min(k, len(classes))]
    return [{"label": classes[i], "probability": float(probs[i])} for i in order]


def clip_probabilities(model: InferenceModel, frames: np.ndarray, starts: list[int]) -> np.ndarray:
    """Softmax ``(len(starts), K)`` of the clips starting at ``starts`` of cropped frames ``(L, c, c)``."""
    clips = np.stack([frames[frame_indices(s, model.num_frames, model.frame_step, len(frames))] for s in starts])
    out = [softmax(model.logits(clips[i : i + BATCH])) for i in range(0, len(clips), BATCH)]
    return np.concatenate(out)


def read_video(model: InferenceModel, path: str | Path) -> tuple[np.ndarray, float]:
    """Gray frames ``(L, crop, crop)`` uint8 as the model saw them, and the video's frames/s."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    decoded = decode_gray(path, model.frame_size)
    return np.ascontiguousarray(model.centre_crop(decoded.frames)), decoded.fps


def predict_video(
    model: InferenceModel,
    path: str | Path,
    clips: int = 10,
    k: int = 5,
    timeline: float | None = None,
    save_flow: str | Path | None = None,
    flow_name: str | None = None,
) -> dict[str, Any]:
    """Top-k classes of one video (softmax averaged over ``clips`` uniformly spaced clips).

    Args:
        timeline: segment length in seconds: also classify each segment (clips inside it).
        save_flow: a folder: write the flow the model saw on the middle clip as pictures.
        flow_name: the pictures' name (``NAME_flow.png``, ``.gif``); default the video's stem.

    Raises:
        FileNotFoundError, flowaction.data.decode.DecodeError: no such or no decodable video.
    """
    if clips < 1 or k < 1:
        raise ValueError("clips and top-k must be >= 1")
    frames, fps = read_video(model, path)
    starts = clip_starts(len(frames), model.span, "test", clips, None)
    probs = clip_probabilities(model, frames, starts).mean(axis=0)
    result: dict[str, Any] = {
        "video": str(path),
        "frames": int(len(frames)),
        "fps": fps,
        "clips": len(starts),
        "top_k": top_k(probs, model.classes, k),
    }
    if timeline is not None:
        result["timeline"] = _timeline(model, frames, fps, timeline, k)
    if save_flow is not None:
        result["flow_pictures"] = write_seen_flow(model, frames, starts[len(starts) // 2], Path(save_flow),
                                                  flow_name or Path(path).stem)
    return result


def _timeline(model: InferenceModel, frames: np.ndarray, fps: float, seconds: float, k: int) -> list[dict]:
    """Top-k per segment of ``seconds``: the clips whose centre falls in the segment (at least one)."""
    if seconds <= 0:
        raise ValueError("--timeline must be > 0 seconds")
    rate = fps if fps > 0 else 25.0  # a stream without a rate: assume 25 frames/s, and say so below
    per_segment = int(round(seconds * rate))
    if per_segment < 1:
        raise ValueError(f"--timeline {seconds} s is shorter than one frame of this video (1/{rate:g} s)")
    bounds = list(range(0, len(frames), per_segment)) + [len(frames)]
    segments = []
    for first, last in zip(bounds[:-1], bounds[1:]):
        centres = np.linspace(first, last - 1, max(1, round((last - first) / model.span)))
        starts = sorted({int(min(max(c - model.span // 2, 0), max(len(frames) - model.span, 0))) for c in centres})
        probs = clip_probabilities(model, frames, starts).mean(axis=0)
        segments.append({"start_s": first / rate, "end_s": last / rate, "clips": len(starts),
                         "top_k": top_k(probs, model.classes, k), **({} if fps > 0 else {"assumed_fps": 25.0})})
    return segments


def write_seen_flow(model: InferenceModel, frames: np.ndarray, start: int, out: Path, name: str) -> list[str]:
    """The flows the model classified for the clip at ``start``: ``NAME_flow.png`` (every stacked
    flow) and ``NAME_flow.gif``; ``[]`` for a model that sees frames only."""
    if model.input in FRAME_INPUTS:
        return []
    clip = frames[frame_indices(start, model.num_frames, model.frame_step, len(frames))]
    pairs = [int(p) for p in pair_starts(len(clip), model.stride)]
    if model.has_flow_network:
        flows = model.triplet_flows(np.stack([clip[p : p + 3] for p in pairs]))
    else:
        flows = np.stack([model.pair_flows(clip[p], clip[p + 1]) for p in pairs])
    out.mkdir(parents=True, exist_ok=True)
    label = {"learned": "learned", "learned+frames": "learned", "dis": "DIS", "farneback": "Farneback"}[model.input]
    rows = [{"frame": clip[p], f"{label} flow": flow} for p, flow in zip(pairs, flows)]
    panel = flow_panel(out / f"{name}_flow.png", rows, row_labels=[f"clip frames {p}->{p + 1}" for p in pairs],
                       title=f"{name}: the flows the model classified (clip from frame {start})")
    gif = flow_animation(clip[np.append(pairs, pairs[-1] + 1)], flows, out / f"{name}_flow.gif", label=label,
                         first_index=[start + p for p in pairs])
    return [str(panel), str(gif)]

"""``flowaction flow``: the flows of a video by one method or all, as ``.flo`` files, GIFs, a
panel and a summary (the estimation itself is :mod:`flowaction.inference.video_flow`)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from flowaction.data.cache import atomic_write_json
from flowaction.flow.io import write_flo
from flowaction.flow.viz import flow_animation, flow_panel
from flowaction.inference.video_flow import (
    DISPLAY_NAMES, METHODS, VideoFrames, compute_flows, flow_settings, photometric_summary, read_video_frames, resolve_methods,
    video_pairs,
)
from flowaction.warp import backward_warp, in_frame_mask

OUTPUTS = ("summary.json", "panel.png", "flo") + tuple(f"flow_{method}.gif" for method in METHODS)
PANEL_ROWS = 4  # pairs shown in panel.png, evenly spaced over the video
# A GIF grows by one image per pair; a few hundred pairs already make a large file.
ANIMATION_MAX_PAIRS = 240


def warp_error(first: np.ndarray, second: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``|W(second, flow) - first|`` ``(H, W)`` for frames in [0, 1]; 0 where the warp leaves the frame."""
    flow_t = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32))[None]
    warped = backward_warp(torch.from_numpy(second.astype(np.float32))[None, None], flow_t)[0, 0]
    error = (warped - torch.from_numpy(first.astype(np.float32))).abs() * in_frame_mask(flow_t)[0, 0]
    return error.numpy()


def _write_pictures(out: Path, video: VideoFrames, pairs: np.ndarray, flows: dict[str, np.ndarray]) -> list[str]:
    """``panel.png`` (a few pairs, every method, warp error) and ``flow_<method>.gif`` per method."""
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


def claim_flow_dir(out: Path, overwrite: bool, log: Callable[[str], None]) -> None:
    """Refuse an ``out`` that holds the outputs of a flow run, unless ``overwrite``: then remove them."""
    found = [name for name in OUTPUTS if (out / name).exists()]
    if not found:
        return
    summary = out / "summary.json"
    what = "the flow outputs"
    if summary.is_file():
        try:
            old = json.loads(summary.read_text())
            what = f"the flow of {old.get('video')} ({old.get('num_pairs')} pairs)"
        except (ValueError, OSError):
            pass
    if not overwrite:
        raise FileExistsError(f"{out} holds {what}: give another --out, or --overwrite to replace it")
    for name in found:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    log(f"--overwrite: removed {what} from {out} ({', '.join(found)})")


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
    overwrite: bool = False,
) -> dict[str, Any]:
    """The ``flow`` command: flows of ``video`` by one method or ``"all"``, written under ``out``.

    Writes ``out/flo/<method>/NNNNNN.flo`` (NNNNNN = first frame of the pair), ``out/flow_<method>.gif``,
    ``out/panel.png`` and ``out/summary.json``; returns the summary. ``stride=None`` takes the
    checkpoint's ``model.triplet_stride``; other arguments as in :func:`estimate_video_flow`.
    An ``out`` that holds a flow run already is refused, or with ``overwrite`` cleared first (said
    through ``log``), so its files never mix with another video's.
    """
    claim_flow_dir(Path(out), overwrite, log or (lambda *_: None))
    asked = resolve_methods(method)
    model, cfg, methods, short_side, crop = flow_settings(checkpoint, asked, size, crop, device, log)
    stride = cfg.model.triplet_stride if stride is None else stride
    decoded = read_video_frames(video, short_side, crop, max_frames)
    pairs = video_pairs(len(decoded.frames), stride)
    if log:
        height, width = decoded.frames.shape[1:]
        log(f"{video}: {len(decoded.frames)} frames at {height}x{width}, {len(pairs)} pairs, methods {methods}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    flows, results = {}, {}
    for name in methods:
        flows[name], ms = compute_flows(name, model, decoded, pairs, batch_size, progress)
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


def describe_flow(summary: dict, out: Path) -> list[str]:
    """The lines ``flowaction flow`` prints: each method's photometric errors, time and speed."""

    def number(value: float | None) -> str:  # None: no pixel stayed inside the frame
        return "n/a" if value is None else f"{value:.4f}"

    lines = [f"{name:>9}: photometric charbonnier {number(row['charbonnier'])}  l1 {number(row['l1'])}  "
             f"{row['ms_per_pair']:.2f} ms/pair  mean |flow| {row['mean_speed_px']:.2f} px"
             for name, row in summary["methods"].items()]
    zero = summary["zero_flow"]
    lines.append(f"zero flow: photometric charbonnier {number(zero['charbonnier'])}  l1 {number(zero['l1'])}")
    lines.append(f"wrote {summary['num_pairs']} pairs per method under {out} (summary.json, panel.png, GIFs, flo/)")
    return lines


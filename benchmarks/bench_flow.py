"""Flow time per frame pair of the learned flow network against OpenCV DIS and Farneback, beside EPE.

Usage: .venv/bin/python benchmarks/bench_flow.py [--checkpoint runs/demo/best.pt] [--width 16]
       [--threads 2] [--repeats 5] [--seconds 0.5] [--clips 40] [--out benchmarks/results/flow.json]

Timing: the learned network (``FlowNet``, one triplet -> one flow) under ``torch.no_grad`` at batch
1 and batch 32 triplets, DIS (medium preset) and Farneback one pair at a time, on generated
textured frames at 56 x 56 and 320 x 240 (the network is fully convolutional, so it runs on the
320 x 240 frame as is). Each repeat calls a method for at least ``--seconds`` after one untimed
warm-up call (the first call at a shape pays oneDNN's set-up); the figure is the median over
repeats, and every time is also given as a ratio to DIS measured in the same run, since these
shared machines vary 2-3x from day to day.

Accuracy: end-point error (pixels, over valid ground-truth pixels) on the first ``--clips`` clips of
the generated benchmark's test split (the clips ``flowaction demo`` tests on), rendered at 64 x 64
and centre-cropped to 56 x 56, on every pair ``p -> p+1`` that has a triplet ``(p, p+1, p+2)``;
all methods see exactly the same pairs and pixels. Zero flow is the reference row. Without
``--checkpoint`` the learned network is still timed (random weights) and its EPE is "n/a".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from flowaction.config import SYNTHETIC_DEFAULT_CLASSES, Config
from flowaction.data.synthetic import SyntheticSpec, clip_rng, render_clip
from flowaction.flow.classical import ClassicalFlow
from flowaction.flow.metrics import FlowErrors
from flowaction.inference.video_flow import classical_flows, learned_flows, load_flow_model, video_pairs
from flowaction.models.flownet import FlowNet

SIZES: tuple[tuple[int, int], ...] = ((56, 56), (240, 320))  # (height, width)
BATCHES: tuple[int, ...] = (1, 32)


def ms_per_pair(call: Callable[[], object], pairs_per_call: int, seconds: float, repeats: int) -> list[float]:
    """Milliseconds per frame pair of ``call`` (which handles ``pairs_per_call`` pairs), per repeat."""
    call()  # warm-up: first-call costs (oneDNN primitives, OpenCV buffers) are not steady state
    results = []
    for _ in range(repeats):
        calls, started = 0, time.perf_counter()
        while True:
            call()
            calls += 1
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
        results.append(1000.0 * elapsed / (calls * pairs_per_call))
    return results


def textured_frames(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Three ``(height, width)`` uint8 frames of a generated clip: realistic texture and motion for
    the timings (DIS's work depends a little on content)."""
    spec = SyntheticSpec(size=max(height, width), num_frames=3, num_classes=1)
    frames = render_clip(0, clip_rng(seed, "bench", 0), spec).frames
    top, left = (frames.shape[1] - height) // 2, (frames.shape[2] - width) // 2
    return np.ascontiguousarray(frames[:, top : top + height, left : left + width])


def time_methods(width: int, seconds: float, repeats: int) -> dict[str, dict[str, list[float]]]:
    """``{method: {"HxW": [ms per pair, per repeat]}}`` for every method and size."""
    net = FlowNet(width=width).eval()
    times: dict[str, dict[str, list[float]]] = {}
    for height, wide in SIZES:
        key = f"{wide}x{height}"  # width x height, as video sizes are usually written
        frames = textured_frames(height, wide)
        for method in ("dis", "farneback"):
            estimator = ClassicalFlow(method, "medium")
            times.setdefault(method, {})[key] = ms_per_pair(
                lambda: estimator(frames[0], frames[1]), 1, seconds, repeats
            )
        # the network sees normalised frames, as inside JointModel ((x - 0.5) / 0.25)
        triplet = (torch.from_numpy(frames).float() / 255.0 - 0.5) / 0.25  # (3, H, W)
        for batch in BATCHES:
            inputs = triplet.expand(batch, 1, 3, height, wide).contiguous()
            with torch.no_grad():
                times.setdefault(f"learned_b{batch}", {})[key] = ms_per_pair(
                    lambda: net(inputs), batch, seconds, repeats
                )
    return times


def epe_on_test_split(
    checkpoint: Path | None, clips: int, size: int, crop: int, batch: int
) -> tuple[dict[str, dict[str, float]], dict]:
    """EPE (and px1, the share of pixels within 1 px) of every method on the same test pairs.

    Returns ``({method: metrics}, settings)``; the learned row is missing without a checkpoint.
    """
    cfg, model = Config(), None
    if checkpoint is not None:
        model, cfg = load_flow_model(checkpoint, torch.device("cpu"))
    synthetic = cfg.data.synthetic
    classes = synthetic.num_classes or SYNTHETIC_DEFAULT_CLASSES["motion"]
    spec = SyntheticSpec(size=size, num_frames=synthetic.num_frames, num_classes=classes)
    errors = FlowErrors(within=(1.0,))  # every method scored on the same pixels
    margin = (size - crop) // 2
    window = (slice(margin, margin + crop), slice(margin, margin + crop))
    pairs = video_pairs(spec.num_frames, 1)
    for index in range(clips):
        # the same stream as generate_split(spec, "test", ...): clip i has label i % K
        clip = render_clip(index % spec.num_classes, clip_rng(synthetic.seed, "test", index), spec)
        frames = np.ascontiguousarray(clip.frames[:, window[0], window[1]])
        gt = clip.flow[pairs][..., window[0], window[1]]
        valid = clip.valid[pairs][..., window[0], window[1]]
        flows = {"zero": np.zeros_like(gt), **{method: classical_flows(frames, pairs, method)
                                               for method in ("dis", "farneback")}}
        if model is not None:
            flows["learned"] = learned_flows(model, frames, pairs, batch)
        errors.add(torch.from_numpy(gt), torch.from_numpy(valid),
                   {name: torch.from_numpy(np.ascontiguousarray(flow)) for name, flow in flows.items()})
    result = errors.result()
    names = ("zero", "dis", "farneback") + (("learned",) if model is not None else ())
    metrics = {name: {"epe": result["epe" if name == "learned" else f"{name}_epe"],
                      "px1": result["px1" if name == "learned" else f"{name}_px1"]} for name in names}
    settings = {"clips": clips, "size": size, "crop": crop, "num_frames": spec.num_frames,
                "num_classes": spec.num_classes, "seed": synthetic.seed, "pairs_per_clip": len(pairs),
                "checkpoint": str(checkpoint) if checkpoint else None,
                "checkpoint_flow_width": cfg.model.flow_width if checkpoint else None}
    return metrics, settings


def build_rows(times: dict, epe: dict) -> list[dict]:
    """One row per method: EPE, median ms per pair per size, ratio to DIS's median at that size."""
    rows = [{"method": "zero flow", "epe": epe["zero"]["epe"], "px1": epe["zero"]["px1"]}]
    names = {"dis": "DIS medium", "farneback": "Farneback"}
    names.update({f"learned_b{b}": f"learned b={b}" for b in BATCHES})
    for key, label in names.items():
        source = epe.get("learned" if key.startswith("learned") else key)
        row: dict = {"method": label, "epe": source["epe"] if source else "n/a (no checkpoint)",
                     "px1": source["px1"] if source else None}
        for size, repeats in times[key].items():
            median = statistics.median(repeats)
            row[f"ms_per_pair_{size}"] = median
            row[f"ms_per_pair_{size}_all"] = repeats
            row[f"x_dis_{size}"] = median / statistics.median(times["dis"][size])
        rows.append(row)
    return rows


def print_table(rows: list[dict], crop: int) -> None:
    sizes = [f"{w}x{h}" for h, w in SIZES]
    header = f"{'method':<14} {f'EPE {crop}x{crop} px':>19}" + "".join(
        f" {'ms/pair ' + s:>17} {'x DIS':>7}" for s in sizes
    )
    print(header)
    for row in rows:
        epe = row["epe"] if isinstance(row["epe"], str) else f"{row['epe']:.3f}"
        line = f"{row['method']:<14} {epe:>19}"
        for size in sizes:
            if f"ms_per_pair_{size}" in row:
                line += f" {row[f'ms_per_pair_{size}']:>17.3f} {row[f'x_dis_{size}']:>7.2f}"
            else:
                line += f" {'-':>17} {'-':>7}"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="e.g. runs/demo/best.pt, for the learned EPE")
    parser.add_argument("--width", type=int, default=None,
                        help="FlowNet width to time (default: the checkpoint's model.flow_width, else 16)")
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5, help="minimum time per repeat")
    parser.add_argument("--clips", type=int, default=40, help="test clips for the EPE")
    parser.add_argument("--size", type=int, default=64, help="rendered side for the EPE")
    parser.add_argument("--crop", type=int, default=56, help="centre crop for the EPE")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/flow.json"))
    args = parser.parse_args(argv)
    if args.checkpoint is not None and not args.checkpoint.is_file():
        parser.error(f"no checkpoint at {args.checkpoint}")

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    started, load_at_start = time.time(), os.getloadavg()[0]
    epe, epe_settings = epe_on_test_split(args.checkpoint, args.clips, args.size, args.crop, max(BATCHES))
    width = args.width or epe_settings["checkpoint_flow_width"] or 16
    times = time_methods(width, args.seconds, args.repeats)
    rows = build_rows(times, epe)

    print(f"flow per frame pair, median of {args.repeats} repeats, {args.threads} threads; "
          f"FlowNet width {width}; EPE on {args.clips} test clips ({args.size} -> {args.crop})")
    print_table(rows, args.crop)
    result = {
        "benchmark": "flow",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "rows": rows,
        "epe": epe,
        "settings": {"flownet_width": width, "threads": args.threads, "repeats": args.repeats,
                     "seconds_per_repeat": args.seconds, "batches": list(BATCHES),
                     "sizes_hw": [list(s) for s in SIZES], "dis_preset": "medium", "epe": epe_settings},
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    # a busy shared machine slows multi-threaded torch far more than OpenCV
                    "load_average_1min": [load_at_start, os.getloadavg()[0]],
                    "torch": torch.__version__, "opencv": cv2.__version__},
        "wall_seconds": time.time() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

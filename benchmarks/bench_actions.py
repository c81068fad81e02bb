"""The articulated-action benchmark, per class: how fast a clip is made, how exact its flow is, how
much of it moves, and how far OpenCV's DIS and zero flow are from the truth on the same pixels.

For each class, ``--clips`` clips of the training split are rendered twice: without the brightness
drift and noise (to check that frame t+1 warped back by the ground-truth flow is frame t on the
valid pixels away from layer edges) and as the benchmark makes them (DIS on those frames). EPE is over moving valid pixels
(|flow| > 0.1 px). Also draws one test clip per class (frames, ground-truth flow, the learned flow of ``--flow-weights``,
DIS) into
``docs/actions/strip.png``. Run::

    .venv/bin/python benchmarks/bench_actions.py --clips 8 --out benchmarks/results/actions.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from flowaction.data.actions import ActionSpec, render_action_clip
from flowaction.data.poses import ACTION_NAMES
from flowaction.data.synthetic import clip_rng
from flowaction.flow.classical import clip_classical_flow
from flowaction.flow.metrics import MOVING_THRESHOLD
from flowaction.flow.viz import flow_panel
from flowaction.models.flownet import FlowNet
from flowaction.models.joint import Normalise
from flowaction.warp import backward_warp

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper modules beside this script
from flow_weights import flow_model  # noqa: E402


def measure(label: int, clips: int, size: int) -> dict:
    exact_spec, spec = ActionSpec(size=size, photometric=False), ActionSpec(size=size)
    seconds, warp, still, valid, moving, dis, zero = [], [], [], [], [], [], []
    for index in range(clips):
        key = index * len(ACTION_NAMES) + label  # the clips of this class in a split
        exact = render_action_clip(label, clip_rng(0, "train", key), exact_spec)
        started = time.perf_counter()
        clip = render_action_clip(label, clip_rng(0, "train", key), spec)
        seconds.append(time.perf_counter() - started)
        frames = torch.from_numpy(exact.frames.astype(np.float32))
        warped = backward_warp(frames[1:, None], torch.from_numpy(exact.flow))[:, 0].numpy()
        mask = exact.exact  # valid pixels whose warp mixes no other layer in
        warp.append(float(np.abs(warped - exact.frames[:-1])[mask].mean()))
        still.append(float(np.abs(exact.frames[1:].astype(np.float32) - exact.frames[:-1])[mask].mean()))
        speed = np.hypot(clip.flow[:, 0], clip.flow[:, 1])
        move = clip.valid & (speed > MOVING_THRESHOLD)
        valid.append(float(clip.valid.mean()))
        moving.append(float(move.mean()))
        estimate = clip_classical_flow(clip.frames, "dis")
        dis.append(float(np.hypot(*(estimate - clip.flow).transpose(1, 0, 2, 3))[move].mean()))
        zero.append(float(speed[move].mean()))
    return {"ms_per_clip": 1000 * statistics.median(seconds), "warp_error": float(np.mean(warp)),
            "zero_flow_warp_error": float(np.mean(still)), "valid": float(np.mean(valid)),
            "moving": float(np.mean(moving)), "dis_moving_epe": float(np.mean(dis)),
            "zero_moving_epe": float(np.mean(zero))}


def learned_flow(flow_net: FlowNet, frames: np.ndarray) -> np.ndarray:
    """The flow network's flow ``(2, H, W)`` of pair 0 -> 1 of a triplet ``(3, H, W)`` uint8."""
    x = torch.from_numpy(frames.astype(np.float32) / 255.0)[None, None]
    with torch.no_grad():
        return flow_net(Normalise()(x))[0].numpy()


def strip(path: Path, size: int, flow_weights: str) -> None:
    """One clip of the test split per class (held-out photographs): two frames, the true flow,
    the learned flow and DIS of the pair t -> t+1. ``flow_weights``: a shipped name, a ``flownet.pt``
    or a run checkpoint, its network built in the shape (and, for a checkpoint, at the input scale) it holds."""
    flow_net = flow_model(flow_weights).flow_net
    rows, labels = [], []
    for label, name in enumerate(ACTION_NAMES):
        clip = render_action_clip(label, clip_rng(1, "test", label), ActionSpec(size=size), split="test")
        t = len(clip.flow) // 2
        rows.append({"frame t": clip.frames[t], "frame t+7": clip.frames[min(t + 7, len(clip.frames) - 1)],
                     "ground truth": np.where(clip.valid[t], clip.flow[t], 0.0),
                     "learned": learned_flow(flow_net, clip.frames[t:t + 3]),
                     "DIS": clip_classical_flow(clip.frames[t:t + 2], "dis")[0]})
        labels.append(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    flow_panel(path, rows, row_labels=labels, cell_inches=1.3,
               title=f"one test clip per class (invalid pixels of the truth set to 0; learned: {flow_weights})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8, help="clips per class")
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/actions.json"))
    parser.add_argument("--picture", type=Path, default=Path("docs/actions/strip.png"))
    parser.add_argument("--flow-weights", default="actions",
                        help="the flow network of the strip's learned column: a shipped name, a flownet.pt or a run's best.pt")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {name: measure(label, args.clips, args.size) for label, name in enumerate(ACTION_NAMES)}
    print(f"{'class':16s} {'ms/clip':>8s} {'warp err':>9s} {'zero':>6s} {'valid':>6s} {'moving':>7s} "
          f"{'DIS EPE':>8s} {'zero EPE':>9s}")
    for name, row in results.items():
        print(f"{name:16s} {row['ms_per_clip']:8.1f} {row['warp_error']:9.2f} {row['zero_flow_warp_error']:6.2f} "
              f"{row['valid']:6.2f} {row['moving']:7.2f} {row['dis_moving_epe']:8.3f} {row['zero_moving_epe']:9.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"clips_per_class": args.clips, "size": args.size, "threads": 1,
                                    "torch": torch.__version__, "classes": results}, indent=1))
    strip(args.picture, args.size, args.flow_weights)
    print(f"wrote {args.out} and {args.picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

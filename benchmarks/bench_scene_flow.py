"""Flow networks against DIS and Farneback on held-out flow scenes of real photographs, exact ground truth.

The scenes (``data.synthetic.kind=scenes``) are layers of real photographs, each in its own affine
motion (up to 0.075 frame sizes per frame: 4 px at 56, 8 px at 112), with lighting changes and
noise. The clips scored here are the test split's: cut only from the photographs that no training
scene (and no training clip of the actions benchmark) shows. Each clip is rendered at the
benchmark's size (56 and 112 px by default), every pair ``p -> p+1`` that has a triplet ``(p, p+1,
p+2)`` gets a flow from each method, and the end-point error is taken over all valid pixels
(visible in both frames) and over the moving ones (valid and |truth| > 0.1 px), the same pixels
for every method; also the share of valid pixels under 1 px, the ratio to DIS, and the EPE of the
valid pixels by their true speed (0-1, 1-2, 2-4, 4-8 and over 8 px per frame).

Speed: ms per pair on ``--threads`` threads (one by default), each method one pair at a time (the
network on one triplet), the median over clips; parameters and GFLOPs (multiply-adds x 2) of one
flow of the network at each size.

Run: ``.venv/bin/python benchmarks/bench_scene_flow.py [--flow-weights default,actions,FILE] [--clips 40]
[--sizes 56,112] [--out benchmarks/results/scene_flow.json]``
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
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper modules beside this script

from flowaction.data.scenes import SceneSpec, render_scene_clip  # noqa: E402
from flowaction.data.synthetic import clip_rng  # noqa: E402
from flowaction.flow.metrics import FlowErrors  # noqa: E402
from flowaction.inference.video_flow import classical_flows, learned_flows, video_pairs  # noqa: E402
from flow_weights import flow_models  # noqa: E402

SPEED_BINS = (0.0, 1.0, 2.0, 4.0, 8.0, float("inf"))  # true speed, px per frame, for the EPE by speed
SEED = 0  # the generated benchmark's default seed: these are the test clips `pretrain-flow` never trains on


def network_cost(model: torch.nn.Module, size: int) -> tuple[int, float]:
    """Parameters of the flow network and GFLOPs of one flow at ``size`` x ``size``."""
    flow_net = model.flow_net
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        flow_net(torch.zeros(1, 1, 3, size, size))
    return sum(p.numel() for p in flow_net.parameters()), counter.get_total_flops() / 1e9


def score(size: int, clips: int, models: dict, methods: tuple[str, ...]) -> tuple[dict, dict]:
    """EPE per method over ``clips`` held-out scenes at ``size`` px, and per-clip ms per pair."""
    spec = SceneSpec(size=size)
    errors = FlowErrors(within=(1.0,))
    binned = {m: np.zeros((len(SPEED_BINS) - 1, 2)) for m in methods}  # per speed bin: error sum, pixels
    ms: dict[str, list[float]] = {m: [] for m in methods}
    speeds = []
    for index in range(clips):
        clip = render_scene_clip(0, clip_rng(SEED, "test", index), spec, "test")
        pairs = video_pairs(len(clip.frames), 1)
        flows = {}
        for method in methods:
            started = time.perf_counter()
            if method == "zero":
                flow = np.zeros((len(pairs), 2, size, size), np.float32)
            elif method in models:
                flow = learned_flows(models[method], clip.frames, pairs, batch_size=1)
            else:
                flow = classical_flows(clip.frames, pairs, method)
            ms[method].append(1000 * (time.perf_counter() - started) / len(pairs))
            flows[method] = torch.from_numpy(flow)
        gt, valid = torch.from_numpy(clip.flow[pairs]), torch.from_numpy(clip.valid[pairs])
        speeds.append(float(np.linalg.norm(clip.flow[pairs], axis=1)[clip.valid[pairs]].mean()))
        errors.add(gt, valid, flows)
        which = np.digitize(np.linalg.norm(clip.flow[pairs], axis=1), SPEED_BINS) - 1
        for method, flow in flows.items():
            error = np.linalg.norm(flow.numpy() - clip.flow[pairs], axis=1)
            for b in range(len(SPEED_BINS) - 1):
                mask = clip.valid[pairs] & (which == b)
                binned[method][b] += (error[mask].sum(), mask.sum())
    result = errors.result()
    rows = {}
    for method in methods:
        prefix = "" if method == "learned" else f"{method}_"
        rows[method] = {"epe": result[f"{prefix}epe"], "moving_epe": result[f"{prefix}moving_epe"],
                        "px1": result[f"{prefix}px1"], "ms_per_pair": statistics.median(ms[method]),
                        "epe_by_speed": [float(e / n) if n else None for e, n in binned[method]]}
    for row in rows.values():
        row["epe_vs_dis"] = row["epe"] / rows["dis"]["epe"]
        row["moving_epe_vs_dis"] = row["moving_epe"] / rows["dis"]["moving_epe"]
        row["ms_vs_dis"] = row["ms_per_pair"] / rows["dis"]["ms_per_pair"]
    return rows, {"valid_pixels": result["valid_pixels"], "moving_pixels": result["moving_pixels"],
                  "mean_speed_px": float(np.mean(speeds))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow-weights", default="default,actions",
                        help="comma-separated flow networks: shipped names (default, actions) or files")
    parser.add_argument("--clips", type=int, default=40, help="held-out scenes per size (8 frames, 6 pairs each)")
    parser.add_argument("--sizes", default="56,112", help="frame sides in pixels")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scene_flow.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = flow_models(args.flow_weights)
    methods = ("zero", *models, "dis", "farneback")
    report = {"clips": args.clips, "threads": args.threads, "weights": args.flow_weights, "sizes": {}}
    print("| size | method | EPE all (px) | vs DIS | EPE moving (px) | vs DIS | < 1 px | ms/pair | vs DIS | params | GFLOPs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in (int(s) for s in args.sizes.split(",")):
        rows, pixels = score(size, args.clips, models, methods)
        for name, model in models.items():
            rows[name]["parameters"], rows[name]["gflops"] = network_cost(model, size)
        report["sizes"][str(size)] = {"methods": rows, **pixels}
        for method, row in rows.items():
            cost = (f"{row['parameters']:,} | {row['gflops']:.3f}" if "gflops" in row else "- | -")
            print(f"| {size} | {method} | {row['epe']:.3f} | {row['epe_vs_dis']:.2f}x | {row['moving_epe']:.3f} | "
                  f"{row['moving_epe_vs_dis']:.2f}x | {100 * row['px1']:.1f} % | {row['ms_per_pair']:.2f} | "
                  f"{row['ms_vs_dis']:.2f}x | {cost} |")
        edges = [f"{lo:g}-{hi:g}" for lo, hi in zip(SPEED_BINS[:-1], SPEED_BINS[1:])]
        print(f"\nEPE by true speed at {size} px (px per frame): | method | " + " | ".join(edges) + " |")
        for method, row in rows.items():
            print(f"| {method} | " + " | ".join("-" if e is None else f"{e:.2f}" for e in row["epe_by_speed"]) + " |")
        print(f"| {size} | (truth) mean speed {pixels['mean_speed_px']:.2f} px, {pixels['valid_pixels']:.0f} valid "
              f"pixels, {pixels['moving_pixels']:.0f} moving | | | | | | | | | |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

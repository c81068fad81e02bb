"""How fast is flow scoring? ``FlowErrors.add`` against the same sums with ``torch.linalg.vector_norm``.

Training scores the flow being learnt on every few batches and every evaluation scores the whole
split, beside zero flow and DIS. A per-pixel length reduced over the two-element component axis of
``(..., 2, H, W)`` is slow on a CPU; ``FlowErrors`` takes it elementwise. This times both on a
demo-shaped batch (16 clips, 5 stacked flows, 40 x 40, three flows scored) in one process,
alternating, and reports medians and their ratio; it also checks both give the same sums.

Run: ``.venv/bin/python benchmarks/bench_flow_metrics.py [--repeats 30 --out FILE]``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from flowaction.flow.metrics import MOVING_THRESHOLD, FlowErrors


def norm_sums(gt: torch.Tensor, valid: torch.Tensor, flows: dict[str, torch.Tensor]) -> dict[str, float]:
    """The sums ``FlowErrors.add`` keeps, with the length as a reduction (the slow way)."""
    mask = valid.bool()
    moving = mask & (torch.linalg.vector_norm(gt, dim=-3) > MOVING_THRESHOLD)
    sums = {"valid_pixels": float(mask.sum()), "moving_pixels": float(moving.sum())}
    for name, flow in flows.items():
        error = torch.linalg.vector_norm(flow - gt, dim=-3)
        prefix = "" if name == "learned" else f"{name}_"
        sums[f"{prefix}epe"] = float(error[mask].sum())
        sums[f"{prefix}moving_epe"] = float(error[moving].sum())
    return sums


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/flow_metrics.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    shape = (16 * 5, 2, 40, 40)
    gt = torch.randn(shape, generator=generator)
    valid = torch.rand(shape[:1] + shape[2:], generator=generator) > 0.1
    flows = {name: gt + 0.3 * torch.randn(shape, generator=generator) for name in ("learned", "zero", "dis")}
    flows["zero"] = torch.zeros(shape)

    def elementwise() -> dict[str, float]:
        errors = FlowErrors()
        errors.add(gt, valid, flows)
        return errors.sums

    times: dict[str, list[float]] = {"FlowErrors.add (elementwise)": [], "vector_norm over dim -3": []}
    runs = {"FlowErrors.add (elementwise)": elementwise, "vector_norm over dim -3": lambda: norm_sums(gt, valid, flows)}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    fast, slow = elementwise(), norm_sums(gt, valid, flows)
    worst = max(abs(fast[k] - slow[k]) / max(abs(slow[k]), 1.0) for k in slow)
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    ratio = medians["FlowErrors.add (elementwise)"] / medians["vector_norm over dim -3"]
    print(f"batch {tuple(shape)}, 3 flows, {args.threads} threads, {args.repeats} repeats (medians)")
    print(f"{'scoring':32s} {'ms':>8s}")
    for name, value in medians.items():
        print(f"{name:32s} {value:8.2f}")
    print(f"ratio elementwise / reduction: {ratio:.3f}x; largest relative difference of the sums {worst:.1e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"shape": list(shape), "threads": args.threads, "repeats": args.repeats,
                                    "median_ms": medians, "ratio": ratio, "max_relative_difference": worst},
                                   indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Generation speed of the synthetic motion benchmark, in clips per second.

Usage: .venv/bin/python benchmarks/bench_synthetic.py [--sizes 56 64 112] [--frames 16]
       [--repeats 5] [--seconds 1.0] [--threads 1] [--out benchmarks/results/synthetic.json]

Each repeat renders clips (all classes, in generate_split order) for about ``--seconds``; the
reported figure is the median over repeats, since these shared machines vary from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from flowaction.data.synthetic import SyntheticSpec, generate_split


def clips_per_second(spec: SyntheticSpec, seconds: float, seed: int) -> float:
    """Render clips for at least ``seconds`` (and at least one full class cycle); return clips/s."""
    count, start = 0, time.perf_counter()
    clips = generate_split(spec, "bench", clips_per_class=10**9, seed=seed)
    while True:
        next(clips)
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and count >= spec.num_classes:
            return count / elapsed


def run(sizes: list[int], frames: int, num_classes: int, repeats: int, seconds: float
        ) -> list[dict]:
    """Median clips/s (and all repeats) for each frame size."""
    rows = []
    for size in sizes:
        spec = SyntheticSpec(size=size, num_frames=frames, num_classes=num_classes)
        clips_per_second(spec, 0.2, seed=999)  # warm-up: imports, allocator, OpenCV init
        rates = [clips_per_second(spec, seconds, seed=r) for r in range(repeats)]
        rows.append({
            "size": size, "num_frames": frames, "num_classes": num_classes,
            "clips_per_s_median": statistics.median(rates),
            "clips_per_s_all": rates,
            "ms_per_clip_median": 1000.0 / statistics.median(rates),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[56, 64, 112])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per repeat")
    parser.add_argument("--threads", type=int, default=1,
                        help="OpenCV threads (NumPy element-wise work is single-threaded)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/synthetic.json"))
    args = parser.parse_args()

    cv2.setNumThreads(args.threads)
    rows = run(args.sizes, args.frames, args.classes, args.repeats, args.seconds)

    print(f"{'size':>5} {'T':>3} {'clips/s (median)':>17} {'ms/clip':>8}  repeats")
    for row in rows:
        spread = ", ".join(f"{r:.0f}" for r in row["clips_per_s_all"])
        print(f"{row['size']:>5} {row['num_frames']:>3} {row['clips_per_s_median']:>17.1f} "
              f"{row['ms_per_clip_median']:>8.2f}  [{spread}]")

    result = {
        "benchmark": "synthetic_generation",
        "results": rows,
        "settings": {"repeats": args.repeats, "seconds_per_repeat": args.seconds,
                     "opencv_threads": args.threads},
        "machine": {
            "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "numpy": np.__version__, "opencv": cv2.__version__,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

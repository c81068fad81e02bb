"""Can the clip loader feed training? Loader clips/s beside the joint model's training clips/s.

Builds a cache (in a temporary directory) of UCF101-sized stored videos (64 x 85 frames, about
150 frames each), then measures on this machine

1. training clips/s out of the cache: ``ClipDataset`` in train mode (random start and crop, colour
   jitter) through a ``DataLoader`` with 0, 1 and 2 worker processes, T = 16, crop 56, batch 8;
2. the joint model's training clips/s: ``flowaction.models.build.build_model`` (depth 18), one Adam step
   with the joint loss on random input ``(8, 1, 16, 56, 56)``;

and reports their ratio (how many times faster the loader is than the training step it feeds).
Both run in one process on one day's machine, so the ratio is what to compare across days.

Run: ``.venv/bin/python benchmarks/bench_loader.py [--batches 100 --steps 3 --out FILE]``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from flowaction.config import Config
from flowaction.data.cache import ClipCache, ShardWriter, VideoRecord, write_index
from flowaction.data.clips import ClipDataset, ClipSpec, JitterSpec, add_input_noise
from flowaction.losses import joint_loss
from flowaction.models.build import build_model

NUM_FRAMES, CROP, BATCH = 16, 56, 8


def build_cache(root: Path, videos: int, frames: int, size: tuple[int, int] = (64, 85)) -> ClipCache:
    """``videos`` videos of ``frames`` random gray frames (content does not change loader speed)."""
    rng = np.random.default_rng(0)
    for shard in range(0, videos, 16):
        writer = ShardWriter(root, f"train-{shard // 16:05d}")
        for i in range(shard, min(shard + 16, videos)):
            video = rng.integers(0, 256, (frames, *size), dtype=np.uint8)
            writer.add(VideoRecord(id=f"c{i % 10}/v{i:04d}", label=i % 10, split="train", fps=25.0), video)
        writer.close()
    write_index(root, [f"c{k}" for k in range(10)])
    return ClipCache.open(root)


def loader_rate(cache: ClipCache, workers: int, batches: int) -> dict:
    """Clips/s over ``batches`` batches after the first (worker start-up reported apart)."""
    dataset = ClipDataset(cache, "train", "train", ClipSpec(NUM_FRAMES, 1, CROP), JitterSpec(), seed=0)
    # one iterator for the whole measurement: a new epoch would restart the worker processes
    sampler = RandomSampler(dataset, replacement=True, num_samples=(batches + 1) * BATCH)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=workers, drop_last=True)
    started = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - started
    started, clips = time.perf_counter(), 0
    for batch in iterator:
        clips += batch["frames"].shape[0]
    seconds = time.perf_counter() - started
    del iterator
    return {"workers": workers, "clips_per_second": clips / seconds, "first_batch_seconds": first, "clips": clips}


def train_rate(depth: int, steps: int, num_classes: int = 101) -> dict:
    """Clips/s of full training steps (forward, joint loss, backward, Adam) on random clips."""
    cfg = Config()
    cfg.model.depth = depth
    model = build_model(cfg, num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    weights = cfg.loss
    frames = torch.rand(BATCH, 1, NUM_FRAMES, CROP, CROP)
    labels = torch.randint(0, num_classes, (BATCH,))

    def step() -> None:
        logits, flows = model(add_input_noise(frames, cfg.augment.noise_std))
        terms = joint_loss(logits, labels, flows, frames, model.triplet_stride, weights)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()

    step()  # warm-up: allocations, first-call overheads
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    median = float(np.median(times))
    return {"depth": depth, "batch": BATCH, "step_seconds": times, "clips_per_second": BATCH / median,
            "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--batches", type=int, default=100, help="batches timed per loader setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/loader.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cache = build_cache(Path(tmp), args.videos, args.frames)
        loaders = [loader_rate(cache, w, args.batches) for w in args.workers]
    training = train_rate(args.depth, args.steps)
    for entry in loaders:
        entry["ratio_to_training"] = entry["clips_per_second"] / training["clips_per_second"]
    result = {"machine": {"cpus": os.cpu_count()}, "clip": {"frames": NUM_FRAMES, "crop": CROP, "batch": BATCH},
              "loader": loaders, "training": training}
    print(f"{'loader':12s} {'clips/s':>9s} {'x training':>11s} {'first batch s':>14s}")
    for entry in loaders:
        print(f"workers={entry['workers']:<4d} {entry['clips_per_second']:9.1f} {entry['ratio_to_training']:11.1f} "
              f"{entry['first_batch_seconds']:14.2f}")
    print(f"training R{args.depth} joint model, batch {BATCH}: {training['clips_per_second']:.2f} clips/s "
          f"(median step {np.median(training['step_seconds']):.2f} s, {training['torch_threads']} torch threads)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""OpenCV flow (DIS / Farneback) computed once into a cache, for the classical-flow baselines.

For every shard, ``shards/<name>.<method>.npy`` holds float16 ``(F, 2, H, W)``: row ``f`` is the
flow from frame ``f`` to ``f + 1`` of its video (zero on a video's last frame), the same layout as
ground truth. Each shard's array appears by rename, so an interrupted computation resumes at the
first shard without one.
"""
from __future__ import annotations

import os

import numpy as np
from tqdm import tqdm

from flowaction.data.cache import ClipCache
from flowaction.flow.classical import ClassicalFlow

METHODS = ("dis", "farneback")


def classical_path(cache: ClipCache, shard: str, method: str):
    return cache.root / "shards" / f"{shard}.{method}.npy"


def ensure_classical_flow(cache: ClipCache, method: str, progress: bool = True) -> int:
    """Compute ``method`` flow for every shard that lacks it. Returns the shards computed."""
    if method not in METHODS:
        raise ValueError(f"unknown classical flow {method!r}; choose one of {METHODS}")
    by_shard: dict[str, list[int]] = {}
    for index, video in enumerate(cache.videos):
        by_shard.setdefault(video["shard"], []).append(index)
    todo = [s for s in sorted(by_shard) if not classical_path(cache, s, method).is_file()]
    if not todo:
        return 0
    estimator = ClassicalFlow(method)
    total = sum(cache.videos[i]["length"] for s in todo for i in by_shard[s])
    bar = tqdm(total=total, desc=f"{method} flow", unit="frame", disable=not progress, mininterval=1.0)
    for shard in todo:
        frames = cache._array(shard, "frames")
        out = np.zeros((frames.shape[0], 2, *frames.shape[1:]), np.float16)
        for index in by_shard[shard]:
            record = cache.videos[index]
            start, length = record["start"], record["length"]
            for f in range(start, start + length - 1):
                out[f] = estimator(frames[f], frames[f + 1])
            bar.update(length)
        path = classical_path(cache, shard, method)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, out)
        os.replace(tmp, path)
    bar.close()
    return len(todo)

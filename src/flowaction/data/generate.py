"""Write the generated benchmark into a clip cache, like prepared videos.

The generated clips go through the same shards, index and loaders as real videos; each split is
written as shards of ``shard_size`` clips, and a cache whose index records the same spec and
counts is reused instead of regenerated.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from tqdm import tqdm

from flowaction.data.cache import INDEX_NAME, ClipCache, ShardWriter, VideoRecord, write_index
from flowaction.data.synthetic import CLASS_NAMES, SyntheticSpec, generate_split

SPLITS = ("train", "val", "test")


def synthetic_cache(
    out_dir: str | Path,
    spec: SyntheticSpec,
    clips_per_class: dict[str, int],
    seed: int,
    shard_size: int = 256,
    progress: bool = True,
) -> ClipCache:
    """Generate (or reuse) the benchmark as a cache in ``out_dir`` and open it.

    Args:
        clips_per_class: e.g. ``{"train": 60, "val": 10, "test": 20}``.
        shard_size: clips per shard.
    """
    out_dir = Path(out_dir)
    meta = {
        "source": "synthetic",
        "spec": dataclasses.asdict(spec),
        "clips_per_class": dict(clips_per_class),
        "seed": seed,
    }
    if (out_dir / INDEX_NAME).is_file():
        cache = ClipCache.open(out_dir)
        if _same(cache.index.get("meta", {}), meta):
            return cache
    if out_dir.exists():  # a different or unfinished generation: start clean
        shutil.rmtree(out_dir)
    classes = list(CLASS_NAMES[: spec.num_classes])
    total = sum(clips_per_class.values()) * len(classes)
    bar = tqdm(total=total, desc="generate", unit="clip", disable=not progress, mininterval=1.0)
    for split in SPLITS:
        count = clips_per_class.get(split, 0)
        writer, shard = None, 0
        for index, clip in enumerate(generate_split(spec, split, count, seed)):
            if writer is None:
                writer = ShardWriter(out_dir, f"{split}-{shard:05d}", with_flow=True)
            record = VideoRecord(id=f"{split}/{index:06d}", label=int(clip.label), split=split, fps=25.0)
            writer.add(record, clip.frames, clip.flow, clip.valid)
            if len(writer.records) >= shard_size:
                writer.close()
                writer, shard = None, shard + 1
            bar.update(1)
        if writer is not None:
            writer.close()
    bar.close()
    write_index(out_dir, classes, meta)
    return ClipCache.open(out_dir)


def _same(a: dict, b: dict) -> bool:
    """Compare metadata after a JSON round trip (tuples become lists)."""
    import json

    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))

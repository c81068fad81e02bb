"""Write a generated benchmark (the motion world, the articulated actions or the flow scenes) into a clip cache,
like prepared videos.

The generated clips go through the same shards, index and loaders as real videos; each split is
written as shards of ``shard_size`` clips, and a cache whose index records the same spec and
counts is reused instead of regenerated. Every clip has its own random stream, so clips made by
several processes are the clips one process makes.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import re
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from flowaction.data.actions import ActionSpec, render_action_clip
from flowaction.data.cache import INDEX_NAME, ClipCache, ShardWriter, VideoRecord, write_index
from flowaction.data.scenes import SceneSpec, render_scene_clip
from flowaction.data.synthetic import CLASS_NAMES, SyntheticClip, SyntheticSpec, clip_rng, render_clip

SPLITS = ("train", "val", "test")
Spec = SyntheticSpec | ActionSpec | SceneSpec
PARALLEL_FROM = 400  # clips: fewer are generated in this process (starting workers costs about as much)
CHUNK = 32  # clips per task of a worker


def class_names(spec: Spec) -> list[str]:
    """The class names of a generated benchmark, in label order."""
    names = spec.classes if isinstance(spec, (ActionSpec, SceneSpec)) else CLASS_NAMES
    return list(names[: spec.num_classes])


def _render(spec: Spec, split: str, seed: int, index: int) -> SyntheticClip:
    """Clip ``index`` of a split: label ``index % K``, stream ``clip_rng(seed, split, index)``."""
    rng = clip_rng(seed, split, index)
    if isinstance(spec, ActionSpec):
        return render_action_clip(index % spec.num_classes, rng, spec, split)
    if isinstance(spec, SceneSpec):
        return render_scene_clip(index % spec.num_classes, rng, spec, split)
    return render_clip(index % spec.num_classes, rng, spec)


def _render_chunk(task: tuple) -> list[SyntheticClip]:
    spec, split, seed, start, stop = task
    return [_render(spec, split, seed, index) for index in range(start, stop)]


def generate_clips(spec: Spec, split: str, count: int, seed: int,
                   workers: int = 1) -> Iterator[SyntheticClip]:
    """The first ``count`` clips of a split in order, rendered by ``workers`` processes."""
    if workers <= 1 or count < PARALLEL_FROM:
        for index in range(count):
            yield _render(spec, split, seed, index)
        return
    tasks = [(spec, split, seed, start, min(start + CHUNK, count)) for start in range(0, count, CHUNK)]
    with mp.get_context("spawn").Pool(workers) as pool:
        for clips in pool.imap(_render_chunk, tasks):
            yield from clips


def synthetic_cache(
    out_dir: str | Path,
    spec: Spec,
    clips_per_class: dict[str, int],
    seed: int,
    shard_size: int = 256,
    progress: bool = True,
    workers: int = 0,
) -> ClipCache:
    """Generate (or reuse) the benchmark as a cache in ``out_dir`` and open it.

    Args:
        spec: the motion world's :class:`SyntheticSpec`, the actions' :class:`ActionSpec` or the
            scenes' :class:`SceneSpec`.
        clips_per_class: e.g. ``{"train": 60, "val": 10, "test": 20}``.
        shard_size: clips per shard.
        workers: generating processes (0: one per core); small generations use this process.
    """
    out_dir = Path(out_dir)
    meta = {
        "source": "synthetic",
        "spec": dataclasses.asdict(spec),
        "clips_per_class": dict(clips_per_class),
        "seed": seed,
    }
    if isinstance(spec, (ActionSpec, SceneSpec)):
        meta["kind"] = "actions" if isinstance(spec, ActionSpec) else "scenes"
    workers = workers or os.cpu_count() or 1
    if (out_dir / INDEX_NAME).is_file() and _is_generated_index(out_dir / INDEX_NAME):
        cache = ClipCache.open(out_dir)
        if _same(cache.index.get("meta", {}), meta):
            return cache
    if out_dir.exists():  # a different or unfinished generation: remove only what generation wrote
        _remove_generated(out_dir)
    classes = class_names(spec)
    total = sum(clips_per_class.values()) * len(classes)
    bar = tqdm(total=total, desc="generate", unit="clip", disable=not progress, mininterval=1.0)
    for split in SPLITS:
        count = clips_per_class.get(split, 0)
        writer, shard = None, 0
        for index, clip in enumerate(generate_clips(spec, split, count * len(classes), seed, workers)):
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
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


# The files a generation writes: shards named <split>-NNNNN, their temporary files, the index.
_SHARD_FILE = re.compile(r"^(train|val|test)-\d{5}\.(frames|flow|valid)(\.tmp)?\.npy$|^(train|val|test)-\d{5}\.json(\.tmp)?$")


def _remove_generated(out_dir: Path) -> None:
    """Delete a stale or unfinished generated cache, refusing if ``out_dir`` holds anything else.

    Only files this module writes are ever removed; a folder holding any other file (a user's data,
    a prepared video cache, anything) raises :class:`FileExistsError` and is left untouched.
    """
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another data folder")
    foreign: list[str] = []  # relative names of files the generator did not write
    ours: list[Path] = []
    for entry in out_dir.iterdir():
        if entry.name in (INDEX_NAME, INDEX_NAME + ".tmp") and entry.is_file():
            if entry.name == INDEX_NAME and not _is_generated_index(entry):
                foreign.append(entry.name)
            ours.append(entry)
        elif entry.name == "shards" and entry.is_dir():
            for shard in entry.iterdir():
                if shard.is_file() and _SHARD_FILE.match(shard.name):
                    ours.append(shard)
                else:
                    foreign.append(f"shards/{shard.name}")
        else:
            foreign.append(entry.name)
    if foreign:
        names = ", ".join(sorted(foreign)[:5]) + (", ..." if len(foreign) > 5 else "")
        raise FileExistsError(
            f"{out_dir} holds files the benchmark generator did not write ({names}); nothing was deleted. "
            "Choose an empty or new folder (--out, or data.synthetic_dir=...)"
        )
    for path in ours:
        path.unlink()
    if (out_dir / "shards").is_dir():
        (out_dir / "shards").rmdir()


def _is_generated_index(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("meta", {}).get("source") == "synthetic"
    except (OSError, ValueError, AttributeError):
        return False

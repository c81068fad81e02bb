"""Prepare real videos (UCF101, HMDB51, a folder per class) into a clip cache: decode once.

How a run goes (see ``data/cache.py`` for the layout):

1. read the split plan (``data/splits.py``) and the videos that finished shards already hold
   (matched on the video id, the path relative to the video root): those are not decoded again;
2. if anything is left to do, delete ``index.json`` (and the old report) BEFORE writing shards,
   so a run killed at any moment never leaves an index that claims a complete cache;
3. worker processes (spawn) pull videos from a queue, decode them and write their OWN shards
   ``<split>-r<run>-w<worker>-<n>``; only small messages travel back, never frames. ``run`` is one
   more than the largest run number among finished shards, so a resumed run never reuses a
   finished shard's name;
4. write ``prepare_report.json``, then ``index.json`` last: the commit point.

Unreadable, corrupt, empty or too-short videos (fewer than ``min_frames``) are skipped and
reported; the run still finishes. A rerun retries them (they may have been fixed) and resumes the
rest. One prepare per cache directory at a time.
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from flowaction.data import decode as decode_mod
from flowaction.data.cache import INDEX_NAME, atomic_write_json, finished_shards, write_index
from flowaction.data.prepare_workers import Task, WorkerCrash, WorkerSettings, run_pool, run_ray, run_tasks
from flowaction.data.splits import SplitPlan, load_splits

REPORT_NAME = "prepare_report.json"
# Half the default 16-frame clip. Shorter videos still load (the sampler repeats the last frame),
# but most of every clip would be a frozen frame that teaches no motion; no UCF101 (>= 29 frames)
# or HMDB51 video is that short, so the rule only catches broken or truncated files.
DEFAULT_MIN_FRAMES = 8
DEFAULT_SHORT_SIDE = 64
_RUN = re.compile(r"-r(\d+)-w\d+-\d+$")


def clean_partial_shards(out: Path, finished: set[str]) -> int:
    """Delete files of shards that never finished (a killed run's leftovers); returns how many."""
    shard_dir = out / "shards"
    removed = 0
    for path in shard_dir.glob("*") if shard_dir.is_dir() else []:
        if path.is_file() and (".tmp" in path.name or path.name.split(".")[0] not in finished):
            path.unlink()
            removed += 1
    return removed


PROBED_VIDEOS = 50  # videos, spread over the list, whose shapes decide the cache's aspect ratio


def _choose_size(plan: SplitPlan, root: Path, size: int | tuple[int, int], existing: list[dict],
                 log: Callable[[str], None] = lambda *_: None) -> tuple[int, int]:
    """The cache's ``(H, W)``: exact if given, else the short side ``size`` at the median aspect
    ratio of up to :data:`PROBED_VIDEOS` videos spread over the list (every video is scaled to
    cover that shape and centre-cropped to it); must equal the size of shards already written."""
    have = tuple(existing[0]["frame_size"]) if existing else None
    if isinstance(size, int):
        if have is not None and min(have) == size:
            return have
        entries = plan.entries
        picks = sorted({round(i * (len(entries) - 1) / max(PROBED_VIDEOS - 1, 1)) for i in range(PROBED_VIDEOS)})
        shapes = []
        for index in picks if entries else []:
            try:
                shapes.append(decode_mod.probe(root / entries[index].path))
            except decode_mod.DecodeError:
                continue
        if not shapes:
            raise ValueError(f"none of the probed videos under {root} could be opened")
        shapes.sort(key=lambda shape: shape[1] / shape[0])
        ratios = [width / height for height, width in shapes]
        median = ratios[len(ratios) // 2]
        chosen = decode_mod.frame_size_for(*shapes[len(shapes) // 2], size)
        spread = (f"from {ratios[0]:.2f} to {ratios[-1]:.2f}; videos of another shape lose their edges to the "
                  "centre crop" if ratios[-1] - ratios[0] > 0.01 else "all alike")
        log(f"frame size {chosen[0]}x{chosen[1]}: short side {size} at the median aspect ratio (width / height "
            f"{median:.2f}) of {len(shapes)} probed videos ({spread}); --height and --width choose another")
    else:
        chosen = (int(size[0]), int(size[1]))
    if have is not None and have != chosen:
        raise ValueError(
            f"{existing[0]['name']} holds {have[0]}x{have[1]} frames but this run asks for {chosen[0]}x{chosen[1]}: "
            "use the earlier size or another --out"
        )
    return chosen


def prepare(
    kind: str,
    root: str | Path,
    out: str | Path,
    splits_dir: str | Path | None = None,
    split: int = 1,
    workers: int = 1,
    size: int | tuple[int, int] = DEFAULT_SHORT_SIDE,
    min_frames: int = DEFAULT_MIN_FRAMES,
    shard_videos: int = 128,
    shard_frames: int = 40_000,
    val_fraction: float = 0.2,
    val_from_train: float = 0.0,
    test_fraction: float = 0.0,
    train_list: str | Path | None = None,
    val_list: str | Path | None = None,
    seed: int = 0,
    method: str = decode_mod.DEFAULT_METHOD,
    threads: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    min_classes: int = 2,
    decoder: Callable | None = None,
    ray_address: str | None = None,
) -> dict:
    """Decode the videos of a data set into the clip cache ``out``; resumable. Returns the report.

    Args:
        kind: ``ucf101``, ``hmdb51``, ``folder`` or ``unlabeled`` (every video under ``root``,
            at any depth, as one class: for flow pre-training).
        splits_dir: the official split files (UCF101 / HMDB51); found near ``root`` if omitted.
        split: official split 1-3.
        workers: decoding processes; 0 starts one per core, 1 decodes in this process.
        size: short side in pixels (aspect ratio of the first video kept, e.g. 64 -> 64 x 85 for
            320 x 240) or an exact ``(H, W)``; every video is scaled to cover it and centre-cropped.
        min_frames: shorter videos are skipped and reported.
        shard_videos, shard_frames: a shard is closed at this many videos or frames (40,000
            frames of 64 x 85 is about 220 MB held in memory per worker).
        val_fraction: folder kind: share of each class put in ``val`` (after ``test`` is carved).
        test_fraction: folder kind: share of each class put in ``test`` (0: no test split).
        val_from_train: UCF101 / HMDB51: share of each class's train videos moved to ``val``
            (UCF101 by whole groups); 0 keeps the official train / test protocol.
        train_list, val_list: folder kind: the user's own split lists (``<class>/<file>`` lines).
        method, threads: decoding options (see ``data/decode.py``).
        ray_address: spread the videos over a Ray cluster (``auto``, ``ray://HOST:PORT``, or
            ``local`` for a Ray instance started here with ``workers`` CPUs): one task per
            ``shard_videos`` videos, each writing finished shards into ``out``, which must be storage
            every node of the cluster sees. Index, report, resume and skip rules are the local ones.
        decoder: replaces ``decode_gray`` (same signature; a module-level function). With
            ``workers`` >= 2 a decoder that crashes its process (segfault) costs only that video:
            it is reported as skipped and the others are prepared.
        log: receives one-line notices (resume, clean-up); nothing is printed here.
        min_classes: fewer classes are refused (2 for a classifier; 1 for flow pre-training).

    Returns:
        The report also written to ``out/prepare_report.json``: ``videos`` per split, ``classes``
        in label order, ``skipped`` ``[{"path", "reason"}]``, ``frames``, ``seconds``,
        ``frames_per_second`` (frames decoded by this run per wall second), and more.
    """
    started = time.perf_counter()
    log = log or (lambda message: None)
    root, out = Path(root), Path(out)
    if workers < 0 or min_frames < 1 or shard_videos < 1:
        raise ValueError("workers must be >= 0 (0: one per core), min_frames and shard_videos >= 1")
    workers = workers or os.cpu_count() or 1
    plan = load_splits(kind, root, Path(splits_dir) if splits_dir else None, split, val_fraction, val_from_train,
                       seed, Path(train_list) if train_list else None, Path(val_list) if val_list else None,
                       test_fraction, min_classes)
    if not plan.entries:
        raise ValueError(f"the {kind} split plan under {root} lists no video")
    out.mkdir(parents=True, exist_ok=True)
    existing = finished_shards(out)
    removed = clean_partial_shards(out, {m["name"] for m in existing})
    if removed:
        log(f"removed {removed} file(s) of unfinished shards left by an interrupted run")
    done = {v["id"] for m in existing for v in m["videos"]}
    frame_size = _choose_size(plan, root, size, existing, log)

    skipped: list[dict] = []
    todo: list[Task] = []
    for entry in sorted(plan.entries, key=lambda e: (e.split, e.path)):
        if entry.path in done:
            continue
        file = root / entry.path
        if not file.is_file():
            skipped.append({"path": entry.path, "reason": "missing file"})
        elif file.stat().st_size == 0:
            skipped.append({"path": entry.path, "reason": "empty file (0 bytes)"})
        else:
            todo.append(Task(entry.path, entry.split, plan.label(entry.cls)))
    if len(skipped) == len(plan.entries):
        raise ValueError(f"none of the {len(plan.entries)} listed videos exists under {root}: is --root right?")
    reused = sum(1 for e in plan.entries if e.path in done)
    if reused:
        log(f"resuming: {reused} video(s) already in finished shards, {len(todo)} to prepare")
    if todo:  # the cache is about to change: it must not look complete until the end
        for name in (INDEX_NAME, REPORT_NAME):
            (out / name).unlink(missing_ok=True)

    runs = [int(m.group(1)) for m in (_RUN.search(s["name"]) for s in existing) if m]
    settings = WorkerSettings(str(root), str(out), frame_size, min_frames, shard_videos, shard_frames,
                              run=max(runs, default=0) + 1, method=method, threads=threads, decoder=decoder)
    decoded = {"videos": 0, "frames": 0}
    bar = tqdm(total=len(todo), desc=f"prepare {kind}", unit="video", disable=not progress, mininterval=1.0)

    def handle(message: tuple) -> None:
        if message[0] == "skip":
            skipped.append({"path": message[1], "reason": message[2]})
        elif message[0] == "video":
            decoded["videos"] += 1
            decoded["frames"] += int(message[2])
        if message[0] in ("skip", "video"):
            bar.update(1)

    try:
        if ray_address is not None:
            run_ray(todo, settings, ray_address, workers, handle, log)
            todo = []
        count = min(workers, len(todo))
        if count == 1:  # in this process: a decoder crash here stops prepare (workers >= 2 isolate it)
            run_tasks(todo, settings, 0, lambda message: message[0] == "start" or handle(message))
        remaining = todo if count > 1 else []
        while remaining:
            try:
                run_pool(remaining, settings, count, handle)
                break
            except WorkerCrash as crash:
                if crash.video is None:
                    raise
                # skip the video that crashed its decoder; redo what the stopped pool had not
                # finished (its unfinished shards are lost with it) under new shard names
                skipped.append({"path": crash.video, "reason": f"the decoder crashed ({crash.how}): skipped"})
                log(f"{crash.video}: the decoder crashed ({crash.how}); skipped, the other videos go on")
                finished = finished_shards(out)
                clean_partial_shards(out, {m["name"] for m in finished})
                settled = {v["id"] for m in finished for v in m["videos"]} | {item["path"] for item in skipped}
                remaining = [task for task in remaining if task.path not in settled]
                settings = dataclasses.replace(settings, run=settings.run + 1)
    finally:
        bar.close()
    return _finish(plan, out, kind, root, split, settings, skipped, decoded, reused, workers, started)


def _finish(plan: SplitPlan, out: Path, kind: str, root: Path, split: int, settings: WorkerSettings,
            skipped: list[dict], decoded: dict, reused: int, workers: int, started: float) -> dict:
    """Index exactly the planned videos (split and label from the plan), write report and index."""
    wanted = {e.path: e for e in plan.entries}
    unused: list[str] = []

    def select(videos: list[dict]) -> list[dict]:
        chosen: dict[str, dict] = {}
        for video in videos:
            entry = wanted.get(video["id"])
            if entry is None:
                unused.append(video["id"])
            elif video["length"] < settings.min_frames:
                skipped.append({"path": video["id"], "reason": f"too short: {video['length']} frames < min_frames "
                                f"{settings.min_frames}"})
            elif video["id"] not in chosen:
                chosen[video["id"]] = {**video, "split": entry.split, "label": plan.label(entry.cls)}
        return [chosen[key] for key in sorted(chosen)]

    meta = {
        "source": kind, "kind": kind, "root": str(root.resolve()), "split": split if kind in ("ucf101", "hmdb51") else None,
        "frame_size": list(settings.size), "min_frames": settings.min_frames,
    }
    if not finished_shards(out):
        raise ValueError(f"no video under {root} could be prepared; skipped: {skipped[:5]}")
    # the index's records are computed first so the report can be written before the index
    videos = select([v for m in finished_shards(out) for v in m["videos"]])
    seconds = time.perf_counter() - started
    counts: dict[str, int] = {}
    for video in videos:
        counts[video["split"]] = counts.get(video["split"], 0) + 1
    report = {
        "kind": kind, "root": meta["root"], "split": meta["split"], "frame_size": list(settings.size),
        "videos": dict(sorted(counts.items())), "classes": list(plan.classes),
        "skipped": sorted(skipped, key=lambda s: s["path"]), "frames": sum(v["length"] for v in videos),
        "decoded_videos": decoded["videos"], "decoded_frames": decoded["frames"], "reused_videos": reused,
        "unused_videos": len(set(unused)), "workers": workers, "seconds": seconds,
        "frames_per_second": decoded["frames"] / seconds if seconds > 0 else 0.0,
        "videos_per_second": decoded["videos"] / seconds if seconds > 0 else 0.0,
    }
    atomic_write_json(out / REPORT_NAME, report)
    write_index(out, plan.classes, meta, select=lambda _: videos)  # last: the commit point
    return report

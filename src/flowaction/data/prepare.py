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
import multiprocessing as mp
import os
import queue
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from tqdm import tqdm

from flowaction.data import decode as decode_mod
from flowaction.data.cache import INDEX_NAME, ShardWriter, VideoRecord, atomic_write_json, finished_shards, write_index
from flowaction.data.splits import SplitPlan, load_splits

REPORT_NAME = "prepare_report.json"
# Half the default 16-frame clip. Shorter videos still load (the sampler repeats the last frame),
# but most of every clip would be a frozen frame that teaches no motion; no UCF101 (>= 29 frames)
# or HMDB51 video is that short, so the rule only catches broken or truncated files.
DEFAULT_MIN_FRAMES = 8
DEFAULT_SHORT_SIDE = 64
_RUN = re.compile(r"-r(\d+)-w\d+-\d+$")


@dataclass(frozen=True)
class Task:
    """One video to prepare: ``path`` relative to the root (its id), split and label."""

    path: str
    split: str
    label: int


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process needs (picklable): where, at what ``size`` ``(H, W)``, how."""

    root: str
    out: str
    size: tuple[int, int]
    min_frames: int
    shard_videos: int
    shard_frames: int
    run: int
    method: str = decode_mod.DEFAULT_METHOD
    threads: bool = False
    # the decoding function (``decode_gray``'s signature); a module-level function, so that
    # spawned workers can import it: e.g. a decoder of another library
    decoder: Callable | None = None


class _ShardSink:
    """One worker's shards: one open writer, closed when full or when the split changes."""

    def __init__(self, settings: WorkerSettings, worker: int) -> None:
        self.settings, self.worker = settings, worker
        self.writer: ShardWriter | None = None
        self.split = ""
        self.count = 0

    def add(self, task: Task, decoded: decode_mod.DecodedVideo) -> list[str]:
        """Add a decoded video; returns the names of the shards this closed (0 or 1)."""
        closed = self.close() if self.writer is not None and task.split != self.split else []
        if self.writer is None:
            s = self.settings
            name = f"{task.split}-r{s.run:02d}-w{self.worker}-{self.count:04d}"
            self.writer, self.split, self.count = ShardWriter(Path(s.out), name), task.split, self.count + 1
        record = VideoRecord(id=task.path, label=task.label, split=task.split, fps=decoded.fps, source=task.path)
        self.writer.add(record, decoded.frames)
        w = self.writer
        if len(w.records) >= self.settings.shard_videos or w.num_frames >= self.settings.shard_frames:
            closed += self.close()
        return closed

    def close(self) -> list[str]:
        if self.writer is None:
            return []
        name = self.writer.name
        self.writer.close()
        self.writer = None
        return [name]


def run_tasks(tasks: Iterable[Task], settings: WorkerSettings, worker: int, emit: Callable[[tuple], None]) -> None:
    """Decode ``tasks`` into this worker's shards, reporting each step through ``emit``.

    Messages: ``("start", path)``, ``("video", path, frames)``, ``("skip", path, reason)``,
    ``("shard", name)``. A video counts as prepared only once its shard is closed.
    """
    sink = _ShardSink(settings, worker)
    for task in tasks:
        emit(("start", task.path))
        try:
            path = Path(settings.root) / task.path
            decode = settings.decoder or decode_mod.decode_gray
            decoded = decode(path, settings.size, settings.method, settings.threads)
        except decode_mod.DecodeError as error:
            emit(("skip", task.path, str(error)))
            continue
        if decoded.num_frames < settings.min_frames:
            emit(("skip", task.path, f"too short: {decoded.num_frames} frames < min_frames {settings.min_frames}"))
            continue
        closed = sink.add(task, decoded)
        emit(("video", task.path, decoded.num_frames))
        for name in closed:
            emit(("shard", name))
    for name in sink.close():
        emit(("shard", name))


def _worker_main(worker: int, settings: WorkerSettings, tasks: "mp.Queue", results: "mp.Queue") -> None:
    """Entry point of a worker process: tasks until a ``None``, then ``("done", worker)``."""

    marker = _decoding_marker(settings.out, worker)

    def pull() -> Iterable[Task]:
        while (task := tasks.get()) is not None:
            # written synchronously (a queue message may die unsent with a crashing process): the
            # parent reads it to name the video whose decoder crashed
            marker.write_text(task.path)
            yield task
        marker.unlink(missing_ok=True)

    try:
        run_tasks(pull(), settings, worker, _tag(worker, results.put))
        results.put(("done", worker))
    except BaseException:
        results.put(("error", worker, traceback.format_exc()))
        raise


def _decoding_marker(out: str | Path, worker: int) -> Path:
    return Path(out) / f".decoding-w{worker}.tmp"


class WorkerCrash(RuntimeError):
    """A worker process died (a decoder crash: segfault, abort) while decoding ``video``."""

    def __init__(self, worker: int, code: int, video: str | None) -> None:
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        super().__init__(f"prepare worker {worker} died ({how}) while decoding {video or '?'}; finished shards "
                         "are kept: run prepare again to resume")
        self.video, self.how = video, how


def _run_pool(todo: list[Task], settings: WorkerSettings, workers: int, handle: Callable[[tuple], None]) -> None:
    """Run ``todo`` on ``workers`` spawned processes; raise if one fails or dies."""
    ctx = mp.get_context("spawn")  # no fork: safe with threads, same on every platform
    tasks, results = ctx.Queue(), ctx.Queue()
    for task in todo:
        tasks.put(task)
    for _ in range(workers):
        tasks.put(None)
    procs = [ctx.Process(target=_worker_main, args=(k, settings, tasks, results), daemon=True) for k in range(workers)]
    for proc in procs:
        proc.start()
    current: dict[int, str] = {}
    running = set(range(workers))
    try:
        while running:
            try:
                message = results.get(timeout=1.0)
            except queue.Empty:
                for k in sorted(running):
                    code = procs[k].exitcode
                    if code is not None and code != 0:
                        marker = _decoding_marker(settings.out, k)
                        video = marker.read_text() if marker.is_file() else current.get(k)
                        raise WorkerCrash(k, code, video)
                continue
            kind, worker = message[0], message[1]
            if kind == "done":
                running.discard(worker)
            elif kind == "error":
                raise RuntimeError(f"prepare worker {worker} failed:\n{message[2]}")
            elif kind == "start":
                current[worker] = message[2]
            else:
                handle(message[:1] + message[2:])
    finally:
        tasks.cancel_join_thread()  # after a failure, unread tasks must not block this process's exit
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()


def _ray_task(tasks: list[Task], settings: WorkerSettings, worker: int) -> list[tuple]:
    """One Ray task: decode ``tasks`` into finished shards; return the messages of :func:`run_tasks`."""
    messages: list[tuple] = []
    run_tasks(tasks, settings, worker, messages.append)
    return messages


def _run_ray(todo: list[Task], settings: WorkerSettings, address: str, workers: int,
             handle: Callable[[tuple], None], log: Callable[[str], None]) -> None:
    """Decode ``todo`` as Ray tasks of ``settings.shard_videos`` videos each."""
    try:
        import ray
    except ImportError as error:
        raise ValueError("--ray needs Ray: pip install 'flowaction[ray]'") from error
    started_here = not ray.is_initialized()
    if started_here:
        if address == "local":
            ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(_ray_task)
        chunks = [todo[i : i + settings.shard_videos] for i in range(0, len(todo), settings.shard_videos)]
        log(f"ray: {len(todo)} videos in {len(chunks)} tasks on {ray.cluster_resources().get('CPU', 0):.0f} CPUs")
        # task k writes shards named ...-w{k}-...: distinct across tasks, whatever node runs them
        pending = {remote.remote(chunk, settings, k): k for k, chunk in enumerate(chunks)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                pending.pop(ref)
                for message in ray.get(ref):
                    if message[0] != "start":
                        handle(message)
    finally:
        if started_here:
            ray.shutdown()


def _tag(worker: int, emit: Callable[[tuple], None]) -> Callable[[tuple], None]:
    return lambda message: emit((message[0], worker, *message[1:]))


def clean_partial_shards(out: Path, finished: set[str]) -> int:
    """Delete files of shards that never finished (a killed run's leftovers); returns how many."""
    shard_dir = out / "shards"
    removed = 0
    for path in shard_dir.glob("*") if shard_dir.is_dir() else []:
        if path.is_file() and (".tmp" in path.name or path.name.split(".")[0] not in finished):
            path.unlink()
            removed += 1
    return removed


def _choose_size(plan: SplitPlan, root: Path, size: int | tuple[int, int], existing: list[dict]) -> tuple[int, int]:
    """The cache's ``(H, W)``: exact if given, else the short side at the first readable video's
    aspect ratio; must equal the size of shards already written."""
    have = tuple(existing[0]["frame_size"]) if existing else None
    if isinstance(size, int):
        if have is not None and min(have) == size:
            return have
        for entry in plan.entries[:50]:
            try:
                chosen = decode_mod.frame_size_for(*decode_mod.probe(root / entry.path), size)
                break
            except decode_mod.DecodeError:
                continue
        else:
            raise ValueError(f"none of the first listed videos under {root} could be opened")
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
        kind: ``ucf101``, ``hmdb51`` or ``folder``.
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
    frame_size = _choose_size(plan, root, size, existing)

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
            _run_ray(todo, settings, ray_address, workers, handle, log)
            todo = []
        count = min(workers, len(todo))
        if count == 1:  # in this process: a decoder crash here stops prepare (workers >= 2 isolate it)
            run_tasks(todo, settings, 0, lambda message: message[0] == "start" or handle(message))
        remaining = todo if count > 1 else []
        while remaining:
            try:
                _run_pool(remaining, settings, count, handle)
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
        "source": kind, "kind": kind, "root": str(root.resolve()), "split": split if kind != "folder" else None,
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

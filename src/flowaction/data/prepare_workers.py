"""The decoding workers of ``prepare``: each decodes videos into shards of its own and sends only
small messages back (never frames); in spawned processes on this machine or as Ray tasks."""
from __future__ import annotations

import multiprocessing as mp
import queue
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from flowaction.data import decode as decode_mod
from flowaction.data.cache import ShardWriter, VideoRecord


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


def run_pool(todo: list[Task], settings: WorkerSettings, workers: int, handle: Callable[[tuple], None]) -> None:
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


def run_ray(todo: list[Task], settings: WorkerSettings, address: str, workers: int,
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

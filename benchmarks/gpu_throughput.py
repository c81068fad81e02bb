"""The measurements of ``bench_gpu.py``: training clips/s on a device, and the clip loader's clips/s.

Training runs the trainer's own step on random clips already on the device: the model as ``fit``
builds it (:func:`flowaction.models.build.build_model`, the CPU speed-ups, channels-last 3D when
asked), :class:`flowaction.engine.step.TrainStep` (through ``torch.compile`` when asked), the
backward pass and :func:`flowaction.engine.optim.apply_update` (clipping and Adam). A batch that
does not fit in GPU memory is retried as gradient accumulation (``optim.accumulate``: half the
clips twice, and so on), as training would be configured. Each figure is the median of the timed
steps after warm-up steps, with the GPU synchronised before every clock reading; the timed steps
stop early when the budget says so.

The loader runs the project's loader construction
(:func:`flowaction.engine.loaders.loader_of`, pinning memory for a GPU) over a cache of random
stored videos, copying every batch to the device as training does.

Compiled measurements run in a process of their own (``python gpu_throughput.py REQUEST``), ended
when their time is up: the first step of a compiled model compiles for minutes, which cannot be
interrupted inside the process.
"""
from __future__ import annotations

import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import RandomSampler

from bench_loader import build_cache
from flowaction.config import load_config
from flowaction.data.cache import ClipCache
from flowaction.data.clips import ClipDataset
from flowaction.engine.loaders import clip_spec, jitter_spec, loader_of, pins_memory
from flowaction.engine.optim import apply_update, build_optimizer, make_scaler
from flowaction.engine.step import TrainStep
from flowaction.models.build import build_model
from flowaction.speedups import apply_cpu_speedups

NUM_CLASSES = 101  # UCF101's


@dataclass(frozen=True)
class TrainSpec:
    """One training-throughput measurement."""

    model: str  # model.input: learned (the joint model) or frames (the 3D ResNet on gray frames)
    frames: int
    size: int
    batch: int
    amp: str  # off (float32) or bf16
    channels_last: bool = False
    compile: bool = False

    @property
    def shape(self) -> str:
        return f"{self.frames}x{self.size}x{self.size}"

    def overrides(self, depth: int, flow_width: int) -> list[str]:
        return [f"model.input={self.model}", f"model.depth={depth}", f"model.flow_width={flow_width}",
                f"data.num_frames={self.frames}", f"data.crop={self.size}", f"optim.amp={self.amp}",
                f"optim.channels_last={str(self.channels_last).lower()}", f"optim.compile={str(self.compile).lower()}"]


def grid(frames: int, sizes: tuple[int, ...], batches: tuple[int, ...], compile_too: bool,
         full: bool = True) -> list[TrainSpec]:
    """Every measurement, most wanted first: the largest batch before the others, the default
    layout before channels-last, bf16 before float32; within those the shapes, the joint model
    before the frames model. Compiled ones (the default layout only) come last.

    ``full=False`` (the smoke pass): both models at every size in the base setting (the largest
    batch, bf16, the default layout, eager), and the joint model at the first size with one of
    those changed at a time: every code path, not every combination."""
    largest = max(batches)
    specs = [TrainSpec(model, frames, size, batch, amp, layout, compiled)
             for model in ("learned", "frames") for size in sizes for batch in batches for amp in ("bf16", "off")
             for layout in (False, True) for compiled in ((False, True) if compile_too else (False,))
             if not (compiled and layout)]
    if not full:
        def changes(spec: TrainSpec) -> int:
            return (spec.batch != largest) + (spec.amp != "bf16") + spec.channels_last + spec.compile

        specs = [spec for spec in specs if changes(spec) == 0
                 or (changes(spec) == 1 and spec.model == "learned" and spec.size == sizes[0])]
    return sorted(specs, key=lambda s: (s.compile, s.batch != largest, s.channels_last, s.amp != "bf16",
                                        sizes.index(s.size), s.model != "learned"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _train_steps(spec: TrainSpec, device: torch.device, accumulate: int, depth: int, flow_width: int, warmup: int,
                 steps: int, max_seconds: float, stop: Callable[[], bool], compile_backend: str | None,
                 timer: Callable[[], float]) -> dict:
    micro = spec.batch // accumulate
    cfg = load_config(None, [*spec.overrides(depth, flow_width), f"optim.batch_size={micro}",
                             f"optim.accumulate={accumulate}"])
    torch.manual_seed(0)
    model = apply_cpu_speedups(build_model(cfg, NUM_CLASSES), cfg).to(device)
    if spec.channels_last:
        model.action_net.to(memory_format=torch.channels_last_3d)
    optimizer = build_optimizer(cfg, model)
    scaler = make_scaler(cfg, device)
    runner = TrainStep(model)
    if spec.compile:
        runner = torch.compile(runner, **({"backend": compile_backend} if compile_backend else {}))
    generator = torch.Generator(device=device).manual_seed(0)
    batch = {"frames": torch.rand(micro, 1, spec.frames, spec.size, spec.size, device=device, generator=generator),
             "label": torch.randint(0, NUM_CLASSES, (micro,), device=device, generator=generator)}

    def step() -> None:
        for _ in range(accumulate):
            _, _, terms = runner(batch, device, cfg.loss, cfg.augment.noise_std, False, cfg.model.flow_grad_scale,
                                 cfg.optim.amp)
            scaler.scale(terms["total"] / accumulate).backward()
        apply_update(model, optimizer, scaler, cfg, cfg.optim.lr)

    times, first = [], None
    for index in range(warmup + steps):
        if index and stop():  # the budget: keep what was timed
            break
        synchronize(device)
        started = timer()
        step()
        synchronize(device)
        seconds = timer() - started
        if index == 0:
            first = seconds
        if index >= warmup:
            times.append(seconds)
            if sum(times) >= max_seconds:
                break
    if not times:
        return {"status": "stopped", "error": "the budget ran out during the warm-up steps", "first_step_s": first}
    median = statistics.median(times)
    return {"status": "ok", "clips_per_s": spec.batch / median, "median_step_s": median, "timed_steps": len(times),
            "first_step_s": first, "micro_batch": micro, "accumulate": accumulate}


def measure_training(spec: TrainSpec, device: torch.device, *, depth: int = 18, flow_width: int = 16, warmup: int = 3,
                     steps: int = 10, max_seconds: float = 6.0, stop: Callable[[], bool] = lambda: False,
                     compile_backend: str | None = None, timer: Callable[[], float] = time.perf_counter) -> dict:
    """Training clips/s of ``spec`` on ``device`` and its peak GPU memory (None on a CPU); a batch
    out of GPU memory is retried with twice the accumulation until one clip per pass."""
    accumulate, tries = 1, []
    while True:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        out_of_memory = None
        try:
            row = _train_steps(spec, device, accumulate, depth, flow_width, warmup, steps, max_seconds, stop,
                               compile_backend, timer)
        except torch.cuda.OutOfMemoryError as error:
            out_of_memory = str(error).splitlines()[0]
        if out_of_memory is None:
            break
        _free(device)  # outside the except block, where nothing holds the failed step's tensors
        tries.append(f"accumulate {accumulate}: out of memory")
        if spec.batch // (accumulate * 2) < 1:
            row = {"status": "fail", "error": f"out of memory even at one clip per pass: {out_of_memory}"}
            break
        accumulate *= 2
    row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    if tries:
        row["out_of_memory_tries"] = tries
    _free(device)
    return {**asdict(spec), "shape": spec.shape, **row}


def prepare_loader_cache(root: Path, size: int, frames: int, videos: int) -> Path:
    """A cache of ``videos`` random stored videos of ``frames`` frames, tall enough to crop
    ``size`` (stored at about UCF101's 4:3 shape, as ``prepare`` stores videos)."""
    height = size + size // 7 + 1
    build_cache(root, videos, frames, (height, height * 4 // 3))
    return root


def measure_loader(cache_root: Path, size: int, frames: int, workers: int, batch: int, device: torch.device, *,
                   max_seconds: float = 4.0, max_batches: int = 200, stop: Callable[[], bool] = lambda: False,
                   timer: Callable[[], float] = time.perf_counter) -> dict:
    """Clips/s of the training loader (random start, crop and jitter per clip) with ``workers``
    worker processes, each batch copied to ``device`` (without blocking from pinned memory on a
    GPU); the first batch (worker start-up) is timed apart."""
    cfg = load_config(None, [f"data.crop={size}", f"data.num_frames={frames}", f"data.num_workers={workers}"])
    cache = ClipCache.open(cache_root)
    dataset = ClipDataset(cache, "train", "train", clip_spec(cfg), jitter_spec(cfg), seed=cfg.seed)
    # one iterator for the whole measurement: a new one would restart the worker processes
    sampler = RandomSampler(dataset, replacement=True, num_samples=(max_batches + 1) * batch,
                            generator=torch.Generator().manual_seed(0))
    loader = loader_of(cfg, dataset, batch, sampler, drop_last=True, device=device)
    pinned = pins_memory(device)
    started = timer()
    iterator = iter(loader)
    next(iterator)["frames"].to(device, non_blocking=pinned)
    synchronize(device)
    first = timer() - started
    clips, started = 0, timer()
    for batch_items in iterator:
        batch_items["frames"].to(device, non_blocking=pinned)
        clips += batch_items["frames"].shape[0]
        if timer() - started >= max_seconds or stop():
            break
    synchronize(device)
    seconds = timer() - started
    del iterator, loader
    return {"status": "ok", "shape": f"{frames}x{size}x{size}", "size": size, "workers": workers, "batch": batch,
            "pin_memory": pinned, "clips_per_s": clips / seconds if seconds > 0 else None, "clips": clips,
            "first_batch_s": first}


def measure_training_apart(spec: TrainSpec, device: torch.device, timeout: float, threads: int = 0,
                           **options) -> dict:
    """:func:`measure_training` in a fresh process, ended (with the processes it started) after
    ``timeout`` seconds; ``options`` are its keywords (no ``stop``: the timeout is the budget)."""
    request = json.dumps({"spec": asdict(spec), "device": str(device), "threads": threads, "options": options})
    process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), request], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {**asdict(spec), "shape": spec.shape, "status": "stopped",
                "error": f"not compiled and measured within the {timeout:.0f} s left"}
    lines = out.strip().splitlines()
    if process.returncode != 0 or not lines:
        last = [line for line in err.strip().splitlines() if line.strip()] or ["(no output)"]
        return {**asdict(spec), "shape": spec.shape, "status": "fail",
                "error": f"exited with {process.returncode}: {last[-1].strip()}"}
    return json.loads(lines[-1])


if __name__ == "__main__":  # one measurement for measure_training_apart: the request as JSON, the row as JSON
    wanted = json.loads(sys.argv[1])
    if wanted["threads"]:
        torch.set_num_threads(wanted["threads"])
    print(json.dumps(measure_training(TrainSpec(**wanted["spec"]), torch.device(wanted["device"]),
                                      **wanted["options"])))

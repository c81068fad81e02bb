"""GPU check and measure: does everything run on this GPU, and how fast does it train?

First the checks, each reported pass / fail with its error and time, none stopping the others
(``gpu_checks.py``): ``flowaction train`` of the demo preset for 20 steps with ``optim.amp=auto``
(which must resolve to bf16 on a GPU with native bf16), ``flowaction eval`` of that run,
``flowaction predict`` on generated video files, the streaming ``Recognizer`` on the device against
the CPU (probabilities within 1e-3), ``flowaction export`` to ONNX run by ONNX Runtime (its CUDA
provider where installed, else its CPU provider), and ``torchrun`` with one process per visible GPU
(NCCL) for 10 steps.

Then the measurements (``gpu_throughput.py``): training clips/s of the joint model and of the same
3D ResNet-18 on 16 gray frames (``model.input=frames``) at 16 x 56 x 56 and 16 x 112 x 112, batch 64
and 256 (gradient accumulation where a batch does not fit), bf16 against float32, channels-last
3D on and off, and ``torch.compile`` where time is left; the peak GPU memory of each; the clip
loader's clips/s with 0, 4 and 8 workers against training's. The goals on an H100/H200-class GPU
(joint model in bf16: >= 5,000 clips/s at 16 x 56 x 56, >= 1,000 at 16 x 112 x 112; the loader
faster than training) are reported as met, not met or not measured.

The whole run keeps to ``--budget-s``: every part has its own share of it, the clock is read
before every check and measurement, and the report (``OUT/<device>-<date>.json`` and a Markdown
table beside it) is rewritten after each, so a run stopped at any point leaves what it measured.
``--device cpu --smoke`` runs every code path on tiny shapes in seconds. Run::

    .venv/bin/python benchmarks/bench_gpu.py --budget-s 420
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --smoke
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable, NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper modules beside this script

from flowaction.engine.device import resolve_device  # noqa: E402
from gpu_checks import CHECKS, CheckContext  # noqa: E402
from gpu_report import device_name, goals, machine, slug, write_report  # noqa: E402
from gpu_throughput import (grid, measure_loader, measure_training, measure_training_apart,  # noqa: E402
                            prepare_loader_cache)

#: the share of the budget each part may take; the compiled measurements get whatever is left
PART_SHARES = {"checks": 0.40, "throughput": 0.33, "loader": 0.12}
MARGIN = 0.03  # of the budget: kept for the last report


class Settings(NamedTuple):
    """The shapes and repetitions of a run."""

    frames: int
    sizes: tuple[int, ...]
    batches: tuple[int, ...]
    depth: int
    flow_width: int
    warmup: int
    steps: int
    max_seconds: float  # timed seconds per training measurement at most
    loader_workers: tuple[int, ...]
    loader_batch: int
    loader_videos: int
    loader_seconds: float
    compile_backend: str | None  # None: torch.compile's default (inductor)
    compile_estimate_s: float  # a compiled measurement starts only with this much time left
    start_floor_s: float  # nothing starts with less time left in its part


FULL = Settings(16, (56, 112), (64, 256), 18, 16, 3, 10, 6.0, (0, 4, 8), 64, 256, 4.0, None, 90.0, 10.0)
# tiny shapes; the compiled path through the eager backend (inductor compiles for minutes on a CPU)
SMOKE = Settings(8, (16, 24), (2, 4), 10, 8, 1, 2, 1.0, (0, 2), 4, 16, 0.5, "eager", 5.0, 0.5)


class Budget:
    """Deadlines within ``seconds`` of the first clock reading, less a margin for the report."""

    def __init__(self, seconds: float, clock: Callable[[], float]) -> None:
        self.seconds, self.clock = seconds, clock
        self.started = clock()
        self.end = self.started + seconds * (1 - MARGIN)

    def deadline(self, share: float | None) -> float:
        """The deadline of a part starting now that may take ``share`` of the budget (None: the rest)."""
        return self.end if share is None else min(self.end, self.clock() + share * self.seconds)

    def left(self, deadline: float) -> float:
        return deadline - self.clock()


def _error(error: BaseException) -> str:
    return traceback.format_exception_only(type(error), error)[-1].strip()


def run_check(name: str, check, ctx: CheckContext, clock: Callable[[], float]) -> dict:
    """One check, timed; a raise is a failure with the exception's last line, never an abort."""
    started = clock()
    try:
        details = check(ctx) or {}
        entry = {"status": "pass", **details}
    except Exception as error:  # noqa: BLE001 - every failure is reported, the other checks still run
        entry = {"status": "fail", "error": _error(error)}
    entry["seconds"] = clock() - started
    return entry


def run_bench(args: argparse.Namespace, clock: Callable[[], float] = time.monotonic, log=print) -> dict:
    """Checks, then measurements, within ``args.budget_s`` by ``clock``; writes the report after
    every step and returns it."""
    device = resolve_device(args.device)
    settings = SMOKE if args.smoke else FULL
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = Budget(args.budget_s, clock)
    date = datetime.date.today().isoformat()
    result = {"date": date, "smoke": args.smoke, "budget_s": args.budget_s, "elapsed_s": 0.0, "finished": False,
              "machine": machine(device),
              "shapes": {"frames": settings.frames, "sizes": list(settings.sizes), "batches": list(settings.batches),
                         "depth": settings.depth},
              "checks": {}, "goals": [], "throughput": [], "loader": [], "skipped": []}
    path = Path(args.out) / f"{slug(device_name(device))}-{date}{'-smoke' if args.smoke else ''}.json"

    def save() -> None:
        result["elapsed_s"] = clock() - budget.started
        result["goals"] = goals(result)
        write_report(result, path)

    save()
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        work = Path(tmp)
        deadline = budget.deadline(PART_SHARES["checks"])
        nproc = args.nproc or (torch.cuda.device_count() if device.type == "cuda" else 2)
        ctx = CheckContext(device, work / "checks", args.smoke, nproc, args.threads, lambda: budget.left(deadline))
        ctx.work.mkdir()
        for name, check in CHECKS.items():
            if budget.left(deadline) < settings.start_floor_s:
                result["checks"][name] = {"status": "skipped", "seconds": 0.0,
                                          "error": "not run: the checks' share of the budget is spent"}
            else:
                result["checks"][name] = run_check(name, check, ctx, clock)
            entry = result["checks"][name]
            log(f"check {name:10s} {entry['status']:7s} {entry['seconds']:6.1f} s  {entry.get('error', '')}")
            save()
        full = not args.smoke
        _measure_training(result, grid(settings.frames, settings.sizes, settings.batches, False, full), device,
                          settings, budget, budget.deadline(PART_SHARES["throughput"]), save, log)
        _measure_loaders(result, work, device, settings, budget, budget.deadline(PART_SHARES["loader"]), save, log)
        largest = max(settings.batches)
        compiled = [spec for spec in grid(settings.frames, settings.sizes, settings.batches, True, full)
                    if spec.compile and spec.batch == largest and spec.amp == "bf16"]
        _measure_training(result, compiled, device, settings, budget, budget.deadline(None), save, log,
                          apart=True, threads=args.threads)
    result["finished"] = True
    save()
    log(f"wrote {path} and {path.with_suffix('.md')} ({result['elapsed_s']:.0f} s of a {args.budget_s:.0f} s budget)")
    return result


def _measure_training(result: dict, specs: list, device: torch.device, s: Settings, budget: Budget, deadline: float,
                      save, log, apart: bool = False, threads: int = 0) -> None:
    """Each of ``specs`` while its part has time; ``apart``: each in a process of its own, ended at
    the deadline (compiled models), started only with ``s.compile_estimate_s`` left."""
    options = {"depth": s.depth, "flow_width": s.flow_width, "warmup": s.warmup, "steps": s.steps,
               "max_seconds": s.max_seconds, "compile_backend": s.compile_backend}
    for spec in specs:
        name = f"train {spec.model} {spec.shape} b{spec.batch} {spec.amp} cl={int(spec.channels_last)} " \
               f"compile={int(spec.compile)}"
        if budget.left(deadline) < (s.compile_estimate_s if apart else s.start_floor_s):
            result["skipped"].append(name)
            continue
        try:
            if apart:
                row = measure_training_apart(spec, device, budget.left(deadline), threads, **options)
            else:
                row = measure_training(spec, device, stop=lambda: budget.left(deadline) <= 0, **options)
        except Exception as error:  # noqa: BLE001 - one failed measurement never stops the others
            row = {**asdict(spec), "shape": spec.shape, "status": "fail", "error": _error(error)}
        result["throughput"].append(row)
        log(f"{name:48s} {row['status']:7s} {row.get('clips_per_s') or 0:10.1f} clips/s")
        save()


def _measure_loaders(result: dict, work: Path, device: torch.device, s: Settings, budget: Budget, deadline: float,
                     save, log) -> None:
    for size in s.sizes:
        root = None
        for workers in s.loader_workers:
            name = f"loader {s.frames}x{size}x{size} workers={workers}"
            if budget.left(deadline) < s.start_floor_s:
                result["skipped"].append(name)
                continue
            try:
                if root is None:
                    root = prepare_loader_cache(work / f"loader-{size}", size, s.frames + 8, s.loader_videos)
                row = measure_loader(root, size, s.frames, workers, s.loader_batch, device,
                                     max_seconds=s.loader_seconds, stop=lambda: budget.left(deadline) <= 0)
            except Exception as error:  # noqa: BLE001
                row = {"status": "fail", "shape": f"{s.frames}x{size}x{size}", "size": size, "workers": workers,
                       "error": _error(error)}
            result["loader"].append(row)
            log(f"{name:48s} {row['status']:7s} {row.get('clips_per_s') or 0:10.1f} clips/s")
            save()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--budget-s", type=float, default=420.0, help="the whole run's seconds (it stops before)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: every code path in seconds (on a CPU)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default benchmarks/results/gpu; with --smoke a temporary folder)")
    parser.add_argument("--nproc", type=int, default=0,
                        help="torchrun processes (default: one per visible GPU; 2 on a CPU, over gloo)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the default; 1 with --smoke)")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error("--budget-s must be > 0")
    if args.out is None:
        args.out = (Path(tempfile.gettempdir()) / "bench_gpu_smoke" if args.smoke
                    else Path(__file__).resolve().parent / "results" / "gpu")
    if args.smoke and not args.threads:
        args.threads = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run_bench(args)
    except ValueError as error:  # e.g. --device cuda on a machine without one
        print(f"bench_gpu: error: {error}", file=sys.stderr)
        return 2
    failed = [name for name, check in result["checks"].items() if check["status"] == "fail"]
    print(f"checks: {sum(c['status'] == 'pass' for c in result['checks'].values())} passed"
          + (f", failed: {', '.join(failed)}" if failed else ""))
    for goal in result["goals"]:
        print(f"goal {goal['goal']}: {goal['status']} ({goal['measured']})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

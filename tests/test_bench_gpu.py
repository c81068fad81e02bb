"""``benchmarks/bench_gpu.py``, the GPU check-and-measure script, kept working on a CPU: its smoke
pass end to end, a failing check reported while the others run, the budget on a mocked clock, the
report written after every step, the out-of-memory retry and the bf16 requirement of the train check."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu_under_test", BENCHMARKS / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts benchmarks/ on sys.path for its helper modules
    return module


def _args(bench, out: Path, budget: float = 100.0):
    return bench.parse_args(["--device", "cpu", "--smoke", "--budget-s", str(budget), "--out", str(out)])


def _fake_measurements(bench, monkeypatch, clock=None, train_s: float = 0.0, loader_s: float = 0.0) -> None:
    """Measurements that take ``train_s`` / ``loader_s`` seconds of the fake ``clock`` and measure nothing."""
    def training(spec, device, **kwargs):
        if clock is not None:
            clock.now += train_s
        return {**asdict(spec), "shape": spec.shape, "status": "ok", "clips_per_s": 100.0, "batch": spec.batch,
                "peak_memory_gib": None}

    def loader(root, size, frames, workers, batch, device, **kwargs):
        if clock is not None:
            clock.now += loader_s
        return {"status": "ok", "shape": f"{frames}x{size}x{size}", "size": size, "workers": workers, "batch": batch,
                "clips_per_s": 1000.0}

    monkeypatch.setattr(bench, "measure_training", training)
    monkeypatch.setattr(bench, "measure_training_apart", lambda spec, device, *args, **kwargs: training(spec, device))
    monkeypatch.setattr(bench, "measure_loader", loader)
    monkeypatch.setattr(bench, "prepare_loader_cache", lambda root, *args: root)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _report(out: Path) -> dict:
    [path] = out.glob("*.json")
    assert path.with_suffix(".md").is_file()
    return json.loads(path.read_text())


# in the default suite although it takes the better part of a minute (six commands in subprocesses,
# torchrun among them): it is what keeps the GPU script alive between GPU sessions
def test_the_cpu_smoke_pass_runs_every_check_and_measurement_and_writes_the_report(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_gpu.py"), "--device", "cpu", "--smoke",
                           "--budget-s", "300", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = _report(tmp_path)
    assert list(result["checks"]) == ["train", "eval", "predict", "recognizer", "onnx", "torchrun"]
    assert [check["status"] for check in result["checks"].values()] == ["pass"] * 6
    assert all(check["seconds"] > 0 for check in result["checks"].values())
    assert result["checks"]["torchrun"]["processes"] == 2 and result["checks"]["torchrun"]["backend"] == "gloo"
    assert result["checks"]["onnx"]["provider"] == "CPUExecutionProvider"
    assert result["finished"] and result["elapsed_s"] < 300 and not result["skipped"]
    rows = result["throughput"]
    assert {(r["model"], r["amp"], r["channels_last"], r["compile"]) for r in rows} >= {
        ("learned", "bf16", False, False), ("frames", "bf16", False, False), ("learned", "off", False, False),
        ("learned", "bf16", True, False), ("learned", "bf16", False, True)}
    assert all(r["status"] == "ok" and r["clips_per_s"] > 0 and r["peak_memory_gib"] is None for r in rows)
    assert [r["workers"] for r in result["loader"]] == [0, 2, 0, 2]
    assert all(r["status"] == "ok" and r["clips_per_s"] > 0 for r in result["loader"])
    assert {g["status"] for g in result["goals"]} <= {"met", "not met"} and len(result["goals"]) == 4
    assert result["machine"]["device"] == "cpu" and result["machine"]["torch"] == torch.__version__


def test_the_smoke_measurements_run_for_real_and_fast(bench, tmp_path):
    from gpu_throughput import TrainSpec, measure_loader, measure_training, prepare_loader_cache

    for spec in (TrainSpec("learned", 8, 16, 2, "off"), TrainSpec("frames", 8, 16, 2, "bf16", channels_last=True)):
        row = measure_training(spec, torch.device("cpu"), depth=10, flow_width=8, warmup=1, steps=1)
        assert row["status"] == "ok" and row["clips_per_s"] > 0 and row["accumulate"] == 1, row
        assert row["peak_memory_gib"] is None and row["shape"] == "8x16x16"
    root = prepare_loader_cache(tmp_path / "cache", 16, 10, 8)
    row = measure_loader(root, 16, 8, 0, 2, torch.device("cpu"), max_seconds=0.2)
    assert row["status"] == "ok" and row["clips"] > 0 and row["pin_memory"] is False


def test_a_check_that_raises_is_reported_failed_with_its_error_and_the_others_still_run(bench, tmp_path, monkeypatch):
    ran = []

    def fine(name):
        def check(ctx):
            ran.append(name)
            return {"looked_at": name}
        return check

    def broken(ctx):
        ran.append("eval")
        raise RuntimeError("the GPU caught fire")

    checks = {name: fine(name) for name in bench.CHECKS}
    checks["eval"] = broken
    monkeypatch.setattr(bench, "CHECKS", checks)
    _fake_measurements(bench, monkeypatch)
    result = bench.run_bench(_args(bench, tmp_path), log=lambda *_: None)
    assert ran == list(bench.CHECKS)  # every check ran, in order, after the broken one too
    assert result["checks"]["eval"]["status"] == "fail"
    assert result["checks"]["eval"]["error"] == "RuntimeError: the GPU caught fire"
    assert all(result["checks"][name]["status"] == "pass" for name in checks if name != "eval")
    assert result["throughput"] and result["loader"]  # the measurements still ran
    on_disk = _report(tmp_path)
    assert on_disk["checks"]["eval"]["status"] == "fail" and on_disk["finished"]
    assert "the GPU caught fire" in (tmp_path / next(tmp_path.glob("*.md")).name).read_text()


def test_the_budget_stops_the_run_within_a_tenth_of_it_on_a_mocked_clock(bench, tmp_path, monkeypatch):
    clock = FakeClock()

    def slow_check(ctx):  # 15 s, or killed at its part's deadline as run_command kills a subprocess
        clock.now += min(15.0, max(ctx.left(), 0.0) + 0.1)
        return {}

    monkeypatch.setattr(bench, "CHECKS", {name: slow_check for name in bench.CHECKS})
    # unchecked, the run would take 90 s of checks, 8 x 10 s of training and 4 x 5 s of loader measurements
    _fake_measurements(bench, monkeypatch, clock, train_s=10.0, loader_s=5.0)
    budget = 100.0
    result = bench.run_bench(_args(bench, tmp_path, budget), clock=clock, log=lambda *_: None)
    assert clock.now - 1000.0 <= 1.1 * budget
    assert result["finished"] and result["elapsed_s"] <= 1.1 * budget
    statuses = [check["status"] for check in result["checks"].values()]
    assert "skipped" in statuses and statuses[0] == "pass"  # the checks' share ran out part-way
    assert result["skipped"]  # and so did the measurements'
    assert result["throughput"] and result["loader"]  # each part still got its share
    assert _report(tmp_path)["elapsed_s"] == pytest.approx(result["elapsed_s"])


def test_the_report_holds_what_was_measured_when_the_run_is_stopped(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "CHECKS", {"train": lambda ctx: {"steps": 20}})
    _fake_measurements(bench, monkeypatch)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "measure_loader", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench.run_bench(_args(bench, tmp_path), log=lambda *_: None)
    result = _report(tmp_path)
    assert not result["finished"] and result["checks"]["train"]["status"] == "pass"
    assert len(result["throughput"]) == 7 and not result["loader"]  # every training row written before the stop
    assert "NOT FINISHED" in next(tmp_path.glob("*.md")).read_text()


def test_a_batch_out_of_gpu_memory_is_retried_with_gradient_accumulation(bench, monkeypatch):
    import gpu_throughput

    tried = []

    def steps(spec, device, accumulate, *args):
        tried.append(accumulate)
        if spec.batch // accumulate > 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return {"status": "ok", "clips_per_s": 1.0, "micro_batch": spec.batch // accumulate, "accumulate": accumulate}

    monkeypatch.setattr(gpu_throughput, "_train_steps", steps)
    spec = gpu_throughput.TrainSpec("learned", 16, 112, 256, "bf16")
    row = gpu_throughput.measure_training(spec, torch.device("cpu"))
    assert tried == [1, 2, 4] and row["accumulate"] == 4 and row["micro_batch"] == 64
    assert row["out_of_memory_tries"] == ["accumulate 1: out of memory", "accumulate 2: out of memory"]
    tried.clear()
    row = gpu_throughput.measure_training(replace(spec, batch=512), torch.device("cpu"))
    assert row["accumulate"] == 8

    def never_fits(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(gpu_throughput, "_train_steps", never_fits)
    row = gpu_throughput.measure_training(gpu_throughput.TrainSpec("learned", 16, 112, 4, "bf16"), torch.device("cpu"))
    assert row["status"] == "fail" and "out of memory even at one clip per pass" in row["error"]


@pytest.mark.parametrize("resolved,passes", [("bf16", True), ("off", False)])
def test_the_train_check_requires_bf16_on_a_gpu_with_native_bf16(bench, tmp_path, monkeypatch, resolved, passes):
    import gpu_checks
    from flowaction.checkpoint import save_checkpoint
    from flowaction.config import from_dict, save_config

    def fake_train(argv, ctx, env=None):  # the run folder `flowaction train` would leave
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        save_config(from_dict({}, [f"optim.amp={resolved}"]), out / "config.yaml")
        save_checkpoint(out / "last.pt", {"model": {}, "config": {}, "classes": [], "step": 20})

    monkeypatch.setattr(gpu_checks, "run_command", fake_train)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    ctx = gpu_checks.CheckContext(torch.device("cuda"), tmp_path)
    if passes:
        details = gpu_checks.check_train(ctx)
        assert details["amp_resolved"] == "bf16" and details["native_bf16"] and details["steps"] == 20
    else:
        with pytest.raises(gpu_checks.CheckFailed, match="resolved to off, expected bf16"):
            gpu_checks.check_train(ctx)


def test_a_compiled_measurement_in_its_own_process_is_ended_when_its_time_is_up(bench):
    import gpu_throughput

    spec = gpu_throughput.TrainSpec("learned", 8, 16, 2, "bf16", compile=True)
    row = gpu_throughput.measure_training_apart(spec, torch.device("cpu"), timeout=0.5, depth=10, flow_width=8)
    assert row["status"] == "stopped" and "within the 0 s left" in row["error"] and row["compile"] is True

"""The checks of ``bench_gpu.py``: the commands a user runs on a GPU, each run as that user would run
it (``python -m flowaction ...`` and ``torchrun`` in subprocesses), in a small temporary folder.

Each check is a function of a :class:`CheckContext` that returns what it found (a dict) or raises;
the runner in ``bench_gpu.py`` times it and records a raise as a failure with its message, so one
failing check never stops the others. Later checks use what earlier ones made (the trained
checkpoint, the generated videos) through ``CheckContext.found``; without it they fail saying so.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from flowaction.checkpoint import load_checkpoint
from flowaction.config import load_config
from flowaction.data.cache import ClipCache
from flowaction.engine.device import native_bf16, resolve_amp
from flowaction.inference.predict import softmax
from flowaction.inference.recognizer import Recognizer
from flowaction.models.build import load_model_checkpoint

#: the demo preset made small enough to train 20 steps of 16 clips in one epoch of 320 clips
GPU_DATA = ["data.synthetic.train_per_class=40", "data.synthetic.val_per_class=2", "data.synthetic.test_per_class=2"]
#: the smoke pass: the demo preset on tiny shapes (ResNet-10, 24 x 24 crops, 7 frames, batch 2)
SMOKE_DATA = ["model.flow_width=8", "model.flow_init=none", "data.crop=24", "data.synthetic.size=24",
              "data.num_frames=7", "data.synthetic.num_frames=7", "data.synthetic.train_per_class=3",
              "data.synthetic.val_per_class=1", "data.synthetic.test_per_class=1", "optim.batch_size=2"]
PROBABILITY_TOLERANCE = 1e-3  # max |difference| of the class probabilities between two devices or runtimes


class CheckFailed(AssertionError):
    """A check ran but what it found is wrong (the message says what)."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass
class CheckContext:
    """What every check needs: the device, a work folder, the shapes and the time it may take."""

    device: torch.device
    work: Path
    smoke: bool = False
    nproc: int = 1  # torchrun processes
    threads: int = 0  # torch threads of the subprocesses (0: their default)
    left: Callable[[], float] = lambda: 600.0  # seconds the current part has left
    found: dict = field(default_factory=dict)  # what earlier checks made

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def device_key(self) -> str:
        """The ``device`` config value: ``torchrun`` picks each process's GPU from ``cuda``."""
        return "cuda" if self.cuda else str(self.device)

    def train_overrides(self) -> list[str]:
        data = SMOKE_DATA if self.smoke else GPU_DATA
        threads = [f"threads={self.threads}"] if self.threads else []
        return [f"device={self.device_key}", "optim.amp=auto", f"data.synthetic_dir={self.work / 'data'}", *data,
                *threads]

    def env(self, **extra: str) -> dict:
        env = {**os.environ, **extra}
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        return env


def run_command(argv: list[str], ctx: CheckContext, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` with at most the part's time left; a non-zero exit or a timeout raises with the
    last line of its error output. The command runs in its own process group, so a timeout also
    ends the processes it started (torchrun's workers)."""
    timeout = max(1.0, ctx.left())
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ctx.work,
                               env=env or ctx.env(), start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise CheckFailed(f"{_short(argv)} did not finish within the {timeout:.0f} s left") from None
    if process.returncode != 0:
        lines = [line for line in (err or out).strip().splitlines() if line.strip()] or ["(no output)"]
        raise CheckFailed(f"{_short(argv)} exited with {process.returncode}: {lines[-1].strip()}")
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def _short(argv: list[str]) -> str:
    words = [Path(word).name if i == 0 else word for i, word in enumerate(argv)]
    return " ".join(words[:5]) + (" ..." if len(words) > 5 else "")


def flowaction(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowaction", *args]


def _checkpoint(ctx: CheckContext) -> Path:
    path = ctx.found.get("checkpoint")
    require(path is not None and Path(path).is_file(), "needs the best.pt of the train check, which made none")
    return Path(path)


def check_train(ctx: CheckContext) -> dict:
    """20 steps (3 in the smoke pass) of the demo preset with ``optim.amp=auto``; on a GPU with
    native bf16 the precision it resolves to must be bf16."""
    steps = 3 if ctx.smoke else 20
    out = ctx.work / "train"
    run_command(flowaction("train", "--config", "motion", "--out", str(out), "--no-progress", f"optim.steps={steps}",
                           *ctx.train_overrides()), ctx)
    resolved = load_config(out / "config.yaml", []).optim.amp
    expected, reason = resolve_amp("auto", ctx.device)
    state = load_checkpoint(out / "last.pt")
    details = {"steps": state["step"], "amp_resolved": resolved, "amp_expected": expected, "amp_reason": reason,
               "native_bf16": bool(native_bf16(ctx.device))}
    require(state["step"] == steps, f"trained {state['step']} steps, not {steps}")
    require(resolved == expected, f"optim.amp=auto resolved to {resolved}, expected {expected} ({reason})")
    if ctx.cuda and native_bf16(ctx.device):
        require(resolved == "bf16", f"a GPU with native bf16 resolved optim.amp=auto to {resolved}, not bf16")
    ctx.found.update(checkpoint=out / "best.pt", data=ctx.work / "data")
    return details


def check_eval(ctx: CheckContext) -> dict:
    """``flowaction eval`` of the trained checkpoint on the device; ``eval.json`` must hold accuracies."""
    out = ctx.work / "eval"
    run_command(flowaction("eval", "--checkpoint", str(_checkpoint(ctx)), "--data", str(ctx.found["data"]), "--out",
                           str(out), "--device", str(ctx.device), "--no-progress"), ctx)
    report = json.loads((out / "eval.json").read_text())
    require(0.0 <= report["video_accuracy"] <= 1.0, f"video accuracy {report['video_accuracy']} outside [0, 1]")
    return {"split": report["split"], "clips": report["num_clips"], "clip_accuracy": report["clip_accuracy"],
            "video_accuracy": report["video_accuracy"]}


def check_predict(ctx: CheckContext) -> dict:
    """``flowaction generate --videos`` (one clip of each class and split), then ``flowaction
    predict`` on those video files on the device; every file must get a prediction."""
    gen = ctx.work / "gen"
    size, frames = ("24", "10") if ctx.smoke else ("40", "16")
    run_command(flowaction("generate", "--kind", "motion", "--out", str(gen), "--videos", "--per-class", "1,1,1",
                           "--size", size, "--frames", frames, "--workers", "1", "--no-progress"), ctx)
    videos = sorted((gen / "videos").rglob("*.mp4"))
    require(bool(videos), "generate --videos wrote no video file")
    ctx.found["videos"] = gen
    report = ctx.work / "predict.json"
    run_command(flowaction("predict", str(gen / "videos"), "--checkpoint", str(_checkpoint(ctx)), "--clips", "2",
                           "--top-k", "3", "--json", str(report), "--device", str(ctx.device)), ctx)
    results = json.loads(report.read_text())
    require(len(results["videos"]) == len(videos) and not results["failed"],
            f"{len(results['videos'])} of {len(videos)} videos predicted, {len(results['failed'])} failed")
    return {"videos": len(videos), "top_1": results["videos"][0]["top_k"][0]["label"]}


def check_recognizer(ctx: CheckContext) -> dict:
    """The streaming :class:`~flowaction.inference.recognizer.Recognizer` on the device gives the
    probabilities it gives on the CPU (within 1e-3), on the frames of a generated clip."""
    checkpoint = _checkpoint(ctx)
    gen = ctx.found.get("videos")
    if gen is not None:
        frames = np.asarray(ClipCache.open(gen / "cache").frames(0))
    else:  # the predict check made no videos: a texture moving right
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, (40, 80), dtype=np.uint8)
        frames = np.stack([np.roll(base, t, axis=1)[:, :40] for t in range(16)])
    frames = np.concatenate([frames, frames[::-1]])  # more frames than one clip: several predictions
    scores = {}
    for name in ("cpu", str(ctx.device)):
        recognizer = Recognizer.from_checkpoint(checkpoint, device=name, top_k=1)
        scores[name] = [p.scores for frame in frames if (p := recognizer.push(np.ascontiguousarray(frame))) is not None]
    cpu, other = np.stack(scores["cpu"]), np.stack(scores[str(ctx.device)])
    diff = float(np.abs(cpu - other).max())
    require(diff <= PROBABILITY_TOLERANCE, f"probabilities on {ctx.device} differ from the CPU's by {diff:.2e} "
                                           f"> {PROBABILITY_TOLERANCE:g}")
    return {"predictions": len(cpu), "max_probability_diff": diff}


def check_onnx(ctx: CheckContext) -> dict:
    """``flowaction export`` to ONNX, then the main graph in ONNX Runtime with its CUDA provider
    where it is installed (and the device is a GPU), else its CPU provider; the probabilities must
    match PyTorch's on the CPU within 1e-3."""
    import onnxruntime as ort

    checkpoint = _checkpoint(ctx)
    path = ctx.work / "export" / "model.onnx"
    run_command(flowaction("export", "--checkpoint", str(checkpoint), "--out", str(path)), ctx)
    available = ort.get_available_providers()
    wanted = "CUDAExecutionProvider" if ctx.cuda and "CUDAExecutionProvider" in available else "CPUExecutionProvider"
    providers = [(wanted, {"device_id": ctx.device.index or 0})] if wanted.startswith("CUDA") else []
    session = ort.InferenceSession(str(path), providers=[*providers, "CPUExecutionProvider"])
    used = session.get_providers()[0]
    loaded = load_model_checkpoint(checkpoint)
    t, c = loaded.cfg.data.num_frames, loaded.cfg.data.crop
    frames = torch.rand(3, 1, t, c, c, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = loaded.model(frames)[0].numpy()
    got = session.run(None, {"frames": frames.numpy()})[0]
    diff = float(np.abs(softmax(got) - softmax(expected)).max())
    details = {"provider": used, "providers_available": available, "max_probability_diff": diff,
               "max_logit_diff": float(np.abs(got - expected).max())}
    require(diff <= PROBABILITY_TOLERANCE, f"ONNX Runtime ({used}) probabilities differ from PyTorch's by {diff:.2e}")
    return details


_NCCL_PROBE = """
import torch, torch.distributed as dist
torch.cuda.set_device(0)
dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1)
value = torch.ones(1, device="cuda")
dist.all_reduce(value)
torch.cuda.synchronize()
print("nccl all_reduce", float(value))
dist.destroy_process_group()
"""


def check_torchrun(ctx: CheckContext) -> dict:
    """``torchrun --standalone --nproc-per-node N -m flowaction train`` for 10 steps (NCCL on GPUs,
    gloo on CPUs). With one GPU torchrun runs one process, which forms no process group: NCCL is
    then checked by an all-reduce in a process group of one."""
    steps = 10
    out = ctx.work / "ddp"
    nccl = {"NCCL_DEBUG": "INFO"} if ctx.cuda else {}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ctx.nproc)]
    done = run_command([*torchrun, "-m", "flowaction", "train", "--config", "motion", "--out", str(out), "--no-progress",
                        f"optim.steps={steps}", *ctx.train_overrides()], ctx, env=ctx.env(**nccl))
    state = load_checkpoint(out / "last.pt")
    require(state["step"] == steps, f"trained {state['step']} steps, not {steps}")
    details = {"processes": ctx.nproc, "steps": state["step"],
               "backend": ("nccl" if ctx.cuda else "gloo") if ctx.nproc > 1 else "none (one process)"}
    if ctx.nproc > 1:
        require(f"{ctx.nproc} processes" in done.stdout, f"the run does not say it trained in {ctx.nproc} processes")
    if ctx.cuda and ctx.nproc > 1:
        require("NCCL INFO" in done.stdout + done.stderr, "no NCCL output (NCCL_DEBUG=INFO): NCCL was not used")
    elif ctx.cuda:
        probe = run_command([sys.executable, "-c", _NCCL_PROBE], ctx)
        details["nccl_probe"] = probe.stdout.strip().splitlines()[-1]
    return details


#: the checks in the order they run (later ones use what earlier ones made)
CHECKS: dict[str, Callable[[CheckContext], dict]] = {
    "train": check_train,
    "eval": check_eval,
    "predict": check_predict,
    "recognizer": check_recognizer,
    "onnx": check_onnx,
    "torchrun": check_torchrun,
}

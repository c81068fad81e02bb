"""Where a run computes and in which precision: ``device`` and ``optim.amp``."""
from __future__ import annotations

import contextlib
import platform
from functools import lru_cache
from pathlib import Path

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; any other name as given. A CUDA device on a
    machine without one is a ValueError that says so (not PyTorch's assertion deep in a model)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device {name!r} is not a device name (auto, cpu, cuda or cuda:N): {error}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: this machine has no CUDA GPU that PyTorch can use (torch "
                             f"{torch.__version__}, CUDA {torch.version.cuda or 'not built in'}); use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags the operating system reports for this CPU (Linux's
    ``/proc/cpuinfo``); empty where it reports none."""
    if platform.system() != "Linux":
        return frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(device: torch.device) -> str:
    """Why ``device`` runs bfloat16 matrix products natively ("" when it does not): a CUDA GPU
    with bf16 support, or a CPU with bf16 instructions, Intel's AMX-BF16 tiles or the AVX-512-BF16
    dot products (AMD EPYC Zen 4 and later, Intel Cooper Lake and later), which oneDNN's bf16
    convolutions use; without either bf16 is emulated."""
    if device.type == "cuda":
        # emulated bf16 (GPUs before Ampere) is slower than float32
        return "a CUDA GPU with bf16 support" if torch.cuda.is_bf16_supported(including_emulation=False) else ""
    if device.type == "cpu":
        flags = cpu_flags()
        if "amx_bf16" in flags:
            return "a CPU with AMX-BF16"
        return "a CPU with AVX-512-BF16" if "avx512_bf16" in flags else ""
    return ""


def resolve_amp(choice: str, device: torch.device) -> tuple[str, str]:
    """``optim.amp`` as it will run: ``auto`` becomes ``bf16`` where the device computes bf16
    natively, else ``off``; other choices stay. Returns ``(amp, reason)``."""
    if choice != "auto":
        return choice, "set"
    reason = native_bf16(device)
    return ("bf16", reason) if reason else ("off", f"{device.type}: no native bf16 matrix units")


def autocast(amp: str, device: torch.device):
    """A context in which the networks run in ``amp`` (``off``, ``bf16`` or ``fp16``)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

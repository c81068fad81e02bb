"""CPU speed-ups, applied to a model built plain and to the training process.

Each one gives the same results as plain PyTorch, is switched by a config key and is on by default
only where ``benchmarks/bench_train.py`` shows that it pays:

* ``cpu.trim_kernels``: the 3D ResNet's convolutions skip the kernel taps that only see padding;
* ``cpu.phase_input_grad``: the ResNet stem's input gradient as a forward convolution over phases;
* ``allocator=keep``: glibc keeps large buffers in the heap between steps (process-wide).
"""
from __future__ import annotations

import torch
from torch import nn

from flowaction.config import Config
from flowaction.models.conv3d import Conv3d
from flowaction.models.resnet3d import ResNet3d
from flowaction.speedups import allocator
from flowaction.speedups.kernels import CpuConv3d

__all__ = ["apply_cpu_speedups", "apply_process_settings", "CpuConv3d"]


def apply_cpu_speedups(model: nn.Module, cfg: Config) -> nn.Module:
    """Turn the 3D convolutions of every 3D ResNet inside ``model`` into :class:`CpuConv3d` with
    the switches of ``cfg.cpu`` (in place; parameters, names and results unchanged). With both
    switches off the model is left plain. Returns ``model``."""
    trim, phases = cfg.cpu.trim_kernels, cfg.cpu.phase_input_grad
    for network in [m for m in model.modules() if isinstance(m, ResNet3d)]:
        for conv in network.modules():
            if not isinstance(conv, nn.Conv3d) or conv.kernel_size == (1, 1, 1):
                continue  # a 1 x 1 x 1 kernel has no tap to trim and many input channels
            if trim or phases:
                conv.__class__ = CpuConv3d
                conv.trim, conv.phase_input_grad = trim, phases
            elif isinstance(conv, CpuConv3d):
                conv.__class__ = Conv3d
                del conv.trim, conv.phase_input_grad
    return model


def apply_process_settings(cfg: Config) -> None:
    """This process's torch threads (``threads``) and C allocator (``allocator``), before training."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.allocator == "keep":
        allocator.keep_heap_memory()

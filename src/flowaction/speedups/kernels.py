"""Convolution kernels that give ``nn.Conv3d``'s outputs and gradients faster on a CPU.

* trimming (:class:`CpuConv3d`'s ``trim``) skips the kernel taps that only ever multiply zero padding. The deep
  stages of a 3D ResNet see clips a few steps long and a few pixels wide, where a 3 x 3 x 3 kernel
  with padding 1 reaches the input with its centre alone; the CPU convolution still pays for all 27
  taps, forward and backward.
* :class:`PhaseInputGradConv3d` computes a strided convolution's input gradient as one forward
  convolution over its phases (:func:`phase_input_grad`). oneDNN's backward-data pass is slow for
  convolutions with few input channels, such as the action network's stem over two flow channels:
  the gradient that trains the flow network from the classifier.

:class:`CpuConv3d` carries both as switches and keeps the parameters and their names;
:func:`flowaction.speedups.apply_cpu_speedups` turns a built model's convolutions into it.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from flowaction.models.conv3d import Conv3d, conv3d, needs_padded_weight_grad, reduced_cpu_training, weight_grad


@functools.lru_cache(maxsize=None)
def _used_taps(size: int, kernel: int, stride: int, padding: int) -> tuple[int, int, int, int] | None:
    """Along one dimension of a convolution: the taps that ever touch the input (not only the
    zero padding), ``(first, last + 1)``, and the padding before and after the input that the
    cropped kernel needs to give the same outputs; None when there is no output position."""
    outputs = (size + 2 * padding - kernel) // stride + 1
    used = [tap for tap in range(kernel) if any(0 <= o * stride - padding + tap < size for o in range(outputs))]
    if not used:
        return None
    first, stop = used[0], used[-1] + 1
    before = padding - first
    # the cropped kernel spans (outputs - 1) * stride + (stop - first) positions from -before
    after = (outputs - 1) * stride + (stop - first) - before - size
    return first, stop, before, after


@functools.lru_cache(maxsize=None)
def _phase_taps(kernel: int, stride: int, padding: int) -> tuple[tuple[tuple[int, ...], ...], int]:
    """Along one dimension of a convolution, its input gradient as ``stride`` phases: the input
    position ``stride * m + r`` receives ``sum_a grad[m + a - last] * w[taps[r][a]]`` (a correlation),
    where ``last`` is returned beside ``taps``; a tap of ``kernel`` stands for a zero weight."""
    def tap(phase: int, shift: int) -> int:  # the kernel tap joining input stride*m + phase to output m - shift
        index = stride * shift + phase + padding
        return index if 0 <= index < kernel else kernel
    shifts = [j for j in range(-kernel - padding, kernel + padding + 1) if any(tap(r, j) < kernel for r in range(stride))]
    first, last = shifts[0], shifts[-1]
    return tuple(tuple(tap(r, last - a) for a in range(last - first + 1)) for r in range(stride)), last


def phase_input_grad(grad: torch.Tensor, weight: torch.Tensor, size, stride, padding) -> torch.Tensor:
    """The input gradient of ``F.conv3d(x, weight, None, stride, padding)`` (no groups, no dilation)
    for an ``x`` of spatial ``size``, as one stride-1 convolution of ``grad``.

    A strided convolution's input gradient is a transposed convolution: each of the
    ``prod(stride)`` phases of the input (the positions ``stride * m + r``) is a plain correlation
    of ``grad`` with a sub-kernel of ``weight``. The sub-kernels, stacked as output channels, make
    one forward convolution, which the CPU's convolution library runs far faster than its
    backward-data pass when there are few input channels, as in a ResNet stem over two flow
    channels; the phases are then interleaved.
    """
    plans = [_phase_taps(k, s, p) for k, s, p in zip(weight.shape[2:], stride, padding)]
    kernel = F.pad(weight, (0, 1, 0, 1, 0, 1))  # one zero tap at the end of each dimension
    for dim, (taps, _) in enumerate(plans):
        kernel = kernel.index_select(2 + dim, torch.tensor([t for phase in taps for t in phase]))
    (s_t, s_h, s_w), (l_t, l_h, l_w) = stride, [len(taps[0]) for taps, _ in plans]
    out_channels, in_channels = weight.shape[:2]
    kernel = (kernel.view(out_channels, in_channels, s_t, l_t, s_h, l_h, s_w, l_w).permute(2, 4, 6, 1, 0, 3, 5, 7)
              .reshape(s_t * s_h * s_w * in_channels, out_channels, l_t, l_h, l_w))
    phases = [-(-n // s) for n, s in zip(size, stride)]  # positions per phase
    pads, both = [], []  # the zeros around grad: what both sides share the convolution pads (faster)
    for (taps, last), have, need in zip(reversed(plans), reversed(grad.shape[2:]), reversed(phases)):
        before, after = last, need + len(taps[0]) - 1 - have - last  # < 0 crops
        both.insert(0, max(0, min(before, after)))
        pads += [before - both[0], after - both[0]]  # F.pad: the last dimension first
    out = F.conv3d(F.pad(grad, pads) if any(pads) else grad, kernel, None, 1, both)
    batch, (m_t, m_h, m_w) = grad.shape[0], phases
    out = (out.view(batch, s_t, s_h, s_w, in_channels, m_t, m_h, m_w).permute(0, 4, 5, 1, 6, 2, 7, 3)
           .reshape(batch, in_channels, m_t * s_t, m_h * s_h, m_w * s_w))
    return out[:, :, :size[0], :size[1], :size[2]].contiguous()


class PhaseInputGradConv3d(torch.autograd.Function):
    """``F.conv3d(x, weight)`` (no bias, no groups, no dilation) whose input gradient is
    :func:`phase_input_grad` instead of oneDNN's backward-data pass, which is slow for convolutions
    with few input channels such as the action network's stem over the flows: the gradient that
    trains the flow network from the classifier. The weight gradient stays oneDNN's, over the
    input padded beforehand when ``padded_weight_grad`` (see :mod:`flowaction.models.conv3d`)."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, padded_weight_grad):  # noqa: D102 (autograd.Function protocol)
        ctx.save_for_backward(x, weight)
        ctx.conv = stride, padding, padded_weight_grad
        return F.conv3d(x, weight, None, stride, padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: D102
        x, weight = ctx.saved_tensors
        stride, padding, padded_weight_grad = ctx.conv
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = phase_input_grad(grad, weight, x.shape[2:], stride, padding)
        if ctx.needs_input_grad[1]:
            grad_weight = weight_grad(grad, x, weight, stride, padding, padded=padded_weight_grad)
        return grad_x, grad_weight, None, None, None


#: convolutions with at most this many input channels take the phase input gradient
PHASE_INPUT_GRAD_MAX_CHANNELS = 4


class CpuConv3d(Conv3d):
    """The 3D ResNet's :class:`~flowaction.models.conv3d.Conv3d` with the CPU speed-ups, each switched
    by an attribute; same parameters and names, same outputs and gradients.

    Attributes:
        trim: crop the kernel to the taps that reach the input (zero padding aside). The taps it
            drops get zero gradient, as they would from a whole kernel.
        phase_input_grad: when training on a CPU (GPUs have cuDNN), in any precision, with at most
            :data:`PHASE_INPUT_GRAD_MAX_CHANNELS` input channels and no bias, compute the input
            gradient with :class:`PhaseInputGradConv3d`.
    """

    trim: bool = True
    phase_input_grad: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros" or any(d != 1 for d in self.dilation) or isinstance(self.padding, str):
            return super().forward(x)
        weight, padding = self.weight, tuple(self.padding)
        if self.trim:
            plans = [_used_taps(n, k, s, p) for n, k, s, p in zip(x.shape[2:], self.kernel_size, self.stride,
                                                                  self.padding)]
            if None in plans:
                return super().forward(x)  # too small an input: PyTorch's own error
            if any(stop - first != k for (first, stop, _, _), k in zip(plans, self.kernel_size)):
                weight = self.weight[:, :, plans[0][0]:plans[0][1], plans[1][0]:plans[1][1], plans[2][0]:plans[2][1]]
                if all(before == after for _, _, before, after in plans):
                    padding = tuple(before for _, _, before, _ in plans)
                else:  # F.pad takes the last dimension first; a negative amount crops input nobody reads
                    x = F.pad(x, [amount for _, _, before, after in reversed(plans) for amount in (before, after)])
                    padding = (0, 0, 0)
        if self.phase_input_grad and self._phases_apply(x):
            dtype = reduced_cpu_training(x, weight)
            if dtype is not None:  # cast as autocast would: the saved tensors and the backward in that precision
                x, weight = x.to(dtype), weight.to(dtype)
            return PhaseInputGradConv3d.apply(x, weight, tuple(self.stride), padding,
                                              dtype is not None and needs_padded_weight_grad(x, padding))
        return conv3d(x, weight, self.bias, self.stride, padding, (1, 1, 1), self.groups)

    def _phases_apply(self, x: torch.Tensor) -> bool:
        return (x.requires_grad and torch.is_grad_enabled() and x.device.type == "cpu" and self.bias is None
                and self.groups == 1 and self.in_channels <= PHASE_INPUT_GRAD_MAX_CHANNELS)

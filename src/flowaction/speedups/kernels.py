"""Convolution kernels that give ``nn.Conv3d``'s outputs and gradients faster on a CPU.

* trimming (:class:`CpuConv3d`'s ``trim``) skips the kernel taps that only ever multiply zero padding. The deep
  stages of a 3D ResNet see clips a few steps long and a few pixels wide, where a 3 x 3 x 3 kernel
  with padding 1 reaches the input with its centre alone; the CPU convolution still pays for all 27
  taps, forward and backward.
* :class:`GemmInputGradConv3d` computes a convolution's input gradient with PyTorch's own
  transposed convolution (vol2col + GEMM). oneDNN's backward-data pass is slow for convolutions
  with few input channels, such as the action network's stem over two flow channels: the gradient
  that trains the flow network from the classifier.

:class:`CpuConv3d` carries both as switches and keeps the parameters and their names;
:func:`flowaction.speedups.apply_cpu_speedups` turns a built model's convolutions into it.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from flowaction.models.conv3d import Conv3d, conv3d


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


class GemmInputGradConv3d(torch.autograd.Function):
    """``F.conv3d(x, weight)`` (no bias, no groups, no dilation) whose input gradient is PyTorch's
    own transposed convolution (vol2col + GEMM) instead of oneDNN's.

    oneDNN's backward-data pass is slow when the convolution has few input channels, as the action
    network's stem over the flows has; that gradient is exactly what the joint model adds to a
    ResNet on precomputed flows. The weight gradient stays with oneDNN, which is fast for it.
    """

    @staticmethod
    def forward(ctx, x, weight, stride, padding):  # noqa: D102 (autograd.Function protocol)
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv3d(x, weight, None, stride, padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: D102
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = torch.ops.aten.convolution_backward(
                grad, x, weight, None, ctx.stride, ctx.padding, (1, 1, 1), False, (0, 0, 0), 1, (False, True, False)
            )[1]
        if ctx.needs_input_grad[0]:
            kernel = weight.shape[2:]
            # the transposed convolution's output is one size of several; pick the input's
            extra = tuple(n - ((o - 1) * s - 2 * p + k) for n, o, s, p, k in
                          zip(x.shape[2:], grad.shape[2:], ctx.stride, ctx.padding, kernel))
            grad_x = torch.ops.aten.slow_conv_transpose3d(
                grad.contiguous(), weight.contiguous(), kernel, None, ctx.stride, ctx.padding, extra, (1, 1, 1)
            )
        return grad_x, grad_weight, None, None


#: convolutions with at most this many input channels take the GEMM input gradient
GEMM_INPUT_GRAD_MAX_CHANNELS = 4


class CpuConv3d(Conv3d):
    """The 3D ResNet's :class:`~flowaction.models.conv3d.Conv3d` with the CPU speed-ups, each switched
    by an attribute; same parameters and names, same outputs and gradients.

    Attributes:
        trim: crop the kernel to the taps that reach the input (zero padding aside). The taps it
            drops get zero gradient, as they would from a whole kernel.
        gemm_input_grad: when training on a CPU in float32 (oneDNN's bf16 path is fast, and GPUs
            have cuDNN), with at most :data:`GEMM_INPUT_GRAD_MAX_CHANNELS` input channels and no
            bias, compute the input gradient with :class:`GemmInputGradConv3d`.
    """

    trim: bool = True
    gemm_input_grad: bool = False

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
        if self.gemm_input_grad and self._gemm_applies(x, weight):
            return GemmInputGradConv3d.apply(x, weight, tuple(self.stride), padding)
        return conv3d(x, weight, self.bias, self.stride, padding, (1, 1, 1), self.groups)

    def _gemm_applies(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        return (
            x.requires_grad and torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and self.bias is None and self.groups == 1
            and self.in_channels <= GEMM_INPUT_GRAD_MAX_CHANNELS
        )

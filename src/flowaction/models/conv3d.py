"""A 3D convolution whose weight gradient stays right when a CPU trains it in bfloat16 or float16.

oneDNN's reduced-precision 3D convolution computes a wrong weight gradient on some CPUs when it
pads the input itself: on an AMD EPYC with AVX-512-BF16 (no AMX) the weight gradient of a kernel
whose temporal padding on the two sides covers a clip of 2 or more steps (the 3D ResNet's stem, 7
frames wide, over 2 to 6 flows; a 3 x 3 x 3 kernel over 2 steps) comes out NaN, infinite or
silently wrong, and some shapes corrupt the heap; on longer clips, and on one step, it is right.
Its outputs and input gradients are right, and so is the weight gradient of the same convolution
over an input padded beforehand. So when a CPU trains :class:`Conv3d` in reduced precision on such
a clip, the forward pass and the input gradient run as PyTorch runs them and the weight gradient
alone is taken over the padded input (padding everything beforehand would also be right, but the
input gradient over the larger padded input costs more). Other shapes, float32, GPUs and inference
run plain ``F.conv3d``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_REDUCED = (torch.bfloat16, torch.float16)


def reduced_cpu_training(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The reduced precision a CPU convolution of ``x`` by ``weight`` trains in, or None when it
    runs in float32, off the CPU, or without gradient."""
    if x.device.type != "cpu" or not torch.is_grad_enabled() or not (x.requires_grad or weight.requires_grad):
        return None
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in _REDUCED:
        return torch.get_autocast_dtype("cpu")
    return x.dtype if x.dtype in _REDUCED else None


class PaddedWeightGradConv3d(torch.autograd.Function):
    """``F.conv3d`` (no bias) whose weight gradient is computed over the zero-padded input with no
    padding of its own; the output and the input gradient are oneDNN's as usual."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation, groups):  # noqa: D102 (autograd.Function protocol)
        ctx.save_for_backward(x, weight)
        ctx.conv = stride, padding, dilation, groups
        return F.conv3d(x, weight, None, stride, padding, dilation, groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: D102
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, dilation, False, (0, 0, 0), groups, (True, False, False)
            )[0]
        if ctx.needs_input_grad[1]:
            grad_weight = weight_grad(grad, x, weight, stride, padding, dilation, groups, padded=True)
        return grad_x, grad_weight, None, None, None, None


def weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation=(1, 1, 1),
                groups: int = 1, padded: bool = False) -> torch.Tensor:
    """The weight gradient of ``F.conv3d(x, weight, None, stride, padding, dilation, groups)`` for
    the output gradient ``grad``; with ``padded``, taken over ``x`` zero-padded beforehand (the
    route that stays right in reduced precision, see the module's docstring)."""
    if padded:
        x, padding = F.pad(x, [p for p in reversed(padding) for _ in (0, 1)]), (0, 0, 0)
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, stride, padding, dilation, False, (0, 0, 0), groups, (False, True, False))[1]


def needs_padded_weight_grad(x: torch.Tensor, padding) -> bool:
    """Whether a convolution of ``x`` (``(N, C, T, H, W)``) with zero ``padding`` has a weight
    gradient of the kind oneDNN gets wrong in reduced precision: one whose temporal padding on the
    two sides together covers a clip of two steps or more, ``2 <= T <= 2 * padding[0]``."""
    return 2 <= x.shape[2] <= 2 * padding[0]


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation=(1, 1, 1),
           groups: int = 1) -> torch.Tensor:
    """``F.conv3d`` with zero ``padding`` (three ints); when a CPU trains in bf16 / fp16 on a clip
    the temporal padding covers (:func:`needs_padded_weight_grad`), its weight gradient is taken
    over the input padded beforehand (see the module's docstring)."""
    padding = tuple(padding)
    dtype = reduced_cpu_training(x, weight) if needs_padded_weight_grad(x, padding) else None
    if dtype is None:
        return F.conv3d(x, weight, bias, stride, padding, dilation, groups)
    # cast as autocast would, so the saved tensors and the backward pass are in that precision
    out = PaddedWeightGradConv3d.apply(x.to(dtype), weight.to(dtype), tuple(stride), padding, tuple(dilation),
                                       groups)
    return out if bias is None else out + bias.to(dtype).view(1, -1, 1, 1, 1)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters, names and results) that computes through :func:`conv3d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        return conv3d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

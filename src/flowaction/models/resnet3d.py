"""3D ResNets for video classification (Hara et al., CVPR 2018).

Re-implementation of the architecture from "Can Spatiotemporal 3D CNNs Retrace
the History of 2D CNNs and ImageNet?" / "Learning Spatio-Temporal Features with
3D Residual Networks" (Hara, Kataoka, Satoh), as released in
``kenshohara/3D-ResNets-PyTorch`` (``models/resnet.py``).

Module and parameter names match that repository (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``, ...), so its released
checkpoints load with ``load_state_dict(strict=True)`` (after stripping a
possible ``module.`` prefix), and the forward computation is the same:

    conv1 (t,7,7) stride (t_s,2,2) -> BN -> ReLU -> [MaxPool3d(3, 2, 1)]
    -> layer1..layer4 (strides 1,2,2,2 on T, H and W)
    -> AdaptiveAvgPool3d(1) -> fc

Shapes: input ``(B, C, T, H, W)`` -> logits ``(B, num_classes)``.

One deliberate difference: Hara's parameter-free shortcut "A" concatenates
``out.data`` (i.e. it cuts the gradient through the identity path of the
down-sampling blocks). Here the shortcut is differentiable; forward values are
identical.
"""

from __future__ import annotations

import functools
from typing import Sequence, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet3d", "TrimmedConv3d", "resnet3d", "DEPTH_CONFIGS"]


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


class _GemmInputGradConv3d(torch.autograd.Function):
    """``F.conv3d(x, weight)`` (no bias, no groups, no dilation) whose input gradient is PyTorch's
    own transposed convolution (vol2col + GEMM) instead of oneDNN's.

    oneDNN's backward-data pass is slow when the convolution has few input channels: for the
    action network's stem (2 flow channels, 64 x 7 x 7 x 7 kernels) it takes 2.4x as long in
    float32 on a CPU as the GEMM route (58 vs 24 ms at batch 8, 5 x 56 x 56), and that gradient is
    exactly what the joint model adds to a ResNet on precomputed flows (the gradient that trains
    the flow network from the classifier). The weight gradient stays with oneDNN, which is fast.
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


#: convolutions with at most this many input channels take :class:`_GemmInputGradConv3d`'s input gradient
GEMM_INPUT_GRAD_MAX_CHANNELS = 4


def _gemm_input_grad(x: torch.Tensor, weight: torch.Tensor, conv: nn.Conv3d) -> bool:
    """Whether ``conv`` on ``x`` should compute its input gradient by GEMM: training on the CPU in
    float32 (oneDNN's bf16 path is fast, and GPUs have cuDNN), a few input channels, no bias."""
    return (
        x.requires_grad and torch.is_grad_enabled() and x.device.type == "cpu"
        and x.dtype == torch.float32 and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu") and conv.bias is None and conv.groups == 1
        and conv.in_channels <= GEMM_INPUT_GRAD_MAX_CHANNELS
    )


class TrimmedConv3d(nn.Conv3d):
    """``nn.Conv3d`` that skips the kernel taps which only ever multiply zero padding.

    The deep stages of a 3D ResNet see clips only a few steps long and a few pixels wide (16
    frames -> 5 flows -> T = 1 from ``layer3`` on; 32 x 32 crops -> 1 x 1 in ``layer4``): there
    a 3 x 3 x 3 kernel with padding 1 touches the input with its centre alone, and the CPU
    convolution still pays for all 27 taps, in the forward and, worse, the backward pass.
    Cropping the kernel to the taps that reach the input gives the same outputs and the same
    gradients (zero for the taps it drops, as before), with the same parameters and names.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros" or any(d != 1 for d in self.dilation) or isinstance(self.padding, str):
            return super().forward(x)
        plans = [_used_taps(n, k, s, p) for n, k, s, p in zip(x.shape[2:], self.kernel_size, self.stride, self.padding)]
        if None in plans:
            return super().forward(x)  # too small an input: PyTorch's own error
        if all(stop - first == k for (first, stop, _, _), k in zip(plans, self.kernel_size)):
            weight, padding = self.weight, tuple(self.padding)  # every tap reaches the input
        else:
            weight = self.weight[:, :, plans[0][0]:plans[0][1], plans[1][0]:plans[1][1], plans[2][0]:plans[2][1]]
            if all(before == after for _, _, before, after in plans):
                padding = tuple(before for _, _, before, _ in plans)
            else:  # F.pad takes the last dimension first; a negative amount crops input nobody reads
                x = F.pad(x, [amount for _, _, before, after in reversed(plans) for amount in (before, after)])
                padding = (0, 0, 0)
        if _gemm_input_grad(x, weight, self):
            return _GemmInputGradConv3d.apply(x, weight, tuple(self.stride), padding)
        return F.conv3d(x, weight, self.bias, self.stride, padding, 1, self.groups)


def _conv3x3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return TrimmedConv3d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Parameter-free shortcut (type "A").

    Subsamples with ``avg_pool3d(kernel_size=1, stride=stride)`` and appends
    zero channels: ``(B, C_in, T, H, W)`` -> ``(B, out_planes, T', H', W')``.
    It has no parameters or buffers, hence contributes no state-dict keys.
    """

    def __init__(self, out_planes: int, stride: int) -> None:
        super().__init__()
        self.out_planes = out_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool3d(x, kernel_size=1, stride=self.stride)
        extra = self.out_planes - out.shape[1]
        if extra > 0:
            # F.pad pads the last dims first: (W, H, T, C) -> zeros after the channels.
            out = F.pad(out, (0, 0, 0, 0, 0, 0, 0, extra))
        return out


class BasicBlock(nn.Module):
    """Two 3x3x3 convs: ``(B, in_planes, T, H, W)`` -> ``(B, planes, T/s, H/s, W/s)``."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3x3(planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1x1 -> 3x3x3 (strided) -> 1x1x1 convs.

    ``(B, in_planes, T, H, W)`` -> ``(B, 4 * planes, T/s, H/s, W/s)``.
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3x3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = _conv1x1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = Union[Type[BasicBlock], Type[Bottleneck]]

#: depth -> (block type, number of blocks in layer1..layer4), as in Hara's ``generate_model``.
DEPTH_CONFIGS: dict[int, tuple[Block, tuple[int, int, int, int]]] = {
    10: (BasicBlock, (1, 1, 1, 1)),
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
    200: (Bottleneck, (3, 24, 36, 3)),
}


class ResNet3d(nn.Module):
    """Hara's 3D ResNet.

    Input ``(B, C, T, H, W)`` with ``C == in_channels``; output logits
    ``(B, num_classes)``. :meth:`forward_features` returns the pooled
    ``(B, feature_dim)`` vector fed to ``fc``.
    """

    def __init__(self, block: Block, layers: Sequence[int], in_channels: int = 3,
                 num_classes: int = 400, shortcut: str = "B", conv1_t_size: int = 7,
                 conv1_t_stride: int = 1, no_max_pool: bool = False,
                 widen_factor: float = 1.0,
                 block_inplanes: Sequence[int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        if len(layers) != 4:
            raise ValueError(f"expected 4 layer sizes, got {list(layers)}")
        widths = [int(w * widen_factor) for w in block_inplanes]
        self.shortcut = shortcut
        self.no_max_pool = no_max_pool
        self.in_planes = widths[0]

        self.conv1 = TrimmedConv3d(in_channels, self.in_planes,
                               kernel_size=(conv1_t_size, 7, 7),
                               stride=(conv1_t_stride, 2, 2),
                               padding=(conv1_t_size // 2, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(self.in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0], stride=1)
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.feature_dim = widths[3] * block.expansion
        self.fc = nn.Linear(self.feature_dim, num_classes)

        # Hara's init: Kaiming-normal (fan_out) convs, BN gamma=1 / beta=0;
        # the Linear layer keeps PyTorch's default init.
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0.0)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample: nn.Module | None = None
        if stride != 1 or self.in_planes != out_planes:
            if self.shortcut == "A":
                downsample = ZeroPadShortcut(out_planes, stride)
            else:
                downsample = nn.Sequential(_conv1x1x1(self.in_planes, out_planes, stride),
                                           nn.BatchNorm3d(out_planes))
        modules: list[nn.Module] = [block(self.in_planes, planes, stride, downsample)]
        self.in_planes = out_planes
        modules += [block(self.in_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> pooled features ``(B, feature_dim)``."""
        x = self.relu(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> logits ``(B, num_classes)``."""
        return self.fc(self.forward_features(x))


def resnet3d(depth: int, in_channels: int = 3, num_classes: int = 400, shortcut: str = "B",
             conv1_t_size: int = 7, conv1_t_stride: int = 1, no_max_pool: bool = False,
             widen_factor: float = 1.0) -> ResNet3d:
    """Build Hara's 3D ResNet of the given depth (10, 18, 34, 50, 101, 152 or 200).

    Defaults follow Hara's ``generate_model``. The returned model maps
    ``(B, in_channels, T, H, W)`` -> ``(B, num_classes)``.
    """
    if depth not in DEPTH_CONFIGS:
        raise ValueError(f"depth must be one of {sorted(DEPTH_CONFIGS)}, got {depth}")
    block, layers = DEPTH_CONFIGS[depth]
    return ResNet3d(block, layers, in_channels=in_channels, num_classes=num_classes,
                    shortcut=shortcut, conv1_t_size=conv1_t_size,
                    conv1_t_stride=conv1_t_stride, no_max_pool=no_max_pool,
                    widen_factor=widen_factor)

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

The network is plain PyTorch; the CPU speed-ups that give the same outputs faster
(``flowaction.speedups``) are applied to a built model from outside.
"""

from __future__ import annotations

from typing import Sequence, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from flowaction.models.conv3d import Conv3d

__all__ = ["BasicBlock", "Bottleneck", "ResNet3d", "resnet3d", "DEPTH_CONFIGS"]


def _conv3x3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return Conv3d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return Conv3d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


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

        self.conv1 = Conv3d(in_channels, self.in_planes,
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

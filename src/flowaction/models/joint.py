"""The paper's joint model: flow network -> stacked flows -> 3D ResNet (Fig. 2)."""
from __future__ import annotations

import torch
import torch.nn as nn

from flowaction.models.flownet import FlowNet
from flowaction.models.resnet3d import resnet3d


def num_triplets(num_frames: int, stride: int) -> int:
    """``N = (T - 3) // s + 1`` flows per clip of ``T`` frames at triplet stride ``s``."""
    if num_frames < 3:
        raise ValueError(f"a clip needs at least 3 frames, got {num_frames}")
    return (num_frames - 3) // stride + 1


class JointModel(nn.Module):
    """Frames ``(B, 1, T, H, W)`` in [0, 1] -> ``(logits (B, K), flows (B, 2, N, H, W))``.

    Triplet ``j`` is frames ``(j*s, j*s+1, j*s+2)``; all ``B * N`` triplets go through the flow
    network as one batch, and the flows are stacked along time for the action network.
    Intensities are normalised inside the model (``(x - mean) / std``) so callers always pass
    frames in [0, 1].

    Args:
        flow_net: maps ``(N, 1, 3, H, W)`` to ``(N, 2, H, W)``.
        action_net: maps ``(B, 2, N, H, W)`` to ``(B, K)``.
        triplet_stride: ``s``; 3 is the paper's disjoint groups, 1 gives a flow per frame.
    """

    def __init__(
        self,
        flow_net: nn.Module,
        action_net: nn.Module,
        triplet_stride: int = 3,
        mean: float = 0.5,
        std: float = 0.25,
    ) -> None:
        super().__init__()
        if triplet_stride < 1:
            raise ValueError("triplet_stride must be >= 1")
        self.flow_net = flow_net
        self.action_net = action_net
        self.triplet_stride = triplet_stride
        self.register_buffer("mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("std", torch.tensor(float(std)), persistent=False)

    def triplets(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, 1, T, H, W)`` -> ``(B * N, 1, 3, H, W)``, clip-major."""
        batch, channels, time, height, width = frames.shape
        count = num_triplets(time, self.triplet_stride)
        index = (torch.arange(count, device=frames.device) * self.triplet_stride).unsqueeze(1)
        index = index + torch.arange(3, device=frames.device)  # (N, 3)
        groups = frames[:, :, index.flatten()].view(batch, channels, count, 3, height, width)
        return groups.transpose(1, 2).reshape(batch * count, channels, 3, height, width)

    def flows(self, frames: torch.Tensor) -> torch.Tensor:
        """Stacked flows ``(B, 2, N, H, W)`` in pixels for frames ``(B, 1, T, H, W)`` in [0, 1]."""
        batch = frames.shape[0]
        flat = self.flow_net(self.triplets((frames - self.mean) / self.std))  # (B*N, 2, H, W)
        return flat.view(batch, -1, *flat.shape[1:]).transpose(1, 2)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify a clip from its learned flows; also return the flows (for the losses)."""
        if frames.dim() != 5 or frames.shape[1] != 1:
            raise ValueError(f"expected frames (B, 1, T, H, W), got {tuple(frames.shape)}")
        stacked = self.flows(frames)
        return self.action_net(stacked), stacked


def build_joint_model(
    num_classes: int,
    depth: int = 18,
    shortcut: str = "B",
    flow_width: int = 16,
    triplet_stride: int = 3,
) -> JointModel:
    """The paper's model: :class:`FlowNet` in front of a 2-channel 3D ResNet."""
    return JointModel(
        FlowNet(width=flow_width),
        resnet3d(depth, in_channels=2, num_classes=num_classes, shortcut=shortcut),
        triplet_stride=triplet_stride,
    )

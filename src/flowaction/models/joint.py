"""The paper's joint model (flow network -> stacked flows -> 3D ResNet, Fig. 2) and baselines.

Inputs of the action network, by model:

- :class:`JointModel`: learned flows ``(B, 2, N, H, W)``, optionally fused with the middle frame
  of every triplet (``learned+frames``, 3 channels);
- :class:`FrameModel`: the gray frames ``(B, 1, T, H, W)`` (a plain 3D ResNet);
- :class:`PrecomputedFlowModel`: flows computed outside the network (OpenCV DIS / Farneback,
  stored once in the cache), stacked like the learned ones.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from flowaction.models.flownet import FlowNet
from flowaction.models.resnet3d import resnet3d

INPUTS = ("learned", "learned+frames", "frames", "dis", "farneback")


def num_triplets(num_frames: int, stride: int) -> int:
    """``N = (T - 3) // s + 1`` flows per clip of ``T`` frames at triplet stride ``s``."""
    if num_frames < 3:
        raise ValueError(f"a clip needs at least 3 frames, got {num_frames}")
    return (num_frames - 3) // stride + 1


def triplet_index(time: int, stride: int, device=None, reverse: bool = False) -> torch.Tensor:
    """Frame numbers ``(N, 3)`` of the triplets of a ``time``-frame clip: row ``j`` is
    ``(j*s, j*s+1, j*s+2)``, or ``(j*s+1, j*s, j*s-1)`` clamped at 0 with ``reverse``."""
    count = num_triplets(time, stride)
    index = (torch.arange(count, device=device) * stride).unsqueeze(1)
    if reverse:  # (k, k-1, k-2): the same pair seen backwards, clamped at the clip start
        return (index + torch.tensor([1, 0, -1], device=device)).clamp_min(0)
    return index + torch.arange(3, device=device)


def make_triplets(frames: torch.Tensor, stride: int, reverse: bool = False) -> torch.Tensor:
    """Clips ``(B, C, T, H, W)`` -> triplets ``(B * N, C, 3, H, W)``, clip-major."""
    batch, channels, time, height, width = frames.shape
    index = triplet_index(time, stride, frames.device, reverse)
    groups = frames[:, :, index.flatten()].view(batch, channels, index.shape[0], 3, height, width)
    return groups.transpose(1, 2).reshape(-1, channels, 3, height, width)


class Normalise(nn.Module):
    """``(x - mean) / std`` with fixed constants: callers always pass frames in [0, 1]."""

    def __init__(self, mean: float = 0.5, std: float = 0.25) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("std", torch.tensor(float(std)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _check_frames(frames: torch.Tensor) -> None:
    if frames.dim() != 5 or frames.shape[1] != 1:
        raise ValueError(f"expected frames (B, 1, T, H, W), got {tuple(frames.shape)}")


class JointModel(nn.Module):
    """Frames ``(B, 1, T, H, W)`` in [0, 1] -> ``(logits (B, K), flows (B, 2, N, H, W))``.

    Triplet ``j`` is frames ``(j*s, j*s+1, j*s+2)``; all ``B * N`` triplets go through the flow
    network as one batch, and the flows are stacked along time for the action network.

    Args:
        flow_net: maps ``(N, 1, 3, H, W)`` to ``(N, 2, H, W)``.
        action_net: maps ``(B, C, N, H, W)`` to ``(B, K)``; ``C`` = 2, or 3 with ``fuse_frames``.
        triplet_stride: ``s``; 3 is the paper's disjoint groups, 1 gives a flow per frame.
        fuse_frames: also give the action network the middle frame of every triplet.
    """

    def __init__(
        self, flow_net: nn.Module, action_net: nn.Module, triplet_stride: int = 3, fuse_frames: bool = False
    ) -> None:
        super().__init__()
        if triplet_stride < 1:
            raise ValueError("triplet_stride must be >= 1")
        self.flow_net = flow_net
        self.action_net = action_net
        self.triplet_stride = triplet_stride
        self.fuse_frames = fuse_frames
        self.normalise = Normalise()

    def triplets(self, frames: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        """``(B, 1, T, H, W)`` -> ``(B * N, 1, 3, H, W)``, clip-major."""
        return make_triplets(frames, self.triplet_stride, reverse)

    def flows(self, frames: torch.Tensor, return_pyramid: bool = False):
        """Stacked flows ``(B, 2, N, H, W)`` in pixels for frames ``(B, 1, T, H, W)`` in [0, 1].

        With ``return_pyramid`` also the coarser flows, each ``(B * N, 2, h, w)``.
        """
        batch = frames.shape[0]
        out = self.flow_net(self.triplets(self.normalise(frames)), return_pyramid=return_pyramid)
        flat, pyramid = out if return_pyramid else (out, None)
        stacked = flat.view(batch, -1, *flat.shape[1:]).transpose(1, 2)
        return (stacked, pyramid) if return_pyramid else stacked

    def backward_flows(self, frames: torch.Tensor) -> torch.Tensor:
        """Flows from ``I_k`` into ``I_{k-1}`` for every triplet, ``(B * N, 2, H, W)``."""
        return self.flow_net(self.triplets(self.normalise(frames), reverse=True))

    def classify(self, flows: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` from stacked flows (and the triplets' middle frames if fused)."""
        if self.fuse_frames:
            middle = triplet_index(frames.shape[2], self.triplet_stride, frames.device)[:, 1]
            flows = torch.cat((flows, self.normalise(frames[:, :, middle])), dim=1)
        return self.action_net(flows)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify a clip from its learned flows; also return the flows (for the losses)."""
        _check_frames(frames)
        stacked = self.flows(frames)
        return self.classify(stacked, frames), stacked


class FrameModel(nn.Module):
    """Baseline: a 3D ResNet on the gray frames. ``forward`` returns ``(logits, None)``."""

    def __init__(self, action_net: nn.Module) -> None:
        super().__init__()
        self.action_net = action_net
        self.normalise = Normalise()

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, None]:
        _check_frames(frames)
        return self.action_net(self.normalise(frames)), None


class PrecomputedFlowModel(nn.Module):
    """Baseline: a 3D ResNet on flows computed outside the network (e.g. OpenCV DIS).

    ``forward(flows)`` takes stacked flows ``(B, 2, N, H, W)`` in pixels for the same triplet
    pairs the joint model uses, and returns ``(logits, flows)``.
    """

    def __init__(self, action_net: nn.Module, triplet_stride: int = 3, method: str = "dis") -> None:
        super().__init__()
        self.action_net = action_net
        self.triplet_stride = triplet_stride
        self.method = method  # which OpenCV flow feeds it: "dis" or "farneback"

    def forward(self, flows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.action_net(flows), flows


def build_joint_model(
    num_classes: int,
    depth: int = 18,
    shortcut: str = "B",
    flow_width: int = 16,
    triplet_stride: int = 3,
    input: str = "learned",
    zero_flow_output: bool = True,
    flow_refine: bool = False,
) -> nn.Module:
    """The model for an action-network ``input`` (see :data:`INPUTS`); "learned" is the paper's."""
    if input not in INPUTS:
        raise ValueError(f"unknown model input {input!r}; choose one of {INPUTS}")
    if input == "frames":
        return FrameModel(resnet3d(depth, in_channels=1, num_classes=num_classes, shortcut=shortcut))
    if input in ("dis", "farneback"):
        return PrecomputedFlowModel(
            resnet3d(depth, in_channels=2, num_classes=num_classes, shortcut=shortcut), triplet_stride, input
        )
    fuse = input == "learned+frames"
    return JointModel(
        FlowNet(width=flow_width, zero_output=zero_flow_output, refine=flow_refine),
        resnet3d(depth, in_channels=3 if fuse else 2, num_classes=num_classes, shortcut=shortcut),
        triplet_stride=triplet_stride,
        fuse_frames=fuse,
    )

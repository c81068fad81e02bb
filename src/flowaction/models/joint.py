"""The paper's joint model (flow network -> stacked flows -> 3D ResNet, Fig. 2) and baselines.

Inputs of the action network, by model:

- :class:`JointModel`: learned flows ``(B, 2, N, H, W)``, optionally fused with the middle frame
  of every triplet (``learned+frames``, 3 channels);
- :class:`FrameModel`: the gray frames ``(B, 1, T, H, W)`` (a plain 3D ResNet);
- :class:`PrecomputedFlowModel`: flows computed outside the network (OpenCV DIS / Farneback,
  stored once in the cache), stacked like the learned ones.

``flowaction.models.build`` makes the one a config describes.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from flowaction.triplets import make_triplets, triplet_index


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
    """Baseline: a 3D ResNet on the gray frames. ``forward`` returns ``(logits, None)``.

    With ``still`` it sees one frame of each clip repeated over the clip's length (a random frame
    in training, the middle one in eval mode): posture without motion, the control that shows what
    a task's single frames give away.
    """

    def __init__(self, action_net: nn.Module, still: bool = False) -> None:
        super().__init__()
        self.action_net = action_net
        self.normalise = Normalise()
        self.still = still

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, None]:
        _check_frames(frames)
        if self.still:
            frames = one_frame(frames, random=self.training)
        return self.action_net(self.normalise(frames)), None


def one_frame(frames: torch.Tensor, random: bool = False) -> torch.Tensor:
    """Clips ``(B, C, T, H, W)`` -> each clip's middle frame (or, with ``random``, one frame drawn
    per clip from torch's random stream) repeated ``T`` times."""
    length = frames.shape[2]
    if not random:
        return frames[:, :, length // 2 : length // 2 + 1].expand_as(frames)
    picks = torch.randint(0, length, (frames.shape[0],))
    rows = torch.arange(frames.shape[0])
    return frames.transpose(1, 2)[rows, picks.to(frames.device)].unsqueeze(2).expand_as(frames)


class PrecomputedFlowModel(nn.Module):
    """Baseline: a 3D ResNet on flows computed outside the network (e.g. OpenCV DIS).

    ``forward(flows)`` takes stacked flows ``(B, 2, N, H, W)`` in pixels for the same triplet
    pairs the joint model uses, and returns ``(logits, flows)``.
    """

    def __init__(self, action_net: nn.Module, triplet_stride: int = 3, method: str = "dis") -> None:
        super().__init__()
        self.action_net = action_net
        self.triplet_stride = triplet_stride
        # which flow feeds it: "dis" or "farneback" (OpenCV), "truth" (the data's ground truth)
        self.method = method

    def forward(self, flows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.action_net(flows), flows

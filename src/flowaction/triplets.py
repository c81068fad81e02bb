"""Triplets and the frame pairs their flows relate: the one home of this indexing.

A clip of ``T`` frames at triplet stride ``s`` holds ``N = (T - 3) // s + 1`` triplets; triplet ``j``
is frames ``(j*s, j*s+1, j*s+2)``, and its flow relates the pair ``j*s -> j*s+1`` (``I_{k-1} -> I_k``,
on the grid of the first frame). Everything that groups frames into triplets or picks the pairs a
model's flows belong to (the model, the losses, the scoring, the flow command) goes through here.
"""
from __future__ import annotations

import numpy as np
import torch


def num_triplets(num_frames: int, stride: int) -> int:
    """``N = (T - 3) // s + 1`` flows per clip of ``T`` frames at triplet stride ``s``."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if num_frames < 3:
        raise ValueError(f"a clip needs at least 3 frames, got {num_frames}")
    return (num_frames - 3) // stride + 1


def pair_starts(num_frames: int, stride: int) -> np.ndarray:
    """First frame ``p = j*s`` of every triplet's pair ``p -> p+1``, ``(N,)`` int64."""
    return np.arange(num_triplets(num_frames, stride), dtype=np.int64) * stride


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


def triplet_frames(frames: torch.Tensor, num_flows: int, stride: int, position: int) -> torch.Tensor:
    """Frame ``position`` (0, 1 or 2) of every triplet of a clip, ``(B * N, 1, H, W)`` clip-major.

    Args:
        frames: ``(B, 1, T, H, W)`` clean frames in [0, 1].
        num_flows: ``N``, flows per clip.
        stride: triplet stride ``s``.
    """
    index = torch.arange(num_flows, device=frames.device) * stride + position
    return frames[:, :, index].transpose(1, 2).flatten(0, 1)


def flow_pair_frames(frames: torch.Tensor, num_flows: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The frames each flow of a clip relates: ``I_{k-1}`` and ``I_k`` of every triplet, two
    ``(B * N, 1, H, W)`` tensors ordered clip-major like the stacked flows."""
    return triplet_frames(frames, num_flows, stride, 0), triplet_frames(frames, num_flows, stride, 1)


def select_pairs(pair_values: torch.Tensor, num_flows: int, stride: int) -> torch.Tensor:
    """Per-pair values ``(B, T-1, ...)`` (ground-truth flow, masks, precomputed flow) -> those of
    the triplets' pairs ``(B, N, ...)``: pair ``j*s -> j*s+1`` belongs to triplet ``j``."""
    index = torch.arange(num_flows, device=pair_values.device) * stride
    return pair_values[:, index]

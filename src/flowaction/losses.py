"""The unsupervised flow losses and the paper's joint loss (eqs. 1-3).

Nothing here knows about data sets or models: the functions take tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from flowaction.warp import backward_warp, in_frame_mask


def charbonnier(x: torch.Tensor, alpha: float = 0.45, eps: float = 1e-3) -> torch.Tensor:
    """Generalised Charbonnier penalty ``(x^2 + eps^2)^alpha``, element-wise."""
    return (x * x + eps * eps) ** alpha


def photometric_loss(
    frame_prev: torch.Tensor,
    frame_cur: torch.Tensor,
    flow: torch.Tensor,
    alpha: float = 0.45,
    eps: float = 1e-3,
    extra_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 1: ``rho(W(I_k, O_k) - I_{k-1})`` averaged over in-frame pixels.

    Args:
        frame_prev: ``I_{k-1}``, ``(B, C, H, W)``, intensities in [0, 1].
        frame_cur: ``I_k``, ``(B, C, H, W)``.
        flow: ``O_k`` on the grid of ``I_{k-1}``, ``(B, 2, H, W)``, pixels.
        extra_mask: optional ``(B, 1, H, W)`` weights (e.g. an occlusion mask) multiplied in.

    Returns:
        Scalar: the penalty summed over valid pixels and channels divided by their count.
    """
    warped = backward_warp(frame_cur, flow)
    mask = in_frame_mask(flow)
    if extra_mask is not None:
        mask = mask * extra_mask
    penalty = charbonnier(warped - frame_prev, alpha, eps) * mask
    # Normalise by the mask, not by H*W: otherwise large flows that push samples out of the
    # frame would be rewarded with a smaller loss.
    denominator = mask.sum() * frame_prev.shape[1]
    return penalty.sum() / denominator.clamp_min(1.0)


def smoothness_loss(flow: torch.Tensor, alpha: float = 0.45, eps: float = 1e-3) -> torch.Tensor:
    """Eq. 2: Charbonnier of the forward differences of u and v along x and y.

    Args:
        flow: ``(B, 2, H, W)`` in pixels.

    Returns:
        Scalar: the sum of the four mean penalties (du/dx, du/dy, dv/dx, dv/dy).
    """
    grad_x = flow[:, :, :, 1:] - flow[:, :, :, :-1]
    grad_y = flow[:, :, 1:, :] - flow[:, :, :-1, :]
    # mean over (B, H, W) per channel, summed over the two channels and two directions
    return 2.0 * (charbonnier(grad_x, alpha, eps).mean() + charbonnier(grad_y, alpha, eps).mean())


def clip_triplet_pairs(
    frames: torch.Tensor, num_flows: int, stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frames each flow of a clip relates: ``I_{k-1}`` and ``I_k`` of every triplet.

    Args:
        frames: ``(B, 1, T, H, W)`` clean frames in [0, 1].
        num_flows: ``N``, flows per clip.
        stride: triplet stride ``s``; triplet ``j`` is frames ``j*s, j*s+1, j*s+2``.

    Returns:
        Two ``(B * N, 1, H, W)`` tensors ordered clip-major like the stacked flows.
    """
    first = torch.arange(num_flows, device=frames.device) * stride
    prev = frames[:, :, first].transpose(1, 2).flatten(0, 1)
    cur = frames[:, :, first + 1].transpose(1, 2).flatten(0, 1)
    return prev, cur


@dataclass(frozen=True)
class LossWeights:
    """The constants of eq. 3 and the Charbonnier settings."""

    classification: float = 1.0
    photometric: float = 1.0
    smoothness: float = 0.1
    alpha: float = 0.45
    eps: float = 1e-3
    smooth_alpha: float = 0.45


def joint_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    flows: torch.Tensor,
    frames: torch.Tensor,
    stride: int,
    weights: LossWeights = LossWeights(),
) -> dict[str, torch.Tensor]:
    """Eq. 3: ``a1 * CE + a2 * L_P + a3 * L_S`` over a batch of clips.

    Args:
        logits: ``(B, K)``; labels: ``(B,)`` int64.
        flows: ``(B, 2, N, H, W)`` stacked flows in pixels.
        frames: ``(B, 1, T, H, W)`` clean frames in [0, 1] that produced ``flows``.
        stride: the triplet stride used by the model.

    Returns:
        ``{"total", "classification", "photometric", "smoothness"}``, each a scalar tensor.
    """
    num_flows = flows.shape[2]
    flat_flows = flows.transpose(1, 2).flatten(0, 1)  # (B*N, 2, H, W)
    prev, cur = clip_triplet_pairs(frames, num_flows, stride)
    terms = {
        "classification": F.cross_entropy(logits, labels),
        "photometric": photometric_loss(prev, cur, flat_flows, weights.alpha, weights.eps),
        "smoothness": smoothness_loss(flat_flows, weights.smooth_alpha, weights.eps),
    }
    terms["total"] = (
        weights.classification * terms["classification"]
        + weights.photometric * terms["photometric"]
        + weights.smoothness * terms["smoothness"]
    )
    return terms

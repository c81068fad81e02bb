"""The paper's losses: eq. 1 ``photometric_loss``, eq. 2 ``smoothness_loss``, eq. 3 ``joint_loss``.

``rho(x) = (x^2 + eps^2)^alpha`` is the generalised Charbonnier penalty. The flow ``O_k`` lives on
the grid of ``I_{k-1}`` and points into ``I_k``; :func:`flow_loss_terms` applies eqs. 1 and 2 to the
stacked flows of a batch of clips. The variants (census and SSIM data terms, occlusion masks) are in
:mod:`flowaction.loss_variants`. Tensors only: nothing here knows about data sets or models.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flowaction.config import LossWeights
from flowaction.loss_variants import charbonnier, data_penalty, forward_backward_visibility
from flowaction.triplets import flow_pair_frames, triplet_frames
from flowaction.warp import backward_warp, in_frame_mask

__all__ = ["LossWeights", "charbonnier", "photometric_loss", "smoothness_loss", "joint_loss", "flow_loss_terms"]


def photometric_loss(
    frame_prev: torch.Tensor,
    frame_cur: torch.Tensor,
    flow: torch.Tensor,
    alpha: float = 0.45,
    eps: float = 1e-3,
    extra_mask: torch.Tensor | None = None,
    term: str = "charbonnier",
) -> torch.Tensor:
    """Eq. 1: ``rho(W(I_k, O_k) - I_{k-1})`` averaged over in-frame pixels.

    Args:
        frame_prev: ``I_{k-1}``, ``(B, C, H, W)``, intensities in [0, 1].
        frame_cur: ``I_k``, ``(B, C, H, W)``.
        flow: ``O_k`` on the grid of ``I_{k-1}``, ``(B, 2, H, W)``, pixels.
        extra_mask: optional ``(B, 1, H, W)`` weights (e.g. an occlusion mask) multiplied in.
        term: the data term (see :func:`data_penalty`); the paper's is ``"charbonnier"``.

    Returns:
        Scalar: the penalty summed over valid pixels (mean over channels) divided by their count.
    """
    warped = backward_warp(frame_cur, flow)
    mask = in_frame_mask(flow)
    if extra_mask is not None:
        mask = mask * extra_mask
    penalty = data_penalty(warped, frame_prev, term, alpha, eps) * mask
    # Normalise by the mask, not by H*W: otherwise large flows that push samples out of the
    # frame would be rewarded with a smaller loss.
    return penalty.sum() / mask.sum().clamp_min(1.0)


def smoothness_loss(
    flow: torch.Tensor,
    alpha: float = 0.45,
    eps: float = 1e-3,
    image: torch.Tensor | None = None,
    edge_weight: float = 0.0,
    order: int = 1,
) -> torch.Tensor:
    """Eq. 2: Charbonnier of the forward differences of u and v along x and y.

    Args:
        flow: ``(B, 2, H, W)`` in pixels.
        image: ``(B, 1, H, W)``, the frame the flow lives on; used when ``edge_weight > 0``.
        edge_weight: ``beta`` of the edge-aware variant, where each difference is weighted by
            ``exp(-beta * |image gradient|)`` so that flow may change where the image has edges.
        order: 1 penalises the first differences (the paper's eq. 2: it prefers piecewise
            constant flow, so it shrinks the flow of rotations and expansions, whose flow changes
            linearly across the object); 2 penalises the second differences
            ``f(x-1) - 2 f(x) + f(x+1)``, which are zero for every affine flow field.

    Returns:
        Scalar: the sum of the four mean penalties (du/dx, du/dy, dv/dx, dv/dy, or their second
        differences).
    """
    if order == 1:
        grad_x = flow[:, :, :, 1:] - flow[:, :, :, :-1]
        grad_y = flow[:, :, 1:, :] - flow[:, :, :-1, :]
    elif order == 2:
        grad_x = flow[:, :, :, 2:] - 2 * flow[:, :, :, 1:-1] + flow[:, :, :, :-2]
        grad_y = flow[:, :, 2:, :] - 2 * flow[:, :, 1:-1, :] + flow[:, :, :-2, :]
    else:
        raise ValueError(f"smoothness order must be 1 or 2, got {order}")
    grad_x = charbonnier(grad_x, alpha, eps)
    grad_y = charbonnier(grad_y, alpha, eps)
    if edge_weight > 0 and image is not None:
        # the image's edge strength between the pixels each difference spans
        edge_x = (image[:, :, :, 1:] - image[:, :, :, :-1]).abs().mean(1, keepdim=True)
        edge_y = (image[:, :, 1:, :] - image[:, :, :-1, :]).abs().mean(1, keepdim=True)
        if order == 2:
            edge_x = torch.maximum(edge_x[..., 1:], edge_x[..., :-1])
            edge_y = torch.maximum(edge_y[..., 1:, :], edge_y[..., :-1, :])
        grad_x = grad_x * torch.exp(-edge_weight * edge_x)
        grad_y = grad_y * torch.exp(-edge_weight * edge_y)
    # mean over (B, H, W) per channel, summed over the two channels and two directions
    return 2.0 * (grad_x.mean() + grad_y.mean())


def joint_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    flows: torch.Tensor | None,
    frames: torch.Tensor,
    stride: int,
    weights: LossWeights = LossWeights(),
    pyramid: list[torch.Tensor] | None = None,
    backward_flows: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Eq. 3: ``a1 * CE + a2 * L_P + a3 * L_S`` over a batch of clips.

    Args:
        logits: ``(B, K)``; labels: ``(B,)`` int64.
        flows: ``(B, 2, N, H, W)`` stacked flows in pixels, or None for models without a flow
            network (then only the classification term is computed).
        frames, stride, pyramid, backward_flows: as in :func:`flow_loss_terms`.

    Returns:
        ``{"total", "classification", "photometric", "smoothness"}``, each a scalar tensor.
    """
    terms = {"classification": F.cross_entropy(logits, labels)}
    if flows is None:
        terms["total"] = weights.classification * terms["classification"]
        return terms
    terms.update(flow_loss_terms(flows, frames, stride, weights, pyramid, backward_flows))
    terms["total"] = (
        weights.classification * terms["classification"]
        + weights.photometric * terms["photometric"]
        + weights.smoothness * terms["smoothness"]
    )
    return terms


def _area_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(image, size=size, mode="area")


def flow_loss_terms(
    flows: torch.Tensor,
    frames: torch.Tensor,
    stride: int,
    weights: LossWeights = LossWeights(),
    pyramid: list[torch.Tensor] | None = None,
    backward_flows: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The unsupervised terms of eq. 3 (eqs. 1 and 2), unweighted.

    Args:
        flows: ``(B, 2, N, H, W)`` stacked flows in pixels.
        frames: ``(B, 1, T, H, W)`` clean frames in [0, 1] that produced ``flows``.
        stride: the triplet stride used by the model.
        pyramid: coarser flows ``[(B*N, 2, h, w), ...]`` (pixels of their scale), used when
            ``weights.multiscale``: the photometric term then averages over scales (weights 1,
            1/2, 1/4, ... from fine to coarse).
        backward_flows: ``(B*N, 2, H, W)`` flows from ``I_k`` into ``I_{k-1}``, used when
            ``weights.occlusion``: both directions are scored, each masked by the
            forward-backward check.

    Returns:
        ``{"photometric", "smoothness"}``, scalar tensors.
    """
    w = weights
    num_flows = flows.shape[2]
    flat_flows = flows.transpose(1, 2).flatten(0, 1)  # (B*N, 2, H, W)
    prev, cur = flow_pair_frames(frames, num_flows, stride)
    if w.occlusion and backward_flows is not None:
        visible_fwd = forward_backward_visibility(flat_flows, backward_flows)
        visible_bwd = forward_backward_visibility(backward_flows, flat_flows)
        photometric = 0.5 * (
            photometric_loss(prev, cur, flat_flows, w.alpha, w.eps, visible_fwd, w.data_term)
            + photometric_loss(cur, prev, backward_flows, w.alpha, w.eps, visible_bwd, w.data_term)
        )
        smoothness = 0.5 * (
            smoothness_loss(flat_flows, w.smooth_alpha, w.eps, prev, w.edge_aware, w.smooth_order)
            + smoothness_loss(backward_flows, w.smooth_alpha, w.eps, cur, w.edge_aware, w.smooth_order)
        )
    else:
        photometric = photometric_loss(prev, cur, flat_flows, w.alpha, w.eps, term=w.data_term)
        smoothness = smoothness_loss(flat_flows, w.smooth_alpha, w.eps, prev, w.edge_aware, w.smooth_order)
    if w.long_pair > 0:
        # constant velocity: the first frame is also rebuilt from the third, warped by twice the
        # flow. The displacement doubles, and so does the photometric evidence of a sub-pixel motion.
        third = triplet_frames(frames, num_flows, stride, 2)
        long = photometric_loss(prev, third, 2.0 * flat_flows, w.alpha, w.eps, term=w.data_term)
        photometric = (photometric + w.long_pair * long) / (1.0 + w.long_pair)
    if w.multiscale and pyramid:
        total, norm = photometric, 1.0
        for level, coarse in enumerate(pyramid, start=1):
            size = tuple(coarse.shape[-2:])
            scale_weight = 0.5**level
            total = total + scale_weight * photometric_loss(
                _area_resize(prev, size), _area_resize(cur, size), coarse, w.alpha, w.eps, term=w.data_term
            )
            norm += scale_weight
        photometric = total / norm
    return {"photometric": photometric, "smoothness": smoothness}

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


def census_transform(image: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Soft ternary census of ``(B, 1, H, W)`` images: ``(B, (2r+1)^2, H, W)`` in (-1, 1).

    Each channel compares a pixel with one neighbour, normalised so the descriptor does not
    depend on local brightness or contrast (robust to the lighting changes that break the
    brightness-constancy assumption).
    """
    size = 2 * radius + 1
    patches = F.unfold(F.pad(image, (radius,) * 4, mode="replicate"), size)  # (B, size^2, H*W)
    patches = patches.view(image.shape[0], size * size, *image.shape[-2:])
    diff = patches - image
    return diff / torch.sqrt(0.81 + diff * diff)


def ssim_dissimilarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(1 - SSIM) / 2`` over 3 x 3 windows, per pixel, ``(B, C, H, W)`` in [0, 1]."""
    c1, c2 = 0.01**2, 0.03**2
    mu_x = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    mu_y = F.avg_pool2d(y, 3, 1, 1, count_include_pad=False)
    var_x = F.avg_pool2d(x * x, 3, 1, 1, count_include_pad=False) - mu_x**2
    var_y = F.avg_pool2d(y * y, 3, 1, 1, count_include_pad=False) - mu_y**2
    cov = F.avg_pool2d(x * y, 3, 1, 1, count_include_pad=False) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ((1 - ssim) / 2).clamp(0, 1)


def data_penalty(warped: torch.Tensor, target: torch.Tensor, term: str, alpha: float, eps: float) -> torch.Tensor:
    """Per-pixel data term ``(B, 1, H, W)`` between a warped frame and its target.

    ``term``: ``"charbonnier"`` (the paper's eq. 1), ``"census"`` (soft Hamming distance of census
    descriptors, then Charbonnier) or ``"ssim"`` (0.85 SSIM dissimilarity + 0.15 Charbonnier).
    """
    if term == "charbonnier":
        return charbonnier(warped - target, alpha, eps).mean(1, keepdim=True)
    if term == "census":
        diff = census_transform(warped) - census_transform(target)
        distance = (diff * diff / (0.1 + diff * diff)).mean(1, keepdim=True)
        return charbonnier(distance, alpha, eps)
    if term == "ssim":
        return 0.85 * ssim_dissimilarity(warped, target).mean(1, keepdim=True) + 0.15 * charbonnier(
            warped - target, alpha, eps
        ).mean(1, keepdim=True)
    raise ValueError(f"unknown data term {term!r}; choose charbonnier, census or ssim")


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


def forward_backward_visibility(
    flow: torch.Tensor, other: torch.Tensor, scale: float = 0.01, offset: float = 0.5
) -> torch.Tensor:
    """``(B, 1, H, W)`` 1 where ``flow`` passes the forward-backward consistency check, else 0.

    ``other`` is the flow in the opposite direction, living on the grid ``flow`` points into. A
    pixel is taken as occluded when ``|F + B(x + F)|^2 > scale * (|F|^2 + |B(x + F)|^2) + offset``.
    """
    back = backward_warp(other, flow)
    mismatch = ((flow + back) ** 2).sum(1, keepdim=True)
    bound = scale * ((flow**2).sum(1, keepdim=True) + (back**2).sum(1, keepdim=True)) + offset
    return (mismatch <= bound).to(flow.dtype).detach()


def triplet_frames(frames: torch.Tensor, num_flows: int, stride: int, position: int) -> torch.Tensor:
    """Frame ``position`` (0, 1 or 2) of every triplet of a clip, ``(B * N, 1, H, W)`` clip-major.

    Args:
        frames: ``(B, 1, T, H, W)`` clean frames in [0, 1].
        num_flows: ``N``, flows per clip.
        stride: triplet stride ``s``; triplet ``j`` is frames ``j*s, j*s+1, j*s+2``.
    """
    index = torch.arange(num_flows, device=frames.device) * stride + position
    return frames[:, :, index].transpose(1, 2).flatten(0, 1)


def clip_triplet_pairs(
    frames: torch.Tensor, num_flows: int, stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frames each flow of a clip relates: ``I_{k-1}`` and ``I_k`` of every triplet, two
    ``(B * N, 1, H, W)`` tensors ordered clip-major like the stacked flows (see :func:`triplet_frames`)."""
    return triplet_frames(frames, num_flows, stride, 0), triplet_frames(frames, num_flows, stride, 1)


@dataclass(frozen=True)
class LossWeights:
    """The constants of eq. 3, the Charbonnier settings and the switches of the variants."""

    classification: float = 1.0
    photometric: float = 100.0
    smoothness: float = 1.0
    alpha: float = 0.45
    eps: float = 1e-3
    smooth_alpha: float = 0.45
    data_term: str = "charbonnier"
    edge_aware: float = 0.0
    smooth_order: int = 1
    long_pair: float = 0.0
    multiscale: bool = False
    occlusion: bool = False


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
    prev, cur = clip_triplet_pairs(frames, num_flows, stride)
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

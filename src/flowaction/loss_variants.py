"""Variants of the paper's flow losses, each switched on by a ``loss.*`` key.

* data terms other than the paper's Charbonnier (``loss.data_term``): a soft census transform and
  SSIM, both robust to the lighting changes that break brightness constancy;
* forward-backward occlusion masks (``loss.occlusion``).

Tensors only: nothing here knows about data sets or models.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flowaction.warp import backward_warp


def charbonnier(x: torch.Tensor, alpha: float = 0.45, eps: float = 1e-3) -> torch.Tensor:
    """Generalised Charbonnier penalty ``(x^2 + eps^2)^alpha``, element-wise (the paper's rho)."""
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

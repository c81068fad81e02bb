"""Differentiable backward warping (the spatial-transformer bilinear sampler).

Convention: a flow ``O`` is defined on the pixel grid of the first frame and
points into the second, ``I0(x) ~ I1(x + O(x))``. ``backward_warp(I1, O)`` therefore rebuilds
``I0`` from ``I1``. Channel 0 of a flow is horizontal (u, +right), channel 1 vertical (v, +down),
both in pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _sample_positions(flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute sampling positions ``x + u`` and ``y + v`` in pixels, each ``(B, H, W)``."""
    _, _, height, width = flow.shape
    ys = torch.arange(height, device=flow.device, dtype=flow.dtype).view(1, height, 1)
    xs = torch.arange(width, device=flow.device, dtype=flow.dtype).view(1, 1, width)
    return xs + flow[:, 0], ys + flow[:, 1]


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at ``x + flow(x)`` with bilinear interpolation.

    Args:
        image: ``(B, C, H, W)``, any value range.
        flow: ``(B, 2, H, W)`` in pixels (u, v).

    Returns:
        ``(B, C, H, W)`` with ``out(x) = image(x + flow(x))``; samples outside the frame are 0
        (mask them with :func:`in_frame_mask`).
    """
    if image.shape[0] != flow.shape[0] or image.shape[-2:] != flow.shape[-2:] or flow.shape[1] != 2:
        raise ValueError(f"image {tuple(image.shape)} and flow {tuple(flow.shape)} do not match")
    _, _, height, width = flow.shape
    x, y = _sample_positions(flow)
    # align_corners=True pairs with the (W - 1) normalisation: pixel centres at -1 and +1. Any
    # other pairing shifts every sample by half a pixel.
    grid = torch.stack(
        (2.0 * x / max(width - 1, 1) - 1.0, 2.0 * y / max(height - 1, 1) - 1.0), dim=-1
    )
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def in_frame_mask(flow: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` float mask: 1 where ``x + flow(x)`` lies inside the frame, else 0."""
    _, _, height, width = flow.shape
    x, y = _sample_positions(flow)
    inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    return inside.unsqueeze(1).to(flow.dtype)

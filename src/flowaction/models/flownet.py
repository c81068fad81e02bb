"""The small flow network: three frames in, one optical flow out.

Its first layer is a 3D convolution over the triplet (temporal kernel 3, no temporal padding),
which collapses time; the rest is a 2D encoder-decoder with skip connections that predicts the
flow coarse-to-fine. Most of its work runs at 1/2 resolution and below: a full-resolution network
costs as much per step as the 3D ResNet behind it. An optional thin full-resolution level
(``refine``) corrects the upsampled flow from the warp error it leaves. An optional search at every
level (``pyramid``) matches the frames at 1/8, 1/4 and 1/2 resolution, the second one warped by
the coarser level's flow first, so that motions of several pixels are found coarse-to-fine; with
``features`` it matches learned features of each frame there instead of its pooled intensities.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from flowaction.models.conv3d import Conv3d
from flowaction.warp import backward_warp


def _pool2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2, ceil_mode=True)``; for an even height and width as sums of strided views,
    which a CPU takes several times faster than the pooling kernel over many channels."""
    if x.shape[-2] % 2 or x.shape[-1] % 2:
        return F.avg_pool2d(x, 2, ceil_mode=True)
    rows = x[..., 0::2, :] + x[..., 1::2, :]
    return (rows[..., 0::2] + rows[..., 1::2]).mul_(0.25)


def _conv(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1), nn.LeakyReLU(0.1, inplace=True)
    )


class FlowNet(nn.Module):
    """Triplets ``(N, 1, 3, H, W)`` -> flows ``(N, 2, H, W)`` in pixels.

    The flow ``O_k`` is defined on the grid of the first frame ``I_{k-1}`` and points into the
    middle frame ``I_k``. ``H`` and ``W`` need not be multiples of 8.

    Args:
        width: channels of the first stage; later stages use 2x, 4x and 6x.
        in_frames: frames per input group (3 in the paper).
        zero_output: start the prediction layers at zero (zero flow); False keeps PyTorch's
            random initialisation, so the first flows are small random fields.
        refine: add a full-resolution level after the half-resolution one: it warps the middle
            frame by the upsampled flow, compares it with the first frame and predicts a
            correction at every pixel (sub-pixel motion and flow edges that the half-resolution
            flow blurs).
        pyramid: add a matching cost at every decoder level (PWC-Net's coarse-to-fine search): the
            frames average-pooled to 1/8, 1/4 and 1/2 resolution, the second one warped by the
            flow of the level below, compared with the first at every shift of up to
            ``search_radius`` px of that level. At 1/8 and radius 2 that is +-16 px of the full
            frame, where the plain network's one cost volume covers +-``correlation_radius`` px.
        input_scale: enlarge the frames this many times (bilinear) before the network and
            average the flow back to the frames' grid (its vectors divided by the factor). At 2 the
            half-resolution levels work at the frames' own resolution: flow detail of a pixel or
            two (thin limbs), for four times the cost. The weights do not depend on it.
        features: with ``pyramid``, the search compares features of each frame (a small encoder
            shared by both frames, as in PWC-Net: 1 -> width/2, width, 2 x width channels at 1/2, 1/4
            and 1/8 resolution) instead of the frames' pooled intensities: texture that pooling
            averages away, and a learned robustness to brightness changes.
        search_radius: with ``pyramid``, the largest shift searched at every level, in pixels of
            that level (at 1/8: 8 x this of the full frame).
    """

    def __init__(
        self, width: int = 16, in_frames: int = 3, correlation_radius: int = 3, zero_output: bool = True,
        refine: bool = False, pyramid: bool = False, input_scale: int = 1, features: bool = False,
        search_radius: int = 2,
    ) -> None:
        super().__init__()
        if input_scale < 1:
            raise ValueError(f"input_scale must be >= 1, got {input_scale}")
        if features and not pyramid:
            raise ValueError("features are what the search at every level compares: they need pyramid=True")
        if search_radius < 1:
            raise ValueError(f"search_radius must be >= 1, got {search_radius}")
        self.input_scale = input_scale
        c1, c2, c3, c4 = width, 2 * width, 4 * width, 6 * width
        self.width = width
        self.in_frames = in_frames
        self.correlation_radius = correlation_radius
        cost_channels = (2 * correlation_radius + 1) ** 2 if correlation_radius > 0 else 0
        # 3D conv over time without temporal padding: (N, 1, 3, H, W) -> (N, c1, 1, H/2, W/2)
        self.stem = Conv3d(1, c1, kernel_size=(in_frames, 5, 5), stride=(1, 2, 2), padding=(0, 2, 2))
        # the stem's features enter twice: as they are and as products of channel pairs.
        # Flow is a second-order function of the frames (temporal change times spatial
        # gradient, as in Lucas-Kanade); a product layer gives the network that directly, where
        # a ReLU network starting from zero flow sits on a long plateau before finding it.
        self.enc1 = _conv(c1 + c1 // 2 + cost_channels, c2)  # 1/2
        self.enc2 = nn.Sequential(_conv(c2, c3, stride=2), _conv(c3, c3))  # 1/4
        self.enc3 = nn.Sequential(_conv(c3, c4, stride=2), _conv(c4, c4))  # 1/8
        self.pyramid = pyramid
        self.search_radius = search_radius
        search = (2 * search_radius + 1) ** 2 if pyramid else 0
        if pyramid:
            self.mix3 = _conv(c4 + search, c4)
        self.features = features
        if features:  # one encoder for both frames: (N, 1, H, W) -> features at 1/2, 1/4, 1/8
            f1, f2, f3 = max(c1 // 2, 1), c1, c2
            self.feat1 = nn.Sequential(_conv(1, f1, stride=2), _conv(f1, f1))
            self.feat2 = nn.Sequential(_conv(f1, f2, stride=2), _conv(f2, f2))
            self.feat3 = nn.Sequential(_conv(f2, f3, stride=2), _conv(f3, f3))
        self.predict3 = nn.Conv2d(c4, 2, 3, padding=1)
        # narrow decoder: at 1/4 and 1/2 resolution it dominates the cost, so it stays thin
        self.dec2 = _conv(c4 + c3 + 2 + search, c2)
        self.predict2 = nn.Conv2d(c2, 2, 3, padding=1)
        self.dec1 = _conv(c2 + c2 + 2 + search, c1)
        self.predict1 = nn.Conv2d(c1, 2, 3, padding=1)
        self.refine = refine
        predictors = [self.predict3, self.predict2, self.predict1]
        if refine:
            # the frames, the warped middle frame, its difference to the first, the flow and the
            # half-resolution decoder's features
            self.dec0 = nn.Sequential(_conv(in_frames + 2 + 2 + c1, c1), _conv(c1, c1))
            self.predict0 = nn.Conv2d(c1, 2, 3, padding=1)
            predictors.append(self.predict0)
        for predictor in predictors if zero_output else ():
            # start from zero flow: the identity warp is the natural initial guess. Without a flow
            # loss nothing would then move it (the action network's ReLUs pass no gradient at a
            # constant zero input), hence the option of PyTorch's random initialisation.
            nn.init.zeros_(predictor.weight)
            nn.init.zeros_(predictor.bias)

    def _cost_volume(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Matching costs of ``first`` against ``second`` shifted by every integer displacement
        up to ``correlation_radius`` px, ``(N, (2r+1)^2, H/2, W/2)``.

        A parameter-free correlation layer (as in FlowNetC / PWC-Net): the squared difference for
        each displacement, pooled over 2 x 2 to the stem's resolution. It turns "where did this
        pixel go" into "which channel is smallest", which a small network learns in a few hundred
        steps without supervision, where regressing flow from raw frames takes far longer.
        """
        r = self.correlation_radius
        height, width = first.shape[-2:]
        padded = F.pad(second, (r, r, r, r), mode="replicate")[:, 0]
        # every shifted window of the padded frame as a view (N, 2r+1, 2r+1, H, W), the differences
        # written by one subtraction and squared in place (the inputs need no gradient)
        windows = padded.unfold(1, height, 1).unfold(2, width, 1)
        if torch.compiler.is_compiling():  # traced (export, torch.compile): no writing through out=
            costs = (first[:, :, None] - windows).contiguous()
        else:
            costs = first.new_empty(first.shape[0], 2 * r + 1, 2 * r + 1, height, width)
            torch.sub(first[:, :, None], windows, out=costs)
        return _pool2(costs.view(first.shape[0], -1, height, width).square_())

    def _level_cost(self, first: torch.Tensor, second: torch.Tensor, size: tuple[int, int],
                    flow: torch.Tensor | None) -> torch.Tensor:
        """Mean squared differences over channels ``(N, (2R+1)^2, h, w)`` of ``first`` and ``second``
        (``(N, C, H, W)``: the frames, or their features at this level) average-pooled to ``size``,
        ``second`` warped by ``flow`` (pixels of ``size``) first, at every shift of up to
        ``R = search_radius`` px."""
        a = first if first.shape[-2:] == size else F.adaptive_avg_pool2d(first, size)
        b = second if second.shape[-2:] == size else F.adaptive_avg_pool2d(second, size)
        if flow is not None:
            b = backward_warp(b, flow)
        r = self.search_radius
        height, width = size
        padded = F.pad(b, (r, r, r, r), mode="replicate")
        if a.shape[1] == 1:  # the frames: a slice per shift, the arithmetic the shipped networks were trained with
            return torch.cat([(a - padded[..., r + dy : r + dy + height, r + dx : r + dx + width]).square()
                              for dy in range(-r, r + 1) for dx in range(-r, r + 1)], dim=1)
        # features: every shifted window as a view (N, C, 2r+1, 2r+1, h, w), one subtraction for all
        windows = padded.unfold(2, height, 1).unfold(3, width, 1)
        return (a[:, :, None, None] - windows).square().mean(1).reshape(a.shape[0], -1, height, width)

    def _pyramid_inputs(self, first: torch.Tensor, second: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """What the search compares at 1/2, 1/4 and 1/8: the frames themselves (pooled per level),
        or with ``features`` the shared encoder's features of each frame."""
        if not self.features:
            return [(first, second)] * 3
        levels, x = [], torch.cat((first, second))
        for encoder in (self.feat1, self.feat2, self.feat3):
            x = encoder(x)
            levels.append(x.chunk(2))
        return levels

    @staticmethod
    def _upsample_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Resize a flow field and rescale its vectors so they stay in pixels of ``size``."""
        scale_y = size[0] / flow.shape[-2]
        scale_x = size[1] / flow.shape[-1]
        up = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
        return torch.cat((up[:, :1] * scale_x, up[:, 1:] * scale_y), dim=1)

    def forward(self, triplets: torch.Tensor, return_pyramid: bool = False):
        """Estimate one flow per triplet.

        Args:
            triplets: ``(N, 1, 3, H, W)`` normalised grayscale frames ``I_{k-1}, I_k, I_{k+1}``.
            return_pyramid: also return the coarser flows (each in pixels of its own scale).

        Returns:
            ``(N, 2, H, W)`` flow in pixels, or ``(flow, [coarser flows, fine to coarse])``.
        """
        if triplets.dim() != 5 or triplets.shape[2] != self.in_frames:
            raise ValueError(f"expected (N, 1, {self.in_frames}, H, W), got {tuple(triplets.shape)}")
        scale = self.input_scale
        if scale > 1:
            n, _, t, h, w = triplets.shape
            triplets = F.interpolate(triplets.reshape(n, t, h, w), scale_factor=scale, mode="bilinear",
                                     align_corners=False).view(n, 1, t, h * scale, w * scale)
        height, width = triplets.shape[-2:]
        stem = self.stem(triplets).squeeze(2)
        half = stem.shape[1] // 2
        features = [F.leaky_relu(stem, 0.1), stem[:, :half] * stem[:, half : 2 * half]]
        if self.correlation_radius > 0:
            cost = self._cost_volume(triplets[:, :, 0], triplets[:, :, 1])
            features.append(cost[..., : stem.shape[-2], : stem.shape[-1]])
        x0 = torch.cat(features, dim=1)
        x1 = self.enc1(x0)
        x2 = self.enc2(x1)
        x3 = self.enc3(x2)
        if self.pyramid:
            (a1, b1), (a2, b2), (a3, b3) = self._pyramid_inputs(triplets[:, :, 0], triplets[:, :, 1])
            x3 = self.mix3(torch.cat((x3, self._level_cost(a3, b3, x3.shape[-2:], None)), 1))
        flow3 = self.predict3(x3)
        up3 = self._upsample_flow(flow3, x2.shape[-2:])
        extra2 = [self._level_cost(a2, b2, x2.shape[-2:], up3)] if self.pyramid else []
        d2 = self.dec2(torch.cat([F.interpolate(x3, size=x2.shape[-2:], mode="nearest"), x2, up3, *extra2], 1))
        flow2 = up3 + self.predict2(d2)
        up2 = self._upsample_flow(flow2, x1.shape[-2:])
        extra1 = [self._level_cost(a1, b1, x1.shape[-2:], up2)] if self.pyramid else []
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=x1.shape[-2:], mode="nearest"), x1, up2, *extra1], 1))
        flow1 = up2 + self.predict1(d1)
        flow = self._upsample_flow(flow1, (height, width))
        if self.refine:
            frames = triplets[:, 0]  # (N, 3, H, W)
            warped = backward_warp(frames[:, 1:2], flow)
            features = F.interpolate(d1, size=(height, width), mode="nearest")
            d0 = self.dec0(torch.cat((frames, warped, warped - frames[:, :1], flow, features), 1))
            flow = flow + self.predict0(d0)
        if scale > 1:
            flow = F.avg_pool2d(flow, scale) / scale
        if return_pyramid:
            return flow, [flow1, flow2, flow3]
        return flow

"""One batch through any model of ``flowaction.models.joint``: logits, flows and the loss terms.

Shared by training and evaluation so both see the same inputs for every model kind.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from flowaction.data.clips import add_input_noise
from flowaction.losses import LossWeights, joint_loss
from flowaction.models.joint import FrameModel, JointModel, PrecomputedFlowModel, num_triplets


def select_pairs(pair_flows: torch.Tensor, num_flows: int, stride: int) -> torch.Tensor:
    """Per-pair flows ``(B, T-1, C, H, W)`` -> those of the triplets' pairs ``(B, C, N, H, W)``.

    Pair ``j*s -> j*s+1`` belongs to triplet ``j``.
    """
    index = torch.arange(num_flows, device=pair_flows.device) * stride
    return pair_flows[:, index].transpose(1, 2)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def scale_gradient(tensor: torch.Tensor, scale: float) -> torch.Tensor:
    """``tensor`` unchanged, with the gradient flowing back through it scaled by ``scale``
    (0 stops it, 1 is a no-op)."""
    if scale == 1.0 or not tensor.requires_grad:
        return tensor
    if scale == 0.0:
        return tensor.detach()
    return _ScaleGradient.apply(tensor, scale)


def classical_stack(frames: torch.Tensor, num_flows: int, stride: int, method: str = "dis") -> torch.Tensor:
    """OpenCV flow on the pairs the model's flows relate: frames ``(B, 1, T, H, W)`` in [0, 1]
    -> ``(B, 2, N, H, W)`` pixels (pair ``j*s -> j*s+1``)."""
    from flowaction.flow.classical import classical_flow

    images = (frames[:, 0].detach().cpu().numpy() * 255.0).round().astype(np.uint8)  # (B, T, H, W)
    out = np.stack([
        np.stack([classical_flow(clip[j * stride], clip[j * stride + 1], method) for j in range(num_flows)], axis=1)
        for clip in images
    ])
    return torch.from_numpy(out).to(frames.device)


@torch.no_grad()
def model_flows(model: torch.nn.Module, frames: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """The flows a model classifies from, for clean frames ``(B, 1, T, H, W)`` in [0, 1].

    Returns ``(source, flows (B, 2, N, H, W))`` with ``source`` ``"learned"`` (a flow network),
    ``"dis"`` or ``"farneback"`` (OpenCV flow, computed as at evaluation), or None for a model
    that sees frames only.
    """
    if isinstance(model, JointModel):
        return "learned", model.flows(frames)
    if isinstance(model, PrecomputedFlowModel):
        count = num_triplets(frames.shape[2], model.triplet_stride)
        return model.method, classical_stack(frames, count, model.triplet_stride, model.method)
    return None


def forward_batch(
    model: torch.nn.Module,
    batch: dict,
    device: torch.device,
    weights: LossWeights,
    noise_std: float = 0.0,
    freeze_flow: bool = False,
    flow_grad_scale: float = 1.0,
    amp: str = "off",
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """Run ``model`` on a loader batch and compute the joint loss.

    With ``amp`` ``"bf16"`` / ``"fp16"`` the networks run under autocast; their outputs are cast
    back to float32, so the warp and every loss term are computed in full precision.

    Args:
        noise_std: Gaussian input noise (training only); the losses see the clean frames.
        freeze_flow: compute the learned flows without gradient (second stage of two-stage
            training).
        flow_grad_scale: share of the classification gradient that reaches the flow network
            (the flow losses always train it fully).

    Returns:
        ``(logits (B, K), flows (B, 2, N, H, W) or None, loss terms)``.
    """
    frames = batch["frames"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    if isinstance(model, FrameModel):
        with autocast():
            logits, _ = model(add_input_noise(frames, noise_std))
        logits = logits.float()
        return logits, None, joint_loss(logits, labels, None, frames, 1, weights)
    if isinstance(model, PrecomputedFlowModel):
        count = num_triplets(frames.shape[2], model.triplet_stride)
        if "classical" in batch:  # precomputed on the clean frames (model.classical_on=clean)
            flows = select_pairs(batch["classical"].to(device), count, model.triplet_stride)
        else:  # on the very input a learned flow network would see: jitter, crop and noise
            noisy = add_input_noise(frames, noise_std).clamp(0.0, 1.0)
            flows = classical_stack(noisy, count, model.triplet_stride, model.method)
        with autocast():
            logits, _ = model(flows)
        logits = logits.float()
        return logits, flows, joint_loss(logits, labels, None, frames, 1, weights)
    if not isinstance(model, JointModel):
        raise TypeError(f"unsupported model {type(model).__name__}")
    noisy = add_input_noise(frames, noise_std)
    pyramid = backward = None
    with torch.set_grad_enabled(torch.is_grad_enabled() and not freeze_flow), autocast():
        if weights.multiscale:
            flows, pyramid = model.flows(noisy, return_pyramid=True)
        else:
            flows = model.flows(noisy)
        if weights.occlusion:
            backward = model.backward_flows(noisy)
    # the warp and the flow losses in float32: sub-pixel flow needs the precision
    flows = flows.float()
    pyramid = [level.float() for level in pyramid] if pyramid is not None else None
    backward = backward.float() if backward is not None else None
    with autocast():
        logits = model.classify(scale_gradient(flows, flow_grad_scale), noisy)
    logits = logits.float()
    terms = joint_loss(logits, labels, flows, frames, model.triplet_stride, weights, pyramid, backward)
    return logits, flows, terms

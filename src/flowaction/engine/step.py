"""The training step: one batch through any model of ``flowaction.models.joint``, giving logits,
flows and the terms of the joint loss.

Training, evaluation and the benchmarks all run batches through :func:`forward_batch`, so they see
the same inputs for every model kind; :class:`TrainStep` wraps it as a module for
``DistributedDataParallel`` and ``torch.compile``.
"""
from __future__ import annotations

import torch

from flowaction.config import LossWeights
from flowaction.data.clips import add_input_noise
from flowaction.engine.device import autocast
from flowaction.flow.classical import stacked_classical_flow
from flowaction.losses import joint_loss
from flowaction.models.joint import FrameModel, JointModel, PrecomputedFlowModel
from flowaction.triplets import num_triplets, select_pairs


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


@torch.no_grad()
def model_flows(model: torch.nn.Module, frames: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """The flows a model classifies from, for clean frames ``(B, 1, T, H, W)`` in [0, 1].

    Returns ``(source, flows (B, 2, N, H, W))`` with ``source`` ``"learned"`` (a flow network),
    ``"dis"`` or ``"farneback"`` (OpenCV flow, computed as at evaluation), or None for a model
    that sees frames only or the ground truth (which frames alone do not give).
    """
    if isinstance(model, JointModel):
        return "learned", model.flows(frames)
    if isinstance(model, PrecomputedFlowModel) and model.method != "truth":
        return model.method, stacked_classical_flow(frames, model.triplet_stride, model.method)
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
    # without blocking only into a GPU (from the loader's pinned memory); a CPU copy stays synchronous
    copy_async = device.type == "cuda"
    frames = batch["frames"].to(device, non_blocking=copy_async)
    labels = batch["label"].to(device, non_blocking=copy_async)
    if isinstance(model, FrameModel):
        with autocast(amp, device):
            logits, _ = model(add_input_noise(frames, noise_std))
        logits = logits.float()
        return logits, None, joint_loss(logits, labels, None, frames, 1, weights)
    if isinstance(model, PrecomputedFlowModel):
        count = num_triplets(frames.shape[2], model.triplet_stride)
        if model.method == "truth":  # the oracle: the data's ground-truth flow of the same pairs
            if "flow" not in batch:
                raise ValueError("model.input=truth needs data with ground-truth flow (a generated benchmark, "
                                 "data.frame_step=1)")
            flows = select_pairs(batch["flow"].to(device), count, model.triplet_stride).transpose(1, 2)
        elif "classical" in batch:  # precomputed on the clean frames (model.classical_on=clean)
            flows = select_pairs(batch["classical"].to(device), count, model.triplet_stride).transpose(1, 2)
        else:  # on the very input a learned flow network would see: jitter, crop and noise
            noisy = add_input_noise(frames, noise_std).clamp(0.0, 1.0)
            flows = stacked_classical_flow(noisy, model.triplet_stride, model.method)
        with autocast(amp, device):
            logits, _ = model(flows)
        logits = logits.float()
        return logits, flows, joint_loss(logits, labels, None, frames, 1, weights)
    if not isinstance(model, JointModel):
        raise TypeError(f"unsupported model {type(model).__name__}")
    noisy = add_input_noise(frames, noise_std)
    pyramid = backward = None
    with torch.set_grad_enabled(torch.is_grad_enabled() and not freeze_flow), autocast(amp, device):
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
    with autocast(amp, device):
        logits = model.classify(scale_gradient(flows, flow_grad_scale), noisy)
    logits = logits.float()
    terms = joint_loss(logits, labels, flows, frames, model.triplet_stride, weights, pyramid, backward)
    return logits, flows, terms


class TrainStep(torch.nn.Module):
    """:func:`forward_batch` of ``model`` as a module, so that ``DistributedDataParallel`` sees the
    whole forward pass it synchronises (and ``torch.compile`` compiles it)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict, device: torch.device, weights: LossWeights, noise_std: float, freeze_flow: bool,
                flow_grad_scale: float, amp: str = "off"):
        return forward_batch(self.model, batch, device, weights, noise_std, freeze_flow, flow_grad_scale, amp)

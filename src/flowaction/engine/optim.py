"""The optimiser, its schedule, gradient clipping and the update step, shared by joint training
and flow pre-training; and the loss weights of each training stage."""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import torch

from flowaction.config import Config, LossWeights


def adam_options(cfg: Config) -> dict:
    """``torch.optim.Adam`` keywords for ``optim.adam``: the same update rule, three implementations
    (``benchmarks/bench_train.py`` times them)."""
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[cfg.optim.adam]


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Adam:
    """Adam (``optim.adam`` picks PyTorch's implementation) over ``model``. A model with a flow
    network (``model.flow_net``) gets it in a group of its own whose rate is ``optim.flow_lr_scale``
    x the schedule's (each group's ``lr_scale`` is applied at every step)."""
    flow_net = getattr(model, "flow_net", None)
    flow_ids = {id(p) for p in flow_net.parameters()} if flow_net is not None else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in flow_ids], "lr_scale": 1.0}]
    if flow_ids:
        groups.append({"params": list(flow_net.parameters()), "lr_scale": cfg.optim.flow_lr_scale})
    for group in groups:
        group["lr"] = cfg.optim.lr * group["lr_scale"]
    return torch.optim.Adam(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, **adam_options(cfg))


def learning_rate(cfg: Config, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warm-up then cosine decay (or constant), a pure function of the step."""
    base = cfg.optim.lr
    warmup = int(cfg.optim.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return base * (step + 1) / warmup
    if cfg.optim.schedule == "constant":
        return base
    progress = (step - warmup) / max(total_steps - warmup, 1)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def steps_per_epoch(cfg: Config, batches: int) -> int:
    """Optimiser steps of an epoch of ``batches`` loader batches (``optim.accumulate`` per step)."""
    return math.ceil(batches / cfg.optim.accumulate)


def training_length(cfg: Config, steps_per_epoch: int) -> tuple[int, int]:
    """``(optimiser steps, epochs)`` of a run: ``optim.steps`` when set (the last epoch is cut
    short), else ``optim.epochs`` full epochs."""
    if cfg.optim.steps > 0:
        return cfg.optim.steps, math.ceil(cfg.optim.steps / steps_per_epoch)
    return cfg.optim.epochs * steps_per_epoch, cfg.optim.epochs


def clip_gradients(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_(parameters, max_norm)``, leaving the gradients alone when
    its factor would be exactly 1.

    PyTorch always multiplies every gradient by ``min(1, max_norm / (norm + 1e-6))``, which spares a
    GPU the wait for the norm; on a CPU that pass over every gradient costs more memory traffic than
    the norm itself, for nothing whenever the norm is within bounds (most steps). The factor is
    computed as PyTorch computes it, so the result is the same to the bit, NaN norms included.
    """
    parameters = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
    if norm.device.type == "cpu" and bool(max_norm / (norm + 1e-6) >= 1.0):
        return
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)


def make_scaler(cfg: Config, device: torch.device) -> torch.amp.GradScaler:
    """fp16 loses small gradients without loss scaling; bf16 and fp32 need none (disabled scaler)."""
    return torch.amp.GradScaler(device.type, enabled=cfg.optim.amp == "fp16")


def apply_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 cfg: Config, rate: float) -> None:
    """The optimiser step after the backward pass(es): every group's rate set to ``rate`` x its
    ``lr_scale``, the gradients unscaled (fp16) and clipped to ``optim.grad_clip``, one step, the
    gradients cleared."""
    for group in optimizer.param_groups:
        group["lr"] = rate * group.get("lr_scale", 1.0)
    scaler.unscale_(optimizer)  # fp16: true gradients for the clipping
    if cfg.optim.grad_clip > 0:
        clip_gradients(model.parameters(), cfg.optim.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def stage_weights(cfg: Config, epoch: int) -> tuple[LossWeights, bool]:
    """Loss weights of an epoch and whether the flow network is frozen.

    With ``optim.flow_pretrain_epochs = E > 0`` (two-stage training, as in Hidden Two-Stream),
    epochs ``< E`` train the flow network on the unsupervised terms alone; later epochs freeze it
    and train the classifier on cross-entropy alone. With ``optim.flow_warmup_epochs = W`` epochs
    ``< W`` train on the flow losses alone and later ones on the whole of eq. 3 (nothing frozen).
    Otherwise every epoch uses eq. 3 as is.
    """
    weights = cfg.loss
    pretrain = cfg.optim.flow_pretrain_epochs
    if pretrain <= 0:
        if epoch < cfg.optim.flow_warmup_epochs:  # flow warm-up: the flow losses alone, nothing frozen
            return dataclasses.replace(weights, classification=0.0), False
        return weights, False
    if epoch < pretrain:
        return dataclasses.replace(weights, classification=0.0), False
    return dataclasses.replace(weights, photometric=0.0, smoothness=0.0), True

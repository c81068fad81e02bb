"""One epoch of joint training: accumulation, DDP synchronisation, non-finite losses, metrics."""
from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from flowaction.config import Config
from flowaction.engine import distributed
from flowaction.engine.evaluate import score_flows
from flowaction.engine.optim import apply_update, learning_rate, make_scaler, stage_weights, steps_per_epoch
from flowaction.engine.step import TrainStep
from flowaction.flow.metrics import FlowErrors

TRAIN_SCORE_EVERY = 10  # training-split flow metrics come from every 10th batch


class NonFiniteLoss(ValueError):
    """A loss term became NaN or infinite (``optim.nonfinite=stop``)."""


@dataclasses.dataclass
class EpochState:
    """Running sums of an epoch, kept in step checkpoints so a resumed epoch reports all of it."""

    sums: dict = dataclasses.field(default_factory=dict)
    clips: int = 0
    correct: int = 0
    batches: int = 0  # loader batches consumed this epoch (this process's share)
    skipped: int = 0  # optimiser steps skipped for a non-finite loss

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def train_one_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    cfg: Config,
    device: torch.device,
    epoch: int,
    step: int,
    total_steps: int,
    progress: bool = True,
    *,
    runner: torch.nn.Module | None = None,
    state: EpochState | None = None,
    context=None,
    on_step=None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[dict[str, float], int]:
    """One pass over the training loader. Returns per-clip mean metrics and the new step.

    Args:
        runner: the module that runs a batch (a ``DistributedDataParallel`` around
            ``TrainStep(model)`` in a distributed run); default ``TrainStep(model)``.
        state: the sums of the part of this epoch trained before an interruption.
        context: a :class:`flowaction.engine.distributed.Context` (metrics are summed over ranks).
        on_step: called as ``on_step(step, state)`` after every optimiser step (step checkpoints).
        scaler: the gradient scaler of ``optim.amp=fp16`` (a disabled one otherwise).

    ``optim.accumulate = k`` sums the gradients of ``k`` batches (each loss divided by ``k``)
    into one optimiser step. A NaN or infinite loss raises :class:`NonFiniteLoss` naming the step
    and the terms (``optim.nonfinite=stop``), or skips that step (``skip``).
    """
    context = context or distributed.Context()
    runner = runner if runner is not None else TrainStep(model)
    scaler = scaler if scaler is not None else make_scaler(cfg, device)
    model.train()
    weights, freeze_flow = stage_weights(cfg, epoch)
    if freeze_flow:
        model.flow_net.requires_grad_(False)
    state = state or EpochState()
    accumulate = cfg.optim.accumulate
    per_epoch = steps_per_epoch(cfg, state.batches + len(loader))
    flow_errors = FlowErrors()
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress, mininterval=1.0)
    last = len(loader) - 1
    micro = 0
    optimizer.zero_grad(set_to_none=True)
    for index, batch in enumerate(bar):
        if step >= total_steps:  # optim.steps ends training inside an epoch
            break
        steps_now = micro + 1 == accumulate or index == last  # the last batch of a step (or of the epoch)
        # DDP: gradients are all-reduced once per optimiser step, not for every accumulated batch
        sync = runner.no_sync() if (not steps_now and hasattr(runner, "no_sync")) else contextlib.nullcontext()
        with sync:
            logits, flows, terms = runner(batch, device, weights, cfg.augment.noise_std, freeze_flow,
                                          cfg.model.flow_grad_scale, cfg.optim.amp)
            finite = distributed.all_true(context, bool(torch.isfinite(terms["total"])))
            if finite:
                scaler.scale(terms["total"] / accumulate).backward()
        state.batches += 1
        micro += 1
        if not finite:
            bad = [key for key, value in terms.items() if not bool(torch.isfinite(value))] or ["total (on another rank)"]
            if cfg.optim.nonfinite == "stop":
                raise NonFiniteLoss(f"step {step} (epoch {epoch}): loss term(s) {', '.join(bad)} became NaN or "
                                    "infinite; training stopped, the last checkpoint written before it is kept "
                                    "(optim.nonfinite=skip skips such steps instead)")
            state.skipped += 1
            optimizer.zero_grad(set_to_none=True)
            micro = 0
            continue
        labels = batch["label"].to(device)
        size = labels.shape[0]
        state.clips += size
        state.correct += int((logits.argmax(1) == labels).sum())
        for key, value in terms.items():
            state.sums[key] = state.sums.get(key, 0.0) + float(value.detach()) * size
        # generated data: score the flow being learnt against ground truth, on every
        # TRAIN_SCORE_EVERY-th batch (OpenCV's flow for the comparison costs a tenth of a step)
        if "flow" in batch and flows is not None and (state.batches - 1) % TRAIN_SCORE_EVERY == 0:
            flow_errors.merge(score_flows(flows, batch, cfg.model.triplet_stride))
        if not steps_now:
            continue
        apply_update(model, optimizer, scaler, cfg, learning_rate(cfg, step, total_steps, per_epoch))
        micro = 0
        step += 1
        bar.set_postfix(loss=f"{state.sums['total'] / state.clips:.3f}", acc=f"{state.correct / state.clips:.2f}")
        if on_step is not None:
            on_step(step, state)
    keys = sorted(state.sums)
    totals = distributed.all_sum(context, [state.sums[k] for k in keys] + [state.clips, state.correct])
    clips = max(totals[-2], 1)
    metrics = {key: value / clips for key, value in zip(keys, totals[:-2])}
    metrics["accuracy"] = totals[-1] / clips
    metrics["lr"] = optimizer.param_groups[0]["lr"]
    if state.skipped:
        metrics["skipped_steps"] = state.skipped
    metrics.update({k: v for k, v in flow_errors.result().items() if not k.endswith("_pixels")})
    return metrics, step

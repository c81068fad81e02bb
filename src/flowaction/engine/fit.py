"""``fit``: a whole training run into a folder, validated every epoch, resumable to the batch.

Under ``torchrun`` every process trains its share of each epoch in ``DistributedDataParallel`` and
only rank 0 validates, writes files and prints.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from flowaction.checkpoint import load_checkpoint, load_weights, restore_rng, rng_state, save_checkpoint
from flowaction.config import FRAME_INPUTS, Config, save_config, to_dict
from flowaction.data.cache import ClipCache, atomic_write_json
from flowaction.engine import distributed
from flowaction.engine.device import resolve_amp
from flowaction.engine.evaluate import run_evaluation
from flowaction.engine.loaders import begin_epoch, check_training_data, make_loader
from flowaction.engine.loop import EpochState, train_one_epoch
from flowaction.engine.optim import build_optimizer, make_scaler, steps_per_epoch, training_length
from flowaction.engine.step import TrainStep
from flowaction.flow.metrics import describe_flow_errors
from flowaction.models.build import build_model, count_parameters
from flowaction.models.weights import describe, initialise_from, load_flow_weights
from flowaction.plots import plot_curves
from flowaction.runlog import RunLogger
from flowaction.speedups import apply_cpu_speedups, apply_process_settings

CURVES_EVERY_S = 30.0  # curves.png is redrawn at most this often during training (and after the last epoch)
NAMED_CLASSES = 10  # the start-up summary names this many classes
SELECTABLE_VAL_CLIPS = 20  # with fewer validation clips, their accuracy is too coarse to select best.pt on


def is_better(val_metrics: dict, best: dict) -> bool:
    """Whether an epoch's validation metrics make a better ``best.pt`` than ``best``: a higher
    accuracy, or the same accuracy at a lower validation loss (on a small validation split many
    epochs tie, and the first of them is often barely trained)."""
    if val_metrics["accuracy"] != best["val_accuracy"]:
        return val_metrics["accuracy"] > best["val_accuracy"]
    return val_metrics["total"] < best.get("val_loss", float("inf"))


def checkpoint_state(cfg: Config, classes: list[str], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     epoch: int, step: int, best: dict, frame_size=None, partial: dict | None = None,
                     scaler: torch.amp.GradScaler | None = None) -> dict:
    """The checkpoint dict of a run at ``step`` (see :mod:`flowaction.checkpoint`)."""
    return {
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "config": to_dict(cfg),
        "classes": list(classes),
        # the stored frame size of the training data: inference on a video file resizes to it
        "frame_size": [int(v) for v in frame_size] if frame_size is not None else None,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "step": step,
        "best": best,
        "rng": rng_state(),
        # written inside an epoch: how far it got (batches of this process's share, running sums)
        "partial": partial,
    }


def fit(
    cfg: Config,
    cache: ClipCache,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    log=print,
) -> dict:
    """Train on ``cache`` into ``out``; validate every epoch; keep ``last.pt`` and ``best.pt``.

    Under ``torchrun`` every process trains its share of each epoch in ``DistributedDataParallel``
    and only rank 0 validates, writes files and prints. ``last.pt`` is written every
    ``optim.checkpoint_every`` epochs and, with ``optim.checkpoint_steps = N``, every N steps; a
    resumed run continues from the exact batch it stopped at, with the optimiser, schedule and
    random states restored.

    Returns a summary: the best validation metrics, epochs run and wall seconds.
    """
    context, device = distributed.setup(cfg.device)
    if not context.main:
        log, progress = (lambda *_: None), False
    if cfg.optim.amp == "auto":
        # resolved once and written into config.yaml, so a resumed run keeps the same precision
        amp, reason = resolve_amp(cfg.optim.amp, device)
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, amp=amp))
        log(f"mixed precision: optim.amp=auto -> {amp} ({reason})")
    out = Path(out)
    distributed.same_everywhere(context, repr(to_dict(cfg)), "config")
    distributed.same_everywhere(context, repr((cache.classes, [v["id"] for v in cache.videos])), "data")
    if context.main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    apply_process_settings(cfg)
    classes = cache.classes
    model = apply_cpu_speedups(build_model(cfg, len(classes)), cfg).to(device)
    if cfg.optim.channels_last:
        model.action_net.to(memory_format=torch.channels_last_3d)  # the convolutions follow the weights' layout
    optimizer = build_optimizer(cfg, model)
    train_loader = make_loader(cfg, cache, cfg.data.train_split, "train", shuffle=True,
                               rank=context.rank, world=context.world, device=device)
    check_training_data(cache, train_loader.dataset.videos, cfg.data.train_split)
    val_loader = make_loader(cfg, cache, cfg.data.val_split, "val", device=device)
    start_epoch, step, best = 0, 0, {"val_accuracy": -1.0, "epoch": -1}
    partial = None
    last_path = out / "last.pt"
    if cfg.model.init and not (resume and last_path.is_file()):
        init_report = initialise_from(model, cfg.model.init, cfg.model.input)
        log(describe(init_report))
        if context.main:
            atomic_write_json(out / "init_report.json", init_report)
    if cfg.model.flow_init != "none" and not (resume and last_path.is_file()):
        meta = load_flow_weights(model.flow_net, cfg.model.flow_init)
        log(f"flow network initialised from {cfg.model.flow_init}"
            + (f" ({meta['steps']} pre-training steps)" if "steps" in meta else ""))
    scaler = make_scaler(cfg, device)
    if resume and last_path.is_file():
        state = load_checkpoint(last_path, map_location=device)
        load_weights(model, state["model"], last_path)
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, best, partial = state["step"], state["best"], state.get("partial")
        start_epoch = state["epoch"] if partial else state["epoch"] + 1
        restore_rng(state["rng"])
        where = f"epoch {start_epoch}, batch {partial['batches']}" if partial else f"epoch {start_epoch}"
        log(f"resumed from {last_path} at {where} (step {step})")
    if context.distributed:
        # a different noise stream per process (the weights are rank 0's: DDP broadcasts them)
        torch.manual_seed(cfg.seed + 1000 * context.rank + step)
    runner = TrainStep(model)
    if context.distributed:
        runner = torch.nn.parallel.DistributedDataParallel(
            runner, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.optim.flow_pretrain_epochs > 0 or cfg.model.input in FRAME_INPUTS)
    if cfg.optim.compile:  # after the DDP wrapper, as PyTorch recommends; the model's weights are shared
        runner = torch.compile(runner)
    logger = RunLogger(out) if context.main else None
    batches = len(train_loader)
    total_steps, epochs = training_length(cfg, steps_per_epoch(cfg, batches))
    if start_epoch == 0 and not partial:
        counts = ", ".join(f"{name} {len(cache.split(name))}" for name in cache.splits())
        parameters = count_parameters(model)
        names = ", ".join(classes[:NAMED_CLASSES]) + (", ..." if len(classes) > NAMED_CLASSES else "")
        log(f"data: {len(classes)} classes ({names}), videos per split: {counts} ({cache.root})")
        if len(val_loader.dataset) < SELECTABLE_VAL_CLIPS:
            log(f"warning: the {cfg.data.val_split!r} split has {len(val_loader.dataset)} clip(s): its accuracy moves "
                f"in steps of 1/{len(val_loader.dataset)}, too coarse to pick the best epoch on alone; best.pt takes "
                "the highest accuracy, ties going to the lower validation loss, and last.pt holds the last epoch")
        log(f"model: {cfg.model.input} input, 3D ResNet-{cfg.model.depth}, {parameters:,} parameters, on {device}"
            + (f", {context.world} processes" if context.distributed else ""))
        log(f"training: {epochs} epochs x {steps_per_epoch(cfg, batches)} steps = {total_steps} steps of "
            f"{cfg.optim.batch_size} x {cfg.optim.accumulate} x {context.world} clips; outputs in {out}")
    started = plotted = time.time()
    weights = cfg.loss
    val_classical: dict = {}
    frame_size = cache.index["frame_size"]
    for epoch in range(start_epoch, epochs):
        resumed = EpochState(**partial) if partial and epoch == start_epoch else EpochState()
        begin_epoch(train_loader, epoch, resumed.batches)

        def on_step(current: int, state: EpochState, epoch: int = epoch) -> None:
            every = cfg.optim.checkpoint_steps
            if every and current % every == 0 and current < total_steps and context.main:
                save_checkpoint(last_path, checkpoint_state(cfg, classes, model, optimizer, epoch, current, best,
                                                             frame_size, state.to_dict(), scaler))

        train_metrics, step = train_one_epoch(model, train_loader, optimizer, cfg, device, epoch, step, total_steps,
                                              progress, runner=runner, state=resumed, context=context, on_step=on_step,
                                              scaler=scaler)
        partial = None
        if context.main:
            # the validation clips are the same every epoch (centre clips, no augmentation), so OpenCV's
            # flow on them is scored once and its figures repeated
            result = run_evaluation(model, val_loader, device, weights, progress, desc="val",
                                    classical=("dis",) if not val_classical else ())
            val_classical = val_classical or {k: v for k, v in result.flow.items() if k.startswith("dis_")}
            result.flow.update(val_classical)
            val_metrics = {
                **result.losses, "accuracy": result.clip_accuracy,
                **{k: v for k, v in result.flow.items() if not k.endswith("_pixels")},
            }
            logger.log(epoch, "train", train_metrics)
            logger.log(epoch, "val", val_metrics)
            # drawing the curves takes about a second: redrawn at most every CURVES_EVERY_S
            # seconds, and after the last epoch
            if epoch + 1 == epochs or time.time() - plotted >= CURVES_EVERY_S:
                plot_curves(logger.csv_path, out / "curves.png")
                plotted = time.time()
            if is_better(val_metrics, best):
                best = {"val_accuracy": val_metrics["accuracy"], "val_loss": val_metrics["total"], "epoch": epoch,
                        "val_epe": result.flow_epe,
                        "val_moving_epe": result.flow.get("moving_epe")}
                # best.pt is for evaluation: without the optimiser state it is a third of the size
                best_state = checkpoint_state(cfg, classes, model, optimizer, epoch, step, best, frame_size)
                best_state["optimizer"] = None
                save_checkpoint(out / "best.pt", best_state)
            if (epoch + 1) % cfg.optim.checkpoint_every == 0 or epoch + 1 == epochs:
                save_checkpoint(last_path, checkpoint_state(cfg, classes, model, optimizer, epoch, step, best,
                                                             frame_size, scaler=scaler))
            epe = f" | {describe_flow_errors(result.flow)}" if result.flow else ""
            log(
                f"epoch {epoch:3d}  train loss {train_metrics['total']:.4f} acc {train_metrics['accuracy']:.3f}"
                f" | val loss {val_metrics['total']:.4f} acc {val_metrics['accuracy']:.3f}{epe}"
            )
        distributed.barrier(context)
    if logger is not None:
        logger.close()
    return {"best": best, "epochs": epochs, "steps": step, "wall_seconds": time.time() - started,
            "processes": context.world, "amp": cfg.optim.amp}

"""Training: ``train_one_epoch``, ``fit`` and ``main(cfg, out)``; one joint loss, one optimiser."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from flowaction.checkpoint import load_checkpoint, load_weights, restore_rng, rng_state, save_checkpoint
from flowaction.config import Config, save_config, to_dict
from flowaction.data.cache import ClipCache
from flowaction.data.clips import ClipDataset, ClipSpec, JitterSpec
from flowaction.data.sampler import EpochSampler
from flowaction.evaluate import FlowErrors, describe_flow_errors, flow_summary, run_evaluation, score_flows, video_scores
from flowaction.forward import forward_batch
from flowaction.losses import LossWeights
from flowaction.models.joint import build_joint_model
from flowaction.plots import plot_curves
from flowaction.runlog import RunLogger


CURVES_EVERY_S = 30.0  # curves.png is redrawn at most this often during training (and after the last epoch)
TRAIN_SCORE_EVERY = 10  # training-split flow metrics come from every 10th batch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def native_bf16(device: torch.device) -> str:
    """Why ``device`` runs bfloat16 matrix products natively ("" when it does not): a CUDA GPU
    with bf16 support, or a CPU with Intel AMX-BF16 tiles (oneDNN's bf16 convolutions; without
    them bf16 is emulated and slower than float32)."""
    if device.type == "cuda":
        # emulated bf16 (GPUs before Ampere) is slower than float32
        return "a CUDA GPU with bf16 support" if torch.cuda.is_bf16_supported(including_emulation=False) else ""
    if device.type == "cpu":
        try:
            capability = torch._C._cpu._get_cpu_capability()  # a private helper: absent, assume no AMX
        except AttributeError:
            return ""
        return "a CPU with AMX-BF16" if capability.get("amx_bf16") else ""
    return ""


def resolve_amp(choice: str, device: torch.device) -> tuple[str, str]:
    """``optim.amp`` as it will run: ``auto`` becomes ``bf16`` where the device computes bf16
    natively, else ``off``; other choices stay. Returns ``(amp, reason)``."""
    if choice != "auto":
        return choice, "set"
    reason = native_bf16(device)
    return ("bf16", reason) if reason else ("off", f"{device.type}: no native bf16 matrix units")


def build_model(cfg: Config, num_classes: int) -> JointModel:
    """The model a config describes."""
    m = cfg.model
    return build_joint_model(num_classes, m.depth, m.shortcut, m.flow_width, m.triplet_stride, m.input,
                             zero_flow_output=m.flow_output_init == "zero", flow_refine=m.flow_refine)


def loss_weights(cfg: Config) -> LossWeights:
    # the loss section of the config and LossWeights share their field names (losses.py must
    # not import the config), so the mapping is by name
    return LossWeights(**dataclasses.asdict(cfg.loss))


def stage_weights(cfg: Config, epoch: int) -> tuple[LossWeights, bool]:
    """Loss weights of an epoch and whether the flow network is frozen.

    With ``optim.flow_pretrain_epochs = E > 0`` (two-stage training, as in Hidden Two-Stream),
    epochs ``< E`` train the flow network on the unsupervised terms alone; later epochs freeze it
    and train the classifier on cross-entropy alone. With ``optim.flow_warmup_epochs = W`` epochs
    ``< W`` train on the flow losses alone and later ones on the whole of eq. 3 (nothing frozen).
    Otherwise every epoch uses eq. 3 as is.
    """
    weights = loss_weights(cfg)
    pretrain = cfg.optim.flow_pretrain_epochs
    if pretrain <= 0:
        if epoch < cfg.optim.flow_warmup_epochs:  # flow warm-up: the flow losses alone, nothing frozen
            return dataclasses.replace(weights, classification=0.0), False
        return weights, False
    if epoch < pretrain:
        return dataclasses.replace(weights, classification=0.0), False
    return dataclasses.replace(weights, photometric=0.0, smoothness=0.0), True


def clip_spec(cfg: Config) -> ClipSpec:
    d = cfg.data
    return ClipSpec(d.num_frames, d.frame_step, d.crop, d.test_clips)


def subset_per_class(cache: ClipCache, split: str, limit: int) -> list[int]:
    """The first ``limit`` videos of every class of a split (index order: deterministic)."""
    taken: dict[int, int] = {}
    chosen = []
    for index in cache.split(split):
        label = cache.videos[index]["label"]
        if taken.get(label, 0) < limit:
            taken[label] = taken.get(label, 0) + 1
            chosen.append(index)
    return chosen


def check_training_data(cache: ClipCache, train_videos: list[int], split: str) -> None:
    """Refuse data a classifier cannot learn from: fewer than two classes, or a class without a
    single training video (named)."""
    if len(cache.classes) < 2:
        raise ValueError(f"{cache.root} has {len(cache.classes)} class ({', '.join(cache.classes) or 'none'}): "
                         "an action classifier needs two classes or more")
    present = {cache.videos[i]["label"] for i in train_videos}
    missing = [name for label, name in enumerate(cache.classes) if label not in present]
    if missing:
        raise ValueError(f"no {split!r} video for class(es) {', '.join(missing)} in {cache.root}: every class "
                         "needs training videos (add some, or prepare without that class folder)")


def make_loader(
    cfg: Config, cache: ClipCache, split: str, mode: str, shuffle: bool = False, rank: int = 0, world: int = 1
) -> DataLoader:
    """A loader over one split; ``mode`` is train / val / test (see ``data.clips``).

    With ``shuffle`` the items come from an :class:`EpochSampler` (shuffled per epoch, this
    process's share of ``world``; see :func:`begin_epoch`)."""
    a = cfg.augment
    jitter = JitterSpec(a.brightness, a.contrast, a.gamma, a.hflip)
    precomputed = cfg.model.input in ("dis", "farneback") and cfg.model.classical_on == "clean"
    classical = cfg.model.input if precomputed else None
    if classical:
        from flowaction.data.classical_cache import ensure_classical_flow

        ensure_classical_flow(cache, classical)
    videos = None
    if mode == "train" and cfg.data.max_train_per_class > 0:
        videos = subset_per_class(cache, split, cfg.data.max_train_per_class)
    dataset = ClipDataset(cache, split, mode, clip_spec(cfg), jitter, seed=cfg.seed, videos=videos, classical=classical)
    sampler = EpochSampler(len(dataset), True, cfg.seed, rank, world, cfg.optim.batch_size) if shuffle else None
    share = len(sampler) if sampler is not None else len(dataset)
    return DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        # a last training batch of one clip cannot go through batch norm in training mode: drop it
        drop_last=mode == "train" and share % cfg.optim.batch_size == 1 and share > 1,
        persistent_workers=cfg.data.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        # its own generator: starting an epoch's iterator must not draw from the global random
        # stream (the input noise), or a run resumed mid-epoch would draw differently
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Adam:
    """Adam (``optim.adam`` picks PyTorch's implementation); the flow network in a group of its
    own whose rate is ``optim.flow_lr_scale`` x the schedule's (each group's ``lr_scale`` is
    applied at every step)."""
    flow_net = getattr(model, "flow_net", None)
    flow_ids = {id(p) for p in flow_net.parameters()} if flow_net is not None else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in flow_ids], "lr_scale": 1.0}]
    if flow_ids:
        groups.append({"params": list(flow_net.parameters()), "lr_scale": cfg.optim.flow_lr_scale})
    for group in groups:
        group["lr"] = cfg.optim.lr * group["lr_scale"]
    return torch.optim.Adam(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, **adam_options(cfg))


def adam_options(cfg: Config) -> dict:
    """``torch.optim.Adam`` keywords for ``optim.adam``: the same update rule, three implementations.
    The fused kernel updates every weight in one pass; on a 2-core CPU it is several times faster
    than the per-tensor loop for a 3D ResNet (``benchmarks/bench_train.py`` measures it)."""
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[cfg.optim.adam]


def apply_process_settings(cfg: Config) -> None:
    """This process's torch threads (``threads``) and C allocator (``allocator``), before training."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.allocator == "keep":
        from flowaction.allocator import keep_heap_memory

        keep_heap_memory()


def steps_per_epoch(cfg: Config, batches: int) -> int:
    """Optimiser steps of an epoch of ``batches`` loader batches (``optim.accumulate`` per step)."""
    return math.ceil(batches / cfg.optim.accumulate)


def training_length(cfg: Config, steps_per_epoch: int) -> tuple[int, int]:
    """``(optimiser steps, epochs)`` of a run: ``optim.steps`` when set (the last epoch is cut
    short), else ``optim.epochs`` full epochs."""
    if cfg.optim.steps > 0:
        return cfg.optim.steps, math.ceil(cfg.optim.steps / steps_per_epoch)
    return cfg.optim.epochs * steps_per_epoch, cfg.optim.epochs


def begin_epoch(loader: DataLoader, seed: int, epoch: int, skip_batches: int = 0) -> None:
    """Make a training loader's draws (augmentation and shuffle order) a function of the epoch,
    so every epoch differs and a resumed run draws what an uninterrupted one would; skip the
    ``skip_batches`` batches an interrupted run had already trained on."""
    loader.dataset.set_epoch(epoch)
    if isinstance(loader.sampler, EpochSampler):
        loader.sampler.set_epoch(epoch, skip_batches)
    elif skip_batches:
        raise ValueError("only a loader with an EpochSampler can resume inside an epoch")


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


def clip_gradients(parameters, max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_(parameters, max_norm)``, leaving the gradients alone when
    its factor would be exactly 1.

    PyTorch always multiplies every gradient by ``min(1, max_norm / (norm + 1e-6))``, which spares a
    GPU the wait for the norm; on a CPU that pass over every gradient costs twice the memory traffic
    of the norm itself, for nothing whenever the norm is within bounds (most steps). The factor is
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


class NonFiniteLoss(ValueError):
    """A loss term became NaN or infinite (``optim.nonfinite=stop``)."""


class _Step(torch.nn.Module):
    """One batch through the model and the joint loss, as a module, so that
    ``DistributedDataParallel`` sees the whole forward pass it synchronises."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict, device: torch.device, weights: LossWeights, noise_std: float, freeze_flow: bool,
                flow_grad_scale: float, amp: str = "off"):
        return forward_batch(self.model, batch, device, weights, noise_std, freeze_flow, flow_grad_scale, amp)


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
        runner: the module that runs a batch (a ``DistributedDataParallel`` around ``_Step(model)``
            in a distributed run); default ``_Step(model)``.
        state: the sums of the part of this epoch trained before an interruption.
        context: a :class:`flowaction.distributed.Context` (metrics are summed over ranks).
        on_step: called as ``on_step(step, state)`` after every optimiser step (step checkpoints).
        scaler: the gradient scaler of ``optim.amp=fp16`` (a disabled one otherwise).

    ``optim.accumulate = k`` sums the gradients of ``k`` batches (each loss divided by ``k``)
    into one optimiser step. A NaN or infinite loss raises :class:`NonFiniteLoss` naming the step
    and the terms (``optim.nonfinite=stop``), or skips that step (``skip``).
    """
    from flowaction import distributed

    context = context or distributed.Context()
    runner = runner if runner is not None else _Step(model)
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
        rate = learning_rate(cfg, step, total_steps, per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = rate * group.get("lr_scale", 1.0)
        scaler.unscale_(optimizer)  # fp16: true gradients for the clipping
        if cfg.optim.grad_clip > 0:
            clip_gradients(model.parameters(), cfg.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
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


def _checkpoint_state(cfg, classes, model, optimizer, epoch, step, best, frame_size=None, partial=None,
                      scaler=None) -> dict:
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
    from flowaction import distributed

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
    model = build_model(cfg, len(classes)).to(device)
    if cfg.optim.channels_last:
        model.action_net.to(memory_format=torch.channels_last_3d)  # the convolutions follow the weights' layout
    optimizer = build_optimizer(cfg, model)
    train_loader = make_loader(cfg, cache, cfg.data.train_split, "train", shuffle=True,
                               rank=context.rank, world=context.world)
    check_training_data(cache, train_loader.dataset.videos, cfg.data.train_split)
    val_loader = make_loader(cfg, cache, cfg.data.val_split, "val")
    start_epoch, step, best = 0, 0, {"val_accuracy": -1.0, "epoch": -1}
    partial = None
    last_path = out / "last.pt"
    if cfg.model.init and not (resume and last_path.is_file()):
        from flowaction.init_weights import describe, initialise_from

        init_report = initialise_from(model, cfg.model.init, cfg.model.input)
        log(describe(init_report))
        if context.main:
            from flowaction.data.cache import atomic_write_json

            atomic_write_json(out / "init_report.json", init_report)
    if cfg.model.flow_init != "none" and not (resume and last_path.is_file()):
        from flowaction.pretrain import load_flow_weights

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
    runner = _Step(model)
    if context.distributed:
        runner = torch.nn.parallel.DistributedDataParallel(
            runner, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.optim.flow_pretrain_epochs > 0 or cfg.model.input == "frames")
    if cfg.optim.compile:  # after the DDP wrapper, as PyTorch recommends; the model's weights are shared
        runner = torch.compile(runner)
    logger = RunLogger(out) if context.main else None
    batches = len(train_loader)
    total_steps, epochs = training_length(cfg, steps_per_epoch(cfg, batches))
    if start_epoch == 0 and not partial:
        counts = ", ".join(f"{name} {len(cache.split(name))}" for name in cache.splits())
        parameters = sum(p.numel() for p in model.parameters())
        log(f"data: {len(classes)} classes, videos per split: {counts} ({cache.root})")
        log(f"model: {cfg.model.input} input, 3D ResNet-{cfg.model.depth}, {parameters:,} parameters, on {device}"
            + (f", {context.world} processes" if context.distributed else ""))
        log(f"training: {epochs} epochs x {steps_per_epoch(cfg, batches)} steps = {total_steps} steps of "
            f"{cfg.optim.batch_size} x {cfg.optim.accumulate} x {context.world} clips; outputs in {out}")
    started = plotted = time.time()
    weights = loss_weights(cfg)
    val_classical: dict = {}
    frame_size = cache.index["frame_size"]
    for epoch in range(start_epoch, epochs):
        resumed = EpochState(**partial) if partial and epoch == start_epoch else EpochState()
        begin_epoch(train_loader, cfg.seed, epoch, resumed.batches)

        def on_step(current: int, state: EpochState, epoch: int = epoch) -> None:
            every = cfg.optim.checkpoint_steps
            if every and current % every == 0 and current < total_steps and context.main:
                save_checkpoint(last_path, _checkpoint_state(cfg, classes, model, optimizer, epoch, current, best,
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
            if val_metrics["accuracy"] > best["val_accuracy"]:
                best = {"val_accuracy": val_metrics["accuracy"], "epoch": epoch, "val_epe": result.flow_epe,
                        "val_moving_epe": result.flow.get("moving_epe")}
                # best.pt is for evaluation: without the optimiser state it is a third of the size
                best_state = _checkpoint_state(cfg, classes, model, optimizer, epoch, step, best, frame_size)
                best_state["optimizer"] = None
                save_checkpoint(out / "best.pt", best_state)
            if (epoch + 1) % cfg.optim.checkpoint_every == 0 or epoch + 1 == epochs:
                save_checkpoint(last_path, _checkpoint_state(cfg, classes, model, optimizer, epoch, step, best,
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


def evaluate_checkpoint(
    checkpoint: str | Path, cache: ClipCache, split: str, mode: str = "test", device: str = "auto", progress: bool = True
) -> dict:
    """Load a checkpoint (model built from the file alone) and score one split of a cache."""
    from flowaction.config import from_dict

    state = load_checkpoint(checkpoint)
    cfg = from_dict(state["config"])
    cfg.device = device
    dev = resolve_device(device)
    model = build_model(cfg, len(state["classes"])).to(dev)
    load_weights(model, state["model"], checkpoint)
    if list(state["classes"]) != list(cache.classes):
        raise ValueError(f"the checkpoint's classes differ from the cache's ({checkpoint} vs {cache.root})")
    loader = make_loader(cfg, cache, split, mode)
    result = run_evaluation(model, loader, dev, loss_weights(cfg), progress, desc=split)
    report = {
        "split": split,
        "clip_accuracy": result.clip_accuracy,
        "num_clips": int(len(result.labels)),
        "losses": result.losses,
        **flow_summary(result.flow),
        "flow": result.flow,
        "photometric_l1": result.photometric_l1,
        **video_scores(result, len(cache.classes)),
    }
    report["classes"] = list(cache.classes)
    # best.pt was chosen on the validation split: scored on that same split, the figure is optimistic
    report["selected_on_this_split"] = split == cfg.data.val_split
    return report

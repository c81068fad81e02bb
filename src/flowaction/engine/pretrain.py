"""Self-supervised pre-training of the flow network on any video (``pretrain-flow``).

The flow losses (photometric, eq. 1, and smoothness, eq. 2) need no labels, so the flow network can
learn on any prepared cache, a folder of videos or the generated benchmark before joint training.
A step takes ``optim.batch_size`` random frame triplets (a random start, a random crop and the
colour jitter of a clip, drawn per triplet), a constant or cosine learning rate, and nothing of the
action network. Every ``eval_every`` steps the flow is scored on the validation split: the
photometric error and, where the cache carries ground truth, EPE over all valid and moving pixels
beside zero flow and DIS on the same pixels.

Outputs in ``OUT``: ``flownet.pt`` (the flow network's weights as plain tensors with its width:
what ``model.flow_init=PATH`` reads), ``last.pt`` (for ``--resume``), ``metrics.csv``,
``curves.png``, ``config.yaml``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from flowaction.checkpoint import load_checkpoint, load_weights, restore_rng, rng_state, save_checkpoint
from flowaction.config import Config, save_config, to_dict
from flowaction.data.cache import ClipCache
from flowaction.data.clips import ClipDataset, add_input_noise
from flowaction.engine.evaluate import score_flows
from flowaction.engine.loaders import begin_epoch, clip_spec, loader_of, mixed_caches, triplet_loader
from flowaction.engine.optim import adam_options, clip_gradients, learning_rate
from flowaction.flow.metrics import FlowErrors, describe_flow_errors
from flowaction.losses import flow_loss_terms
from flowaction.models.build import count_parameters, flow_network
from flowaction.models.flownet import FlowNet
from flowaction.models.joint import Normalise
from flowaction.models.weights import FLOW_WEIGHTS, load_flow_weights, save_flow_weights
from flowaction.plots import plot_curves
from flowaction.runlog import RunLogger
from flowaction.speedups import apply_process_settings
from flowaction.triplets import make_triplets

VAL_BATCH = 16  # validation clips per forward pass


@torch.no_grad()
def evaluate_flow(flow_net: FlowNet, loader: DataLoader, stride: int) -> dict:
    """Photometric L1 and (with ground truth) EPE over all / moving pixels of a loader's clips."""
    normalise = Normalise()
    flow_net.eval()
    errors, l1_sum, l1_count = FlowErrors(), 0.0, 0.0
    for batch in loader:
        frames = batch["frames"]
        flat = flow_net(make_triplets(normalise(frames), stride))
        flows = flat.view(frames.shape[0], -1, *flat.shape[1:]).transpose(1, 2)
        terms = flow_loss_terms(flows, frames, stride)
        l1_sum += float(terms["photometric"]) * frames.shape[0]
        l1_count += frames.shape[0]
        if "flow" in batch:
            errors.merge(score_flows(flows, batch, stride))
    flow_net.train()
    result = {k: v for k, v in errors.result().items() if not k.endswith("_pixels")}
    result["val_photometric"] = l1_sum / max(l1_count, 1)
    return result


def pretrain_flow(
    cfg: Config,
    cache: ClipCache,
    out: str | Path,
    steps: int,
    eval_every: int = 200,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    command: str = "",
) -> dict:
    """Train ``FlowNet(cfg.model.flow_width)`` on the flow losses for ``steps`` steps into ``out``.

    Uses ``cfg.optim.lr`` / ``schedule`` / ``batch_size`` (triplets per step), ``cfg.loss``,
    ``cfg.augment`` and ``cfg.data.crop``; validation uses ``cfg.data.val_split`` clips of
    ``cfg.data.num_frames`` frames at triplet stride ``cfg.model.triplet_stride``.
    ``command`` (the command line that ran it) is recorded in ``flownet.pt``.
    Returns the last validation metrics and the wall time.
    """
    out = Path(out)
    batch_size = cfg.optim.batch_size
    mixed = sum(len(extra.split(cfg.data.train_split)) for extra in mixed_caches(cfg, cfg.data.train_split))
    train_clips = len(cache.split(cfg.data.train_split)) + mixed
    if 0 < train_clips < batch_size:  # whole batches only: a batch larger than the split would give no step
        log(f"the {cfg.data.train_split!r} split has {train_clips} clip(s), fewer than optim.batch_size={batch_size}: "
            f"each step takes one triplet of every clip ({train_clips} per step)")
        batch_size = train_clips
    train = triplet_loader(cfg, cache, cfg.data.train_split, batch_size)
    val_clips = ClipDataset(cache, cfg.data.val_split, "val", clip_spec(cfg), seed=cfg.seed)
    val = loader_of(cfg, val_clips, VAL_BATCH, seeded=False)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.seed)
    apply_process_settings(cfg)
    flow_net = flow_network(cfg.model)
    if cfg.model.flow_init != "none" and not (resume and (out / "last.pt").is_file()):
        # continue from a pre-trained network (e.g. the shipped one, on your own videos)
        meta = load_flow_weights(flow_net, cfg.model.flow_init)
        log(f"flow network initialised from {cfg.model.flow_init}"
            + (f" ({meta.get('steps')} steps of pre-training)" if meta.get("steps") else ""))
    normalise = Normalise()
    optimizer = torch.optim.Adam(flow_net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                 **adam_options(cfg))
    weights = cfg.loss
    step, last = 0, out / "last.pt"
    if resume and last.is_file():
        state = load_checkpoint(last)
        load_weights(flow_net, state["model"], last)
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        restore_rng(state["rng"])
        log(f"resumed from {last} at step {step}")
    if step == 0:
        source = f" ({mixed} of them from data.mix)" if mixed else ""
        log(f"data: {train_clips} training clips{source}, {len(val_clips)} validation clips ({cache.root}); flow network "
            f"of width {flow_net.width}, {count_parameters(flow_net):,} parameters; {steps} steps of {batch_size} "
            f"triplets, validated every {eval_every}; outputs in {out}")
    logger = RunLogger(out, tensorboard=False)
    started, sums, count = time.time(), {"photometric": 0.0, "smoothness": 0.0}, 0
    bar = tqdm(total=steps, initial=step, desc="pretrain-flow", disable=not progress, mininterval=1.0)
    metrics: dict = {}
    epoch = step // max(len(train), 1)
    while step < steps:
        begin_epoch(train, epoch)
        for batch in train:
            if step >= steps:
                break
            rate = learning_rate(cfg, step, steps, len(train))
            for group in optimizer.param_groups:
                group["lr"] = rate
            frames = batch["frames"]  # (B, 1, 3, H, W): one triplet per item
            inputs = normalise(add_input_noise(frames, cfg.augment.noise_std))
            flows, pyramid = flow_net(inputs, return_pyramid=True) if weights.multiscale else (flow_net(inputs), None)
            # loss.occlusion: the flow of the same pair backwards, for the forward-backward check
            backward = flow_net(make_triplets(inputs, 1, reverse=True)) if weights.occlusion else None
            terms = flow_loss_terms(flows.unsqueeze(2), frames, 1, weights, pyramid, backward)  # (B, 2, 1, H, W)
            loss = weights.photometric * terms["photometric"] + weights.smoothness * terms["smoothness"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                clip_gradients(flow_net.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            step += 1
            count += 1
            for key in sums:
                sums[key] += float(terms[key].detach())
            bar.update(1)
            if step % eval_every == 0 or step == steps:
                metrics = evaluate_flow(flow_net, val, cfg.model.triplet_stride)
                logger.log(step, "train", {k: v / count for k, v in sums.items()} | {"lr": rate})
                logger.log(step, "val", metrics)
                sums, count = {k: 0.0 for k in sums}, 0
                plot_curves(logger.csv_path, out / "curves.png", xlabel="step")
                save_checkpoint(last, {"config": to_dict(cfg), "classes": [], "model": flow_net.state_dict(),
                                       "optimizer": optimizer.state_dict(), "step": step, "rng": rng_state()})
                meta = {"steps": step, "data": str(cache.root), "val": metrics, "command": command,
                        "seconds": time.time() - started}
                save_flow_weights(out / FLOW_WEIGHTS, flow_net, meta)
                flow = describe_flow_errors(metrics) if "epe" in metrics else ""
                log(f"step {step:6d}  photometric {metrics['val_photometric']:.5f}  {flow}")
        epoch += 1
    bar.close()
    logger.close()
    return {"steps": step, "val": metrics, "wall_seconds": time.time() - started,
            "weights": str(out / FLOW_WEIGHTS)}

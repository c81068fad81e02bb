"""Evaluation: losses, clip and video accuracy, top-5, per-class accuracy, flow error.

Plain functions over a model and a loader; the trainer validates with them and the ``eval``
command scores a checkpoint with :func:`evaluate_checkpoint`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from flowaction.config import LossWeights
from flowaction.data.cache import ClipCache
from flowaction.engine.device import resolve_device
from flowaction.engine.loaders import make_loader
from flowaction.engine.step import forward_batch
from flowaction.flow.classical import stacked_classical_flow
from flowaction.flow.metrics import FlowErrors, flow_summary
from flowaction.models.build import LoadedModel, load_model_checkpoint
from flowaction.speedups import apply_cpu_speedups
from flowaction.triplets import flow_pair_frames, select_pairs
from flowaction.warp import backward_warp, in_frame_mask


@dataclass
class EvalResult:
    """Everything one pass over a loader measured.

    ``probs`` ``(clips, K)``, ``videos`` and ``labels`` ``(clips,)`` allow video-level scores.
    """

    losses: dict[str, float]
    probs: np.ndarray
    videos: np.ndarray
    labels: np.ndarray
    flow: dict = field(default_factory=dict)  # FlowErrors.result(): empty without ground truth
    photometric_l1: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def flow_epe(self) -> float | None:
        return self.flow.get("epe")

    @property
    def clip_accuracy(self) -> float:
        return float((self.probs.argmax(1) == self.labels).mean())


def gt_flow_for_model(flow: torch.Tensor, valid: torch.Tensor, num_flows: int, stride: int):
    """Pick the ground truth of the pairs the model's flows relate: pair ``j*s -> j*s+1``.

    Args:
        flow: ``(B, T-1, 2, H, W)``; valid: ``(B, T-1, H, W)``.

    Returns:
        ``(B, 2, N, H, W)`` flow and ``(B, N, H, W)`` mask.
    """
    return select_pairs(flow, num_flows, stride).transpose(1, 2), select_pairs(valid, num_flows, stride)


@torch.no_grad()
def score_flows(flows: torch.Tensor, batch: dict, stride: int, classical: tuple[str, ...] = ("dis",)) -> FlowErrors:
    """Score ``flows`` ``(B, 2, N, H, W)`` against the batch's ground truth, beside zero flow and
    OpenCV flow (``classical``, computed on the batch's clean frames) on exactly the same pixels."""
    gt, valid = gt_flow_for_model(batch["flow"].to(flows.device), batch["valid"].to(flows.device), flows.shape[2], stride)
    candidates = {"learned": flows, "zero": torch.zeros_like(gt)}
    for method in classical:
        candidates[method] = stacked_classical_flow(batch["frames"], stride, method).to(flows.device)
    errors = FlowErrors()
    # (B, 2, N, H, W) -> (B, N, 2, H, W) so that the vector dimension is -3 like the mask's layout
    errors.add(gt.transpose(1, 2), valid, {name: flow.transpose(1, 2) for name, flow in candidates.items()})
    return errors


@torch.no_grad()
def run_evaluation(
    model: torch.nn.Module,
    loader,
    device: torch.device,
    weights: LossWeights,
    progress: bool = True,
    desc: str = "eval",
    classical: tuple[str, ...] = ("dis",),
) -> EvalResult:
    """One pass over ``loader`` with ``model`` in eval mode; ``classical``: the OpenCV flows scored
    beside the learned one (where the data carries ground truth)."""
    model.eval()
    totals: dict[str, float] = {}
    clips = 0
    flow_errors = FlowErrors()
    l1_sum = l1_count = 0.0
    probs, videos, labels = [], [], []
    stride = getattr(model, "triplet_stride", 1)
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, mininterval=1.0):
        logits, flows, terms = forward_batch(model, batch, device, weights)
        size = logits.shape[0]
        for key, value in terms.items():
            totals[key] = totals.get(key, 0.0) + float(value) * size
        clips += size
        probs.append(torch.softmax(logits.float(), 1).cpu().numpy())
        videos.append(batch["video"].numpy())
        labels.append(batch["label"].numpy())
        if flows is not None:
            # photometric error of the flow the classifier used: needs no ground truth
            frames = batch["frames"].to(device)
            prev, cur = flow_pair_frames(frames, flows.shape[2], stride)
            flat = flows.transpose(1, 2).flatten(0, 1).float()
            mask = in_frame_mask(flat)
            l1_sum += float(((backward_warp(cur, flat) - prev).abs() * mask).sum())
            l1_count += float(mask.sum())
        if "flow" in batch and flows is not None:
            flow_errors.merge(score_flows(flows, batch, stride, classical))
    return EvalResult(
        losses={k: v / max(clips, 1) for k, v in totals.items()},
        probs=np.concatenate(probs),
        videos=np.concatenate(videos),
        labels=np.concatenate(labels),
        flow=flow_errors.result(),
        photometric_l1=l1_sum / l1_count if l1_count else None,
    )


def video_scores(result: EvalResult, num_classes: int) -> dict:
    """Video-level accuracy (softmax averaged over a video's clips), top-5, per class, confusion.

    ``top5_video_accuracy`` is None with 5 classes or fewer, where it would be 1 by construction.

    Returns:
        ``{"video_accuracy", "mean_class_accuracy" (over classes with videos), "top5_video_accuracy",
        "per_class": [K], "confusion": [[K x K]], "num_videos"}``; the confusion matrix counts
        videos, rows are true classes.
    """
    unique, inverse = np.unique(result.videos, return_inverse=True)
    mean_probs = np.zeros((len(unique), result.probs.shape[1]))
    np.add.at(mean_probs, inverse, result.probs)
    video_labels = np.zeros(len(unique), dtype=np.int64)
    video_labels[inverse] = result.labels
    predicted = mean_probs.argmax(1)
    top5 = np.argsort(-mean_probs, axis=1)[:, :5]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (video_labels, predicted), 1)
    totals = confusion.sum(1)
    per_class = [float(confusion[i, i] / totals[i]) if totals[i] else None for i in range(num_classes)]
    return {
        "num_videos": int(len(unique)),
        "video_accuracy": float((predicted == video_labels).mean()),
        # the mean of the per-class accuracies: on unbalanced data, overall accuracy favours large classes
        "mean_class_accuracy": float(np.mean([value for value in per_class if value is not None])),
        # top-5 says something only when there are more than 5 classes to choose from
        "top5_video_accuracy": float((top5 == video_labels[:, None]).any(1).mean()) if mean_probs.shape[1] > 5 else None,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def evaluate_checkpoint(
    checkpoint: str | Path | LoadedModel, cache: ClipCache, split: str, mode: str = "test", device: str = "auto", progress: bool = True
) -> dict:
    """Load a checkpoint (model built from the file alone; or one loaded already) and score one
    split of a cache.

    Returns the report ``eval.json`` holds: clip and video accuracy, top-5, per class, confusion,
    losses and (with ground truth) flow errors beside zero flow and DIS."""
    dev = resolve_device(device)
    loaded = checkpoint if isinstance(checkpoint, LoadedModel) else load_model_checkpoint(checkpoint)
    cfg = loaded.cfg
    model = apply_cpu_speedups(loaded.model, cfg).to(dev)
    if loaded.classes != list(cache.classes):
        raise ValueError(f"the checkpoint's classes differ from the cache's ({loaded.source} vs {cache.root})")
    loader = make_loader(cfg, cache, split, mode, device=dev)
    result = run_evaluation(model, loader, dev, cfg.loss, progress, desc=split)
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

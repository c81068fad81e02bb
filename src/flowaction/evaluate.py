"""Evaluation: losses, clip and video accuracy, top-5, per-class accuracy, flow error.

Plain functions over a model and a loader; the ``eval`` command and the trainer share them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from flowaction.forward import forward_batch, select_pairs
from flowaction.losses import LossWeights, clip_triplet_pairs
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
    flow_epe: float | None = None
    zero_flow_epe: float | None = None
    photometric_l1: float | None = None
    extra: dict = field(default_factory=dict)

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
    index = torch.arange(num_flows, device=flow.device) * stride
    return select_pairs(flow, num_flows, stride), valid[:, index]


@torch.no_grad()
def flow_error_sums(flows: torch.Tensor, batch: dict, stride: int) -> tuple[float, float, float]:
    """Summed end-point error of ``flows`` ``(B, 2, N, H, W)`` and of zero flow against the
    batch's ground truth, and the number of valid pixels they were summed over."""
    gt, valid = gt_flow_for_model(batch["flow"].to(flows.device), batch["valid"].to(flows.device), flows.shape[2], stride)
    mask = valid.float()
    epe = float((torch.linalg.vector_norm(flows.detach().float() - gt, dim=1) * mask).sum())
    zero = float((torch.linalg.vector_norm(gt, dim=1) * mask).sum())
    return epe, zero, float(mask.sum())


@torch.no_grad()
def run_evaluation(
    model: torch.nn.Module,
    loader,
    device: torch.device,
    weights: LossWeights,
    progress: bool = True,
    desc: str = "eval",
) -> EvalResult:
    """One pass over ``loader`` with ``model`` in eval mode."""
    model.eval()
    totals: dict[str, float] = {}
    clips = 0
    epe_sum = zero_sum = valid_count = 0.0
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
            prev, cur = clip_triplet_pairs(frames, flows.shape[2], stride)
            flat = flows.transpose(1, 2).flatten(0, 1).float()
            mask = in_frame_mask(flat)
            l1_sum += float(((backward_warp(cur, flat) - prev).abs() * mask).sum())
            l1_count += float(mask.sum())
        if "flow" in batch and flows is not None:
            epe, zero, count = flow_error_sums(flows, batch, stride)
            epe_sum, zero_sum, valid_count = epe_sum + epe, zero_sum + zero, valid_count + count
    return EvalResult(
        losses={k: v / max(clips, 1) for k, v in totals.items()},
        probs=np.concatenate(probs),
        videos=np.concatenate(videos),
        labels=np.concatenate(labels),
        flow_epe=epe_sum / valid_count if valid_count else None,
        zero_flow_epe=zero_sum / valid_count if valid_count else None,
        photometric_l1=l1_sum / l1_count if l1_count else None,
    )


def video_scores(result: EvalResult, num_classes: int) -> dict:
    """Video-level accuracy (softmax averaged over a video's clips), top-5, per class, confusion.

    Returns:
        ``{"video_accuracy", "top5_video_accuracy", "per_class": [K], "confusion": [[K x K]],
        "num_videos"}``; the confusion matrix counts videos, rows are true classes.
    """
    unique, inverse = np.unique(result.videos, return_inverse=True)
    mean_probs = np.zeros((len(unique), result.probs.shape[1]))
    np.add.at(mean_probs, inverse, result.probs)
    video_labels = np.zeros(len(unique), dtype=np.int64)
    video_labels[inverse] = result.labels
    predicted = mean_probs.argmax(1)
    top_k = min(5, mean_probs.shape[1])
    top5 = np.argsort(-mean_probs, axis=1)[:, :top_k]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (video_labels, predicted), 1)
    totals = confusion.sum(1)
    per_class = [float(confusion[i, i] / totals[i]) if totals[i] else None for i in range(num_classes)]
    return {
        "num_videos": int(len(unique)),
        "video_accuracy": float((predicted == video_labels).mean()),
        "top5_video_accuracy": float((top5 == video_labels[:, None]).any(1).mean()),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }

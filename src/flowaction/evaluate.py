"""Evaluation: losses, clip and video accuracy, top-5, per-class accuracy, flow error.

Plain functions over a model and a loader; the ``eval`` command and the trainer share them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from flowaction.forward import classical_stack, forward_batch, select_pairs
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
    index = torch.arange(num_flows, device=flow.device) * stride
    return select_pairs(flow, num_flows, stride), valid[:, index]


#: A pixel "moves" when its ground-truth flow is longer than this (pixels). On a static background
#: zero flow is exact almost everywhere, so EPE over all valid pixels hides whether a flow is flow;
#: EPE over moving pixels does not.
MOVING_THRESHOLD = 0.1


class FlowErrors:
    """Pixel-weighted end-point errors of several flows against ground truth, over many batches.

    Every flow added with one :meth:`add` call is scored on exactly the same pixels: all valid
    pixels, and the moving ones (valid and ``|gt| > MOVING_THRESHOLD``). :meth:`result` gives
    ``{"epe", "moving_epe"}`` for the flow named ``learned`` and ``{name}_epe``,
    ``{name}_moving_epe`` for the others (e.g. ``zero``, ``dis``), plus the pixel counts.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}

    def add(self, gt: torch.Tensor, valid: torch.Tensor, flows: dict[str, torch.Tensor]) -> None:
        """gt and each flow ``(M, 2, H, W)`` in pixels (any leading shape); valid ``(M, H, W)`` bool."""
        mask = valid.bool()
        moving = mask & (torch.linalg.vector_norm(gt.float(), dim=-3) > MOVING_THRESHOLD)
        self._add("valid_pixels", float(mask.sum()))
        self._add("moving_pixels", float(moving.sum()))
        for name, flow in flows.items():
            error = torch.linalg.vector_norm(flow.detach().float() - gt.float(), dim=-3)
            prefix = "" if name == "learned" else f"{name}_"
            self._add(f"{prefix}epe", float(error[mask].sum()))
            self._add(f"{prefix}moving_epe", float(error[moving].sum()))

    def _add(self, key: str, value: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value

    def merge(self, other: "FlowErrors") -> None:
        for key, value in other.sums.items():
            self._add(key, value)

    def result(self) -> dict[str, float | None]:
        """Means per pixel (None where no pixel counted) and the two pixel counts."""
        out: dict[str, float | None] = {}
        for key, value in self.sums.items():
            if key.endswith("_pixels"):
                out[key] = value
            else:
                count = self.sums["moving_pixels" if key.endswith("moving_epe") else "valid_pixels"]
                out[key] = value / count if count else None
        return out


def flow_summary(errors: dict) -> dict[str, float | None]:
    """:meth:`FlowErrors.result` under report names: ``flow_epe``, ``flow_moving_epe``,
    ``zero_flow_epe``, ``zero_flow_moving_epe``, ``dis_epe``, ``dis_moving_epe`` (None without
    ground truth) and the pixel counts."""
    names = {"epe": "flow_epe", "moving_epe": "flow_moving_epe", "zero_epe": "zero_flow_epe",
             "zero_moving_epe": "zero_flow_moving_epe", "dis_epe": "dis_epe", "dis_moving_epe": "dis_moving_epe",
             "valid_pixels": "flow_valid_pixels", "moving_pixels": "flow_moving_pixels"}
    return {report: errors.get(key) for key, report in names.items()}


def describe_flow_errors(errors: dict) -> str:
    """One line: EPE over all valid and over moving pixels, learned beside zero flow and DIS."""

    def px(key: str) -> str:
        value = errors.get(key)
        return "n/a" if value is None else f"{value:.3f}"

    return (f"flow EPE all {px('epe')} (zero {px('zero_epe')}, DIS {px('dis_epe')}) | "
            f"moving {px('moving_epe')} (zero {px('zero_moving_epe')}, DIS {px('dis_moving_epe')}) px")


@torch.no_grad()
def score_flows(flows: torch.Tensor, batch: dict, stride: int, classical: tuple[str, ...] = ("dis",)) -> FlowErrors:
    """Score ``flows`` ``(B, 2, N, H, W)`` against the batch's ground truth, beside zero flow and
    OpenCV flow (``classical``, computed on the batch's clean frames) on exactly the same pixels."""
    gt, valid = gt_flow_for_model(batch["flow"].to(flows.device), batch["valid"].to(flows.device), flows.shape[2], stride)
    candidates = {"learned": flows, "zero": torch.zeros_like(gt)}
    for method in classical:
        candidates[method] = classical_stack(batch["frames"], flows.shape[2], stride, method).to(flows.device)
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
            prev, cur = clip_triplet_pairs(frames, flows.shape[2], stride)
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

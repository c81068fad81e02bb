"""PNG figures of a run: training curves (like the paper's Fig. 3) and confusion matrices."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np


def save_figure(fig, path: str | Path, **kwargs) -> None:
    """``fig.savefig`` to a temporary file renamed into place: a reader (or a crash) never sees
    half a PNG, and an interrupted write keeps the previous picture."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format=kwargs.pop("format", path.suffix.lstrip(".") or "png"), **kwargs)
    os.replace(tmp, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; selected here, not at import time
    import matplotlib.pyplot as plt

    return plt


LOSS_TERMS = ("classification", "photometric", "smoothness")


def _points(rows: list[dict], split: str, key: str) -> tuple[list[int], list[float]]:
    points = [(int(r["epoch"]), float(r[key])) for r in rows if r["split"] == split and r.get(key) not in (None, "")]
    return (list(zip(*points)) if points else ([], []))  # type: ignore[return-value]


def best_epoch(rows: list[dict]) -> int | None:
    """The epoch of the best validation accuracy (the first, as the trainer keeps it), or None."""
    xs, ys = _points(rows, "val", "accuracy")
    return xs[int(np.argmax(ys))] if ys else None


def plot_curves(csv_path: str | Path, png_path: str | Path, xlabel: str = "epoch") -> None:
    """Accuracy, joint loss, each loss term and (when logged) flow EPE per epoch, train against val,
    with the best validation epoch (the one ``best.pt`` holds) marked on every panel.

    The CSV's ``epoch`` column is the x axis (``xlabel`` names it: a pre-training run logs steps).
    """
    with open(csv_path) as handle:
        rows = list(csv.DictReader(handle))
    plt = _pyplot()
    panels = [("accuracy", "accuracy [0, 1]"), ("total", "joint loss"), ("terms", "loss terms (log scale)"),
              ("val_photometric", "val photometric loss"), ("epe", "flow EPE, all valid pixels (px)"),
              ("moving_epe", "flow EPE, moving pixels (px)")]
    logged = lambda key: any(row.get(key) not in (None, "") for row in rows)  # noqa: E731
    panels = [p for p in panels if (any(logged(t) for t in LOSS_TERMS) if p[0] == "terms" else logged(p[0]))]
    best = best_epoch(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    axes = np.atleast_1d(axes)
    for ax, (key, label) in zip(axes, panels):
        if key == "terms":  # each term unweighted, so a term that stalls is seen even when its weight is large
            for term, colour in zip(LOSS_TERMS, ("tab:blue", "tab:orange", "tab:green")):
                for split, style in (("train", "-"), ("val", "--")):
                    xs, ys = _points(rows, split, term)
                    if xs and max(ys) > 0:
                        ax.plot(xs, ys, style, color=colour, label=f"{term} ({split})", linewidth=1.2)
            ax.set_yscale("log")
        else:
            for split, style in (("train", "-o"), ("val", "-s")):
                xs, ys = _points(rows, split, key)
                if xs:
                    ax.plot(xs, ys, style, label=split, markersize=3)
        if key in ("epe", "moving_epe"):  # references on the same pixels: no motion at all, and OpenCV DIS
            for method, style in (("zero", "k--"), ("dis", "k:")):
                xs, ys = _points(rows, "val", f"{method}_{key}")
                if xs:
                    ax.plot(xs, ys, style, label=f"{'zero flow' if method == 'zero' else 'DIS'} (val)", linewidth=1)
        if best is not None:
            ax.axvline(best, color="tab:red", alpha=0.5, linewidth=1, label=f"best val accuracy ({xlabel} {best})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, png_path, dpi=110)
    plt.close(fig)


def plot_confusion(confusion: np.ndarray, classes: list[str], png_path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix (rows: true class) with counts written in the cells."""
    confusion = np.asarray(confusion, dtype=np.float64)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    plt = _pyplot()
    side = max(4.0, 0.35 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7 if len(classes) > 20 else 9)
    ax.set_yticks(range(len(classes)), classes, fontsize=7 if len(classes) > 20 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if confusion[i, j]:
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, png_path, dpi=110)
    plt.close(fig)

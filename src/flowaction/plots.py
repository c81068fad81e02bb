"""PNG figures of a run: training curves (like the paper's Fig. 3) and confusion matrices."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; selected here, not at import time
    import matplotlib.pyplot as plt

    return plt


def plot_curves(csv_path: str | Path, png_path: str | Path, xlabel: str = "epoch") -> None:
    """Accuracy, joint loss and (when logged) flow EPE per epoch, train against val.

    The CSV's ``epoch`` column is the x axis (``xlabel`` names it: a pre-training run logs steps).
    """
    with open(csv_path) as handle:
        rows = list(csv.DictReader(handle))
    plt = _pyplot()
    panels = [("accuracy", "accuracy [0, 1]"), ("total", "joint loss"), ("photometric", "photometric loss"),
              ("val_photometric", "val photometric loss"), ("epe", "flow EPE, all valid pixels (px)"),
              ("moving_epe", "flow EPE, moving pixels (px)")]
    panels = [p for p in panels if any(row.get(p[0]) not in (None, "") for row in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    axes = np.atleast_1d(axes)
    for ax, (key, label) in zip(axes, panels):
        for split, style in (("train", "-o"), ("val", "-s")):
            points = [(int(r["epoch"]), float(r[key])) for r in rows if r["split"] == split and r.get(key) not in (None, "")]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, style, label=split, markersize=3)
        if key in ("epe", "moving_epe"):  # references on the same pixels: no motion at all, and OpenCV DIS
            for method, style in (("zero", "k--"), ("dis", "k:")):
                column = f"{method}_{key}"
                points = [(int(r["epoch"]), float(r[column])) for r in rows if r["split"] == "val" and r.get(column)]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, style, label=f"{'zero flow' if method == 'zero' else 'DIS'} (val)", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
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
    fig.savefig(png_path, dpi=110)
    plt.close(fig)

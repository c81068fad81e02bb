"""Glue shared by the commands: choosing the data of a run and writing reports."""
from __future__ import annotations

import json
from pathlib import Path

from flowaction.config import Config
from flowaction.data.cache import ClipCache


def open_data(cfg: Config, out: str | Path) -> ClipCache:
    """The cache a config names, or the generated benchmark (made once, then reused)."""
    if cfg.data.cache:
        return ClipCache.open(cfg.data.cache)
    from flowaction.data.generate import synthetic_cache
    from flowaction.data.synthetic import SyntheticSpec

    s = cfg.data.synthetic
    spec = SyntheticSpec(size=s.size, num_frames=s.num_frames, num_classes=s.num_classes)
    target = Path(cfg.data.synthetic_dir) if cfg.data.synthetic_dir else Path(out) / "data"
    counts = {"train": s.train_per_class, "val": s.val_per_class, "test": s.test_per_class}
    return synthetic_cache(target, spec, counts, s.seed)


def write_eval_report(report: dict, out: str | Path) -> None:
    """``OUT/eval.json`` and ``OUT/confusion.png``."""
    from flowaction.data.cache import atomic_write_json
    from flowaction.plots import plot_confusion

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "eval.json", report)
    title = f"{report['split']}: video accuracy {report['video_accuracy']:.3f}"
    plot_confusion(report["confusion"], report["classes"], out / "confusion.png", title)

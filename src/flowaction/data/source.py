"""The data a config names: a prepared cache, or the generated benchmark (made once, then reused)."""
from __future__ import annotations

from pathlib import Path

from flowaction.config import SYNTHETIC_DEFAULT_CLASSES, Config
from flowaction.data.actions import ActionSpec
from flowaction.data.cache import ClipCache
from flowaction.data.generate import synthetic_cache
from flowaction.data.scenes import SceneSpec
from flowaction.data.synthetic import SyntheticSpec


def synthetic_spec(cfg: Config) -> SyntheticSpec | ActionSpec | SceneSpec:
    """The generated benchmark's settings a config names (``data.synthetic``): the motion world's
    the articulated actions' or the flow scenes' (``data.synthetic.kind``)."""
    s = cfg.data.synthetic
    classes = s.num_classes or SYNTHETIC_DEFAULT_CLASSES[s.kind]
    if s.kind == "actions":
        return ActionSpec(size=s.size, num_frames=s.num_frames, num_classes=classes)
    if s.kind == "scenes":
        return SceneSpec(size=s.size, num_frames=s.num_frames, num_classes=classes)
    return SyntheticSpec(size=s.size, num_frames=s.num_frames, num_classes=classes)


def open_data(cfg: Config, out: str | Path, progress: bool = True) -> ClipCache:
    """The cache ``data.cache`` names, or the generated benchmark in ``data.synthetic_dir`` (by
    default ``OUT/data``), generated on first use."""
    if cfg.data.cache:
        return ClipCache.open(cfg.data.cache)
    s = cfg.data.synthetic
    target = Path(cfg.data.synthetic_dir) if cfg.data.synthetic_dir else Path(out) / "data"
    counts = {"train": s.train_per_class, "val": s.val_per_class, "test": s.test_per_class}
    return synthetic_cache(target, synthetic_spec(cfg), counts, s.seed, progress=progress, workers=s.workers)

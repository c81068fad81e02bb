"""``flowaction eval``: score a checkpoint on a split of a cache; ``eval.json`` and ``confusion.png``."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from flowaction.data.cache import ClipCache, atomic_write_json
from flowaction.engine.device import resolve_device
from flowaction.engine.evaluate import evaluate_checkpoint
from flowaction.flow.metrics import describe_flow_errors
from flowaction.models.build import load_model_checkpoint
from flowaction.plots import plot_confusion


def write_eval_report(report: dict, out: str | Path) -> None:
    """``OUT/eval.json`` and ``OUT/confusion.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "eval.json", report)
    title = f"{report['split']}: video accuracy {report['video_accuracy']:.3f}"
    plot_confusion(report["confusion"], report["classes"], out / "confusion.png", title)


def run_eval(checkpoint: str | Path, data: str | Path, out: str | Path, split: str | None = None,
             device: str = "auto", progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Score ``checkpoint`` on ``split`` of the cache ``data`` (default: test if it has one, else
    val), write the report into ``out`` and say the figures. Returns the report."""
    resolve_device(device)  # a wrong device, cache or checkpoint is said before anything else
    cache = ClipCache.open(data)
    loaded = load_model_checkpoint(checkpoint)
    if split is None:
        split = "test" if cache.split("test") else "val"
        log(f"scoring split {split!r}" + ("" if split == "test" else " (the cache has no test split)"))
    report = evaluate_checkpoint(loaded, cache, split, "test", device, progress=progress)
    write_eval_report(report, out)
    log(f"{split}: clip accuracy {report['clip_accuracy']:.4f}  video accuracy {report['video_accuracy']:.4f}"
        + (f"  top-5 {report['top5_video_accuracy']:.4f}" if report["top5_video_accuracy"] is not None else ""))
    log(f"mean class accuracy {report['mean_class_accuracy']:.4f}")
    if report["flow"]:
        log(describe_flow_errors(report["flow"]))
    if report["selected_on_this_split"]:
        log(f"note: the checkpoint was selected on split {split!r} (its best validation accuracy), so this "
            "figure is optimistic; score a split it was not selected on")
    log(f"wrote {Path(out) / 'eval.json'} and {Path(out) / 'confusion.png'}")
    return report

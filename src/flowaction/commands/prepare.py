"""``flowaction prepare``: decode videos once into a clip cache, and say what was made."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from flowaction.commands.rundir import run_lock
from flowaction.data.prepare import prepare


def run_prepare(kind: str, root: str | Path, out: str | Path, size: int = 64, height: int | None = None,
                width: int | None = None, log: Callable[[str], None] = print, **options) -> dict:
    """Prepare the videos under ``root`` (``kind``: ucf101, hmdb51 or folder) into the cache ``out``
    at short side ``size`` or exactly ``height`` x ``width``; ``options`` go to
    :func:`flowaction.data.prepare.prepare`. Returns its report."""
    if (height is None) != (width is None):
        raise ValueError("give both --height and --width, or neither (then --size sets the short side)")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"video root {root} does not exist")
    with run_lock(out):  # two prepares into one cache would interleave their shards
        report = prepare(kind, root, out, size=(height, width) if height is not None else size, log=log, **options)
    frame_h, frame_w = report["frame_size"]
    counts = "  ".join(f"{name} {count}" for name, count in report["videos"].items())
    log(f"prepared {out}: {len(report['classes'])} classes, {frame_h}x{frame_w} frames; videos: {counts}")
    log(f"decoded {report['decoded_videos']} videos ({report['decoded_frames']} frames) in {report['seconds']:.1f} s: "
        f"{report['frames_per_second']:.0f} frames/s; reused {report['reused_videos']} from finished shards")
    if report["skipped"]:
        log(f"skipped {len(report['skipped'])} video(s):")
        for item in report["skipped"]:
            log(f"  {item['path']}: {item['reason']}")
    if "val" not in report["videos"]:
        log("no val split: train with data.val_split=test (official protocol) or prepare with --val-from-train F")
    log(f"wrote {Path(out) / 'prepare_report.json'} and {Path(out) / 'index.json'}")
    return report

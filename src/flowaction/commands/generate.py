"""``flowaction generate``: a generated benchmark as a clip cache and, with ``--videos``, as video
files in a folder per class (to try ``prepare``, ``predict`` and ``stream`` on files)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from tqdm import tqdm

from flowaction.config import SYNTHETIC_DEFAULT_CLASSES, from_dict
from flowaction.data.decode import write_gray_video
from flowaction.data.source import synthetic_spec
from flowaction.data.generate import synthetic_cache


def run_generate(
    out: str | Path,
    kind: str = "actions",
    size: int = 48,
    num_frames: int = 16,
    num_classes: int = 0,
    per_class: tuple[int, int, int] = (60, 10, 20),
    seed: int = 0,
    videos: bool = False,
    workers: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Generate ``kind`` (``motion``, ``actions`` or ``scenes``) into ``OUT/cache``; ``per_class`` is the
    train, val and test clips per class. With ``videos`` also write every clip as
    ``OUT/videos/<class>/<split>-<index>.mp4`` (25 frames/s). Returns what was written."""
    cfg = from_dict({"data": {"crop": min(size, 56), "synthetic": {"kind": kind, "size": size,
                                                                   "num_frames": num_frames, "num_classes": num_classes}}})
    counts = dict(zip(("train", "val", "test"), per_class))
    out = Path(out)
    if videos and (out / "videos").is_dir() and any((out / "videos").iterdir()):
        raise FileExistsError(f"{out / 'videos'} holds videos already: give another --out, or remove that folder")
    cache = synthetic_cache(out / "cache", synthetic_spec(cfg), counts, seed, progress=progress, workers=workers)
    classes = num_classes or SYNTHETIC_DEFAULT_CLASSES[kind]
    log(f"generated {len(cache.videos)} clips of {classes} {kind} classes ({size} x {size}, {num_frames} frames) "
        f"into {out / 'cache'}: train with --data {out / 'cache'}")
    written = []
    if videos:
        folder = out / "videos"
        for index, record in enumerate(tqdm(cache.videos, desc="videos", unit="video", disable=not progress)):
            split, number = record["id"].split("/")
            path = folder / cache.classes[record["label"]] / f"{split}-{number}.mp4"
            written.append(str(write_gray_video(path, cache.frames(index))))
        log(f"wrote {len(written)} videos into {folder}/<class>/ (try: flowaction prepare folder --root {folder} "
            f"--out CACHE)")
    return {"cache": str(out / "cache"), "clips": len(cache.videos), "classes": cache.classes, "videos": written}

"""The prepared clip cache: shards of frames plus an index, written once, memory-mapped.

Layout of a cache directory::

    CACHE/
      index.json                       written last: a cache without it is incomplete
      shards/<name>.frames.npy         uint8 (F, H, W): the frames of several videos, end to end
      shards/<name>.flow.npy           float16 (F, 2, H, W), optional ground-truth flow: row f is the
                                       flow from frame f to f + 1 of its video (0 on a video's last)
      shards/<name>.valid.npy          uint8 (F, H, W), optional validity mask of that flow
      shards/<name>.json               the shard's manifest, renamed into place after its arrays

Each writer (one per worker process or cluster task) owns its shards, so no frames cross a
process boundary; a finished shard appears atomically by rename, so a killed prepare leaves only
whole shards (and maybe temporary files, which are ignored and overwritten), and resuming means
skipping the videos that finished shards already hold. The index gathers the manifests.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from flowaction.data.splits import VIDEO_EXTENSIONS

CACHE_FORMAT = 1
INDEX_NAME = "index.json"


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


@dataclass
class VideoRecord:
    """One video of the cache. ``start``/``length`` locate its frames in its shard."""

    id: str
    label: int
    split: str
    shard: str = ""
    start: int = 0
    length: int = 0
    fps: float = 0.0
    source: str = ""

    def to_json(self) -> dict:
        return dict(self.__dict__)


class ShardWriter:
    """Collects whole videos in memory and writes them as one shard.

    Args:
        cache_dir: the cache root.
        name: a shard name unique in the cache (e.g. ``"train-w0-00003"``).
        with_flow: whether every video added carries ground-truth flow and mask.
    """

    def __init__(self, cache_dir: Path, name: str, with_flow: bool = False) -> None:
        self.dir = Path(cache_dir) / "shards"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.with_flow = with_flow
        self.records: list[VideoRecord] = []
        self._frames: list[np.ndarray] = []
        self._flows: list[np.ndarray] = []
        self._valid: list[np.ndarray] = []
        self.num_frames = 0

    def add(
        self,
        record: VideoRecord,
        frames: np.ndarray,
        flow: np.ndarray | None = None,
        valid: np.ndarray | None = None,
    ) -> None:
        """Append a video: frames ``(L, H, W)`` uint8; flow ``(L-1, 2, H, W)``; valid ``(L-1, H, W)``."""
        if frames.dtype != np.uint8 or frames.ndim != 3:
            raise ValueError(f"frames must be uint8 (L, H, W), got {frames.dtype} {frames.shape}")
        if self._frames and frames.shape[1:] != self._frames[0].shape[1:]:
            raise ValueError("all videos of a shard must share one frame size")
        length = frames.shape[0]
        if self.with_flow:
            if flow is None or valid is None or flow.shape[0] != length - 1:
                raise ValueError("this shard stores flow: pass flow (L-1, 2, H, W) and valid (L-1, H, W)")
            pad_flow = np.zeros((1, *flow.shape[1:]), np.float16)
            pad_valid = np.zeros((1, *valid.shape[1:]), np.uint8)
            self._flows.append(np.concatenate((flow.astype(np.float16), pad_flow)))
            self._valid.append(np.concatenate((valid.astype(np.uint8), pad_valid)))
        record.shard, record.start, record.length = self.name, self.num_frames, length
        self.records.append(record)
        self._frames.append(frames)
        self.num_frames += length

    def close(self) -> list[VideoRecord]:
        """Write the arrays, then the manifest (the commit point). Returns the records."""
        if not self.records:
            return []
        _atomic_save_npy(self.dir / f"{self.name}.frames.npy", np.concatenate(self._frames))
        if self.with_flow:
            _atomic_save_npy(self.dir / f"{self.name}.flow.npy", np.concatenate(self._flows))
            _atomic_save_npy(self.dir / f"{self.name}.valid.npy", np.concatenate(self._valid))
        manifest = {
            "format": CACHE_FORMAT,
            "name": self.name,
            "with_flow": self.with_flow,
            "frame_size": list(self._frames[0].shape[1:]),
            "videos": [r.to_json() for r in self.records],
        }
        atomic_write_json(self.dir / f"{self.name}.json", manifest)
        records = self.records
        self.records, self._frames, self._flows, self._valid = [], [], [], []
        return records


def finished_shards(cache_dir: Path) -> list[dict]:
    """The manifests of the shards that were completely written, sorted by name."""
    shard_dir = Path(cache_dir) / "shards"
    if not shard_dir.is_dir():
        return []
    manifests = []
    for path in sorted(shard_dir.glob("*.json")):
        if path.name.endswith(".tmp"):
            continue
        with open(path) as handle:
            manifests.append(json.load(handle))
    return manifests


def write_index(
    cache_dir: Path,
    classes: list[str],
    meta: dict | None = None,
    select: Callable[[list[dict]], list[dict]] | None = None,
) -> dict:
    """Gather the finished shards into ``index.json`` (written atomically, last).

    ``select`` may filter, relabel or reorder the gathered video records before they are indexed
    (``prepare`` uses it to index only the videos of its split plan, in a fixed order).
    """
    manifests = finished_shards(cache_dir)
    if not manifests:
        raise ValueError(f"{cache_dir}: no finished shard to index")
    sizes = {tuple(m["frame_size"]) for m in manifests}
    if len(sizes) != 1:
        raise ValueError(f"{cache_dir}: shards have different frame sizes {sorted(sizes)}")
    videos = [v for m in manifests for v in m["videos"]]
    if select is not None:
        videos = select(videos)
        if not videos:
            raise ValueError(f"{cache_dir}: no video left to index")
    index = {
        "format": CACHE_FORMAT,
        "classes": list(classes),
        "frame_size": list(sizes.pop()),
        "with_flow": all(m["with_flow"] for m in manifests),
        "videos": videos,
        "meta": meta or {},
    }
    atomic_write_json(Path(cache_dir) / INDEX_NAME, index)
    return index


@dataclass
class ClipCache:
    """Read side of a cache: the index plus lazily memory-mapped shards.

    Opening maps nothing; each process maps the shards it touches on first use, which keeps the
    object cheap to send to DataLoader workers.
    """

    root: Path
    index: dict = field(default_factory=dict)
    _maps: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: str | os.PathLike) -> "ClipCache":
        root = Path(root)
        path = root / INDEX_NAME
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist (a clip cache is made by `flowaction prepare`)")
        if not path.is_file():
            raise FileNotFoundError(_not_a_cache(root))
        with open(path) as handle:
            index = json.load(handle)
        if index.get("format") != CACHE_FORMAT:
            raise ValueError(f"{path}: cache format {index.get('format')}, expected {CACHE_FORMAT}")
        return cls(root=root, index=index)

    @property
    def classes(self) -> list[str]:
        return self.index["classes"]

    @property
    def with_flow(self) -> bool:
        return bool(self.index.get("with_flow"))

    @property
    def videos(self) -> list[dict]:
        return self.index["videos"]

    def split(self, name: str) -> list[int]:
        """Indices (into :attr:`videos`) of the videos of one split, in index order."""
        return [i for i, v in enumerate(self.videos) if v["split"] == name]

    def splits(self) -> list[str]:
        return sorted({v["split"] for v in self.videos})

    def _array(self, shard: str, kind: str) -> np.ndarray:
        key = (shard, kind)
        if key not in self._maps:
            self._maps[key] = np.load(self.root / "shards" / f"{shard}.{kind}.npy", mmap_mode="r")
        return self._maps[key]

    def frames(self, video: int, indices: Iterable[int] | None = None) -> np.ndarray:
        """``(L, H, W)`` uint8 frames of a video (or only ``indices`` of them)."""
        record = self.videos[video]
        frames = self._array(record["shard"], "frames")
        if indices is None:
            return frames[record["start"] : record["start"] + record["length"]]
        return frames[record["start"] + np.asarray(list(indices), dtype=np.int64)]

    def flow(self, video: int, indices: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Ground-truth flow ``(n, 2, H, W)`` float32 and mask ``(n, H, W)`` bool of frame pairs
        ``(i, i + 1)`` for ``i`` in ``indices``."""
        if not self.with_flow:
            raise ValueError(f"{self.root} holds no ground-truth flow")
        record = self.videos[video]
        rows = record["start"] + np.asarray(list(indices), dtype=np.int64)
        flow = self._array(record["shard"], "flow")[rows].astype(np.float32)
        valid = self._array(record["shard"], "valid")[rows].astype(bool)
        return flow, valid

    def classical(self, video: int, indices: Iterable[int], method: str) -> np.ndarray:
        """Precomputed OpenCV flow ``(n, 2, H, W)`` float32 of pairs ``(i, i + 1)`` (see
        ``data.classical_cache``)."""
        record = self.videos[video]
        rows = record["start"] + np.asarray(list(indices), dtype=np.int64)
        return self._array(record["shard"], method)[rows].astype(np.float32)

    def __getstate__(self) -> dict:
        # memory maps are reopened in each worker rather than pickled
        return {"root": self.root, "index": self.index, "_maps": {}}


def _not_a_cache(root: Path) -> str:
    """Why ``root`` (which exists) cannot be opened as a cache, and what to do instead."""
    prepare = "flowaction prepare folder --root VIDEOS --out CACHE"
    if root.is_file():
        kind = "a video file" if root.suffix.lower() in VIDEO_EXTENSIONS else "a file"
        return (f"{root} is {kind}, not a clip cache: put the videos in class folders, prepare them once "
                f"({prepare}) and pass --data CACHE")
    if root.name == "shards" and (root.parent / INDEX_NAME).is_file():
        return f"{root} is the shards folder inside the cache {root.parent}: pass --data {root.parent}"
    if (root / "shards").is_dir():
        return (f"{root} is not a complete clip cache (no {INDEX_NAME}): a prepare into it did not finish; run "
                "`flowaction prepare` again with the same --out to finish it")
    videos = next((p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS), None)
    if videos is not None:
        return (f"{root} holds videos, not a clip cache: prepare them once with `flowaction prepare folder "
                f"--root {root} --out CACHE` (one folder per class) and pass --data CACHE")
    return f"{root} is not a clip cache (no {INDEX_NAME}); a clip cache is made by `{prepare}`"


"""Which videos a data set has, their classes and splits: UCF101, HMDB51 or a folder per class.

Every reader returns a :class:`SplitPlan`: the class names in label order and one
:class:`VideoEntry` per video (its path relative to the video root, which is also the video's id
in the cache). Nothing here decodes video or checks that listed files exist: ``prepare`` does,
and reports missing files as skipped.

- UCF101: ``ROOT/<Class>/v_<Class>_gXX_cYY.avi``; ``classInd.txt``, ``trainlist0N.txt``,
  ``testlist0N.txt`` (CRLF lines). The class is the FOLDER of a list line, never the file name:
  the real set spells some classes differently in the two (``HandstandPushups`` holds
  ``v_HandStandPushups_g01_c01.avi``).
- HMDB51: ``ROOT/<class>/<file>.avi``; ``<class>_test_splitN.txt`` with lines
  ``<file>.avi <0|1|2>`` (1 train, 2 test, 0 unused and left out). Classes sorted by name.
- folder: ``ROOT/<class>/*.{avi,mp4,mkv,webm,mov}``; classes are the sorted folder names; a
  seeded, stratified ``val`` split carved from each class, or the user's own list files.
"""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, replace
import os
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov")
# where the official split files usually sit when --splits is not given
DEFAULT_SPLIT_DIRS = {
    "ucf101": ("ucfTrainTestlist", "splits", "."),
    "hmdb51": ("testTrainMulti_7030_splits", "splits", "."),
}
_UCF_GROUP = re.compile(r"_g(\d+)_c\d+", re.IGNORECASE)


class SplitError(ValueError):
    """Split files that are missing or do not match the videos' folders."""


@dataclass(frozen=True)
class VideoEntry:
    """One video: ``path`` relative to the video root (POSIX, also its cache id), class, split."""

    path: str
    cls: str
    split: str


@dataclass
class SplitPlan:
    """The classes in label order and the videos of every split."""

    classes: list[str]
    entries: list[VideoEntry]

    def label(self, cls: str) -> int:
        return self.classes.index(cls)

    def counts(self) -> dict[str, int]:
        """Videos per split, e.g. ``{"test": 3783, "train": 9537}``."""
        counts: dict[str, int] = defaultdict(int)
        for entry in self.entries:
            counts[entry.split] += 1
        return dict(sorted(counts.items()))


def read_lines(path: Path) -> list[str]:
    """Non-blank lines of a list file, stripped; CRLF / LF / BOM all accepted."""
    text = Path(path).read_text(encoding="utf-8-sig", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _rel(path: str) -> str:
    # list files written on Windows may use backslashes
    return str(PurePosixPath(path.replace("\\", "/").lstrip("/")))


def _check_split(split: int) -> None:
    if split not in (1, 2, 3):
        raise SplitError(f"--split must be 1, 2 or 3 (the official splits), got {split}")


def find_splits_dir(kind: str, root: Path, splits_dir: Path | None) -> Path:
    """``splits_dir`` if given, else a usual location under (or beside) ``root``."""
    if splits_dir is not None:
        if not Path(splits_dir).is_dir():
            raise SplitError(f"split directory {splits_dir} does not exist")
        return Path(splits_dir)
    probe = "classInd.txt" if kind == "ucf101" else "*_test_split1.txt"
    for base in (root, root.parent):
        for name in DEFAULT_SPLIT_DIRS[kind]:
            if any((base / name).glob(probe)):
                return base / name
    raise SplitError(f"no {kind} split files found near {root}; pass --splits DIR")


def ucf101_splits(root: Path, splits_dir: Path | None = None, split: int = 1) -> SplitPlan:
    """The videos of UCF101 split ``split`` (1-3): ``train`` and ``test``."""
    _check_split(split)
    splits_dir = find_splits_dir("ucf101", Path(root), splits_dir)
    files = {name: splits_dir / name for name in ("classInd.txt", f"trainlist0{split}.txt", f"testlist0{split}.txt")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise SplitError(f"missing UCF101 split file(s): {', '.join(missing)}")
    numbered: dict[int, str] = {}
    for line in read_lines(files["classInd.txt"]):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SplitError(f"{files['classInd.txt']}: bad line {line!r} (expected '<index> <Class>')")
        numbered[int(parts[0])] = parts[1]
    classes = [numbered[i] for i in sorted(numbered)]
    if sorted(numbered) != list(range(1, len(classes) + 1)):
        raise SplitError(f"{files['classInd.txt']}: class indices must run 1..{len(classes)}")
    known = set(classes)
    entries: list[VideoEntry] = []
    seen: dict[str, str] = {}
    for name, split_name in ((f"trainlist0{split}.txt", "train"), (f"testlist0{split}.txt", "test")):
        for line in read_lines(files[name]):
            path, label = line, None
            if split_name == "train":
                path, label = (line.rsplit(None, 1) + [""])[:2]
                if not label.isdigit():
                    raise SplitError(f"{files[name]}: bad line {line!r} (expected '<Class>/<file>.avi <label>')")
            path = _rel(path.strip())
            cls = PurePosixPath(path).parts[0] if "/" in path else ""
            if cls not in known:
                raise SplitError(f"{files[name]}: {path!r} names class folder {cls!r}, not listed in classInd.txt")
            if label is not None and numbered.get(int(label)) != cls:
                raise SplitError(f"{files[name]}: {path!r} has label {label}, but classInd.txt gives {cls} another")
            if path in seen:
                if seen[path] != split_name:
                    raise SplitError(f"{path} is listed in both the train and the test list")
                continue
            seen[path] = split_name
            entries.append(VideoEntry(path, cls, split_name))
    return SplitPlan(classes, entries)


def hmdb51_splits(root: Path, splits_dir: Path | None = None, split: int = 1) -> SplitPlan:
    """The videos of HMDB51 split ``split`` (1-3): ``train`` (mark 1) and ``test`` (mark 2)."""
    _check_split(split)
    root = Path(root)
    splits_dir = find_splits_dir("hmdb51", root, splits_dir)
    suffix = f"_test_split{split}.txt"
    lists = {p.name[: -len(suffix)]: p for p in splits_dir.glob(f"*{suffix}")}
    if not lists:
        raise SplitError(f"no *{suffix} files in {splits_dir}")
    unknown = sorted(c for c in lists if not (root / c).is_dir())
    if unknown:
        raise SplitError(f"split files name class folder(s) missing under {root}: {', '.join(unknown)}")
    with_videos = sorted(d.name for d in root.iterdir() if d.is_dir() and _videos_in(d))
    unlisted = [c for c in with_videos if c not in lists]
    if unlisted:
        raise SplitError(f"missing HMDB51 split file(s) in {splits_dir}: {', '.join(c + suffix for c in unlisted)}")
    classes = sorted(lists)
    entries = []
    for cls in classes:
        for line in read_lines(lists[cls]):
            name, mark = (line.rsplit(None, 1) + [""])[:2]
            if mark not in ("0", "1", "2"):
                raise SplitError(f"{lists[cls]}: bad line {line!r} (expected '<file>.avi <0|1|2>')")
            if mark != "0":
                entries.append(VideoEntry(f"{cls}/{_rel(name.strip())}", cls, "train" if mark == "1" else "test"))
    return SplitPlan(classes, entries)


def _videos_in(folder: Path) -> list[str]:
    """Names of the video files directly inside ``folder``, sorted (extensions case-insensitive)."""
    try:
        return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    except PermissionError:
        # refused rather than skipped: leaving a class out would quietly change the task
        raise SplitError(f"cannot list {folder}: permission denied (make it readable, or move it out of the "
                         "root if it is not a class)") from None


def _rank(seed: int, path: str) -> str:
    # a hash per video (not a shuffle of the list), so a video's rank never depends on the others
    return hashlib.sha1(f"{seed}:{path}".encode()).hexdigest()


def carve_val(
    entries: Iterable[VideoEntry],
    fraction: float,
    seed: int = 0,
    source: str = "train",
    group: Callable[[VideoEntry], str] | None = None,
    target: str = "val",
) -> list[VideoEntry]:
    """Move ``fraction * n`` (rounded half up) of each class's ``source`` videos (at least 1 of 2 or more)
    to ``target`` (``val``, or ``test``), chosen by a seeded hash per video; deterministic and
    stratified, and adding a video to one class never changes another class's split.

    ``group`` maps a video to a group kept whole (UCF101's ``gXX``: clips of one group share
    actor and scene, so splitting a group would leak between train and val).
    """
    if not 0.0 <= fraction < 1.0:
        raise SplitError(f"a {target} fraction must be in [0, 1), got {fraction}")
    entries = list(entries)
    if fraction == 0:
        return entries
    keyof = group or (lambda e: e.path)
    per_class: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, entry in enumerate(entries):
        if entry.split == source:
            per_class[entry.cls][keyof(entry)].append(i)
    out = list(entries)
    for cls, groups in per_class.items():
        # val keeps its original ranking key; another target ranks by its own, independent hash
        prefix = "" if target == "val" else f"{target}:"
        keys = sorted(groups, key=lambda k: _rank(seed, f"{prefix}{cls}/{k}"))
        count = int(fraction * len(keys) + 0.5)  # half up, not Python's half-to-even
        if count == 0 and len(keys) >= 2:
            count = 1
        for key in keys[: min(count, len(keys) - 1)]:
            for i in groups[key]:
                out[i] = replace(entries[i], split=target)
    return out


def ucf101_group(entry: VideoEntry) -> str:
    """UCF101's group (``g08``) of a video, the unit of :func:`carve_val` for this set."""
    match = _UCF_GROUP.search(entry.path)
    return f"g{int(match.group(1)):02d}" if match else entry.path


#: the one class of an unlabeled plan (flow pre-training needs no labels)
UNLABELED_CLASS = "video"


def unlabeled_splits(root: Path, val_fraction: float = 0.2, seed: int = 0) -> SplitPlan:
    """Every video anywhere under ``root`` (flat, nested or a folder per class; hidden folders
    skipped) as one class, ``val_fraction`` of them in ``val``: data for the flow losses, which
    need no labels."""
    root = Path(root)
    if not root.is_dir():
        raise SplitError(f"video root {root} does not exist")
    paths = []
    for folder, subfolders, _ in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        relative = Path(folder).relative_to(root)
        paths += [(relative / name).as_posix() for name in _videos_in(Path(folder))]
    if not paths:
        raise SplitError(f"no video ({', '.join(VIDEO_EXTENSIONS)}) anywhere under {root}")
    entries = [VideoEntry(path, UNLABELED_CLASS, "train") for path in sorted(paths)]
    return SplitPlan([UNLABELED_CLASS], carve_val(entries, val_fraction, seed))


def folder_splits(
    root: Path,
    val_fraction: float = 0.2,
    seed: int = 0,
    train_list: Path | None = None,
    val_list: Path | None = None,
    test_fraction: float = 0.0,
) -> SplitPlan:
    """A folder per class: ``train`` / ``val`` (and ``test``) carved per class, or read from list files.

    With ``train_list`` and/or ``val_list`` (lines ``<class>/<file>``), exactly the listed videos
    are used; otherwise every video: ``test_fraction`` of each class goes to ``test`` first, then
    ``val_fraction`` of the rest to ``val``.
    """
    root = Path(root)
    if not root.is_dir():
        raise SplitError(f"video root {root} does not exist")
    folders = {d.name: d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    videos = {name: _videos_in(d) for name, d in folders.items()}
    classes = sorted(name for name, files in videos.items() if files)
    if not classes:
        raise SplitError(f"no class folder with videos ({', '.join(VIDEO_EXTENSIONS)}) under {root}")
    if train_list is None and val_list is None:
        entries = [VideoEntry(f"{c}/{name}", c, "train") for c in classes for name in videos[c]]
        entries = carve_val(entries, test_fraction, seed, target="test")
        return SplitPlan(classes, carve_val(entries, val_fraction, seed))
    if test_fraction:
        raise SplitError("--test-fraction carves a test split from all videos; with your own lists, list them")
    entries, seen = [], {}
    for list_path, split_name in ((train_list, "train"), (val_list, "val")):
        if list_path is None:
            continue
        if not Path(list_path).is_file():
            raise SplitError(f"list file {list_path} does not exist")
        for line in read_lines(Path(list_path)):
            path = _rel(line)
            cls = PurePosixPath(path).parts[0] if "/" in path else ""
            if cls not in classes:
                raise SplitError(f"{list_path}: {path!r} names class folder {cls!r}, not one of {root}'s class folders")
            if seen.get(path, split_name) != split_name:
                raise SplitError(f"{path} is listed in both the train and the val list")
            if path not in seen:
                seen[path] = split_name
                entries.append(VideoEntry(path, cls, split_name))
    return SplitPlan(classes, entries)


def load_splits(
    kind: str,
    root: Path,
    splits_dir: Path | None = None,
    split: int = 1,
    val_fraction: float = 0.2,
    val_from_train: float = 0.0,
    seed: int = 0,
    train_list: Path | None = None,
    val_list: Path | None = None,
    test_fraction: float = 0.0,
    min_classes: int = 2,
) -> SplitPlan:
    """The plan of any supported ``kind`` (``ucf101``, ``hmdb51``, ``folder``, ``unlabeled``).

    An action classifier needs two classes at least: a plan with fewer than ``min_classes`` is
    refused (1 suits the flow losses alone, which need no labels).

    ``val_from_train`` carves a ``val`` split from the official train split (UCF101 by whole
    groups); 0 keeps the official protocol (train / test only).
    """
    root = Path(root)
    if not root.is_dir():
        raise SplitError(f"video root {root} does not exist")
    if kind in ("ucf101", "hmdb51"):
        reader, group = (ucf101_splits, ucf101_group) if kind == "ucf101" else (hmdb51_splits, None)
        if test_fraction:
            raise SplitError(f"{kind} has an official test split: --test-fraction is for the folder kind")
        plan = reader(root, splits_dir, split)
        plan = SplitPlan(plan.classes, carve_val(plan.entries, val_from_train, seed, group=group))
    elif kind == "folder":
        plan = folder_splits(root, val_fraction, seed, train_list, val_list, test_fraction)
    elif kind == "unlabeled":
        plan = unlabeled_splits(root, val_fraction, seed)
    else:
        raise SplitError(f"unknown data set kind {kind!r}: ucf101, hmdb51, folder or unlabeled")
    if len(plan.classes) < min_classes:
        found = f"only {plan.classes[0]!r}" if plan.classes else "none"
        raise SplitError(f"{root} has {len(plan.classes)} class with videos ({found}): an action classifier "
                         "needs two classes or more (one folder per class)")
    return plan

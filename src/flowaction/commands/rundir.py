"""The run-folder rules every command that writes a run follows: never silently replace an
earlier run, resume only a run that exists, and one process per folder at a time."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

from flowaction.config import Config, flatten, load_config, to_dict


LOCK_NAME = ".flowaction.lock"
# what a training run writes into its folder; data/ and cache/ (reusable inputs) are not in it
RUN_FILES = (
    "last.pt", "best.pt", "flownet.pt", "metrics.csv", "metrics.json", "eval.json", "config.yaml",
    "curves.png", "confusion.png", "flows.png", "tensorboard", "init_report.json",
)
# written before the first step: a folder holding only these holds a run that never started
# (e.g. a mistyped model.flow_init), and the corrected command starts it again
BEFORE_START = ("config.yaml", "init_report.json")


def claim_run_dir(out: str | Path, resume: bool, overwrite: bool = False, delete_old: bool = False, log=print) -> None:
    """Make ``out`` ready for a run, never silently replacing an earlier one.

    * ``resume``: ``out`` must hold a run to continue (its ``last.pt``), else FileNotFoundError.
    * a folder that already holds a run (any of :data:`RUN_FILES`) is refused with FileExistsError
      unless ``overwrite``: then the old run's files are moved to ``out/replaced-<time>/`` (or
      deleted with ``delete_old``); nothing else in the folder is touched.
    * a run counts once training has started: the files of a run that failed before its first step
      (:data:`BEFORE_START` only) are replaced by the new run, and the log says so.
    """
    out = Path(out)
    if resume:
        if overwrite:
            raise ValueError("--resume continues a run and --overwrite starts again: give one of them")
        if not out.is_dir():
            raise FileNotFoundError(f"--resume: {out} does not exist, so there is no run to resume")
        if not (out / "last.pt").is_file():
            started = _started(_run_files(out))
            raise FileNotFoundError(f"--resume: {out} holds no run to resume (no last.pt"
                                    + ("" if started else "; its run never started") + "); leave out --resume to "
                                    "start one" + (" (with --overwrite)" if started else ""))
        return
    found = _run_files(out)
    if not found:
        return
    if not _started(found):
        log(f"{out} holds {', '.join(found)} of a run that never started (no checkpoint, no metrics): "
            "they are replaced by this run's")
        return
    if not overwrite:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(found)}): pass --resume to continue it, or --overwrite "
            "to start again (the old files are moved to a replaced-<time> folder inside it; add --delete-old "
            "to delete them instead)"
        )
    if delete_old:
        for name in found:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        log(f"--overwrite --delete-old: deleted the earlier run's {', '.join(found)} in {out}")
        return
    aside = out / time.strftime("replaced-%Y%m%d-%H%M%S")
    suffix = 1
    while aside.exists():
        aside = out / f"{time.strftime('replaced-%Y%m%d-%H%M%S')}-{suffix}"
        suffix += 1
    aside.mkdir()
    for name in found:
        (out / name).rename(aside / name)
    log(f"--overwrite: moved the earlier run's {', '.join(found)} to {aside}")


def _run_files(out: Path) -> list[str]:
    return [name for name in RUN_FILES if (out / name).exists()]


def _started(found: list[str]) -> list[str]:
    return [name for name in found if name not in BEFORE_START]


def resume_config(out: str | Path, overrides: list[str], log=print) -> Config:
    """The config of the run in ``out`` (its ``config.yaml``) with ``overrides`` applied; every
    override that changes a value is reported."""
    path = Path(out) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {path} does not exist, so the run's settings are unknown")
    saved = load_config(path)
    cfg = load_config(path, overrides)
    before, after = flatten(to_dict(saved)), flatten(to_dict(cfg))
    changed = [f"{key} {before[key]!r} -> {after[key]!r}" for key in after if before[key] != after[key]]
    log(f"resuming {out} with its own config.yaml" + (f"; changed on the command line: {', '.join(changed)}"
                                                      if changed else ""))
    return cfg


@contextlib.contextmanager
def run_lock(out: str | Path) -> Iterator[None]:
    """Hold ``out/.flowaction.lock`` for the duration: a second process writing into the same
    folder is refused instead of interleaving with the first. The operating system releases the
    lock when the holder exits, even when it is killed, so a stale lock never blocks a rerun."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise FileExistsError(f"{out} is in use by another flowaction run ({holder}): wait for it to end, "
                              "or give another output folder") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()

"""``flowaction train``: claim the run folder, open (or generate) the data, ``fit``.

Under ``torchrun`` every process runs this; rank 0 alone claims the folder, generates data and
prints, and the others wait for it.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

from flowaction.commands.rundir import claim_run_dir, resume_config, run_lock
from flowaction.config import load_config
from flowaction.data.source import open_data
from flowaction.engine import distributed
from flowaction.engine.fit import fit


def run_train(
    out: str | Path,
    config: str | Path | None = None,
    data: str | Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    auto_resume: bool = False,
    overwrite: bool = False,
    delete_old: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict | None:
    """Train the model ``config`` (+ ``overrides``) describes on ``data`` (a prepared cache; else
    the generated benchmark) into ``out``. ``resume`` continues the run in ``out`` with its own
    config.yaml; ``auto_resume`` resumes when ``out`` holds a ``last.pt`` and starts otherwise (for
    ``torchrun --max-restarts`` and job schedulers). Returns ``fit``'s summary (None on ranks > 0)."""
    main_rank = int(os.environ.get("RANK", "0")) == 0
    say = log if main_rank else (lambda *_: None)
    if auto_resume:
        resume = (Path(out) / "last.pt").is_file()
    overrides = list(overrides or [])
    if data:
        overrides.append(f"data.cache={data}")
    if resume:
        if config is not None:
            raise ValueError("--resume takes the run's own config.yaml: give changes as KEY=VALUE, not --config")
        claim_run_dir(out, resume, overwrite, delete_old)
        cfg = resume_config(out, overrides, log=say)
    else:  # a bad config is reported before the folder is looked at
        cfg = load_config(config, overrides)
        if main_rank:
            claim_run_dir(out, resume, overwrite, delete_old)
    context, _ = distributed.setup(cfg.device)
    lock = run_lock(out) if context.main else contextlib.nullcontext()
    try:
        with lock:
            if context.main:
                cache = open_data(cfg, out, progress=progress)
            distributed.barrier(context)  # the others open what rank 0 generated
            if not context.main:
                cache = open_data(cfg, out, progress=False)
            summary = fit(cfg, cache, out, resume=resume, progress=progress, log=say)
    finally:
        distributed.cleanup(context)
    return summary if context.main else None

"""``flowaction pretrain-flow``: the flow network alone on unlabeled video, into ``OUT/flownet.pt``."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from flowaction.commands.rundir import claim_run_dir, run_lock
from flowaction.config import load_config, preset_path
from flowaction.data.prepare import prepare
from flowaction.data.source import open_data
from flowaction.engine.pretrain import pretrain_flow


def run_pretrain(
    out: str | Path,
    steps: int,
    eval_every: int = 200,
    config: str | Path | None = None,
    data: str | Path | None = None,
    videos: str | Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    delete_old: bool = False,
    progress: bool = True,
    command: str = "",
    log: Callable[[str], None] = print,
) -> dict:
    """Pre-train on ``data`` (a prepared cache), on ``videos`` (a folder of videos, decoded once
    into ``OUT/cache``) or, with neither, on the generated benchmark. The config is ``config`` or
    the packaged ``pretrain`` preset, plus ``overrides``. Returns ``pretrain_flow``'s summary."""
    if data and videos:
        raise ValueError("give --data CACHE or --videos DIR, not both")
    out = Path(out)
    overrides = list(overrides or [])
    if videos:  # decoded once into OUT/cache (a rerun reuses it)
        overrides.append(f"data.cache={out / 'cache'}")
    elif data:
        overrides.append(f"data.cache={data}")
    cfg = load_config(config or preset_path("pretrain"), overrides)
    claim_run_dir(out, resume, overwrite, delete_old)
    with run_lock(out):
        if videos:
            # the flow losses need no labels: every video under the folder, flat, nested or per class
            prepare("unlabeled", videos, out / "cache", workers=1, progress=progress, log=log, min_classes=1)
        cache = open_data(cfg, out, progress=progress)
        return pretrain_flow(cfg, cache, out, steps, eval_every, resume=resume, progress=progress, log=log,
                             command=command)

"""The one checkpoint dict that resume, eval, flow and predict all read.

Saved with ``torch.save`` to a temporary file and moved into place with ``os.replace`` (a crash
never leaves half a checkpoint), loaded with ``torch.load(weights_only=True)`` (no pickled code is
executed). It holds plain types and tensors only::

    {"format": 1, "config": {...}, "classes": [...], "model": state_dict,
     "optimizer": state_dict | None, "epoch": int, "step": int, "best": {...}, "rng": {...}}
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (which must contain ``model``, ``config`` and ``classes``)."""
    missing = {"model", "config", "classes"} - state.keys()
    if missing:
        raise ValueError(f"checkpoint lacks {sorted(missing)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without executing pickled code; check its format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # corrupt file, foreign pickle, truncated write
        raise ValueError(f"{path} is not a readable flowaction checkpoint: {error}") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {state.get('format') if isinstance(state, dict) else type(state)}")
    return state


def rng_state() -> dict[str, Any]:
    """Torch's CPU (and CUDA) generator states, for exact resume."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

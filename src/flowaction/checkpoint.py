"""The one checkpoint dict that resume, eval, flow and predict all read.

Saved with ``torch.save`` to a temporary file and moved into place with ``os.replace`` (a crash
never leaves half a checkpoint), loaded with ``torch.load(weights_only=True)`` (no pickled code is
executed). It holds plain types and tensors only::

    {"format": 1, "config": {...}, "classes": [...], "model": state_dict,
     "optimizer": state_dict | None, "epoch": int, "step": int, "best": {...}, "rng": {...}}
"""
from __future__ import annotations

import os
import pickle
import re
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
    try:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    except (OSError, RuntimeError) as error:  # e.g. a full disk: the previous file is untouched
        tmp.unlink(missing_ok=True)
        raise OSError(f"writing {path} failed ({error}); the previous {path.name}, if any, is intact") from error
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without executing pickled code; check its format."""
    path = Path(path)
    state = read_torch_file(path, map_location)
    if not isinstance(state, dict) or "format" not in state:
        raise ValueError(f"{path} is a PyTorch file but not a flowaction checkpoint (no 'format' entry)")
    if state["format"] != CHECKPOINT_FORMAT:
        newer = isinstance(state["format"], int) and state["format"] > CHECKPOINT_FORMAT
        raise ValueError(
            f"{path} has checkpoint format {state['format']!r}; this version of flowaction reads format "
            f"{CHECKPOINT_FORMAT}" + (" (the file was written by a newer flowaction: upgrade)" if newer else "")
        )
    return state


def load_weights(model: torch.nn.Module, weights: dict[str, Any], source: str | os.PathLike) -> None:
    """``model.load_state_dict(weights)`` (strict), after checking that the weights fit: a
    checkpoint of another model (depth, input, width) or for another number of classes is
    refused with a message naming what differs, before anything is loaded."""
    own = model.state_dict()
    missing = [key for key in own if key not in weights]
    unexpected = [key for key in weights if key not in own]
    reshaped = [key for key in own if key in weights and tuple(own[key].shape) != tuple(weights[key].shape)]
    if not (missing or unexpected or reshaped):
        model.load_state_dict(weights)
        return
    problems = []
    classifier = next((key for key in reshaped if key.endswith("fc.weight")), None)
    if classifier is not None and own[classifier].shape[1:] == weights[classifier].shape[1:]:
        problems.append(f"it classifies {weights[classifier].shape[0]} classes, the model "
                        f"{own[classifier].shape[0]}")
        reshaped = [key for key in reshaped if not key.endswith(("fc.weight", "fc.bias"))]
    if reshaped:
        key = reshaped[0]
        problems.append(f"{len(reshaped)} weight(s) of another shape (e.g. {key}: {tuple(weights[key].shape)} in "
                        f"the file, {tuple(own[key].shape)} in the model)")
    if missing:
        problems.append(f"{len(missing)} weight(s) of the model missing from it (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} weight(s) the model does not have (e.g. {unexpected[0]})")
    raise ValueError(f"{source} holds weights of another model: {'; '.join(problems)}. The model is built from "
                     "the config (model.input, model.depth, model.flow_width) and the data's classes.")


def read_torch_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with clear errors: a file carrying code is refused before
    any of it runs; a truncated or foreign file is named as such."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        blocked = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if blocked is None:  # junk the unpickler could not parse
            raise ValueError(f"{path} is not a readable checkpoint (truncated, corrupt or another format: "
                             f"{_first_line(error)})") from None
        # The weights-only unpickler met a class or a function (a reduce payload): the file carries
        # code or objects other than tensors and plain types. It is refused before any of it runs.
        raise ValueError(
            f"{path} contains code or objects other than tensors and plain types (it references "
            f"{blocked.group(1)}) and was not loaded; nothing in it was run. A flowaction checkpoint "
            "holds only tensors and plain types."
        ) from None
    except Exception as error:  # truncated write, junk bytes, another file format
        raise ValueError(
            f"{path} is not a readable checkpoint (truncated, corrupt or another format: "
            f"{type(error).__name__}: {_first_line(error)})"
        ) from None
    return state


def _first_line(error: BaseException) -> str:
    """The most specific line of a loader's error, without PyTorch's advice to unpickle anyway."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "weights_only" not in line and "torch.load" not in line
              and not line.startswith(("(1)", "(2)", "Please", "Check", "Weights only"))]
    line = (useful or [type(error).__name__])[0]
    # whole sentences only: the first, and the next ones while the line stays short
    sentences = re.split(r"(?<=[.!?])\s+", line)
    kept = sentences[0]
    for sentence in sentences[1:]:
        if len(kept) + 1 + len(sentence) > 200:
            break
        kept += " " + sentence
    return kept


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

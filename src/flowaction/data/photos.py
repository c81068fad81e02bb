"""Real photographs for generated worlds: the ones scikit-image's wheel ships, in gray.

They give the generated benchmarks real image statistics (edges, textures, flat regions). Some are
held out: the test split (and flow scoring on real statistics) draws only from :data:`HELD_OUT`,
training and validation only from :data:`TRAINING`, so a test clip never shows a photograph that
training saw.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

#: photographs for the training and validation splits
TRAINING = ("astronaut", "brick", "camera", "chelsea", "grass", "gravel", "motorcycle_left", "coins",
            "hubble_deep_field", "ihc")
#: photographs kept out of training and validation: the test split's
HELD_OUT = ("coffee", "rocket", "retina")


def photo_names(split: str) -> tuple[str, ...]:
    """The photographs a split draws from: :data:`HELD_OUT` for ``test``, else :data:`TRAINING`."""
    return HELD_OUT if split == "test" else TRAINING


def _data_folder() -> Path:
    spec = importlib.util.find_spec("skimage")  # located, not imported: only its data files are read
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the generated actions need scikit-image's photographs: pip install scikit-image")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """A photograph as float32 gray levels in [0, 255], ``(H, W)`` (read once per process)."""
    folder = _data_folder()
    matches = sorted(folder.glob(f"{name}.*"))
    if not matches:
        raise FileNotFoundError(f"no photograph {name!r} in {folder}")
    with Image.open(matches[0]) as image:
        return np.asarray(image.convert("L"), dtype=np.float32)

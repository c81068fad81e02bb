"""Rigid layers of real photographs: rendered frames and their exact optical flow.

A layer is a shape cut from a photograph with a pose per frame: a ``3 x 3`` affine map from the
layer's own coordinates to the image. Layers are painted back to front, so a pixel shows the
topmost layer covering it. Because each layer moves rigidly (affinely), a pixel of layer ``i`` at
frame ``t`` lands at ``M_i(t+1) M_i(t)^{-1} x`` in frame ``t + 1``: the flow is exact. A pixel is
valid when it lands inside the frame on its own layer (not occluded in ``t + 1``). The articulated
actions (:mod:`flowaction.data.actions`) and the flow scenes (:mod:`flowaction.data.scenes`) are
both made of such layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from flowaction.data.photos import load_photo, photo_names
from flowaction.data.synthetic import SyntheticClip


def rot(angle: float) -> np.ndarray:
    """Rotation by ``angle`` radians, homogeneous ``3 x 3``."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def shift(x: float, y: float) -> np.ndarray:
    """Translation by ``(x, y)``, homogeneous ``3 x 3``."""
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


def scale(s: float) -> np.ndarray:
    """Isotropic scaling by ``s``, homogeneous ``3 x 3``."""
    return np.diag([s, s, 1.0])


@dataclass
class Layer:
    """A rigid layer: its pose ``(T, 3, 3)`` (own coordinates -> world), shape and texture.

    The shape is an ellipse of semi-axes ``half_axes`` centred at ``(0, centre_v)`` (``None``: the
    whole plane, a background), its boundary optionally made wavy by ``lobes``: ``(k, a, phase)``
    terms that scale the ellipse's radius at polar angle ``theta`` by ``1 + sum a cos(k theta + phase)``.
    """

    name: str
    pose: np.ndarray
    half_axes: tuple[float, float] | None
    centre_v: float
    photo: np.ndarray
    photo_map: tuple[float, float, float]  # photo pixel = offset + scale * own coordinate
    gain: float = 1.0
    bias: float = 0.0
    lobes: tuple[tuple[int, float, float], ...] = ()

    def inside(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Which own-coordinate points ``(u, v)`` the shape covers."""
        if self.half_axes is None:
            return np.ones(u.shape, bool)
        a, b = self.half_axes
        x, y = u / a, (v - self.centre_v) / b
        if not self.lobes:
            return x**2 + y**2 <= 1.0
        theta = np.arctan2(y, x)
        radius = 1.0 + sum(amp * np.cos(k * theta + phase) for k, amp, phase in self.lobes)
        return x**2 + y**2 <= radius**2


@lru_cache(maxsize=64)
def scaled_photo(name: str, factor: float, blur: float) -> np.ndarray:
    """A photograph at one world pixel per ``factor`` of its pixels, area-averaged and blurred by
    ``blur`` px (a lens): sampled at moving positions it then shows no aliasing."""
    photo = load_photo(name)
    small = cv2.resize(photo, (round(photo.shape[1] / factor), round(photo.shape[0] / factor)),
                       interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(small, (0, 0), blur) if blur > 0 else small


def texture(rng: np.random.Generator, split: str, size: int, factors: tuple[float, ...],
            blur: float) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """A photograph of the split at one of ``factors``, where a layer's own coordinates fall on it
    (a random point at least ``2 * size`` px from its border where it is large enough), its name."""
    names = photo_names(split)
    name = names[int(rng.integers(len(names)))]
    photo = scaled_photo(name, factors[int(rng.integers(len(factors)))], blur)
    margin = 2 * size
    ox = float(rng.uniform(margin, max(margin, photo.shape[1] - margin)))
    oy = float(rng.uniform(margin, max(margin, photo.shape[0] - margin)))
    return photo, (ox, oy, 1.0), name


def _grid(size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    return np.stack([xs.ravel(), ys.ravel(), np.ones(size * size)])


def render_layers(layers: list[Layer], camera: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Frames ``(T, H, W)`` float, layer ids ``(T, H, W)`` and per layer its maps ``(T, 3, 3)`` own -> image.

    ``camera`` ``(T, 3, 3)`` takes world to image coordinates; layers are painted in list order."""
    points = _grid(size)
    frames = np.zeros((len(camera), size, size))
    ids = np.zeros((len(camera), size, size), np.int16)
    to_image = [camera @ layer.pose for layer in layers]
    for t in range(len(camera)):
        for index, layer in enumerate(layers):
            own = np.linalg.inv(to_image[index][t]) @ points
            u, v = own[0].reshape(size, size), own[1].reshape(size, size)
            inside = layer.inside(u, v)
            if not inside.any():
                continue
            ox, oy, k = layer.photo_map
            sample = cv2.remap(layer.photo, (ox + k * u).astype(np.float32), (oy + k * v).astype(np.float32),
                               cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
            frames[t][inside] = layer.gain * sample[inside] + layer.bias
            ids[t][inside] = index
    return frames, ids, to_image


def layer_flow(ids: np.ndarray, to_image: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact flow ``(T-1, 2, H, W)``, validity and the pixels of exact colour, each ``(T-1, H, W)``.

    Valid: the pixel lands inside the frame, on its own layer (not occluded in ``t + 1``).
    Exact colour: valid, and neither the pixel at ``t`` nor the four pixels around where it lands at
    ``t + 1`` touch another layer, so bilinear warping mixes no other layer's grey levels in."""
    steps = len(ids) - 1
    points = _grid(size)
    padded = np.pad(ids, ((0, 0), (1, 1), (1, 1)), mode="edge")
    boundary = np.zeros(ids.shape, bool)  # a 3 x 3 neighbourhood holding another layer
    for dy in range(3):
        for dx in range(3):
            boundary |= padded[:, dy:dy + size, dx:dx + size] != ids
    flow = np.zeros((steps, 2, size, size), np.float32)
    valid = np.zeros((steps, size, size), bool)
    exact = np.zeros((steps, size, size), bool)
    for t in range(steps):
        target = np.zeros((2, size * size))
        for index, maps in enumerate(to_image):
            mine = ids[t].ravel() == index
            if mine.any():
                target[:, mine] = (maps[t + 1] @ np.linalg.inv(maps[t]) @ points[:, mine])[:2]
        flow[t] = (target - points[:2]).reshape(2, size, size)
        x, y = target[0].reshape(size, size), target[1].reshape(size, size)
        inside = (x >= 0) & (x <= size - 1) & (y >= 0) & (y <= size - 1)
        xi, yi = np.clip(np.rint(x), 0, size - 1).astype(int), np.clip(np.rint(y), 0, size - 1).astype(int)
        valid[t] = inside & (ids[t + 1][yi, xi] == ids[t])
        exact[t] = valid[t] & ~boundary[t] & ~boundary[t + 1][yi, xi]
    return flow, valid, exact


@dataclass
class LayeredClip(SyntheticClip):
    """A :class:`SyntheticClip` made of layers, with the draws that made it (``info``: e.g. the
    photographs used) and ``exact`` ``(T-1, H, W)``: the valid pixels whose warp mixes in no other
    layer's grey levels (the ones to check exactness on)."""

    info: dict = field(default_factory=dict)
    exact: np.ndarray | None = None

"""Flow scenes of real photographs in layers (``data.synthetic.kind=scenes``): training and scoring
data for the flow network with real image statistics and exact ground truth.

A scene is a background photograph and several foreground pieces cut from other photographs
(ellipses with wavy borders), each layer moved by its own random affine motion: a translation of
up to ``max_speed`` frame sizes per frame, a rotation, a zoom and a stretch, all at constant rates,
so that the flow covers slow and fast motion in every direction at any frame size. On top of that
come lighting changes (a global gain drift, each piece's own gain drift) and sensor noise, which
the flow does not follow: the photometric loss must learn to ignore them.

The flow of every pair is exact (each layer is rigid, see :mod:`flowaction.data.layers`) and comes
with a validity mask that leaves out pixels occluded or leaving the frame in the next frame; it is
for scoring only, since the flow network trains without it. The test split cuts its layers only
from the photographs no training or validation scene shows. The benchmark has one class
(``scene``): it is data for ``pretrain-flow`` and the flow benchmarks, not for recognition.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flowaction.data.layers import Layer, LayeredClip, layer_flow, render_layers, rot, shift, texture

CLASSES = ("scene",)


@dataclass(frozen=True)
class SceneSpec:
    """Distributions of the flow scenes (speeds in frame sizes per frame, so one spec serves every
    ``size``)."""

    size: int = 64
    num_frames: int = 8
    num_classes: int = 1
    pieces: tuple[int, int] = (2, 6)  # foreground pieces, inclusive
    piece_radius: tuple[float, float] = (0.08, 0.3)  # mean radius / frame size
    max_speed: float = 0.075  # each layer's speed is uniform in [0, max_speed] frame sizes per frame
    background_speed: float = 0.5  # the background's top speed, as a share of max_speed
    rotation_deg: float = 3.0  # rotation rate, uniform in [-r, r] degrees per frame
    zoom: float = 0.02  # log-scale rate, uniform in [-zoom, zoom] per frame
    stretch: float = 0.01  # log-aspect rate, uniform in [-stretch, stretch] per frame
    lobes: float = 0.15  # wavy border: each of three harmonics' amplitude uniform in [0, lobes]
    brightness_drift: float = 0.01  # global gain change per frame, uniform in [-d, d]
    piece_gain_drift: float = 0.01  # a piece's own gain change per frame, uniform in [-d, d]
    noise: tuple[float, float] = (0.5, 3.0)  # sensor noise std, grey levels
    photo_scales: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)  # photograph pixels per frame pixel at 64 px
    blur: float = 0.7  # px: the lens's blur of every photograph
    photometric: bool = True  # lighting changes and noise (off: frames are exact warps of each other)
    classes: tuple[str, ...] = CLASSES


def _motion(rng: np.random.Generator, spec: SceneSpec, centre: np.ndarray, top_speed: float) -> np.ndarray:
    """``(T, 3, 3)`` poses: about ``centre``, constant rates of translation, rotation, zoom and
    stretch, starting from a random orientation."""
    speed = float(rng.uniform(0.0, top_speed)) * spec.size
    heading = float(rng.uniform(0.0, 2 * math.pi))
    velocity = speed * np.array([math.cos(heading), math.sin(heading)])
    spin = math.radians(float(rng.uniform(-spec.rotation_deg, spec.rotation_deg)))
    zoom = float(rng.uniform(-spec.zoom, spec.zoom))
    stretch = float(rng.uniform(-spec.stretch, spec.stretch))
    start = float(rng.uniform(0.0, 2 * math.pi))
    return np.stack([shift(*(centre + velocity * t)) @ rot(start + spin * t)
                     @ np.diag([math.exp(zoom * t + stretch * t), math.exp(zoom * t - stretch * t), 1.0])
                     for t in range(spec.num_frames)])


def _layers(rng: np.random.Generator, spec: SceneSpec, split: str) -> tuple[list[Layer], list[np.ndarray], dict]:
    """The background and the pieces, back to front; each piece's gain per frame; the draws."""
    size, frames = spec.size, spec.num_frames
    factors = tuple(f * 64.0 / size for f in spec.photo_scales)  # the same photograph detail per frame
    photo, mapping, name = texture(rng, split, size, factors, spec.blur)
    # the background's own origin at the frame centre, so it turns and zooms about the middle
    centre = np.array([size / 2.0, size / 2.0])
    background = Layer("background", _motion(rng, spec, centre, spec.background_speed * spec.max_speed), None, 0.0,
                       photo, mapping)
    layers, gains, photos, speeds = [background], [], [name], []
    for index in range(int(rng.integers(spec.pieces[0], spec.pieces[1] + 1))):
        photo, mapping, name = texture(rng, split, size, factors, spec.blur)
        radius = float(rng.uniform(*spec.piece_radius)) * size
        aspect = float(rng.uniform(0.6, 1.0))
        lobes = tuple((k, float(rng.uniform(0.0, spec.lobes)), float(rng.uniform(0, 2 * math.pi))) for k in (2, 3, 5))
        where = rng.uniform(0.1, 0.9, 2) * size
        pose = _motion(rng, spec, where, spec.max_speed)
        gains.append(1.0 + float(rng.uniform(-spec.piece_gain_drift, spec.piece_gain_drift)) * np.arange(frames))
        layers.append(Layer(f"piece{index}", pose, (radius, radius * aspect), 0.0, photo, mapping, lobes=lobes))
        photos.append(name)
        speeds.append(float(np.hypot(*(pose[1, :2, 2] - pose[0, :2, 2]))))
    return layers, gains, {"photos": photos, "piece_speeds": speeds}


def render_scene_clip(label: int, rng: np.random.Generator, spec: SceneSpec = SceneSpec(),
                      split: str = "train") -> LayeredClip:
    """One flow scene: frames ``(T, H, W)`` uint8, exact flow ``(T-1, 2, H, W)`` (pixels, on frame
    t's grid into t+1), validity ``(T-1, H, W)`` and ``exact`` (valid and away from layer edges)."""
    layers, gains, info = _layers(rng, spec, split)
    camera = np.repeat(np.eye(3)[None], spec.num_frames, 0)  # each layer carries its own motion
    frames, ids, to_image = render_layers(layers, camera, spec.size)
    flow, valid, exact = layer_flow(ids, to_image, spec.size)
    if spec.photometric:
        for index, gain in enumerate(gains, start=1):  # a piece's own light, about its mean grey level
            mine = ids == index
            if mine.any():
                level = float(frames[mine].mean())
                frames[mine] = ((frames - level) * gain[:, None, None] + level)[mine]
        drift = 1.0 + float(rng.uniform(-spec.brightness_drift, spec.brightness_drift)) * np.arange(spec.num_frames)
        frames = frames * drift[:, None, None] + rng.normal(0.0, float(rng.uniform(*spec.noise)), frames.shape)
    frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    return LayeredClip(frames, flow, valid, label, np.zeros(spec.num_frames - 1, bool), info=info, exact=exact)

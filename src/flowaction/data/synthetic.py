"""Generated motion benchmark: textured shapes whose classes differ only by how they move.

Every clip is a few textured objects (disc, ellipse, rectangle) over a static textured background,
rendered by inverse mapping: pixel ``x`` of frame ``t`` shows object texture at ``A_t^{-1}(x)``,
where ``A_t`` is the object's similarity transform (centre, rotation, scale) at frame ``t``. The
ground-truth flow is therefore exact: ``flow[t](x) = A_{t+1}(A_t^{-1}(x)) - x`` on object pixels
and 0 on the background. Flow convention: ``flow[t]`` lives on the pixel grid
of frame ``t`` and points into frame ``t+1``, ``frame_t(x) ~ frame_{t+1}(x + flow[t](x))``;
channel 0 is u (+right), channel 1 is v (+down), in pixels.

No single frame carries class information, for every frame index, not only on average:

* the world is a torus of period ``size`` (an object leaving on the right re-enters on the left),
  so a centre drawn uniformly stays uniform whatever the velocity;
* orientations are uniform on the circle, so rotation keeps them uniform;
* apparent radii are log-uniform on ``[r_min, r_max]``; expanding / contracting objects move
  cyclically through that log range and *respawn* at the other end (same centre and texture) when
  they leave it, so the radius of frame ``t`` is log-uniform in every class;
* textures live in object coordinates normalised by the radius.

Frame 0 is even identical across classes for the same random stream, because all appearance is
drawn before any motion parameter.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "right", "left", "up", "down",
    "rotate_cw", "rotate_ccw", "expand", "contract",
    "oscillate_h", "oscillate_v",
)

_SHAPES = ("disc", "ellipse", "rectangle")
_TEXTURE_EXTENT = 1.1  # object textures cover [-1.1, 1.1]^2 in radius-normalised coordinates
_WEIGHT_EPS = 1e-4  # bilinear weights below this cannot change a grey level


@dataclass(frozen=True)
class SyntheticSpec:
    """Settings of the generated benchmark (frozen: safe to share and hash).

    Speeds are in pixels per frame, angles in degrees per frame, scale rates in natural-log units
    per frame (0.05 = 5 % growth per frame), radii as fractions of ``size``.
    """

    size: int = 64
    num_frames: int = 16
    num_classes: int = 8
    min_speed: float = 0.75
    max_speed: float = 2.5
    min_rotation_deg: float = 3.0
    max_rotation_deg: float = 8.0
    min_scale_rate: float = 0.04
    max_scale_rate: float = 0.07
    oscillation_amplitude: tuple[float, float] = (2.0, 4.0)  # pixels
    oscillation_period: tuple[float, float] = (8.0, 14.0)  # frames
    radius: tuple[float, float] = (0.1, 0.28)  # bounding radius / size, log-uniform
    num_objects: tuple[int, int] = (1, 3)  # inclusive
    object_texture_sigma: tuple[float, float] = (0.1, 0.25)  # blur, in object radii
    background_texture_sigma: tuple[float, float] = (1.2, 3.0)  # blur, in pixels
    mean_intensity: tuple[float, float] = (70.0, 185.0)  # grey levels
    contrast: tuple[float, float] = (18.0, 40.0)  # texture std, grey levels

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"size must be >= 16, got {self.size}")
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")
        if not 1 <= self.num_classes <= len(CLASS_NAMES):
            raise ValueError(
                f"num_classes must be in [1, {len(CLASS_NAMES)}], got {self.num_classes}"
            )
        pairs = {
            "speed": (self.min_speed, self.max_speed),
            "rotation_deg": (self.min_rotation_deg, self.max_rotation_deg),
            "scale_rate": (self.min_scale_rate, self.max_scale_rate),
            "oscillation_amplitude": self.oscillation_amplitude,
            "oscillation_period": self.oscillation_period,
            "radius": self.radius,
            "num_objects": self.num_objects,
            "object_texture_sigma": self.object_texture_sigma,
            "background_texture_sigma": self.background_texture_sigma,
            "mean_intensity": self.mean_intensity,
            "contrast": self.contrast,
        }
        for name, (lo, hi) in pairs.items():
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} range must satisfy 0 <= lo <= hi, got ({lo}, {hi})")
        if self.num_objects[0] < 1:
            raise ValueError("num_objects must allow at least one object")
        if self.radius[0] <= 0 or self.radius[1] * self.size > self.size / 2 - 1:
            # An object wider than the torus period would overlap its own wrapped copy.
            raise ValueError(f"radius fractions must be > 0 and leave objects narrower than the "
                             f"frame (radius <= size/2 - 1 px), got {self.radius}")
        if self.oscillation_period[0] <= 0:
            raise ValueError("oscillation_period must be > 0 frames")
        scaling = self.num_classes > CLASS_NAMES.index("expand")
        if scaling and (self.min_scale_rate <= 0 or self.radius[0] >= self.radius[1]):
            # Scaling objects cycle through the radius range, which must then be non-empty.
            raise ValueError("expand/contract need min_scale_rate > 0 and radius[0] < radius[1]")

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the classes in use: the first ``num_classes`` of ``CLASS_NAMES``."""
        return CLASS_NAMES[: self.num_classes]


@dataclass
class SyntheticClip:
    """One generated clip with its exact ground truth.

    frames: (T, H, W) uint8 grey levels.
    flow:   (T-1, 2, H, W) float32 pixels; flow[t] on frame t's grid, pointing into frame t+1.
    valid:  (T-1, H, W) bool; False where the point is hidden in t+1 (occlusion, respawn), leaves
            the frame, or its bilinear footprint in t+1 touches another surface, so that
            backward-warping frame t+1 by flow[t] reproduces frame t wherever valid is True.
    label:  class index into ``CLASS_NAMES``.
    respawn: (T-1,) bool; True where an object leaves the radius range between t and t+1 and
            reappears at its other end (expansion, contraction): the frames show a jump there
            while ``flow`` keeps the physical motion (and ``valid`` is False on its pixels).
    """

    frames: np.ndarray
    flow: np.ndarray
    valid: np.ndarray
    label: int
    respawn: np.ndarray


@dataclass
class _Track:
    """One object: appearance plus per-frame pose. Centres are unwrapped (world = torus)."""

    shape: str
    aspect: float  # ellipse: minor/major axis ratio; rectangle: corner angle in radians
    texture: np.ndarray  # (N, N) float32 grey levels over [-1.1, 1.1]^2 normalised coords
    centre: np.ndarray  # (T, 2) float64 pixels (x, y), unwrapped
    angle: np.ndarray  # (T,) radians; positive = clockwise on screen (y points down)
    radius: np.ndarray  # (T,) pixels
    next_radius: np.ndarray  # (T-1,) radius at t+1 had the object not respawned
    respawn: np.ndarray  # (T-1,) bool, True where the object respawns between t and t+1


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Random stream of one clip, independent per ``(seed, split, index)`` and stable across runs.

    The split name is hashed with CRC32 (not ``hash()``, which is salted per process).
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got {seed}, {index}")
    split_key = zlib.crc32(split.encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(split_key, index)))


def generate_split(
    spec: SyntheticSpec, split: str, clips_per_class: int, seed: int
) -> Iterator[SyntheticClip]:
    """Yield ``clips_per_class * spec.num_classes`` clips, labels cycling 0, 1, ..., K-1, 0, ...

    Clip ``i`` has label ``i % K`` and stream ``clip_rng(seed, split, i)``, so any clip can be
    regenerated on its own and the order never depends on how far a previous run got.
    """
    for index in range(clips_per_class * spec.num_classes):
        yield render_clip(index % spec.num_classes, clip_rng(seed, split, index), spec)


def _smooth_texture(
    rng: np.random.Generator, side: int, sigma: float, mean: float, contrast: float
) -> np.ndarray:
    """(side, side) float32 blurred-noise texture with the given mean and std (grey levels).

    A fine and a coarse blur are mixed so that there is gradient at several scales, which the
    photometric loss needs, while staying smooth enough for bilinear sampling to be accurate.
    """
    noise = rng.standard_normal((2, side, side)).astype(np.float32)
    fine = cv2.GaussianBlur(noise[0], (0, 0), sigma, borderType=cv2.BORDER_REFLECT101)
    coarse = cv2.GaussianBlur(noise[1], (0, 0), 3.0 * sigma, borderType=cv2.BORDER_REFLECT101)
    tex = fine / (fine.std() + 1e-6) + 0.7 * coarse / (coarse.std() + 1e-6)
    tex = (tex - tex.mean()) / (tex.std() + 1e-6)
    return (mean + contrast * tex).astype(np.float32)


def _draw_appearance(
    rng: np.random.Generator, spec: SyntheticSpec, tex_side: int
) -> dict[str, Any]:
    """Class-independent appearance of one object (all draws happen before any motion draw)."""
    lo, hi = spec.radius[0] * spec.size, spec.radius[1] * spec.size
    shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    aspect = float(rng.uniform(0.5, 0.85)) if shape == "ellipse" else float(rng.uniform(0.55, 1.0))
    radius0 = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    sigma = rng.uniform(*spec.object_texture_sigma) * tex_side / (2 * _TEXTURE_EXTENT)
    texture = _smooth_texture(
        rng, tex_side, sigma, rng.uniform(*spec.mean_intensity), rng.uniform(*spec.contrast)
    )
    return {
        "shape": shape, "aspect": aspect, "texture": texture, "radius0": radius0,
        "centre0": rng.uniform(0, spec.size, size=2), "angle0": rng.uniform(0, 2 * math.pi),
    }


def _make_track(
    app: dict[str, Any], name: str, rng: np.random.Generator, spec: SyntheticSpec
) -> _Track:
    """Attach the motion of class ``name`` to one object's appearance; pose at t=0 is unchanged."""
    t = np.arange(spec.num_frames, dtype=np.float64)
    centre = np.tile(app["centre0"], (spec.num_frames, 1))
    angle = np.full(spec.num_frames, app["angle0"])
    radius = np.full(spec.num_frames, app["radius0"])
    next_radius = radius[1:].copy()
    respawn = np.zeros(spec.num_frames - 1, dtype=bool)
    directions = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}
    if name in directions:
        speed = rng.uniform(spec.min_speed, spec.max_speed)
        centre = centre + speed * t[:, None] * np.asarray(directions[name], dtype=np.float64)
    elif name in ("rotate_cw", "rotate_ccw"):
        # y points down, so a positive angle in [[c, -s], [s, c]] turns clockwise on screen.
        omega = math.radians(rng.uniform(spec.min_rotation_deg, spec.max_rotation_deg))
        angle = angle + (omega if name == "rotate_cw" else -omega) * t
    elif name in ("expand", "contract"):
        rate = rng.uniform(spec.min_scale_rate, spec.max_scale_rate)
        rate = rate if name == "expand" else -rate
        log_lo = math.log(spec.radius[0] * spec.size)
        span = math.log(spec.radius[1] / spec.radius[0])
        # Cyclic position in the log-radius range; its floor counts respawns.
        phase = (math.log(app["radius0"]) - log_lo) / span + rate * t / span
        radius = np.exp(log_lo + span * (phase - np.floor(phase)))
        radius[0] = app["radius0"]  # bit-exact frame 0, identical to the other classes
        next_radius = radius[:-1] * math.exp(rate)
        respawn = np.floor(phase[1:]) != np.floor(phase[:-1])
    elif name in ("oscillate_h", "oscillate_v"):
        amplitude = rng.uniform(*spec.oscillation_amplitude)
        period = rng.uniform(*spec.oscillation_period)
        phi = rng.uniform(0, 2 * math.pi)
        offset = amplitude * (np.sin(2 * math.pi * t / period + phi) - math.sin(phi))
        centre[:, 0 if name == "oscillate_h" else 1] += offset
    else:  # pragma: no cover - guarded by CLASS_NAMES
        raise ValueError(f"unknown class {name!r}")
    return _Track(app["shape"], app["aspect"], app["texture"], centre, angle, radius,
                  next_radius, respawn)


def _inside(shape: str, aspect: float, qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    """Shape membership in radius-normalised object coordinates; every shape fits the unit disc."""
    if shape == "disc":
        return qx * qx + qy * qy <= 1.0
    if shape == "ellipse":
        return qx * qx + (qy / aspect) ** 2 <= 1.0
    half_w, half_h = math.cos(aspect), math.sin(aspect)  # rectangle with corners on the unit circle
    return (np.abs(qx) <= half_w) & (np.abs(qy) <= half_h)


def _bilinear_footprint_valid(layers: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """(T-1, H, W) bool: x + flow[t](x) is in frame and every pixel of frame t+1 that bilinear
    sampling there would read (non-zero weight) shows the same surface as x does in frame t.

    layers: (T, H, W) surface ids (0 = background, k = k-th object, topmost wins).
    flow:   (T-1, 2, H, W) pixels.
    """
    steps, _, height, width = flow.shape
    own, nxt = layers[:-1], layers[1:]
    # Still pixels (most of the background) read exactly their own pixel of frame t+1.
    valid = own == nxt
    t, y, x = np.nonzero((flow[:, 0] != 0) | (flow[:, 1] != 0))
    dest_x = x + flow[t, 0, y, x]
    dest_y = y + flow[t, 1, y, x]
    ok = (dest_x >= 0) & (dest_x <= width - 1) & (dest_y >= 0) & (dest_y <= height - 1)
    x0 = np.clip(np.floor(dest_x), 0, width - 1).astype(np.intp)
    y0 = np.clip(np.floor(dest_y), 0, height - 1).astype(np.intp)
    use_x1 = (dest_x - x0) > _WEIGHT_EPS
    use_y1 = (dest_y - y0) > _WEIGHT_EPS
    x1 = np.minimum(x0 + 1, width - 1)
    y1 = np.minimum(y0 + 1, height - 1)
    surface = own[t, y, x]
    ok &= nxt[t, y0, x0] == surface
    ok &= ~use_x1 | (nxt[t, y0, x1] == surface)
    ok &= ~use_y1 | (nxt[t, y1, x0] == surface)
    ok &= ~(use_x1 & use_y1) | (nxt[t, y1, x1] == surface)
    valid[t, y, x] = ok
    return valid


def render_clip(label: int, rng: np.random.Generator, spec: SyntheticSpec) -> SyntheticClip:
    """Render one clip of class ``label`` (index into ``spec.class_names``) from ``rng``.

    Returns frames (T, H, W) uint8, exact flow (T-1, 2, H, W) float32 pixels, valid (T-1, H, W).
    """
    if not 0 <= label < spec.num_classes:
        raise ValueError(f"label must be in [0, {spec.num_classes}), got {label}")
    size, steps = spec.size, spec.num_frames
    tex_side = max(32, size // 2)

    # Appearance first, motion last: frame 0 is a function of class-independent draws only.
    background = _smooth_texture(
        rng, size, rng.uniform(*spec.background_texture_sigma),
        rng.uniform(*spec.mean_intensity), rng.uniform(*spec.contrast),
    )
    count = int(rng.integers(spec.num_objects[0], spec.num_objects[1] + 1))
    appearances = [_draw_appearance(rng, spec, tex_side) for _ in range(count)]
    tracks = [_make_track(app, CLASS_NAMES[label], rng, spec) for app in appearances]

    frames = np.broadcast_to(background, (steps, size, size)).copy()
    layers = np.zeros((steps, size, size), dtype=np.int8)
    flow = np.zeros((steps - 1, 2, size, size), dtype=np.float32)
    respawned = np.zeros((steps - 1, size, size), dtype=bool)
    tex_scale = (tex_side - 1) / (2 * _TEXTURE_EXTENT)

    for k, track in enumerate(tracks, start=1):  # later objects are drawn on top
        # Work in a per-frame window around the object (shapes fit the disc of the radius), which
        # is ~7x cheaper than the full frame; window columns wrap around the torus of period size.
        width = min(2 * math.ceil(track.radius.max()) + 3, size)
        origin = np.floor(track.centre).astype(np.int64) - width // 2  # (T, 2)
        offsets = np.arange(width)
        cols = np.mod(origin[:, 0, None] + offsets, size)  # (T, w) image columns
        rows = np.mod(origin[:, 1, None] + offsets, size)
        # Offsets to the (unwrapped) centre, exact because the window itself is unwrapped.
        dx = (origin[:, 0, None, None] + offsets[None, None, :] - track.centre[:, 0, None, None])
        dy = (origin[:, 1, None, None] + offsets[None, :, None] - track.centre[:, 1, None, None])
        dx, dy = np.broadcast_arrays(dx.astype(np.float32), dy.astype(np.float32))
        cos_a = np.cos(track.angle).astype(np.float32)[:, None, None]
        sin_a = np.sin(track.angle).astype(np.float32)[:, None, None]
        inv_r = (1.0 / track.radius).astype(np.float32)[:, None, None]
        qx = (cos_a * dx + sin_a * dy) * inv_r  # R(-angle) d / radius
        qy = (cos_a * dy - sin_a * dx) * inv_r
        inside = _inside(track.shape, track.aspect, qx, qy)
        map_x = (qx * tex_scale + tex_scale * _TEXTURE_EXTENT).reshape(steps * width, width)
        map_y = (qy * tex_scale + tex_scale * _TEXTURE_EXTENT).reshape(steps * width, width)
        values = cv2.remap(track.texture, map_x, map_y, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT101).reshape(steps, width, width)
        t, r, c = np.nonzero(inside)
        y, x = rows[t, r], cols[t, c]
        frames[t, y, x] = values[t, r, c]
        layers[t, y, x] = k

        # Exact flow A_{t+1} A_t^{-1} x - x = dc + (s R(d_angle) - I) d, with the continuous
        # (non-respawned) radius so the field stays the physical motion at respawn steps.
        ratio = track.next_radius / track.radius[:-1]
        turn = np.diff(track.angle)
        m00 = (ratio * np.cos(turn) - 1).astype(np.float32)
        m10 = (ratio * np.sin(turn)).astype(np.float32)
        shift = np.diff(track.centre, axis=0).astype(np.float32)
        keep = t < steps - 1
        t, r, c, y, x = t[keep], r[keep], c[keep], y[keep], x[keep]
        px, py = dx[t, r, c], dy[t, r, c]
        flow[t, 0, y, x] = shift[t, 0] + m00[t] * px - m10[t] * py
        flow[t, 1, y, x] = shift[t, 1] + m10[t] * px + m00[t] * py
        respawned[t, y, x] = track.respawn[t]

    valid = _bilinear_footprint_valid(layers, flow) & ~respawned
    frames_u8 = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    any_respawn = np.any([track.respawn for track in tracks], axis=0) if tracks else np.zeros(steps - 1, bool)
    return SyntheticClip(frames=frames_u8, flow=flow, valid=valid, label=int(label), respawn=any_respawn)

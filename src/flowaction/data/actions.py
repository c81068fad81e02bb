"""The articulated-action benchmark: a 2D figure performs an action in front of a real photograph,
seen by a moving camera, with the exact optical flow of every frame pair.

The figure is a kinematic tree of textured parts (torso, head, upper and lower arms and legs), its
joint angles over time given by :mod:`flowaction.data.poses`. Every part, the background and the
distractors are rigid layers: a layer's pixels move by the affine map ``G_{t+1} G_t^{-1}``, where
``G_t`` takes the layer's own coordinates to the image at frame ``t`` (the camera's similarity
transform after the layer's pose), so the ground-truth flow is exact and includes the camera's
motion. A pixel is valid when it lands inside the frame on its own layer: not occluded in ``t + 1``
(a limb crossing the body, the figure passing over the background).

Every class draws the figure (proportions, clothes, size, standing point, facing, drift, tempo,
amplitude, phase) and the nuisance (camera pan, zoom, rotation and shake, a slow brightness drift,
sensor noise, one or two distractors) from the same distributions; only the joints' motion
differs. Backgrounds and clothes come from real photographs, the test split's from held-out ones.

An action is timed over ``span`` frames whatever the clip's length, so a limb moves as fast per frame
in a clip of 8 or 32 frames as in one of 16. A longer clip shows more of a periodic action, and a
one-way action (sit down, raise the arms) at a uniform place within it, the figure holding still
before and after. A shorter clip is a uniformly placed window of the action.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from flowaction.data.layers import Layer, LayeredClip, layer_flow, render_layers, rot, scale, shift, texture
from flowaction.data.poses import ACTION_NAMES, ONE_WAY, PERIODIC

# part: (length, half-width) in figure heights
_PARTS = {"torso": (0.30, 0.085), "head": (0.07, 0.07), "thigh": (0.245, 0.05), "shin": (0.245, 0.042),
          "upper_arm": (0.16, 0.04), "forearm": (0.15, 0.035)}


@dataclass(frozen=True)
class ActionSpec:
    """Distributions of the articulated benchmark (pixels and frames unless said otherwise)."""

    size: int = 48
    num_frames: int = 16
    num_classes: int = len(ACTION_NAMES)
    height: tuple[float, float] = (0.5, 0.72)  # figure height / frame size
    stand_x: tuple[float, float] = (0.35, 0.65)  # standing point, fractions of the frame
    stand_y: tuple[float, float] = (0.82, 0.92)
    drift: float = 0.35  # figure's own drift, each axis uniform in [-drift, drift] px / frame
    cycles: tuple[float, float] = (0.8, 1.6)  # periods per span
    span: int = 16  # frames over which an action's cycles and one-way progress are timed
    amplitude: tuple[float, float] = (0.8, 1.2)
    progress_start: tuple[float, float] = (0.0, 0.3)  # one-way actions run between these
    progress_end: tuple[float, float] = (0.7, 1.0)
    pan: float = 0.6  # camera translation, each axis uniform in [-pan, pan] px / frame
    zoom: float = 0.006  # camera log-scale change per frame, uniform in [-zoom, zoom]
    rotation_deg: float = 0.3  # camera roll per frame, uniform in [-r, r] degrees
    shake: float = 0.25  # camera jitter per frame, Gaussian std in px
    brightness_drift: float = 0.006  # gain change per frame, uniform in [-d, d]
    noise: tuple[float, float] = (0.5, 3.0)  # sensor noise std, grey levels
    distractors: tuple[int, int] = (1, 2)
    photo_scales: tuple[float, ...] = (1.5, 2.0, 3.0)  # photograph pixels per world pixel, one drawn per layer
    blur: float = 0.7  # px: the lens's blur of everything the camera sees
    photometric: bool = True  # brightness drift and noise (off: frames are exact warps of each other)
    classes: tuple[str, ...] = field(default=ACTION_NAMES)


def _figure_poses(rng: np.random.Generator, spec: ActionSpec, action: str) -> tuple[dict[str, np.ndarray], dict]:
    """World poses ``(T, 3, 3)`` of the figure's parts, and the figure's draws."""
    size, frames = spec.size, spec.num_frames
    height = float(rng.uniform(*spec.height)) * size
    facing = 1.0 if rng.random() < 0.5 else -1.0
    stand = np.array([rng.uniform(*spec.stand_x), rng.uniform(*spec.stand_y)]) * size
    drift = rng.uniform(-spec.drift, spec.drift, 2)
    lengths = {part: length * height * float(rng.uniform(0.92, 1.08)) for part, (length, _) in _PARTS.items()}
    phase, cycles = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(*spec.cycles))
    amp = float(rng.uniform(*spec.amplitude))
    start, end = float(rng.uniform(*spec.progress_start)), float(rng.uniform(*spec.progress_end))
    # where the action's span starts, in frames (drawn only when the clip is longer or shorter than
    # it); uniform, so a time-reversed clip has the same distribution as a forward one
    offset = float(rng.uniform(min(0, frames - spec.span), max(0, frames - spec.span))) if frames != spec.span else 0.0
    poses: dict[str, list[np.ndarray]] = {}

    def limb(name: str, joint: np.ndarray, angle: float) -> np.ndarray:
        # own +v along the limb: its direction on screen is (facing * sin a, cos a)
        poses.setdefault(name, []).append(shift(*joint) @ rot(-facing * angle))
        return joint + lengths[name.split(":")[0]] * np.array([facing * math.sin(angle), math.cos(angle)])

    for t in range(frames):
        time = (t - offset) / max(spec.span - 1, 1)
        if action in PERIODIC:
            pose = PERIODIC[action](time, phase, cycles, amp)
        else:  # still before and after its span
            pose = ONE_WAY[action](min(max(time, 0.0), 1.0), start, end)
        base = stand + drift * t
        pelvis = base - np.array([0.0, lengths["thigh"] + lengths["shin"] + pose["lift"] * height])
        lean = pose["torso"]
        poses.setdefault("torso", []).append(shift(*pelvis) @ rot(math.pi + facing * lean))
        neck = pelvis + lengths["torso"] * np.array([facing * math.sin(lean), -math.cos(lean)])
        tilt = lean + pose["neck"]
        head = neck + 1.1 * lengths["head"] * np.array([facing * math.sin(tilt), -math.cos(tilt)])
        poses.setdefault("head", []).append(shift(*head) @ rot(math.pi + facing * tilt))
        for side in ("near", "far"):
            knee = limb(f"thigh:{side}", pelvis, pose[f"leg_{side}"])
            limb(f"shin:{side}", knee, pose[f"leg_{side}"] - pose[f"knee_{side}"])
            shoulder = neck - 0.04 * height * np.array([facing * math.sin(lean), -math.cos(lean)])
            elbow = limb(f"upper_arm:{side}", shoulder, pose[f"arm_{side}"])
            limb(f"forearm:{side}", elbow, pose[f"arm_{side}"] + pose[f"elbow_{side}"])
    draws = {"height": height, "facing": facing, "stand": stand.tolist(), "drift": drift.tolist(), "phase": phase,
             "cycles": cycles, "amplitude": amp, "progress": (start, end), "offset": offset,
             "lengths": lengths}
    return {name: np.stack(matrices) for name, matrices in poses.items()}, draws


def _camera(rng: np.random.Generator, spec: ActionSpec) -> np.ndarray:
    """``(T, 3, 3)`` world -> image: pan, zoom and roll about the frame centre, plus shake."""
    centre = spec.size / 2.0
    pan = rng.uniform(-spec.pan, spec.pan, 2)
    zoom = float(rng.uniform(-spec.zoom, spec.zoom))
    roll = math.radians(float(rng.uniform(-spec.rotation_deg, spec.rotation_deg)))
    shake = rng.normal(0.0, spec.shake, (spec.num_frames, 2))
    shake[0] = 0.0
    return np.stack([shift(centre, centre) @ scale(math.exp(zoom * t)) @ rot(roll * t)
                     @ shift(-centre - pan[0] * t - shake[t, 0], -centre - pan[1] * t - shake[t, 1])
                     for t in range(spec.num_frames)])


def _layers(rng: np.random.Generator, spec: ActionSpec, split: str, action: str) -> tuple[list[Layer], dict]:
    poses, draws = _figure_poses(rng, spec, action)
    frames = spec.num_frames
    photo, mapping, background_photo = texture(rng, split, spec.size, spec.photo_scales, spec.blur)
    background = Layer("background", np.repeat(np.eye(3)[None], frames, 0), None, 0.0, photo, mapping)
    clothes, photos = {}, [background_photo]
    for garment in ("shirt", "trousers", "skin"):
        photo, mapping, name = texture(rng, split, spec.size, spec.photo_scales, spec.blur)
        level = float(rng.uniform(40, 215))
        clothes[garment] = (photo, mapping, float(rng.uniform(0.5, 1.0)), level)
        photos.append(name)

    def part(name: str) -> Layer:
        kind = name.split(":")[0]
        half_width, figure = _PARTS[kind][1], draws["height"]
        garment = "skin" if kind == "head" else "trousers" if kind in ("thigh", "shin") else "shirt"
        photo, (ox, oy, k), gain, level = clothes[garment]
        jitter = rng.uniform(-20, 20, 2)  # each part shows another patch of its garment
        width, span = half_width * figure, draws["lengths"][kind]
        if kind == "head":
            axes, centre = (width, width), 0.0
        else:  # an ellipse along the part, a little past both joints so that neighbours overlap
            axes, centre = (width, 0.5 * span + 0.5 * width), 0.5 * span
        return Layer(name, poses[name], axes, centre, photo, (ox + jitter[0], oy + jitter[1], k), gain,
                      level - gain * float(photo.mean()))

    distractors = []
    for index in range(int(rng.integers(spec.distractors[0], spec.distractors[1] + 1))):
        photo, mapping, name = texture(rng, split, spec.size, spec.photo_scales, spec.blur)
        photos.append(name)
        radius = float(rng.uniform(0.05, 0.12)) * spec.size
        centre = rng.uniform(0.1, 0.9, 2) * spec.size
        velocity, spin = rng.uniform(-1.2, 1.2, 2), math.radians(float(rng.uniform(-4, 4)))
        pose = np.stack([shift(*(centre + velocity * t)) @ rot(spin * t) for t in range(frames)])
        in_front = bool(rng.random() < 0.5)
        distractors.append((in_front, Layer(f"distractor{index}", pose, (radius, radius * float(rng.uniform(0.5, 1.0))),
                                             0.0, photo, mapping)))
    order = ["thigh:far", "shin:far", "upper_arm:far", "forearm:far", "torso", "head", "thigh:near", "shin:near",
             "upper_arm:near", "forearm:near"]
    layers = ([background] + [d for front, d in distractors if not front] + [part(name) for name in order]
              + [d for front, d in distractors if front])
    draws["photos"] = photos
    return layers, draws


def render_action_clip(label: int, rng: np.random.Generator, spec: ActionSpec = ActionSpec(),
                       split: str = "train") -> LayeredClip:
    """One clip of action ``spec.classes[label]``: frames ``(T, H, W)`` uint8, exact flow
    ``(T-1, 2, H, W)`` (pixels, on frame t's grid into t+1) and validity ``(T-1, H, W)``."""
    action = spec.classes[label]
    layers, draws = _layers(rng, spec, split, action)
    camera = _camera(rng, spec)
    frames, ids, to_image = render_layers(layers, camera, spec.size)
    flow, valid, exact = layer_flow(ids, to_image, spec.size)
    if spec.photometric:
        gain = 1.0 + float(rng.uniform(-spec.brightness_drift, spec.brightness_drift)) * np.arange(spec.num_frames)
        frames = frames * gain[:, None, None] + rng.normal(0.0, float(rng.uniform(*spec.noise)), frames.shape)
    frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    return LayeredClip(frames, flow, valid, label, np.zeros(spec.num_frames - 1, bool), info=draws, exact=exact)

"""Clip sampling from the cache and the paper's augmentation.

Sampling rules (the same for generated and real videos):

- a clip is ``T`` frames taken every ``frame_step`` frames, spanning ``(T - 1) * step + 1`` frames;
- ``train``: a random temporal start, a random ``crop x crop`` window, colour jitter drawn once
  per clip (so brightness constancy still holds inside it), optional horizontal flip;
- ``val``: one centred clip, centre crop; ``test``: ``K`` clips with uniformly spaced starts, centre
  crop;
- a video shorter than the span repeats its last frame to fill the clip (zero motion at the end,
  never a jump back to the start, which would be a false motion for the flow network).

Gaussian noise (the paper's, added after normalisation) is applied to the network input in the
training step by :func:`add_input_noise`, so the clean frames stay available to the photometric
loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from flowaction.data.cache import ClipCache


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from videos. ``crop`` is the square side in pixels."""

    num_frames: int = 16
    frame_step: int = 1
    crop: int = 56
    test_clips: int = 10


@dataclass(frozen=True)
class JitterSpec:
    """Colour jitter ranges, drawn once per clip. All zero disables it."""

    brightness: float = 0.2  # additive shift, uniform in [-b, b]
    contrast: float = 0.3  # gain around the clip mean, uniform in [1 - c, 1 + c]
    gamma: float = 0.3  # exponent exp(uniform(-g, g))
    hflip: bool = False  # off by default: it swaps left / right motion


def clip_starts(length: int, span: int, mode: str, count: int, rng: np.random.Generator | None) -> list[int]:
    """First frame of each clip of a video of ``length`` frames (see the module rules)."""
    last = max(length - span, 0)
    if mode == "train":
        return [int(rng.integers(0, last + 1))]
    if mode == "val":
        return [last // 2]
    if mode == "test":
        return [int(round(x)) for x in np.linspace(0, last, count)]
    raise ValueError(f"mode must be train, val or test, got {mode!r}")


def frame_indices(start: int, num_frames: int, step: int, length: int) -> np.ndarray:
    """Frame numbers of a clip, the last frame repeated past the end of a short video."""
    return np.minimum(start + step * np.arange(num_frames), length - 1)


def apply_jitter(frames: np.ndarray, rng: np.random.Generator, spec: JitterSpec) -> np.ndarray:
    """Brightness, contrast and gamma drawn once and applied to every frame ``(T, H, W)`` in [0, 1]."""
    out = frames
    if spec.gamma > 0:
        out = np.power(out, float(np.exp(rng.uniform(-spec.gamma, spec.gamma))))
    if spec.contrast > 0:
        gain = rng.uniform(1 - spec.contrast, 1 + spec.contrast)
        out = (out - out.mean()) * gain + out.mean()
    if spec.brightness > 0:
        out = out + rng.uniform(-spec.brightness, spec.brightness)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def add_input_noise(frames: torch.Tensor, std: float, norm_std: float = 0.25) -> torch.Tensor:
    """Gaussian noise of ``std`` in normalised units (the model divides by ``norm_std``)."""
    if std <= 0:
        return frames
    return frames + torch.randn_like(frames) * (std * norm_std)


class ClipDataset(Dataset):
    """Clips of one split of a :class:`ClipCache`.

    Items are dicts: ``frames`` ``(1, T, crop, crop)`` float32 in [0, 1]; ``label``; ``video``
    (index into the cache); and, when the cache holds ground truth and ``frame_step == 1``,
    ``flow`` ``(T - 1, 2, crop, crop)`` (pair ``t`` -> ``t + 1``) and ``valid`` ``(T - 1, crop, crop)``;
    with ``classical`` ("dis" / "farneback"), ``classical`` ``(T - 1, 2, crop, crop)`` from the cache.
    In ``test`` mode there are ``K`` items per video. A ``train`` item's random draws follow
    ``(seed, epoch, item)``: index it with ``(epoch, item)`` pairs, as
    :class:`~flowaction.data.sampler.EpochSampler` does.
    """

    def __init__(
        self,
        cache: ClipCache,
        split: str,
        mode: str,
        clip: ClipSpec = ClipSpec(),
        jitter: JitterSpec | None = None,
        seed: int = 0,
        videos: list[int] | None = None,
        classical: str | None = None,
    ) -> None:
        self.cache = cache
        self.mode = mode
        self.clip = clip
        self.jitter = jitter if mode == "train" else None
        self.seed = seed
        self.videos = cache.split(split) if videos is None else list(videos)
        if not self.videos:
            raise ValueError(f"{cache.root}: split {split!r} has no videos (splits: {cache.splits()})")
        self.per_video = clip.test_clips if mode == "test" else 1
        self.span = (clip.num_frames - 1) * clip.frame_step + 1
        height, width = cache.index["frame_size"]
        if clip.crop > min(height, width):
            raise ValueError(f"data.crop={clip.crop} exceeds the frames of {cache.root} ({height} x {width}): "
                             "prepare or generate it at a larger size, or lower data.crop")
        self.with_flow = cache.with_flow and clip.frame_step == 1
        if classical and clip.frame_step != 1:
            raise ValueError("precomputed classical flow relates consecutive frames: use frame_step 1")
        self.classical = classical

    def __len__(self) -> int:
        return len(self.videos) * self.per_video

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        # (epoch, index) from EpochSampler: the draws follow the epoch even in persistent workers;
        # a plain index (a look at one item) draws as in epoch 0
        epoch, item = item if isinstance(item, tuple) else (0, item)
        video = self.videos[item // self.per_video]
        record = self.cache.videos[video]
        length = record["length"]
        rng = np.random.default_rng([self.seed, epoch, item]) if self.mode == "train" else None
        start = clip_starts(length, self.span, self.mode, self.per_video, rng)[item % self.per_video]
        indices = frame_indices(start, self.clip.num_frames, self.clip.frame_step, length)
        frames = self.cache.frames(video, indices)
        height, width = frames.shape[1:]
        size = self.clip.crop
        if self.mode == "train":
            top = int(rng.integers(0, height - size + 1))
            left = int(rng.integers(0, width - size + 1))
        else:
            top, left = (height - size) // 2, (width - size) // 2
        window = (slice(top, top + size), slice(left, left + size))
        clip = frames[(slice(None), *window)].astype(np.float32) / 255.0
        flip = False
        if self.jitter is not None:
            clip = apply_jitter(clip, rng, self.jitter)
            flip = self.jitter.hflip and bool(rng.integers(0, 2))
        sample = {"label": int(record["label"]), "video": int(video)}
        if self.with_flow:
            flow, valid = self.cache.flow(video, indices[:-1])
            flow, valid = flow[(slice(None), slice(None), *window)], valid[(slice(None), *window)]
            # a repeated (padded) frame does not move: its ground truth is zero flow, valid
            static = indices[1:] == indices[:-1]
            flow[static] = 0.0
            valid[static] = True
            if flip:
                flow = flow[..., ::-1].copy()
                flow[:, 0] *= -1.0
                valid = valid[..., ::-1]
            sample["flow"] = torch.from_numpy(np.ascontiguousarray(flow))
            sample["valid"] = torch.from_numpy(np.ascontiguousarray(valid))
        if self.classical:
            pair_flow = self.cache.classical(video, indices[:-1], self.classical)
            pair_flow = pair_flow[(slice(None), slice(None), *window)]
            pair_flow[indices[1:] == indices[:-1]] = 0.0
            if flip:
                pair_flow = pair_flow[..., ::-1].copy()
                pair_flow[:, 0] *= -1.0
            sample["classical"] = torch.from_numpy(np.ascontiguousarray(pair_flow))
        if flip:
            clip = clip[..., ::-1]
        sample["frames"] = torch.from_numpy(np.ascontiguousarray(clip)).unsqueeze(0)
        return sample


class MixedClips(Dataset):
    """The items of several :class:`ClipDataset` s in one sequence (their frames only), for flow
    pre-training on several sources at once: item ``i`` is the first dataset's while ``i`` is below
    its length, and so on, each in proportion to its clip count. Indexed like a ClipDataset (a plain
    index or ``(epoch, index)``); ``label`` is 0 and ``video`` the item's own index, since sources
    neither share classes nor carry ground truth alike."""

    def __init__(self, parts: list[ClipDataset]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [len(part) for part in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        sample = self.parts[part][(epoch, index - int(self.starts[part]))]
        return {"frames": sample["frames"], "label": 0, "video": index}

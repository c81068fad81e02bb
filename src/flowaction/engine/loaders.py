"""Loaders over a clip cache, built from a config: the one way to make a training loader.

A training loader always draws its items from an :class:`~flowaction.data.sampler.EpochSampler`,
which hands every item its epoch: the crop and augmentation follow ``(seed, epoch, item)`` in the
training process and in every (persistent) loader worker alike, and a resumed run draws what an
uninterrupted one would (:func:`begin_epoch`).
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from flowaction.config import Config
from flowaction.data.cache import ClipCache
from flowaction.data.classical_cache import ensure_classical_flow
from flowaction.data.clips import ClipDataset, ClipSpec, JitterSpec, MixedClips
from flowaction.data.sampler import EpochSampler


def clip_spec(cfg: Config) -> ClipSpec:
    """How the config cuts clips from videos (``data.num_frames``, ``frame_step``, ``crop``, ``test_clips``)."""
    d = cfg.data
    return ClipSpec(d.num_frames, d.frame_step, d.crop, d.test_clips)


def jitter_spec(cfg: Config) -> JitterSpec:
    """The config's colour jitter and flip (``augment.*``), drawn once per training clip."""
    a = cfg.augment
    return JitterSpec(a.brightness, a.contrast, a.gamma, a.hflip)


def subset_per_class(cache: ClipCache, split: str, limit: int) -> list[int]:
    """The first ``limit`` videos of every class of a split (index order: deterministic)."""
    taken: dict[int, int] = {}
    chosen = []
    for index in cache.split(split):
        label = cache.videos[index]["label"]
        if taken.get(label, 0) < limit:
            taken[label] = taken.get(label, 0) + 1
            chosen.append(index)
    return chosen


def check_training_data(cache: ClipCache, train_videos: list[int], split: str) -> None:
    """Refuse data a classifier cannot learn from: fewer than two classes, or a class without a
    single training video (named)."""
    if len(cache.classes) < 2:
        raise ValueError(f"{cache.root} has {len(cache.classes)} class ({', '.join(cache.classes) or 'none'}): "
                         "an action classifier needs two classes or more")
    present = {cache.videos[i]["label"] for i in train_videos}
    missing = [name for label, name in enumerate(cache.classes) if label not in present]
    if missing:
        raise ValueError(f"no {split!r} video for class(es) {', '.join(missing)} in {cache.root}: every class "
                         "needs training videos (add some, or prepare without that class folder)")


def pins_memory(device: torch.device | str | None) -> bool:
    """Whether a loader feeding ``device`` pins its batches: only for a CUDA device, whose copies
    from pinned memory run without blocking (on a CPU, pinning is a wasted copy)."""
    return device is not None and torch.device(device).type == "cuda"


def loader_of(cfg: Config, dataset: ClipDataset, batch_size: int, sampler: EpochSampler | None = None,
              drop_last: bool = False, seeded: bool = True, device: torch.device | str | None = None) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` with the config's workers, pinning memory when it feeds
    a CUDA ``device`` (None: the CPU).

    ``seeded``: the loader's own generator seeds its workers, so starting an epoch's iterator does
    not draw from the global random stream (the input noise) and a run resumed mid-epoch draws as
    an uninterrupted one; flow pre-training, which resumes at its evaluation steps only, draws
    them from the global stream (``seeded=False``), as the shipped flow network was trained."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        drop_last=drop_last,
        persistent_workers=cfg.data.num_workers > 0,
        pin_memory=pins_memory(device),
        generator=torch.Generator().manual_seed(cfg.seed) if seeded else None,
    )


def make_loader(
    cfg: Config, cache: ClipCache, split: str, mode: str, shuffle: bool = False, rank: int = 0, world: int = 1,
    device: torch.device | str | None = None,
) -> DataLoader:
    """A loader over one split; ``mode`` is train / val / test (see ``flowaction.data.clips``);
    ``device``: where its batches go (a CUDA device gets pinned memory; None: the CPU).

    A ``train`` loader's items come from an :class:`EpochSampler` (shuffled per epoch with
    ``shuffle``, else in index order; this process's share of ``world``); call
    :func:`begin_epoch` before each epoch. ``val`` and ``test`` loaders go through the split once,
    in order."""
    if cfg.model.input == "truth" and not (cache.with_flow and cfg.data.frame_step == 1):
        raise ValueError(f"model.input=truth classifies ground-truth flow: {cache.root} has none"
                         if not cache.with_flow else "model.input=truth needs data.frame_step=1 (the ground "
                         "truth relates consecutive frames)")
    precomputed = cfg.model.input in ("dis", "farneback") and cfg.model.classical_on == "clean"
    classical = cfg.model.input if precomputed else None
    if classical:
        ensure_classical_flow(cache, classical)
    videos = None
    if mode == "train" and cfg.data.max_train_per_class > 0:
        videos = subset_per_class(cache, split, cfg.data.max_train_per_class)
    dataset = ClipDataset(cache, split, mode, clip_spec(cfg), jitter_spec(cfg), seed=cfg.seed, videos=videos,
                          classical=classical)
    batch = cfg.optim.batch_size
    if mode != "train":
        return loader_of(cfg, dataset, batch, device=device)
    sampler = EpochSampler(len(dataset), shuffle, cfg.seed, rank, world, batch)
    share = len(sampler)
    # a last training batch of one clip cannot go through batch norm in training mode: drop it
    return loader_of(cfg, dataset, batch, sampler, drop_last=share % batch == 1 and share > 1, device=device)


def triplet_loader(cfg: Config, cache: ClipCache, split: str, batch_size: int) -> DataLoader:
    """Training items of flow pre-training: one random frame triplet per item (a random start,
    crop and colour jitter per triplet), shuffled per epoch, whole batches only. With
    ``data.mix`` the same split of every cache it names is added (:func:`mixed_caches`)."""
    spec = ClipSpec(3, cfg.data.frame_step, cfg.data.crop, 1)
    dataset = ClipDataset(cache, split, "train", spec, jitter_spec(cfg), seed=cfg.seed)
    if cfg.data.mix:
        dataset = MixedClips([dataset] + [ClipDataset(extra, split, "train", spec, jitter_spec(cfg), seed=cfg.seed)
                                          for extra in mixed_caches(cfg, split)])
    sampler = EpochSampler(len(dataset), True, cfg.seed, batch_size=batch_size)
    return loader_of(cfg, dataset, batch_size, sampler, drop_last=True, seeded=False)


def mixed_caches(cfg: Config, split: str) -> list[ClipCache]:
    """The caches ``data.mix`` names (comma-separated folders), each checked to have ``split``."""
    caches = [ClipCache.open(path.strip()) for path in cfg.data.mix.split(",") if path.strip()]
    for extra in caches:
        if not extra.split(split):
            raise ValueError(f"data.mix: {extra.root} has no {split!r} clips (it has: {', '.join(extra.splits()) or 'none'})")
    return caches


def begin_epoch(loader: DataLoader, epoch: int, skip_batches: int = 0) -> None:
    """Make a training loader's draws (augmentation and shuffle order) those of ``epoch``, so every
    epoch differs and a resumed run draws what an uninterrupted one would; skip the
    ``skip_batches`` batches an interrupted run had already trained on."""
    if not isinstance(loader.sampler, EpochSampler):
        raise ValueError("begin_epoch needs a training loader (make_loader(..., 'train'))")
    loader.sampler.set_epoch(epoch, skip_batches)

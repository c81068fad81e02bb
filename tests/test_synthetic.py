"""Tests of the generated motion benchmark (flowaction.data.synthetic)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from flowaction.data.synthetic import (
    CLASS_NAMES,
    SyntheticClip,
    SyntheticSpec,
    clip_rng,
    generate_split,
    render_clip,
)

ALL_CLASSES = SyntheticSpec(size=48, num_frames=8, num_classes=len(CLASS_NAMES))


def _clip(name: str, spec: SyntheticSpec = ALL_CLASSES, index: int = 0) -> SyntheticClip:
    return render_clip(CLASS_NAMES.index(name), clip_rng(0, "test", index), spec)


def _warp_back(frame_next: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward warp (H, W) frame t+1 by (2, H, W) flow[t] onto frame t's grid (bilinear)."""
    height, width = frame_next.shape
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    return cv2.remap(frame_next.astype(np.float32), grid_x + flow[0], grid_y + flow[1],
                     cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _moving(clip: SyntheticClip) -> np.ndarray:
    """(T-1, H, W) bool: pixels with non-zero ground-truth flow (objects; background is still)."""
    return (clip.flow != 0).any(axis=1)


# --- determinism, shapes, balance ------------------------------------------------------------


def test_same_key_gives_identical_clips_and_keys_are_independent() -> None:
    a = render_clip(3, clip_rng(7, "train", 5), ALL_CLASSES)
    b = render_clip(3, clip_rng(7, "train", 5), ALL_CLASSES)
    for field in ("frames", "flow", "valid"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    for other in (clip_rng(8, "train", 5), clip_rng(7, "val", 5), clip_rng(7, "train", 6)):
        c = render_clip(3, other, ALL_CLASSES)
        assert not np.array_equal(a.frames, c.frames)


def test_shapes_dtypes_and_ranges() -> None:
    spec = ALL_CLASSES
    n, t = spec.size, spec.num_frames
    for label in range(spec.num_classes):
        clip = render_clip(label, clip_rng(1, "shapes", label), spec)
        assert clip.frames.shape == (t, n, n) and clip.frames.dtype == np.uint8
        assert clip.flow.shape == (t - 1, 2, n, n) and clip.flow.dtype == np.float32
        assert clip.valid.shape == (t - 1, n, n) and clip.valid.dtype == np.bool_
        assert clip.label == label
        assert np.isfinite(clip.flow).all()
        assert np.abs(clip.flow).max() < 4.0  # pixels per frame: small, PWC-style motions
        assert clip.frames.std() > 10  # textured, not flat
        assert 0.5 < clip.valid.mean() < 1.0


def test_generate_split_is_balanced_and_deterministic() -> None:
    spec = dataclasses.replace(ALL_CLASSES, size=24, num_frames=3, num_classes=8)
    first = list(generate_split(spec, "train", clips_per_class=3, seed=11))
    labels = [clip.label for clip in first]
    assert labels == [i % 8 for i in range(24)]
    assert np.bincount(labels).tolist() == [3] * 8
    again = list(generate_split(spec, "train", clips_per_class=3, seed=11))
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(first, again))


def test_spec_and_label_validation() -> None:
    with pytest.raises(ValueError):
        SyntheticSpec(num_classes=len(CLASS_NAMES) + 1)
    with pytest.raises(ValueError):
        SyntheticSpec(radius=(0.1, 0.6))
    with pytest.raises(ValueError):
        SyntheticSpec(min_speed=3.0, max_speed=1.0)
    with pytest.raises(ValueError):
        render_clip(8, clip_rng(0, "x", 0), SyntheticSpec(num_classes=8))
    assert SyntheticSpec().class_names == CLASS_NAMES[:8]


def test_frame_zero_is_identical_across_classes() -> None:
    # All appearance is drawn before any motion parameter, so the class cannot show in frame 0.
    for index in range(3):
        clips = [render_clip(k, clip_rng(2, "leak", index), ALL_CLASSES) for k in range(10)]
        for clip in clips[1:]:
            np.testing.assert_array_equal(clip.frames[0], clips[0].frames[0])


def _object_statistics(spec: SyntheticSpec, label: int, clips: int, step: int) -> np.ndarray:
    """(clips, 3): object-pixel share of the left half, of the top half, and object area / frame
    area, on frame ``step`` (object pixels = non-zero flow, exact for every class)."""
    half = spec.size // 2
    rows = []
    for index in range(clips):
        on = _moving(render_clip(label, clip_rng(4, "stats", index), spec))[step]
        area = max(int(on.sum()), 1)
        rows.append((on[:, :half].sum() / area, on[:half].sum() / area, on.mean()))
    return np.asarray(rows)


def test_object_position_and_size_statistics_do_not_depend_on_class() -> None:
    # The classifier below has little power against position leaks (measured: a start-position
    # design that stays in frame went unnoticed), so check the marginals directly: on any frame,
    # objects are as often left as right, top as bottom, and as large, whatever the class.
    spec = SyntheticSpec(size=48, num_frames=16, num_classes=len(CLASS_NAMES))
    for step in (7, 14):
        for label, name in enumerate(CLASS_NAMES):
            stats = _object_statistics(spec, label, clips=80, step=step)
            left, top, area = stats.mean(axis=0)
            # 80 clips: standard errors ~0.035 for the halves and ~8 % for the area.
            assert abs(left - 0.5) < 0.13 and abs(top - 0.5) < 0.13, (name, step, left, top)
            assert 0.11 < area < 0.21, (name, step, area)


# --- flow convention and validity ------------------------------------------------------------


@pytest.mark.parametrize("name, sign_u, sign_v", [
    ("right", 1, 0), ("left", -1, 0), ("down", 0, 1), ("up", 0, -1),
])
def test_translation_flow_points_into_next_frame(name: str, sign_u: int, sign_v: int) -> None:
    spec = ALL_CLASSES
    for index in range(3):
        clip = _clip(name, index=index)
        on = _moving(clip) & clip.valid
        u, v = clip.flow[:, 0][on], clip.flow[:, 1][on]
        assert on.sum() > 50
        for comp, sign in ((u, sign_u), (v, sign_v)):
            if sign == 0:
                assert np.all(comp == 0)
            else:
                assert np.all(np.sign(comp) == sign)
                speed = np.abs(comp)
                assert spec.min_speed - 1e-4 <= speed.min() <= speed.max() <= spec.max_speed + 1e-4


def _jacobian_medians(clip: SyntheticClip) -> tuple[float, float]:
    """Median curl (dv/dx - du/dy) and divergence (du/dx + dv/dy) over object interiors."""
    f, on = clip.flow, _moving(clip) & clip.valid
    inner = on[:, :-1, :-1] & on[:, 1:, :-1] & on[:, :-1, 1:]
    du_dx = (f[:, 0, :-1, 1:] - f[:, 0, :-1, :-1])[inner]
    dv_dx = (f[:, 1, :-1, 1:] - f[:, 1, :-1, :-1])[inner]
    du_dy = (f[:, 0, 1:, :-1] - f[:, 0, :-1, :-1])[inner]
    dv_dy = (f[:, 1, 1:, :-1] - f[:, 1, :-1, :-1])[inner]
    return float(np.median(dv_dx - du_dy)), float(np.median(du_dx + dv_dy))


def test_rotation_and_scaling_flow_have_the_right_sense() -> None:
    # y points down, so clockwise on screen means positive curl in image coordinates.
    for index in range(3):
        curl, div = _jacobian_medians(_clip("rotate_cw", index=index))
        assert curl > 0.05 and abs(div) < 0.2 * curl
        curl, div = _jacobian_medians(_clip("rotate_ccw", index=index))
        assert curl < -0.05 and abs(div) < 0.2 * -curl
        curl, div = _jacobian_medians(_clip("expand", index=index))
        assert div > 0.05 and abs(curl) < 1e-3
        curl, div = _jacobian_medians(_clip("contract", index=index))
        assert div < -0.05 and abs(curl) < 1e-3


def test_oscillation_reverses_direction_along_its_axis() -> None:
    spec = dataclasses.replace(ALL_CLASSES, num_frames=16)
    for name, axis in (("oscillate_h", 0), ("oscillate_v", 1)):
        clip = _clip(name, spec=spec)
        on = _moving(clip)
        assert np.all(clip.flow[:, 1 - axis][on] == 0)
        per_step = [clip.flow[t, axis][on[t]].mean() for t in range(15) if on[t].any()]
        assert min(per_step) < 0 < max(per_step)


def test_backward_warp_by_gt_flow_reproduces_previous_frame() -> None:
    spec = SyntheticSpec(size=48, num_frames=6, num_classes=len(CLASS_NAMES))
    for label, name in enumerate(CLASS_NAMES):
        all_err, gt_err, zero_err = [], [], []
        for index in range(4):
            clip = render_clip(label, clip_rng(3, "warp", index), spec)
            frames = clip.frames.astype(np.float32)
            for t in range(spec.num_frames - 1):
                diff = np.abs(_warp_back(frames[t + 1], clip.flow[t]) - frames[t])
                still = np.abs(frames[t + 1] - frames[t])
                moving_valid = clip.valid[t] & (np.hypot(*clip.flow[t]) > 0.25)
                all_err.append(diff[clip.valid[t]].mean())
                gt_err.append(diff[moving_valid])
                zero_err.append(still[moving_valid])
        gt, zero = np.concatenate(gt_err).mean(), np.concatenate(zero_err).mean()
        assert max(all_err) < 1.0, name  # grey levels of 255, every frame pair
        assert gt < 2.0, name
        assert zero > 2.0 * gt and zero - gt > 1.0, (name, gt, zero)


def test_occluded_and_out_of_frame_pixels_are_invalid() -> None:
    spec = dataclasses.replace(ALL_CLASSES, num_frames=10, num_objects=(1, 1))
    covered_total = 0
    for index in range(4):
        clip = _clip("right", spec=spec, index=index)
        moving = _moving(clip)
        # Background at t (no flow) that the object covers at t+1 is occluded there.
        covered = ~moving[:-1] & moving[1:]
        assert not clip.valid[:-1][covered].any()
        covered_total += int(covered.sum())
        # Landing points outside the frame are invalid.
        x = np.arange(spec.size, dtype=np.float32)
        dest_x = x[None, None, :] + clip.flow[:, 0]
        assert not clip.valid[(dest_x < 0) | (dest_x > spec.size - 1)].any()
        assert clip.valid.mean() < 1.0
    assert covered_total > 0


def test_respawn_steps_are_invalid() -> None:
    # A single expanding object leaves the radius range within ~26 frames and respawns small.
    spec = dataclasses.replace(ALL_CLASSES, num_frames=40, num_objects=(1, 1))
    for index in range(2):
        clip = _clip("expand", spec=spec, index=index)
        moving = _moving(clip)
        on_object = moving.sum(axis=(1, 2))
        valid_on_object = (moving & clip.valid).sum(axis=(1, 2))
        assert np.any((on_object > 0) & (valid_on_object == 0))
        # the clip says where: its respawn steps are exactly the steps whose object pixels are all invalid
        assert clip.respawn is not None and clip.respawn.shape == (spec.num_frames - 1,)
        hidden = (on_object > 0) & (valid_on_object == 0)
        assert np.array_equal(clip.respawn, hidden)
    # motions without a radius cycle never respawn
    assert not _clip("rotate_cw", spec=spec, index=0).respawn.any()


# --- a single frame carries no class information ---------------------------------------------


class _CoordConvNet(nn.Module):
    """Tiny CNN with coordinate channels, so it can use *where* things are, not only what."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels + 2, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        return self.body(torch.cat([x, xx.expand(b, 1, h, w), yy.expand(b, 1, h, w)], dim=1))


def _inputs(spec: SyntheticSpec, split: str, per_class: int, seed: int, frame: int | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One frame per clip (N, 1, H, W), that frame plus the difference to the next (N, 2, H, W),
    and labels (N,). ``frame=None`` picks a random frame index per clip."""
    pick = np.random.default_rng(seed)
    single, pair, labels = [], [], []
    for clip in generate_split(spec, split, per_class, seed):
        t = int(pick.integers(spec.num_frames - 1)) if frame is None else frame
        f = clip.frames.astype(np.float32) / 255.0
        single.append(f[t:t + 1] - 0.5)
        pair.append(np.stack([f[t] - 0.5, 4.0 * (f[t + 1] - f[t])]))
        labels.append(clip.label)
    return (torch.from_numpy(np.stack(single)), torch.from_numpy(np.stack(pair)),
            torch.tensor(labels))


def _held_out_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                       test_y: torch.Tensor, num_classes: int, epochs: int) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: one thread is faster and reproducible
    try:
        torch.manual_seed(0)
        model = _CoordConvNet(train_x.shape[1], num_classes)
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        order = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            perm = torch.randperm(len(train_x), generator=order)
            for start in range(0, len(perm), 32):
                idx = perm[start:start + 32]
                loss = nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        with torch.no_grad():
            return (model(test_x).argmax(1) == test_y).float().mean().item()
    finally:
        torch.set_num_threads(threads)


def _single_vs_pair(spec: SyntheticSpec, train_per_class: int, test_per_class: int,
                    epochs: int, frame: int | None) -> tuple[float, float]:
    tr_single, tr_pair, tr_y = _inputs(spec, "train", train_per_class, 0, frame)
    te_single, te_pair, te_y = _inputs(spec, "test", test_per_class, 1, frame)
    k = spec.num_classes
    return (_held_out_accuracy(tr_single, tr_y, te_single, te_y, k, epochs),
            _held_out_accuracy(tr_pair, tr_y, te_pair, te_y, k, epochs))


def test_single_frame_classifier_is_at_chance_but_two_frames_are_not() -> None:
    spec = SyntheticSpec(size=32, num_frames=8)
    single, pair = _single_vs_pair(spec, train_per_class=60, test_per_class=40, epochs=20,
                                   frame=None)
    chance = 1.0 / spec.num_classes
    # 320 held-out clips: the std of a chance-level accuracy is ~1.9 points.
    assert single < chance + 0.08, single
    assert pair > 2 * chance and pair > single + 0.12, (single, pair)


@pytest.mark.slow
@pytest.mark.parametrize("frame", [0, 14])
def test_single_frame_classifier_at_chance_full_size(frame: int) -> None:
    # The first and last frames are where a start-position design would leak direction and size.
    spec = SyntheticSpec(num_classes=len(CLASS_NAMES))
    single, pair = _single_vs_pair(spec, train_per_class=80, test_per_class=40, epochs=25,
                                   frame=frame)
    chance = 1.0 / spec.num_classes
    assert single < chance + 0.07, single
    assert pair > 2 * chance and pair > single + 0.15, (single, pair)

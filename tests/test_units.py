"""Hand-made cases for small functions: the schedule, the census and SSIM data terms, the
forward-backward occlusion check, the ground-truth pairs, and the flow under a horizontal flip."""
import math

import numpy as np
import pytest
import torch
from test_train import TINY

from flowaction.config import from_dict
from flowaction.data.clips import ClipDataset, ClipSpec, JitterSpec
from flowaction.engine.evaluate import gt_flow_for_model
from flowaction.loss_variants import census_transform, forward_backward_visibility, ssim_dissimilarity
from flowaction.data.source import open_data
from flowaction.engine.optim import learning_rate


def test_learning_rate_warms_up_linearly_then_follows_the_cosine():
    cfg = from_dict({}, ["optim.lr=0.01", "optim.warmup_epochs=1"])  # 4 steps an epoch: 4 warm-up steps
    assert [learning_rate(cfg, s, 20, 4) for s in range(4)] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])
    # cosine over the 16 steps after warm-up: half-way is half the rate, the end is zero
    assert learning_rate(cfg, 4, 20, 4) == pytest.approx(0.01)
    assert learning_rate(cfg, 12, 20, 4) == pytest.approx(0.005)
    assert learning_rate(cfg, 20, 20, 4) == pytest.approx(0.0, abs=1e-12)
    constant = from_dict({}, ["optim.lr=0.01", "optim.schedule=constant"])
    assert {learning_rate(constant, s, 20, 4) for s in range(20)} == {0.01}


def test_census_ignores_brightness_and_sees_structure():
    image = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    census = census_transform(image, radius=1)
    assert census.shape == (1, 9, 12, 12) and census.abs().max() < 1
    # an additive brightness change leaves every comparison with a neighbour unchanged
    torch.testing.assert_close(census_transform(image + 0.3, radius=1), census)
    # the centre channel compares a pixel with itself: always 0; a flat image is all 0
    assert census[:, 4].abs().max() == 0 and census_transform(torch.full((1, 1, 5, 5), 0.7)).abs().max() == 0
    assert not torch.allclose(census_transform(1 - image, radius=1), census)


def test_ssim_dissimilarity_is_zero_for_equal_images_and_large_for_inverted_ones():
    image = torch.rand(2, 1, 10, 10, generator=torch.Generator().manual_seed(1))
    same = ssim_dissimilarity(image, image)
    assert same.shape == image.shape and same.max() < 1e-5
    inverted = ssim_dissimilarity(image, 1 - image)
    assert inverted.mean() > 0.5 and inverted.max() <= 1 and inverted.min() >= 0


def test_forward_backward_check_keeps_consistent_pixels_and_flags_the_rest():
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 0] = 2.0  # everything moves 2 px right
    consistent = -flow  # the backward flow undoes it
    visible = forward_backward_visibility(flow, consistent)
    # inside, F + B(x + F) = 0; in the last 2 columns x + F leaves the frame (B sampled as 0 there)
    assert visible[0, 0, :, :-2].min() == 1
    inconsistent = forward_backward_visibility(flow, flow)  # |F + B| = 4 px: occluded
    assert inconsistent.max() == 0


def test_gt_flow_for_model_takes_the_pairs_of_the_triplets():
    t = 10  # pairs 0..8; stride 3 -> triplets start 0, 3, 6 and relate pairs 0, 3, 6
    flow = torch.arange(t - 1, dtype=torch.float32).view(1, t - 1, 1, 1, 1).expand(1, t - 1, 2, 4, 4).clone()
    valid = torch.zeros(1, t - 1, 4, 4, dtype=torch.bool)
    valid[:, 3] = True
    picked, mask = gt_flow_for_model(flow, valid, 3, 3)
    assert picked.shape == (1, 2, 3, 4, 4) and picked[0, 0, :, 0, 0].tolist() == [0.0, 3.0, 6.0]
    assert mask[0, :, 0, 0].tolist() == [False, True, False]


def test_horizontal_flip_mirrors_the_frames_and_negates_the_flow(tmp_path):
    cfg = from_dict({}, ["data.crop=32", "data.synthetic.size=36", "data.synthetic.num_frames=7", "data.synthetic.num_classes=2",
                         "data.synthetic.train_per_class=6", "data.synthetic.val_per_class=1",
                         "data.synthetic.test_per_class=1", f"data.synthetic_dir={tmp_path / 'data'}"])
    cache = open_data(cfg, tmp_path)
    spec = ClipSpec(7, 1, 32, 1)
    plain = ClipDataset(cache, "train", "train", spec, JitterSpec(0, 0, 0, hflip=False), seed=0)
    flipping = ClipDataset(cache, "train", "train", spec, JitterSpec(0, 0, 0, hflip=True), seed=0)
    flipped_items = 0
    for item in range(len(plain)):
        a, b = plain[item], flipping[item]
        if torch.equal(a["frames"], b["frames"]):
            torch.testing.assert_close(a["flow"], b["flow"])
            continue
        flipped_items += 1
        torch.testing.assert_close(b["frames"], a["frames"].flip(-1))
        torch.testing.assert_close(b["flow"][:, 0], -a["flow"][:, 0].flip(-1))  # u changes sign
        torch.testing.assert_close(b["flow"][:, 1], a["flow"][:, 1].flip(-1))  # v does not
        assert torch.equal(b["valid"], a["valid"].flip(-1))
    assert 0 < flipped_items < len(plain)  # a coin per clip


def test_keep_heap_memory_raises_glibc_thresholds_once_and_only_on_glibc(monkeypatch):
    import platform

    import flowaction.speedups.allocator as allocator
    from flowaction.config import ConfigError, from_dict

    real = allocator._mallopt
    calls = []
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setattr(allocator, "_mallopt", lambda: (lambda option, value: calls.append((option, value)) or 1))
    assert allocator.keep_heap_memory() is True
    assert calls == [(-3, 1 << 30), (-1, 1 << 30)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    assert allocator.keep_heap_memory() is True and len(calls) == 2  # once per process
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setattr(allocator, "_mallopt", lambda: None)  # not glibc: nothing to do, and said so
    assert allocator.keep_heap_memory() is False
    # the real glibc mallopt accepts both settings
    monkeypatch.setattr(allocator, "_mallopt", real)
    assert allocator.keep_heap_memory() is (platform.libc_ver()[0] == "glibc")
    with pytest.raises(ConfigError, match="allocator"):
        from_dict({}, ["allocator=jemalloc"])


@pytest.mark.parametrize("choice", ["keep", "system"])
def test_training_applies_the_allocator_setting(choice, monkeypatch, tmp_path):
    import flowaction.speedups.allocator as allocator
    from flowaction.config import from_dict
    from flowaction.data.source import open_data
    from flowaction.engine.fit import fit

    applied = []
    monkeypatch.setattr(allocator, "keep_heap_memory", lambda: applied.append(True) or True)
    cfg = from_dict({}, TINY + ["optim.epochs=1", f"allocator={choice}", f"data.synthetic_dir={tmp_path / 'data'}"])
    fit(cfg, open_data(cfg, tmp_path, progress=False), tmp_path / "run", progress=False, log=lambda *_: None)
    assert applied == ([True] if choice == "keep" else [])

import json

import numpy as np
import pytest
import torch

from flowaction.data.cache import ClipCache, ShardWriter, VideoRecord, finished_shards, write_index
from flowaction.data.clips import ClipDataset, ClipSpec, JitterSpec, apply_jitter, frame_indices


def _video(length, value, size=(20, 24)):
    frames = (np.arange(length, dtype=np.uint8)[:, None, None] + value) * np.ones(size, np.uint8)
    return frames


def _write(tmp_path, lengths, with_flow=False):
    writer = ShardWriter(tmp_path, "train-00000", with_flow=with_flow)
    for i, length in enumerate(lengths):
        flow = np.full((length - 1, 2, 20, 24), i, np.float32) if with_flow else None
        valid = np.ones((length - 1, 20, 24), bool) if with_flow else None
        writer.add(VideoRecord(id=f"v{i}", label=i % 2, split="train" if i < 2 else "test"), _video(length, 10 * i), flow, valid)
    writer.close()
    write_index(tmp_path, ["a", "b"])
    return ClipCache.open(tmp_path)


def test_round_trip_and_random_access(tmp_path):
    cache = _write(tmp_path, [5, 8, 12], with_flow=True)
    assert cache.classes == ["a", "b"] and cache.split("train") == [0, 1] and cache.split("test") == [2]
    assert cache.frames(1).shape == (8, 20, 24)
    assert cache.frames(2, [0, 11])[:, 0, 0].tolist() == [20, 31]
    flow, valid = cache.flow(2, [3])
    assert flow.shape == (1, 2, 20, 24) and (flow == 2).all() and valid.all()


def test_incomplete_cache_is_refused(tmp_path):
    writer = ShardWriter(tmp_path, "s0")
    writer.add(VideoRecord(id="v", label=0, split="train"), _video(4, 0))
    writer.close()
    # shard finished, index not written: the cache does not load as complete
    with pytest.raises(FileNotFoundError, match="not a complete clip cache"):
        ClipCache.open(tmp_path)
    # an unfinished shard (arrays but no manifest) is invisible to the index
    (tmp_path / "shards" / "s1.frames.npy").write_bytes(b"partial")
    assert [m["name"] for m in finished_shards(tmp_path)] == ["s0"]


def test_short_video_repeats_last_frame():
    assert frame_indices(0, 6, 2, 7).tolist() == [0, 2, 4, 6, 6, 6]


def test_dataset_modes(tmp_path):
    cache = _write(tmp_path, [5, 30, 12], with_flow=True)
    spec = ClipSpec(num_frames=4, frame_step=1, crop=16, test_clips=3)
    train = ClipDataset(cache, "train", "train", spec, JitterSpec(0, 0, 0), seed=1)
    item = train[1]
    assert item["frames"].shape == (1, 4, 16, 16) and item["frames"].dtype == torch.float32
    assert item["flow"].shape == (3, 2, 16, 16) and item["valid"].shape == (3, 16, 16)
    test = ClipDataset(cache, "test", "test", spec)
    assert len(test) == 3
    starts = [int(round(test[i]["frames"][0, 0, 0, 0].item() * 255)) - 20 for i in range(3)]
    assert starts == [0, 4, 8]  # uniformly spaced over the 12-frame video
    # the padded short video: repeated frames have zero, valid ground truth
    short = ClipDataset(cache, "train", "val", ClipSpec(num_frames=8, crop=16))
    sample = short[0]
    assert (sample["flow"][4:] == 0).all() and sample["valid"][4:].all()


def test_jitter_is_drawn_once_per_clip():
    frames = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32) * 0.5 + 0.25
    out = apply_jitter(frames, np.random.default_rng(1), JitterSpec(brightness=0.2, contrast=0.0, gamma=0.0))
    shift = out - frames
    assert np.allclose(shift, shift.flat[0], atol=1e-6) and abs(shift.flat[0]) > 0

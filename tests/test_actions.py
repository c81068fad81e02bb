"""The articulated-action benchmark: exact flow, a mask that knows occlusion, classes that differ by
motion alone, held-out photographs, determinism, and the files `generate --videos` writes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flowaction.cli import main
from flowaction.config import from_dict
from flowaction.data import actions
from flowaction.data.layers import LayeredClip, layer_flow, render_layers
from flowaction.data.actions import ActionSpec, render_action_clip
from flowaction.data.cache import ClipCache
from flowaction.data.generate import generate_clips
from flowaction.data.photos import HELD_OUT, TRAINING
from flowaction.data.poses import ACTION_NAMES, ONE_WAY, PERIODIC, TIME_REVERSED_PAIRS
from flowaction.data.source import open_data
from flowaction.data.synthetic import clip_rng
from flowaction.warp import backward_warp

EXACT = ActionSpec(photometric=False)


def _warp_errors(clip) -> tuple[float, float]:
    """Mean |W(I_{t+1}, flow) - I_t| and |I_{t+1} - I_t| over the valid pixels of exact colour, all pairs."""
    frames = torch.from_numpy(clip.frames.astype(np.float32))
    warped = backward_warp(frames[1:, None], torch.from_numpy(clip.flow))[:, 0]
    valid = torch.from_numpy(clip.exact)
    return float((warped - frames[:-1]).abs()[valid].mean()), float((frames[1:] - frames[:-1]).abs()[valid].mean())


@pytest.mark.parametrize("action", ACTION_NAMES)
def test_the_flow_is_exact_on_valid_pixels(action):
    clip = render_action_clip(ACTION_NAMES.index(action), clip_rng(3, "train", 7), EXACT)
    assert clip.frames.shape == (16, 48, 48) and clip.flow.shape == (15, 2, 48, 48) and clip.valid.shape == (15, 48, 48)
    warp, still = _warp_errors(clip)
    # what is left is bilinear interpolation of a blurred photograph; zero flow is far from it
    assert warp < 2.0 and warp < 0.45 * still, (warp, still)
    assert 0.8 < clip.valid.mean() < 0.995 and (clip.exact <= clip.valid).all()  # occlusions, the frame's edge
    figure = clip.valid & (np.hypot(*clip.flow.transpose(1, 0, 2, 3)) > 0) & ~clip.exact
    assert clip.valid.sum() > clip.exact.sum() and figure.any()  # layer edges keep their true flow


def test_the_mask_leaves_out_a_limb_that_crosses_the_body():
    rng = clip_rng(0, "train", 3)
    layers, _ = actions._layers(rng, EXACT, "train", "box")
    camera = actions._camera(rng, EXACT)
    _, ids, to_image = render_layers(layers, camera, EXACT.size)
    flow, valid, _ = layer_flow(ids, to_image, EXACT.size)
    names = [layer.name for layer in layers]
    torso, arms = names.index("torso"), [names.index("upper_arm:near"), names.index("forearm:near")]
    ys, xs = np.mgrid[0:EXACT.size, 0:EXACT.size]
    covered = 0
    for t in range(len(flow)):
        x = np.clip(np.rint(xs + flow[t, 0]), 0, EXACT.size - 1).astype(int)
        y = np.clip(np.rint(ys + flow[t, 1]), 0, EXACT.size - 1).astype(int)
        hidden = (ids[t] == torso) & np.isin(ids[t + 1][y, x], arms)  # torso pixels an arm covers at t+1
        covered += int(hidden.sum())
        assert not valid[t][hidden].any()
    assert covered > 0  # the punching arm does cross the body


def test_camera_motion_moves_the_background_by_the_flow_it_claims():
    spec = ActionSpec(photometric=False, zoom=0.0, rotation_deg=0.0, shake=0.0, distractors=(0, 0))
    rng = clip_rng(1, "train", 0)
    layers, _ = actions._layers(rng, spec, "train", "walk")
    camera = actions._camera(rng, spec)
    frames, ids, to_image = render_layers(layers, camera, spec.size)
    flow, valid, exact = layer_flow(ids, to_image, spec.size)
    pan = (camera[1] @ np.linalg.inv(camera[0]))[:2, 2]  # the image shift of one frame (a pure pan)
    for t in range(len(flow)):
        background = ids[t] == 0
        assert np.allclose(flow[t, 0][background], pan[0], atol=1e-6)
        assert np.allclose(flow[t, 1][background], pan[1], atol=1e-6)
    assert np.hypot(*pan) > 0.01  # the camera does move
    # and the background of frame t+1, shifted back by that flow, is frame t's
    clip = LayeredClip(np.clip(np.rint(frames), 0, 255).astype(np.uint8), flow, valid, 0, np.zeros(15, bool),
                              exact=exact & (ids[:-1] == 0))
    warp, still = _warp_errors(clip)
    assert warp < 1.5 and warp < 0.5 * still


def test_every_class_draws_the_figure_and_the_scene_alike():
    # the same random stream gives every class the same figure, place, clothes, camera and photographs:
    # the draws come before, and do not depend on, the action
    infos = [render_action_clip(label, clip_rng(2, "train", 11), EXACT).info for label in range(len(ACTION_NAMES))]
    for info in infos[1:]:
        for key in ("height", "facing", "stand", "drift", "photos", "lengths"):
            assert info[key] == infos[0][key], key


def test_standing_point_and_size_have_the_same_distribution_in_every_class():
    per_class = {name: [] for name in ACTION_NAMES}
    for index in range(14 * 24):  # as a split draws them: clip i has label i % K and its own stream
        _, info = actions._figure_poses(clip_rng(5, "train", index), EXACT, ACTION_NAMES[index % 14])
        per_class[ACTION_NAMES[index % 14]].append([*info["stand"], info["height"]])
    values = np.array([per_class[name] for name in ACTION_NAMES])  # (K, n, 3)
    overall_mean, overall_std = values.reshape(-1, 3).mean(0), values.reshape(-1, 3).std(0)
    # every class's mean within 4 standard errors of the overall mean (a class set apart would be far out)
    assert (np.abs(values.mean(1) - overall_mean) < 4 * overall_std / np.sqrt(values.shape[1])).all()


@pytest.mark.parametrize("pair", TIME_REVERSED_PAIRS)
def test_a_time_reversed_pair_has_the_same_single_frames(pair):
    forward, backward = (ONE_WAY[name] for name in pair)
    times = np.linspace(0, 1, 16)
    for start, end in ((0.1, 0.8), (0.25, 0.95)):  # exactly: each is the other played backwards
        for t in times:
            assert forward(t, start, end) == pytest.approx(backward(1 - t, start, end))
    rng = np.random.default_rng(0)
    samples = {name: [] for name in pair}  # the pose at a random frame of many clips
    for _ in range(400):
        start, end, t = rng.uniform(*EXACT.progress_start), rng.uniform(*EXACT.progress_end), rng.choice(times)
        for name in pair:
            samples[name].append(list(ONE_WAY[name](t, start, end).values()))
    a, b = (np.array(samples[name]) for name in pair)
    spread = np.concatenate([a, b]).std(0) + 1e-9
    assert (np.abs(a.mean(0) - b.mean(0)) < 4 * spread / np.sqrt(len(a))).all()
    assert (np.abs(a.std(0) - b.std(0)) < 0.2 * spread).all()
    # while the motion tells them apart: the progress runs one way in one and the other way in the other
    assert forward(1.0, 0.1, 0.9) != forward(0.0, 0.1, 0.9)


def _part_positions(frames: int, action: str, clips: int, seed: int = 3) -> np.ndarray:
    """``(clips, T, parts, 2)`` world positions of the far ends of the figure's parts (a hand, a foot,
    the top of the head), from the generator's own draws."""
    spec = ActionSpec(num_frames=frames, photometric=False)
    tracks = []
    for index in range(clips):
        poses, info = actions._figure_poses(clip_rng(seed, "train", index), spec, action)
        ends = [poses[name] @ np.array([0.0, info["lengths"][name.split(":")[0]], 1.0]) for name in sorted(poses)]
        tracks.append(np.stack(ends, axis=1)[..., :2])
    return np.array(tracks)


@pytest.mark.parametrize("action", ["wave-two-hands", "run", "sit-down"])
def test_a_limb_moves_as_fast_per_frame_in_a_clip_of_8_or_32_frames_as_in_one_of_16(action):
    def speed(frames: int) -> float:
        tracks = _part_positions(frames, action, 120)
        steps = np.diff(tracks, axis=1) - np.diff(tracks, axis=1).mean(2, keepdims=True)  # less the drift
        moving = np.linalg.norm(steps, axis=-1).max(-1) > 1e-6  # one-way actions hold still outside their span
        return float(np.linalg.norm(steps, axis=-1).mean(-1)[moving].mean())
    reference = speed(16)
    for frames in (8, 32):
        assert speed(frames) == pytest.approx(reference, rel=0.12), frames


@pytest.mark.parametrize("frames", [8, 32])
@pytest.mark.parametrize("pair", TIME_REVERSED_PAIRS)
def test_a_time_reversed_pair_has_the_same_single_frames_in_shorter_and_longer_clips(pair, frames):
    rng = np.random.default_rng(1)
    samples = []
    for name in pair:  # the figure's pose at a random frame of each of 300 clips, relative to its pelvis
        tracks = _part_positions(frames, name, 300)
        tracks = tracks - tracks[:, :, :1]
        samples.append(tracks[np.arange(len(tracks)), rng.integers(0, frames, len(tracks))].reshape(len(tracks), -1))
    a, b = samples
    spread = np.concatenate([a, b]).std(0) + 1e-9
    assert (np.abs(a.mean(0) - b.mean(0)) < 4 * spread / np.sqrt(len(a))).all()
    assert (np.abs(a.std(0) - b.std(0)) < 0.2 * spread).all()
    # and the pair is not one class twice: the same draws start the two classes in different poses
    assert not np.allclose(_part_positions(frames, pair[0], 1)[0, 0], _part_positions(frames, pair[1], 1)[0, 0])


def test_periodic_actions_move_their_joints_differently():
    times = np.linspace(0, 1, 16)
    tracks = {name: np.array([list(PERIODIC[name](t, 0.3, 1.2, 1.0).values()) for t in times]) for name in PERIODIC}
    for first in PERIODIC:
        for second in PERIODIC:
            if first < second:
                assert not np.allclose(tracks[first], tracks[second], atol=0.05), (first, second)


def test_held_out_photographs_never_appear_in_training_or_validation():
    assert not set(HELD_OUT) & set(TRAINING)
    seen = {}
    for split, count in (("train", 60), ("val", 30), ("test", 30)):  # as the cache is written
        seen[split] = {name for clip in generate_clips(EXACT, split, count, seed=0) for name in clip.info["photos"]}
    assert not (seen["train"] | seen["val"]) & set(HELD_OUT) and seen["test"] <= set(HELD_OUT)
    assert len(seen["train"]) > 5 and len(seen["test"]) >= 2


def test_determinism_by_seed():
    first, again = (render_action_clip(4, clip_rng(9, "train", 2), ActionSpec()) for _ in range(2))
    assert np.array_equal(first.frames, again.frames) and np.array_equal(first.flow, again.flow)
    assert np.array_equal(first.valid, again.valid)
    other = render_action_clip(4, clip_rng(9, "train", 3), ActionSpec())
    assert not np.array_equal(first.frames, other.frames)


def test_the_actions_go_through_the_cache_like_the_motion_world(tmp_path):
    cfg = from_dict({}, ["data.synthetic.kind=actions", "data.synthetic.size=40", "data.crop=32",
                         "data.synthetic.train_per_class=2", "data.synthetic.val_per_class=1",
                         "data.synthetic.test_per_class=1", "data.synthetic.num_frames=8"])
    cache = open_data(cfg, tmp_path, progress=False)
    assert cache.classes == list(ACTION_NAMES) and cache.with_flow and len(cache.split("train")) == 28
    clip = render_action_clip(0, clip_rng(0, "train", 0), ActionSpec(size=40, num_frames=8))
    assert np.array_equal(cache.frames(cache.split("train")[0]), clip.frames)  # the same clip, stored
    with pytest.raises(ValueError, match="num_classes must be 0 \\(the default\\) to 14"):
        from_dict({}, ["data.synthetic.kind=actions", "data.synthetic.num_classes=15"])


def test_generate_videos_then_prepare_and_predict_on_the_files(tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["generate", "--out", str(out), "--videos", "--classes", "2", "--per-class", "6,2,2", "--size", "40",
                 "--frames", "10", "--no-progress"]) == 0
    videos = sorted((out / "videos").rglob("*.mp4"))
    assert len(videos) == 20 and {p.parent.name for p in videos} == {"walk", "run"}
    run = tmp_path / "run"
    assert main(["train", "--data", str(out / "cache"), "--out", str(run), "--no-progress", "model.depth=10",
                 "model.flow_width=8", "data.crop=32", "data.num_frames=10", "data.test_clips=1", "optim.epochs=2",
                 "optim.batch_size=6", "data.val_split=val"]) == 0
    assert main(["prepare", "folder", "--root", str(out / "videos"), "--out", str(tmp_path / "cache"), "--size", "40",
                 "--no-progress"]) == 0
    assert ClipCache.open(tmp_path / "cache").classes == ["run", "walk"]  # prepare sorts class folders
    capsys.readouterr()
    report = tmp_path / "pred.json"
    assert main(["predict", str(out / "videos"), "--checkpoint", str(run / "best.pt"), "--clips", "1",
                 "--json", str(report)]) == 0
    results = json.loads(report.read_text())["videos"]
    assert len(results) == 20 and all(r["top_k"][0]["label"] in ("walk", "run") for r in results)
    # the files decode to what the cache holds: the model's classes for the files are those for the clips
    cache = ClipCache.open(out / "cache")
    from flowaction.inference.loaded import load_model

    model = load_model(run / "best.pt")
    agree = 0
    for index, record in enumerate(cache.videos):
        split, number = record["id"].split("/")
        on_file = next(r for r in results if r["video"].endswith(f"{cache.classes[record['label']]}/{split}-{number}.mp4"))
        clip = model.centre_crop(cache.frames(index))[None]
        agree += cache.classes[int(model.logits(clip).argmax())] == on_file["top_k"][0]["label"]
    assert agree >= 18

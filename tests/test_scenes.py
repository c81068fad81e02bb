"""The flow scenes (layers of real photographs in their own motions): exact flow on valid pixels, a
mask that leaves out what is covered, the speed range, lighting that the flow ignores, held-out
photographs, determinism, and pre-training on them from the command line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flowaction.cli import main
from flowaction.config import load_config, preset_path
from flowaction.data import scenes
from flowaction.data.generate import generate_clips
from flowaction.data.layers import layer_flow, render_layers
from flowaction.data.photos import HELD_OUT, TRAINING
from flowaction.data.scenes import SceneSpec, render_scene_clip
from flowaction.data.source import synthetic_spec
from flowaction.data.synthetic import clip_rng
from flowaction.warp import backward_warp


def _warp_errors(frames: np.ndarray, flow: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean |W(I_{t+1}, flow) - I_t| and |I_{t+1} - I_t| over ``mask``, all pairs."""
    f = torch.from_numpy(frames.astype(np.float32))
    warped = backward_warp(f[1:, None], torch.from_numpy(flow))[:, 0]
    m = torch.from_numpy(mask)
    return float((warped - f[:-1]).abs()[m].mean()), float((f[1:] - f[:-1]).abs()[m].mean())


@pytest.mark.parametrize("size", [56, 112])
def test_the_flow_is_exact_on_valid_pixels(size):
    spec = SceneSpec(size=size, photometric=False)
    for index in range(3):
        clip = render_scene_clip(0, clip_rng(0, "train", index), spec)
        assert clip.frames.shape == (8, size, size) and clip.flow.shape == (7, 2, size, size)
        warp, still = _warp_errors(clip.frames, clip.flow, clip.exact)
        # what is left is bilinear interpolation of a blurred photograph; zero flow is far from it
        assert warp < 1.5 and warp < 0.4 * still, (index, warp, still)
        assert (clip.exact <= clip.valid).all() and 0.6 < clip.valid.mean() < 0.999


def test_the_mask_leaves_out_background_a_piece_covers_in_the_next_frame():
    spec = SceneSpec(photometric=False)
    covered = 0
    for index in range(3):
        layers, _, _ = scenes._layers(clip_rng(0, "train", index), spec, "train")
        camera = np.repeat(np.eye(3)[None], spec.num_frames, 0)
        _, ids, to_image = render_layers(layers, camera, spec.size)
        flow, valid, _ = layer_flow(ids, to_image, spec.size)
        ys, xs = np.mgrid[0:spec.size, 0:spec.size]
        for t in range(len(flow)):
            x = np.clip(np.rint(xs + flow[t, 0]), 0, spec.size - 1).astype(int)
            y = np.clip(np.rint(ys + flow[t, 1]), 0, spec.size - 1).astype(int)
            hidden = (ids[t] == 0) & (ids[t + 1][y, x] > 0)  # background a piece lies over at t+1
            covered += int(hidden.sum())
            assert not valid[t][hidden].any()
    assert covered > 0


def test_speeds_cover_zero_to_eight_pixels_a_frame_at_112():
    speeds = []
    for index in range(60):
        info = render_scene_clip(0, clip_rng(1, "train", index), SceneSpec(size=112, photometric=False)).info
        speeds += info["piece_speeds"]
    speeds = np.array(speeds)
    assert speeds.min() < 1.0 and speeds.max() > 7.5 and speeds.max() <= 0.075 * 112 + 1e-6
    # roughly uniform: every quarter of the range is drawn
    counts = np.histogram(speeds, bins=4, range=(0, 8.4))[0]
    assert (counts > 0.1 * len(speeds)).all(), counts


def test_lighting_changes_and_noise_leave_the_flow_as_it_was():
    lit = render_scene_clip(0, clip_rng(2, "train", 4), SceneSpec(photometric=True))
    dark = render_scene_clip(0, clip_rng(2, "train", 4), SceneSpec(photometric=False))
    assert np.array_equal(lit.flow, dark.flow) and np.array_equal(lit.valid, dark.valid)
    assert np.abs(lit.frames.astype(int) - dark.frames.astype(int)).mean() > 0.5  # but the frames differ


def test_held_out_photographs_never_reach_the_training_scenes():
    for split in ("train", "val"):
        for clip in generate_clips(SceneSpec(size=32, num_frames=3), split, 40, seed=0):
            assert set(clip.info["photos"]) <= set(TRAINING)
    test = [p for clip in generate_clips(SceneSpec(size=32, num_frames=3), "test", 20, seed=0) for p in clip.info["photos"]]
    assert set(test) <= set(HELD_OUT) and len(set(test)) > 1


def test_scenes_are_deterministic_by_seed_and_parallel_generation_matches():
    spec = SceneSpec(size=32, num_frames=4)
    one = list(generate_clips(spec, "train", 6, seed=3))
    again = list(generate_clips(spec, "train", 6, seed=3))
    other = list(generate_clips(spec, "train", 6, seed=4))
    assert all(np.array_equal(a.frames, b.frames) and np.array_equal(a.flow, b.flow) for a, b in zip(one, again))
    assert not np.array_equal(one[0].frames, other[0].frames)
    # the parallel path renders the same clip from the same stream
    assert np.array_equal(scenes.render_scene_clip(0, clip_rng(3, "train", 5), spec).frames, one[5].frames)


def test_the_pretrain_scenes_preset_names_the_scenes():
    cfg = load_config(preset_path("pretrain-scenes"))
    spec = synthetic_spec(cfg)
    assert isinstance(spec, SceneSpec) and spec.size == 112 and cfg.model.flow_init == "default"


def test_pretrain_flow_on_scenes_runs_and_scores_against_the_truth(tmp_path):
    out = tmp_path / "flow"
    code = main(["pretrain-flow", "--config", "pretrain-scenes", "--out", str(out), "--steps", "4", "--eval-every", "2",
                 "--no-progress", "threads=1", "data.synthetic.size=40", "data.crop=32",
                 "data.synthetic.train_per_class=6", "data.synthetic.val_per_class=2", "data.synthetic.test_per_class=2",
                 "optim.batch_size=4"])
    assert code == 0
    assert torch.load(out / "flownet.pt", weights_only=True)["kind"] == "flownet"
    assert load_config(out / "config.yaml").data.synthetic.kind == "scenes"
    index = json.loads((out / "data" / "index.json").read_text())
    assert index["classes"] == ["scene"] and index["meta"]["kind"] == "scenes"
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "dis_moving_epe" in header and float(rows[-1].split(",")[header.index("dis_moving_epe")]) > 0


def test_generate_writes_scenes_from_the_command_line(tmp_path):
    assert main(["generate", "--kind", "scenes", "--out", str(tmp_path / "g"), "--size", "32", "--frames", "4",
                 "--per-class", "3,1,1", "--no-progress"]) == 0
    index = json.loads((tmp_path / "g" / "cache" / "index.json").read_text())
    assert index["classes"] == ["scene"] and len(index["videos"]) == 5


def test_the_scene_flow_benchmark_scores_every_method_on_held_out_scenes(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scene_flow.py"
    out = tmp_path / "scene_flow.json"
    subprocess.run([sys.executable, str(script), "--clips", "2", "--sizes", "40", "--flow-weights", "default",
                    "--out", str(out)], check=True, capture_output=True, timeout=300)
    rows = json.loads(out.read_text())["sizes"]["40"]["methods"]
    assert set(rows) == {"zero", "learned", "dis", "farneback"}
    assert rows["dis"]["epe_vs_dis"] == 1.0 and rows["learned"]["gflops"] > 0
    # every method beats standing still on these moving scenes
    assert all(rows[m]["epe"] < rows["zero"]["epe"] for m in ("learned", "dis", "farneback"))

"""pretrain-flow end to end, resume, and model.flow_init loading."""
import csv
import json

import pytest
import torch

from flowaction.checkpoint import load_checkpoint
from flowaction.cli import main
from flowaction.config import ConfigError, from_dict
from flowaction.models.flownet import FlowNet
from flowaction.models.weights import default_flow_weights, load_flow_weights, save_flow_weights
from flowaction.data.source import open_data
from flowaction.engine.fit import fit

from test_variants import TINY

DATA = ["data.synthetic.size=36", "data.synthetic.num_frames=7", "data.num_frames=7", "data.synthetic.num_classes=4",
        "data.synthetic.train_per_class=3", "data.synthetic.val_per_class=1", "model.flow_width=8",
        "model.triplet_stride=2", "optim.batch_size=8", "threads=1"]


def _rows(out):
    with open(out / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_pretrain_flow_runs_resumes_and_writes_its_outputs(tmp_path):
    out = tmp_path / "pre"
    args = ["pretrain-flow", "--out", str(out), "--eval-every", "5", "--no-progress", *DATA,
            f"data.synthetic_dir={tmp_path / 'data'}"]
    assert main(args + ["--steps", "5"]) == 0
    for name in ("flownet.pt", "last.pt", "metrics.csv", "curves.png", "config.yaml"):
        assert (out / name).is_file(), name
    first = load_checkpoint(out / "flownet.pt")
    assert first["kind"] == "flownet" and first["flow_width"] == 8 and first["meta"]["steps"] == 5
    assert main(args + ["--steps", "10", "--resume"]) == 0
    assert load_checkpoint(out / "last.pt")["step"] == 10
    val = [r for r in _rows(out) if r["split"] == "val"]
    assert [int(r["epoch"]) for r in val] == [5, 10]  # resumed at step 5, not started again
    for key in ("epe", "moving_epe", "zero_moving_epe", "dis_moving_epe", "val_photometric"):
        assert float(val[-1][key]) >= 0, key
    # the weights moved between the two evaluations
    second = load_checkpoint(out / "flownet.pt")
    assert not torch.equal(first["model"]["predict1.weight"], second["model"]["predict1.weight"])


def test_flow_init_loads_strictly_and_names_a_width_mismatch(tmp_path):
    out = tmp_path / "pre"
    assert main(["pretrain-flow", "--out", str(out), "--steps", "2", "--eval-every", "2", "--no-progress", *DATA,
                 f"data.synthetic_dir={tmp_path / 'data'}"]) == 0
    net = FlowNet(width=8)
    load_flow_weights(net, out / "flownet.pt")
    saved = load_checkpoint(out / "flownet.pt")["model"]
    assert all(torch.equal(net.state_dict()[k], v) for k, v in saved.items())
    with pytest.raises(ValueError, match="width 8.*model.flow_width=16"):
        load_flow_weights(FlowNet(width=16), out / "flownet.pt")
    # a network with the full-resolution level starts from it with that level at zero correction:
    # the same flow as the loaded network
    refined = FlowNet(width=8, refine=True)
    load_flow_weights(refined, out / "flownet.pt")
    triplets = torch.rand(2, 1, 3, 20, 20)
    with torch.no_grad():
        assert torch.equal(refined(triplets), net(triplets))
    # the other way round would drop a trained level: refused
    refined_out = tmp_path / "refined.pt"
    save_flow_weights(refined_out, refined, {})
    with pytest.raises(ValueError, match="with the full-resolution level.*model.flow_refine=true"):
        load_flow_weights(FlowNet(width=8), refined_out)
    # joint training starts from it: the run's flow network equals the pre-trained one before any step
    cfg = from_dict({}, TINY + [f"model.flow_init={out / 'flownet.pt'}", "optim.steps=1", "optim.lr=1e-12",
                                f"data.synthetic_dir={tmp_path / 'tiny'}"])
    cache = open_data(cfg, tmp_path)
    messages = []
    fit(cfg, cache, tmp_path / "run", progress=False, log=messages.append)
    state = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert torch.allclose(state["flow_net.stem.weight"], saved["stem.weight"], atol=1e-6)
    assert any("initialised from" in m for m in messages)


def test_flow_init_needs_a_flow_network():
    with pytest.raises(ConfigError, match="flow network"):
        from_dict({}, ["model.input=frames", "model.flow_init=default"])
def test_default_flow_network_ships_and_loads():
    path = default_flow_weights()
    assert path.is_file(), "the package ships a pre-trained flow network"
    state = load_checkpoint(path)
    net = FlowNet(width=state["flow_width"], refine=state.get("flow_refine", False))
    meta = load_flow_weights(net, "default")
    assert meta["steps"] > 0 and "command" in meta


def test_the_shipped_flow_networks_load_by_name_and_differ():
    from flowaction.models.weights import SHIPPED_FLOW, shipped_flow_weights

    assert set(SHIPPED_FLOW) == {"default", "actions", "scenes"}
    nets = {}
    for name in SHIPPED_FLOW:
        assert shipped_flow_weights(name).is_file(), name
        nets[name] = FlowNet(width=16, pyramid=name == "scenes")
        meta = load_flow_weights(nets[name], name)
        assert meta["steps"] > 0 and "flowaction pretrain-flow" in meta["command"]
    assert "data.synthetic.kind=actions" in load_checkpoint(shipped_flow_weights("actions"))["meta"]["command"]
    assert "--kind scenes" in load_checkpoint(shipped_flow_weights("scenes"))["meta"]["command"]
    triplet = torch.rand(1, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        flows = {name: net(triplet) for name, net in nets.items()}
    assert not torch.allclose(flows["default"], flows["actions"])
    assert not torch.allclose(flows["actions"], flows["scenes"])
    # a run starts from one by name
    assert from_dict({}, ["model.flow_init=actions"]).model.flow_init == "actions"


def test_the_shipped_scene_network_needs_the_pyramid_and_says_so():
    with pytest.raises(ValueError, match="with the search at every level.*set model.flow_pyramid=true"):
        load_flow_weights(FlowNet(width=16), "scenes")


def test_pretrain_flow_on_a_folder_of_videos(tmp_path):
    from test_prepare import write_video

    for label, seed in (("walk", 0), ("wave", 10)):
        for i in range(3):
            write_video(tmp_path / "videos" / label / f"v{i}.mp4", 20, seed=seed + i)
    out = tmp_path / "pre"
    assert main(["pretrain-flow", "--videos", str(tmp_path / "videos"), "--out", str(out), "--steps", "4",
                 "--eval-every", "2", "--no-progress", "optim.batch_size=4", "model.flow_width=8", "threads=1"]) == 0
    assert (out / "cache" / "index.json").is_file()  # the videos were prepared once into OUT/cache
    val = [r for r in _rows(out) if r["split"] == "val"]
    assert len(val) == 2 and float(val[-1]["val_photometric"]) > 0
    assert "epe" not in val[-1] or val[-1]["epe"] == ""  # real videos carry no ground truth
    assert load_checkpoint(out / "flownet.pt")["meta"]["steps"] == 4


def test_pretrain_flow_on_a_flat_folder_of_unlabeled_clips_and_a_joint_run_starts_from_it(tmp_path):
    from test_prepare import write_video

    # the case the command exists for: clips in one folder, no classes (and one more a level down)
    for i in range(2):
        write_video(tmp_path / "clips" / f"clip{i}.mp4", 20, seed=i)
    write_video(tmp_path / "clips" / "more" / "clip2.mp4", 20, seed=2)
    out = tmp_path / "pre"
    assert main(["pretrain-flow", "--videos", str(tmp_path / "clips"), "--out", str(out), "--steps", "2",
                 "--eval-every", "1", "--no-progress", "optim.batch_size=2", "model.flow_width=8", "threads=1"]) == 0
    index = json.loads((out / "cache" / "index.json").read_text())
    assert sorted(v["id"] for v in index["videos"]) == ["clip0.mp4", "clip1.mp4", "more/clip2.mp4"]
    saved = load_checkpoint(out / "flownet.pt")["model"]
    cfg = from_dict({}, TINY + [f"model.flow_init={out / 'flownet.pt'}", "optim.steps=1", "optim.lr=1e-12",
                                f"data.synthetic_dir={tmp_path / 'tiny'}", "threads=1"])
    fit(cfg, open_data(cfg, tmp_path), tmp_path / "run", progress=False, log=lambda *_: None)
    state = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert torch.allclose(state["flow_net.stem.weight"], saved["stem.weight"], atol=1e-6)


def test_pretrain_flow_continues_from_flow_init(tmp_path):
    first = tmp_path / "first"
    common = ["--eval-every", "1", "--no-progress", *DATA, f"data.synthetic_dir={tmp_path / 'data'}"]
    assert main(["pretrain-flow", "--out", str(first), "--steps", "2", *common]) == 0
    source = load_checkpoint(first / "flownet.pt")["model"]
    # a step at a vanishing learning rate: the continued network is still the one it started from
    second = tmp_path / "second"
    assert main(["pretrain-flow", "--out", str(second), "--steps", "1", *common, "optim.lr=1e-12",
                 f"model.flow_init={first / 'flownet.pt'}", "model.flow_refine=true"]) == 0
    continued = load_checkpoint(second / "flownet.pt")
    assert continued["flow_refine"] is True
    for key, value in source.items():
        assert torch.allclose(continued["model"][key], value, atol=1e-6), key
    # while a fresh network of the same seed is not
    fresh = tmp_path / "fresh"
    assert main(["pretrain-flow", "--out", str(fresh), "--steps", "1", *common, "optim.lr=1e-12"]) == 0
    assert not torch.allclose(load_checkpoint(fresh / "flownet.pt")["model"]["stem.weight"], source["stem.weight"])


def test_data_mix_adds_the_training_clips_of_every_named_cache(tmp_path):
    from flowaction.data.actions import ActionSpec
    from flowaction.data.clips import ClipDataset, ClipSpec
    from flowaction.data.generate import synthetic_cache
    from flowaction.data.scenes import SceneSpec
    from flowaction.engine.loaders import jitter_spec, triplet_loader

    scenes = synthetic_cache(tmp_path / "scenes", SceneSpec(size=32, num_frames=4), {"train": 5, "val": 1}, 0, progress=False)
    acts = synthetic_cache(tmp_path / "acts", ActionSpec(size=32, num_frames=4, num_classes=2), {"train": 3}, 0,
                           progress=False)
    small = synthetic_cache(tmp_path / "small", SceneSpec(size=16, num_frames=4), {"train": 2}, 0, progress=False)
    cfg = from_dict({}, ["data.crop=24", f"data.mix={acts.root}"])
    loader = triplet_loader(cfg, scenes, "train", 4)
    assert len(loader.dataset) == 5 + 6
    # an item past the first source's clips is the mixed cache's own clip, drawn as it would be alone
    alone = ClipDataset(acts, "train", "train", ClipSpec(3, 1, 24, 1), jitter_spec(cfg), seed=cfg.seed)
    assert torch.equal(loader.dataset[(2, 5 + 4)]["frames"], alone[(2, 4)]["frames"])
    assert loader.dataset[(2, 5 + 4)]["frames"].shape == (1, 3, 24, 24)
    assert sum(1 for _ in loader) == len(loader.dataset) // 4  # whole batches from both sources
    with pytest.raises(ValueError, match=r"data.crop=24 exceeds the frames of .*small \(16 x 16\)"):
        triplet_loader(from_dict({}, ["data.crop=24", f"data.mix={small.root}"]), scenes, "train", 4)
    with pytest.raises(ValueError, match="has no 'val' clips"):
        triplet_loader(from_dict({}, ["data.crop=24", f"data.mix={acts.root}"]), scenes, "val", 4)


def test_pretrain_flow_trains_with_the_occlusion_and_multiscale_losses_it_is_given(tmp_path):
    def weights_after(name, *switches):
        out = tmp_path / name
        assert main(["pretrain-flow", "--out", str(out), "--steps", "3", "--eval-every", "3", "--no-progress", *DATA,
                     f"data.synthetic_dir={tmp_path / 'data'}", "model.flow_pyramid=true", *switches]) == 0
        return load_checkpoint(out / "flownet.pt")["model"]["predict1.weight"]

    plain = weights_after("plain")
    assert torch.equal(plain, weights_after("again"))  # the same run, the same weights
    # each switch changes the loss the network trains on (they were once accepted and ignored)
    assert not torch.equal(plain, weights_after("occlusion", "loss.occlusion=true"))
    assert not torch.equal(plain, weights_after("multiscale", "loss.multiscale=true"))

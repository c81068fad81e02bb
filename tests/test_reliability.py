"""Results that can be trusted and folders that are not shared by accident."""
import numpy as np
import pytest
import torch

from flowaction.cli import main
from flowaction.engine.evaluate import EvalResult, video_scores
from flowaction.commands.rundir import run_lock


def test_mean_class_accuracy_is_reported_beside_overall_accuracy():
    # three videos of class 0, all right; one of class 1, wrong: overall 0.75, per class (1 + 0) / 2
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    result = EvalResult(losses={}, probs=probs, labels=np.array([0, 0, 0, 1]), videos=np.arange(4))
    scores = video_scores(result, 2)
    assert scores["video_accuracy"] == 0.75 and scores["mean_class_accuracy"] == 0.5
    # a class without test videos is left out of the mean, not counted as 0
    scores = video_scores(result, 3)
    assert scores["per_class"][2] is None and scores["mean_class_accuracy"] == 0.5


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with run_lock(out):
        assert main(["train", "--out", str(out), "model.depth=10"]) == 2
        error = capsys.readouterr().err
        assert "in use by another flowaction run (pid" in error
        assert main(["prepare", "folder", "--root", str(tmp_path), "--out", str(out)]) == 2
    # released at the end: the folder can be used again (the lock file is the tool's own)
    with run_lock(out):
        pass
    assert [p.name for p in out.iterdir()] == [".flowaction.lock"]


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("flowaction ")


def _tiny_cache(tmp_path):
    from flowaction.config import from_dict
    from flowaction.data.source import open_data

    overrides = ["model.depth=10", "model.flow_width=8", "data.crop=32", "data.num_frames=7",
                 "data.synthetic.num_frames=7", "data.synthetic.size=36", "data.synthetic.num_classes=4",
                 "data.synthetic.train_per_class=2", "data.synthetic.val_per_class=1",
                 "data.synthetic.test_per_class=1", "optim.epochs=1", "optim.batch_size=4",
                 f"data.synthetic_dir={tmp_path / 'data'}"]
    return overrides, open_data(from_dict({}, overrides), tmp_path)


@pytest.mark.parametrize("model_input", ["learned", "frames", "learned+frames"])
def test_init_from_a_hara_resnet_checkpoint_adapts_the_first_layer(tmp_path, model_input):
    import json

    import torch

    from flowaction.config import from_dict
    from flowaction.models.resnet3d import resnet3d
    from flowaction.models.build import build_model
    from flowaction.engine.fit import fit

    torch.manual_seed(1)
    hara = resnet3d(10, in_channels=3, num_classes=400, shortcut="B")
    # their layout: DataParallel's "module." prefix, an arch name, an optimizer entry
    torch.save({"epoch": 200, "arch": "resnet-10", "state_dict": {f"module.{k}": v for k, v in hara.state_dict().items()},
                "optimizer": {}}, tmp_path / "hara.pth")
    overrides, cache = _tiny_cache(tmp_path)
    cfg = from_dict({}, overrides + [f"model.init={tmp_path / 'hara.pth'}", f"model.input={model_input}",
                                     "optim.lr=1e-12", "augment.noise_std=0"])
    logged = []
    fit(cfg, cache, tmp_path / "run", progress=False, log=logged.append)
    report = json.loads((tmp_path / "run" / "init_report.json").read_text())
    assert any("initialised from" in line and "left fresh" in line for line in logged)
    assert "action_net.fc.weight" in report["fresh"] and "action_net.fc.weight (400, 512)" in report["mismatched"][0]
    assert report["adapted"] and "3 RGB channels" in report["adapted"][0]
    from flowaction.checkpoint import load_checkpoint

    weights = load_checkpoint(tmp_path / "run" / "last.pt")["model"]  # lr 1e-12: as initialised
    rgb = hara.conv1.weight.detach()
    first = weights["action_net.conv1.weight"]
    gray, mean = rgb.sum(1), rgb.mean(1)
    expected = {"learned": [mean, mean], "frames": [gray], "learned+frames": [mean, mean, gray]}[model_input]
    for channel, want in enumerate(expected):
        torch.testing.assert_close(first[:, channel], want, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(weights["action_net.layer2.0.conv1.weight"], hara.layer2[0].conv1.weight.detach(),
                               atol=1e-6, rtol=1e-4)


def test_init_from_a_flowaction_checkpoint_of_another_class_count_and_clear_errors(tmp_path):
    import torch

    from flowaction.checkpoint import save_checkpoint
    from flowaction.config import from_dict, to_dict
    from flowaction.models.weights import initialise_from
    from flowaction.models.build import build_model

    overrides, _ = _tiny_cache(tmp_path)
    cfg = from_dict({}, overrides)
    other = build_model(cfg, 10)
    save_checkpoint(tmp_path / "ten.pt", {"config": to_dict(cfg), "classes": list("abcdefghij"),
                                          "model": other.state_dict()})
    model = build_model(cfg, 4)
    report = initialise_from(model, tmp_path / "ten.pt", "learned")
    assert report["kind"] == "flowaction" and set(report["fresh"]) == {"action_net.fc.weight", "action_net.fc.bias"}
    assert torch.equal(model.flow_net.stem.weight, other.flow_net.stem.weight)
    deeper = build_model(from_dict({}, overrides + ["model.depth=18"]), 4)
    torch.save({"state_dict": {"conv9.weight": torch.zeros(3)}}, tmp_path / "foreign.pth")
    with pytest.raises(ValueError, match="no weight of .* fits this model"):
        initialise_from(deeper, tmp_path / "foreign.pth", "learned")
    (tmp_path / "junk.pth").write_bytes(b"junk" * 10)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        initialise_from(model, tmp_path / "junk.pth", "learned")


def test_bad_arguments_are_one_clear_line_and_exit_code_2(tmp_path, capsys):
    out = str(tmp_path / "out")
    cases = [
        ["train", "--out", out, "optim.lr=abc"],  # wrong type
        ["train", "--out", out, "optim.epochs=-1"],  # out of range
        ["train", "--out", out, "data.crop=1000"],  # larger than the frames
        ["train", "--out", out, "model.input=frames", "optim.flow_pretrain_epochs=2"],  # conflicting
        ["train", "--out", out, "model.input=dis", "model.flow_init=default"],  # conflicting
        ["train", "--out", out, "optim.amp=fp8"],  # not a choice
        ["train", "--out", out, "optim.adam=fast"],  # not a choice
        ["train", "--out", out, "optim.channels_last=maybe"],  # not a boolean
        ["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path), "--out", out],
        ["predict", str(tmp_path / "none.mp4"), "--checkpoint", str(tmp_path / "none.pt")],
        ["predict", str(tmp_path), "--checkpoint", str(tmp_path / "none.pt"), "--top-k", "0"],
        ["prepare", "ucf101", "--root", str(tmp_path / "missing"), "--out", out],
        ["ablate", "--runs", "learned,nosuch", "--seeds", "1", "--out", out],
        ["pretrain-flow", "--out", out, "--data", str(tmp_path / "a"), "--videos", str(tmp_path / "b")],
        ["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "m.onnx")],
        ["demo", "--out", out, "--preset", "nosuch"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and error.startswith("flowaction "), (argv, error)
        assert "Traceback" not in error


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno

    import torch

    from flowaction.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "config": {}, "classes": ["a"]})
    before = path.read_bytes()
    real_save = torch.save

    def full_disk(obj, target, *args, **kwargs):
        with open(target, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left on device.*previous last.pt, if any, is intact"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "config": {}, "classes": ["a"]})
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before and torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no half-written file left behind


def test_weights_of_another_model_or_class_count_are_refused_naming_what_differs(tmp_path):
    from flowaction.checkpoint import load_weights
    from flowaction.config import load_config
    from flowaction.models.build import build_model

    cfg = load_config(None, ["model.depth=10", "model.flow_width=8"])
    eight = build_model(cfg, 8)
    before = {k: v.clone() for k, v in eight.state_dict().items()}
    ten = build_model(cfg, 10).state_dict()
    with pytest.raises(ValueError, match=r"ckpt\.pt holds weights of another model: it classifies 10 classes, "
                                         r"the model 8\."):
        load_weights(eight, ten, tmp_path / "ckpt.pt")
    deeper = build_model(load_config(None, ["model.depth=18", "model.flow_width=8"]), 8).state_dict()
    with pytest.raises(ValueError, match=r"weight\(s\) the model does not have \(e\.g\. action_net\.layer"):
        load_weights(eight, deeper, "deeper.pt")
    wider = build_model(load_config(None, ["model.depth=10", "model.flow_width=16"]), 8).state_dict()
    with pytest.raises(ValueError, match=r"of another shape \(e\.g\. flow_net\.\S+: \(16, "):
        load_weights(eight, wider, "wider.pt")
    frames = build_model(load_config(None, ["model.depth=10", "model.input=frames"]), 8).state_dict()
    with pytest.raises(ValueError, match=r"weight\(s\) of the model missing from it \(e\.g\. flow_net\."):
        load_weights(eight, frames, "frames.pt")
    # nothing was loaded by a refused call; a fitting one loads strictly
    assert all(torch.equal(before[k], v) for k, v in eight.state_dict().items())
    twin = build_model(cfg, 8)
    load_weights(twin, eight.state_dict(), "same.pt")
    assert all(torch.equal(eight.state_dict()[k], v) for k, v in twin.state_dict().items())


def test_resume_with_another_model_depth_is_one_clear_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["demo", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    code = main(["train", "--out", str(out), "--resume", "--no-progress", "model.depth=18", "optim.epochs=3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "last.pt holds weights of another model" in err and "Traceback" not in err


def test_a_checkpoint_written_before_the_cpu_section_and_the_loss_type_merge_still_loads(tmp_path):
    from flowaction.checkpoint import save_checkpoint
    from flowaction.config import from_dict, to_dict
    from flowaction.inference.loaded import load_model
    from flowaction.models.build import build_model, load_model_checkpoint

    cfg = from_dict({}, ["model.depth=10", "model.flow_width=8", "data.crop=32", "cpu.trim_kernels=false"])
    model = build_model(cfg, 3)
    old_config = to_dict(cfg)
    del old_config["cpu"]  # checkpoints of earlier versions have no cpu section
    save_checkpoint(tmp_path / "old.pt", {"config": old_config, "classes": ["a", "b", "c"], "model": model.state_dict(),
                                          "frame_size": [36, 36]})
    loaded = load_model_checkpoint(tmp_path / "old.pt")
    assert loaded.cfg.cpu.trim_kernels and loaded.cfg.loss.photometric == cfg.loss.photometric
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    clips = (torch.rand(1, 16, 32, 32) * 255).round().to(torch.uint8).numpy()
    inference = load_model(tmp_path / "old.pt")  # with the speed-ups applied: the same logits
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(clips).float()[:, None] / 255.0)[0]
    torch.testing.assert_close(torch.from_numpy(inference.logits(clips)), expected, rtol=1e-4, atol=1e-5)

"""A newcomer's first hour: runs never silently replaced, splits that exist, data sanity, messages."""
import hashlib
import json

import numpy as np
import pytest
from test_prepare import write_video

from flowaction.cli import main
from flowaction.data.cache import ClipCache
from flowaction.data.prepare import prepare
from flowaction.data.splits import SplitError
from flowaction.engine.evaluate import EvalResult, video_scores
from flowaction.data.source import open_data
from flowaction.engine.loaders import check_training_data

TINY = ["model.depth=10", "model.flow_width=8", "data.crop=32", "data.num_frames=7", "data.synthetic.num_frames=7",
        "data.synthetic.size=36", "data.synthetic.num_classes=4", "data.synthetic.train_per_class=2",
        "data.synthetic.val_per_class=1", "data.synthetic.test_per_class=1", "optim.epochs=1", "optim.batch_size=8"]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shared") / "data"


def _train(out, data_dir, *extra):
    return main(["train", "--out", str(out), *TINY, f"data.synthetic_dir={data_dir}", *extra])


def test_second_train_into_a_run_is_refused_and_leaves_it_intact(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert _train(out, data_dir) == 0
    before = {name: _digest(out / name) for name in ("best.pt", "metrics.csv", "config.yaml")}
    assert _train(out, data_dir, "optim.lr=0.01") == 2
    error = capsys.readouterr().err
    assert "already holds a run" in error and "--resume" in error and "--overwrite" in error
    assert {name: _digest(out / name) for name in before} == before


def test_overwrite_moves_the_old_run_aside_or_deletes_it(tmp_path, data_dir):
    out = tmp_path / "run"
    assert _train(out, data_dir) == 0
    old_best = _digest(out / "best.pt")
    (out / "my-notes.txt").write_text("mine")
    assert main(["train", "--out", str(out), "--overwrite", *TINY, f"data.synthetic_dir={data_dir}"]) == 0
    (aside,) = out.glob("replaced-*")
    assert _digest(aside / "best.pt") == old_best and (aside / "metrics.csv").is_file()
    assert (out / "best.pt").is_file() and (out / "my-notes.txt").read_text() == "mine"  # foreign file untouched
    # the new run's metrics.csv holds only its own rows (header + train + val of one epoch)
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    assert main(["train", "--out", str(out), "--overwrite", "--delete-old", *TINY,
                 f"data.synthetic_dir={data_dir}"]) == 0
    assert len(list(out.glob("replaced-*"))) == 1 and (out / "my-notes.txt").is_file()


def test_resume_on_a_folder_without_a_run_writes_nothing(tmp_path, capsys):
    missing = tmp_path / "nothere"
    assert main(["train", "--out", str(missing), "--resume"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not missing.exists() and list(tmp_path.iterdir()) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["demo", "--out", str(empty), "--resume"]) == 2
    assert "no run to resume" in capsys.readouterr().err and list(empty.iterdir()) == []


def test_resuming_a_motion_demo_with_the_actions_default_names_the_preset_and_touches_nothing(tmp_path, capsys):
    from flowaction.config import load_config, preset_path, save_config

    out = tmp_path / "demo"
    out.mkdir()
    save_config(load_config(preset_path("motion")), out / "config.yaml")
    (out / "last.pt").write_bytes(b"an earlier run's checkpoint")
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir())
    assert main(["demo", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "motion benchmark, not actions" in err and "--preset motion" in err
    assert sorted((p.name, p.read_bytes()) for p in out.iterdir()) == before


def test_resume_takes_the_runs_own_config_and_reports_changes(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert _train(out, data_dir) == 0
    capsys.readouterr()
    # no TINY overrides here: the run's config.yaml supplies them (the defaults would build a ResNet-18)
    assert main(["train", "--out", str(out), "--resume", "optim.epochs=2"]) == 0
    printed = capsys.readouterr().out
    assert "with its own config.yaml" in printed and "optim.epochs 1 -> 2" in printed
    assert "resumed from" in printed
    saved = (out / "config.yaml").read_text()
    assert "depth: 10" in saved and "epochs: 2" in saved
    assert not (out / "data").exists()  # the run's data (data.synthetic_dir) was reused, not regenerated here


@pytest.fixture(scope="module")
def folder_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for c, name in enumerate(("jump", "wave", "clap")):
        for i in range(5):
            write_video(root / name / f"{name}{i}.avi", 10, seed=10 * c + i, size=(36, 40))
    return root


def test_folder_cache_with_a_test_split_and_eval_picks_the_split(folder_videos, tmp_path, capsys):
    plain = tmp_path / "plain"
    prepare("folder", folder_videos, plain, size=36, val_fraction=0.2, progress=False)
    assert ClipCache.open(plain).splits() == ["train", "val"]
    carved = tmp_path / "carved"
    report = prepare("folder", folder_videos, carved, size=36, val_fraction=0.25, test_fraction=0.2, progress=False)
    assert report["videos"] == {"test": 3, "train": 9, "val": 3}  # 1 test, then 1 of the 4 left to val, per class
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--data", str(plain), "model.depth=10", "model.flow_width=8",
                 "data.crop=32", "data.num_frames=7", "optim.epochs=1", "data.test_clips=1"]) == 0
    capsys.readouterr()
    # no --split: val for the cache without test, test for the one with it
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--data", str(plain), "--out", str(tmp_path / "e1")]) == 0
    printed = capsys.readouterr().out
    assert "scoring split 'val' (the cache has no test split)" in printed
    # best.pt was chosen on val: scoring val again is optimistic, and the output says so
    assert "selected on split 'val'" in printed and "mean class accuracy" in printed
    assert json.loads((tmp_path / "e1" / "eval.json").read_text())["split"] == "val"
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--data", str(carved), "--out", str(tmp_path / "e2")]) == 0
    assert json.loads((tmp_path / "e2" / "eval.json").read_text())["split"] == "test"
    assert "selected on split" not in capsys.readouterr().out
    # 3 classes: top-5 would be 1 by construction, so it is not reported
    assert json.loads((tmp_path / "e2" / "eval.json").read_text())["top5_video_accuracy"] is None


def test_one_class_is_refused_at_prepare(tmp_path, capsys):
    root = tmp_path / "videos"
    for i in range(3):
        write_video(root / "jump" / f"j{i}.avi", 10, seed=i, size=(36, 40))
    with pytest.raises(SplitError, match="needs two classes or more"):
        prepare("folder", root, tmp_path / "cache", size=36, progress=False)
    assert main(["prepare", "folder", "--root", str(root), "--out", str(tmp_path / "c2"), "--no-progress"]) == 2
    assert "only 'jump'" in capsys.readouterr().err


def test_one_class_or_a_class_without_training_videos_is_refused_at_train(tmp_path):
    from flowaction.config import from_dict

    cache = open_data(from_dict({}, TINY), tmp_path)
    train = cache.split("train")
    check_training_data(cache, train, "train")  # every class present: fine
    without_first = [i for i in train if cache.videos[i]["label"] != 0]
    with pytest.raises(ValueError, match=f"class\\(es\\) {cache.classes[0]} "):
        check_training_data(cache, without_first, "train")
    cache.index["classes"] = cache.classes[:1]
    with pytest.raises(ValueError, match="needs two classes or more"):
        check_training_data(cache, train, "train")


def test_top5_only_with_more_than_five_classes():
    def scores(num_classes):
        probs = np.full((4, num_classes), 1.0 / num_classes)
        result = EvalResult(losses={}, probs=probs, labels=np.arange(4) % num_classes, videos=np.arange(4))
        return video_scores(result, num_classes)

    assert scores(3)["top5_video_accuracy"] is None and scores(5)["top5_video_accuracy"] is None
    assert isinstance(scores(8)["top5_video_accuracy"], float)


def test_typos_get_the_nearest_name(tmp_path, capsys):
    for argv, expected in (
        (["trian", "--out", "x"], "did you mean train?"),
        (["flow", "v.avi", "--out", "x", "--method", "dsi"], "did you mean dis?"),
        (["train", "--out", str(tmp_path / "r"), "--overwirte"], "--overwirte: did you mean --overwrite?"),
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert expected in capsys.readouterr().err, argv
    assert not (tmp_path / "r").exists()


def test_missing_paths_say_they_do_not_exist(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--config", str(tmp_path / "nope.yaml")]) == 2
    assert f"config file {tmp_path / 'nope.yaml'} does not exist" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", "x.pt", "--data", str(tmp_path / "mien"), "--out", str(tmp_path / "e")]) == 2
    assert f"{tmp_path / 'mien'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_every_help_shows_the_defaults(capsys):
    for command in ("train", "eval", "demo", "prepare", "flow", "ablate", "pretrain-flow"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "(default:" in capsys.readouterr().out, command


def test_prepare_workers_zero_means_one_per_core(folder_videos, tmp_path, monkeypatch):
    import flowaction.data.prepare as module

    seen = {}
    real = module.os.cpu_count
    monkeypatch.setattr(module.os, "cpu_count", lambda: seen.setdefault("called", True) and real())
    report = prepare("folder", folder_videos, tmp_path / "cache", size=36, workers=0, progress=False)
    assert seen.get("called") and report["workers"] == (real() or 1)


@pytest.fixture(scope="module")
def folder_cache64(folder_videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache64") / "cache"
    prepare("folder", folder_videos, out, size=64, val_fraction=0.2, test_fraction=0.2, progress=False)
    return out


@pytest.fixture(scope="module")
def folder_cache128(folder_videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache128") / "cache"
    prepare("folder", folder_videos, out, size=128, val_fraction=0.2, test_fraction=0.2, progress=False)
    return out


@pytest.mark.parametrize("preset", ["ucf101", "hmdb51", "own-videos", "ucf101-112", "hmdb51-112"])
def test_presets_load_and_train_a_step(preset, request, tmp_path):
    from flowaction.config import load_config, preset_path
    from flowaction.engine.fit import fit

    path = preset_path(preset)  # shipped in the package, also to a pip install
    cfg = load_config(path)
    assert cfg.model.input == "learned" and cfg.data.num_frames == 16
    if preset.endswith("-112"):  # Hara et al.'s resolution, from the shipped flow network
        assert cfg.data.crop == 112 and cfg.model.flow_init == "default" and cfg.model.depth == 18
    cache = request.getfixturevalue("folder_cache128" if preset.endswith("-112") else "folder_cache64")
    # only what a 2-core test machine and a 15-video cache need changes: batch, steps, workers
    small = load_config(path, [f"data.cache={cache}", "optim.batch_size=2", "optim.steps=1",
                               "optim.epochs=1", "data.num_workers=0", "data.test_clips=1"])
    summary = fit(small, ClipCache.open(cache), tmp_path / "run", progress=False, log=lambda *_: None)
    assert summary["steps"] == 1 and (tmp_path / "run" / "best.pt").is_file()


def test_the_actions_demo_preset_runs_end_to_end_from_the_shipped_scene_network(tmp_path):
    from flowaction.config import load_config, preset_path

    cfg = load_config(preset_path("actions"))
    assert (cfg.model.flow_init, cfg.model.flow_pyramid, cfg.model.flow_input_scale) == ("scenes", True, 2)
    out = tmp_path / "demo"
    # the preset as it ships, on one clip per class and split, for one step of two clips
    small = ["data.synthetic.train_per_class=1", "data.synthetic.val_per_class=1", "data.synthetic.test_per_class=1",
             "optim.epochs=1", "optim.batch_size=2", "optim.steps=1"]
    assert main(["demo", "--out", str(out), "--no-progress", *small]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["flow_init"] == "scenes" and metrics["train_steps"] == 1 and metrics["num_classes"] == 14
    assert 0 < metrics["flow_moving_epe"] < metrics["zero_flow_moving_epe"]  # the shipped network's flow, not zero


def test_auto_resume_starts_a_run_then_continues_it(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--auto-resume", *TINY, f"data.synthetic_dir={data_dir}"]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--auto-resume", "optim.epochs=2"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 4


def test_every_option_of_every_command_has_help_text():
    import argparse

    from flowaction.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {action.option_strings[0] if action.option_strings else action.dest}")
    assert len(commands.choices) >= 10
    assert not missing, f"options without help text: {', '.join(missing)}"

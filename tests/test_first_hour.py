"""A researcher's own small data set: the stumbles of the first hour, each on tiny generated clips."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from test_prepare import write_video

import flowaction
from flowaction.checkpoint import read_torch_file
from flowaction.cli import main, parse_arguments
from flowaction.config import PRESETS, ConfigError, load_config
from flowaction.data.cache import ClipCache
from flowaction.engine.device import resolve_device
from flowaction.engine.fit import is_better

TINY = ["model.depth=10", "model.flow_width=8", "data.crop=32", "data.num_frames=7", "data.synthetic.num_frames=7",
        "data.synthetic.size=36", "data.synthetic.num_classes=4", "data.synthetic.train_per_class=2",
        "data.synthetic.val_per_class=1", "data.synthetic.test_per_class=1", "optim.epochs=1", "optim.batch_size=8"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("first-hour") / "data"


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    """A finished tiny run (its best.pt) on the generated benchmark."""
    out = tmp_path_factory.mktemp("first-hour-run") / "run"
    assert main(["train", "--out", str(out), "--no-progress", *TINY, f"data.synthetic_dir={data_dir}"]) == 0
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two clips with the same file name in two folders, and an undecodable file."""
    root = tmp_path_factory.mktemp("first-hour-videos")
    write_video(root / "a" / "clip.mp4", 24, seed=1, size=(36, 48))
    write_video(root / "b" / "clip.mp4", 24, seed=2, size=(36, 48))
    (root / "broken.mp4").write_bytes(b"not a video")
    return root


def test_pretrain_flow_with_fewer_training_clips_than_a_batch_finishes(data_dir, tmp_path):
    # 8 training clips against a batch of 64: the loader's whole batches would be none, the loop endless
    command = [sys.executable, "-m", "flowaction", "pretrain-flow", "--out", str(tmp_path / "pf"), "--steps", "2",
               "--eval-every", "2", "--no-progress", *TINY, f"data.synthetic_dir={data_dir}", "optim.batch_size=64"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fewer than optim.batch_size=64: each step takes one triplet of every clip (8 per step)" in done.stdout
    assert "data: 8 training clips, 4 validation clips" in done.stdout  # the start-up summary
    assert read_torch_file(tmp_path / "pf" / "flownet.pt")["meta"]["steps"] == 2


def test_best_breaks_accuracy_ties_by_validation_loss_and_a_small_split_is_said(run, data_dir, tmp_path, capsys):
    best = {"val_accuracy": 1.0, "val_loss": 0.5}
    assert is_better({"accuracy": 1.0, "total": 0.4}, best)
    assert not is_better({"accuracy": 1.0, "total": 0.6}, best)
    assert is_better({"accuracy": 1.0, "total": 9.0}, {"val_accuracy": 0.5, "val_loss": 0.1})
    assert is_better({"accuracy": 1.0, "total": 9.0}, {"val_accuracy": 1.0})  # a checkpoint from before val_loss
    assert not is_better({"accuracy": 0.5, "total": 0.1}, best)
    assert main(["train", "--out", str(tmp_path / "r"), "--no-progress", *TINY, f"data.synthetic_dir={data_dir}",
                 "optim.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "warning: the 'val' split has 4 clip(s)" in out and "ties going to the lower validation loss" in out
    assert "data: 4 classes (" in out  # the classes are named
    best = read_torch_file(tmp_path / "r" / "best.pt")["best"]
    header, *rows = [line.split(",") for line in (tmp_path / "r" / "metrics.csv").read_text().splitlines()]
    val = [row for row in (dict(zip(header, values)) for values in rows) if row["split"] == "val"]
    top = max(float(row["accuracy"]) for row in val)
    losses = {int(row["epoch"]): float(row["total"]) for row in val if float(row["accuracy"]) == top}
    assert best["epoch"] == min(losses, key=losses.get)  # of the epochs at the top accuracy, the lowest loss


@NO_CUDA
def test_cuda_on_a_machine_without_it_is_one_line(run, videos, data_dir, capsys):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="not a device name"):
        resolve_device("gpu")
    for command in (["predict", str(videos / "a"), "--checkpoint", str(run / "best.pt"), "--device", "cuda"],
                    ["eval", "--checkpoint", str(run / "best.pt"), "--data", str(data_dir), "--out",
                     str(run / "e"), "--device", "cuda"]):
        assert main(command) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and "no CUDA GPU" in error[0] and "Traceback" not in error[0]
    with pytest.raises(ValueError, match="no CUDA GPU"):
        flowaction.Recognizer.from_checkpoint(run / "best.pt", device="cuda")


def test_a_run_that_failed_to_start_does_not_block_its_corrected_command(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--no-progress", *TINY, f"data.synthetic_dir={data_dir}"]
    assert main([*args, "model.flow_init=nope.pt"]) == 2
    assert "no checkpoint at nope.pt" in capsys.readouterr().err and (out / "config.yaml").is_file()
    assert main(["train", "--out", str(out), "--resume"]) == 2
    assert "its run never started" in capsys.readouterr().err
    assert main(args) == 0  # the corrected command, without --overwrite
    said = capsys.readouterr().out
    assert "of a run that never started" in said and (out / "best.pt").is_file()
    assert main(args) == 2  # a run that has started is protected as before
    assert "already holds a run" in capsys.readouterr().err


def test_data_that_is_not_a_cache_gets_advice_that_fits(videos, run, data_dir):
    with pytest.raises(FileNotFoundError, match="holds videos, not a clip cache: prepare them once"):
        ClipCache.open(videos)
    with pytest.raises(FileNotFoundError, match="is a video file, not a clip cache"):
        ClipCache.open(videos / "a" / "clip.mp4")
    with pytest.raises(FileNotFoundError, match="is the shards folder inside the cache"):
        ClipCache.open(data_dir / "shards")
    (videos.parent / "half").mkdir(exist_ok=True)
    (videos.parent / "half" / "shards").mkdir(exist_ok=True)
    with pytest.raises(FileNotFoundError, match="did not finish; run `flowaction prepare` again"):
        ClipCache.open(videos.parent / "half")


def test_predict_keeps_same_named_videos_apart_skips_missing_paths_and_checks_json_first(run, videos, tmp_path,
                                                                                        capsys):
    flows, report = tmp_path / "flows", tmp_path / "out.json"
    assert main(["predict", str(videos / "a" / "clip.mp4"), str(videos / "b" / "clip.mp4"), str(tmp_path / "nope.mp4"),
                 str(videos / "broken.mp4"), "--checkpoint", str(run / "best.pt"), "--save-flow", str(flows),
                 "--json", str(report), "--clips", "1"]) == 0
    captured = capsys.readouterr()
    assert "nope.mp4: does not exist" in captured.err and "broken.mp4: cannot decode video" in captured.err
    result = json.loads(report.read_text())
    pictures = [set(video["flow_pictures"]) for video in result["videos"]]
    assert len(pictures) == 2 and not pictures[0] & pictures[1]  # one picture per video, none replaced
    assert {p.name for p in flows.iterdir()} == {"a_clip_flow.png", "a_clip_flow.gif", "b_clip_flow.png",
                                                 "b_clip_flow.gif"}
    assert {item["video"] for item in result["failed"]} == {str(tmp_path / "nope.mp4"), str(videos / "broken.mp4")}
    # a second run says what it replaces
    assert main(["predict", str(videos / "a"), str(videos / "b"), "--checkpoint", str(run / "best.pt"),
                 "--save-flow", str(flows), "--clips", "1"]) == 0
    assert "--save-flow: replacing" in capsys.readouterr().out
    # an unwritable --json is refused before any video is classified
    (tmp_path / "a-file").write_text("")
    assert main(["predict", str(videos / "a"), "--checkpoint", str(run / "best.pt"),
                 "--json", str(tmp_path / "a-file" / "out.json")]) == 2
    captured = capsys.readouterr()
    assert "cannot write the --json file" in captured.err and "clip.mp4:" not in captured.out


def test_ctrl_c_during_predict_keeps_the_videos_done(run, videos, tmp_path, monkeypatch):
    import flowaction.commands.predict as predict_command

    real, calls = predict_command.predict_video, []

    def interrupted_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_command, "predict_video", interrupted_on_the_second)
    report = tmp_path / "out.json"
    assert main(["predict", str(videos / "a"), str(videos / "b"), "--checkpoint", str(run / "best.pt"),
                 "--json", str(report), "--clips", "1"]) == 130
    result = json.loads(report.read_text())
    assert result["interrupted"] is True and [v["video"] for v in result["videos"]] == [str(videos / "a" / "clip.mp4")]


def test_export_to_an_unwritable_path_fails_before_exporting(run, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "a-file" / "m.onnx")]) == 2
    assert "cannot write the export file" in capsys.readouterr().err


def test_flow_into_a_folder_of_another_videos_flow_is_refused_or_replaced_whole(videos, tmp_path, capsys):
    out = tmp_path / "flow"
    assert main(["flow", str(videos / "a" / "clip.mp4"), "--method", "dis", "--out", str(out)]) == 0
    assert main(["flow", str(videos / "b" / "clip.mp4"), "--method", "dis", "--out", str(out), "--max-frames",
                 "10"]) == 2
    assert "holds the flow of" in capsys.readouterr().err and len(list((out / "flo" / "dis").iterdir())) == 22
    assert main(["flow", str(videos / "b" / "clip.mp4"), "--method", "dis", "--out", str(out), "--max-frames", "10",
                 "--overwrite"]) == 0
    assert "--overwrite: removed the flow of" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["video"] == str(videos / "b" / "clip.mp4") and summary["num_pairs"] == 8
    assert len(list((out / "flo" / "dis").iterdir())) == 8  # no .flo of the other video is left


def test_overrides_may_stand_between_the_options():
    args = parse_arguments(["train", "device=cpu", "--config", "tiny", "--data", "D", "--out", "X", "optim.epochs=1"])
    assert args.overrides == ["device=cpu", "optim.epochs=1"] and str(args.data) == "D"
    with pytest.raises(SystemExit):
        parse_arguments(["train", "--out", "X", "--epochs", "1"])  # an unknown option is still an error


def test_every_preset_ships_in_the_package_and_resolves_by_name(tmp_path):
    for name in PRESETS:
        assert load_config(name) is not None
    assert load_config("own-videos").model.depth == load_config("own-videos.yaml").model.depth
    with pytest.raises(FileNotFoundError, match="did you mean own-videos"):
        load_config("own-video")
    own = tmp_path / "mine.yaml"
    own.write_text("optim:\n  epoch: 2\n")  # a typo inside a file: the message names the file
    with pytest.raises(ConfigError, match=r"optim.epoch.*mine.yaml"):
        load_config(own)
    own.write_text("optim: [\n")
    with pytest.raises(ConfigError, match="mine.yaml: not valid YAML"):
        load_config(own)


def test_the_cache_frame_shape_follows_the_median_aspect_ratio_and_is_said(tmp_path, capsys):
    root = tmp_path / "videos"
    write_video(root / "a" / "0-small.mp4", 12, seed=0, size=(144, 176))  # listed first, an odd shape
    for index in range(1, 4):
        write_video(root / "a" / f"{index}.mp4", 12, seed=index, size=(68, 160))
        write_video(root / "b" / f"{index}.mp4", 12, seed=10 + index, size=(68, 160))
    assert main(["prepare", "folder", "--root", str(root), "--out", str(tmp_path / "cache"), "--size", "32",
                 "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert ClipCache.open(tmp_path / "cache").index["frame_size"] == [32, 75]  # 160 / 68 wide, not 176 / 144
    assert "frame size 32x75: short side 32 at the median aspect ratio" in said and "from 1.22 to 2.35" in said


def test_messages_read_once(run, data_dir, tmp_path, capfd):
    assert main(["stream", "--checkpoint", str(run / "best.pt"), "--source", "7"]) == 2
    error = capfd.readouterr().err.strip().splitlines()
    assert error == [error[-1]] and "no camera 7 here" in error[-1]  # OpenCV's own warnings are not shown
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((run / "best.pt").read_bytes()[:100_000])
    assert main(["eval", "--checkpoint", str(truncated), "--data", str(data_dir), "--out", str(tmp_path / "e")]) == 2
    captured = capfd.readouterr()
    assert "scoring split" not in captured.out and captured.err.rstrip().endswith(".)")  # whole sentences
    text = subprocess.run([sys.executable, "-m", "flowaction", "prepare", "--help"], capture_output=True,
                          text=True).stdout.replace("\n                       ", " ")
    assert "found near ROOT)" in text and "found near ROOT) (default" not in text  # the default said once
    assert "--out OUT             cache directory (a rerun resumes it)\n" in text  # required: no default


def test_timeline_segments_have_a_length_and_zero_is_refused(run, videos, tmp_path, capsys):
    assert main(["predict", str(videos / "a"), "--checkpoint", str(run / "best.pt"), "--timeline", "0"]) == 2
    assert "--timeline must be > 0" in capsys.readouterr().err
    report = tmp_path / "t.json"
    # 24 frames at 25 frames/s in segments of 0.44 s (11 frames): 11, 11, then the last 2 frames
    assert main(["predict", str(videos / "a"), "--checkpoint", str(run / "best.pt"), "--timeline", "0.44",
                 "--json", str(report), "--clips", "1"]) == 0
    segments = json.loads(report.read_text())["videos"][0]["timeline"]
    assert [(round(s["start_s"], 2), round(s["end_s"], 2)) for s in segments] == [(0.0, 0.44), (0.44, 0.88),
                                                                                  (0.88, 0.96)]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.endswith(tuple("0123456789")) and " s: " in line]
    assert [line.split(" s:")[0].split() for line in lines][-1] == ["0.88-", "0.96"]  # not "0.9- 1.0"
    assert main(["predict", str(videos / "a"), "--checkpoint", str(run / "best.pt"), "--timeline", "0.01"]) == 2
    assert "shorter than one frame" in capsys.readouterr().err


def test_recognizer_is_listed_by_dir():
    assert {"Recognizer", "Prediction"} <= set(dir(flowaction))

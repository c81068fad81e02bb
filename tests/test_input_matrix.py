"""Every model input through every command that takes a model, on the tiny preset.

A new model input or a new command that trains, loads or runs a model must be added to this
matrix: the two completeness tests at the end fail otherwise.
"""
import json

import pytest
from test_prepare import write_video

from flowaction.cli import build_parser, main
from flowaction.config import _CHOICES, FRAME_INPUTS, LEARNED_INPUTS, preset_path, MODEL_INPUTS

COMMANDS = ("demo", "train", "eval", "flow", "ablate", "predict", "stream", "export")
# commands that neither take a checkpoint nor build a classifier from model.input
WITHOUT_MODEL = {"prepare", "keys", "pretrain-flow", "generate"}
TINY = str(preset_path("tiny"))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 40 x 48 mpeg4 video of a moving pattern, 10 frames."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    write_video(path, 10, seed=0, size=(40, 48))
    return path


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """One tiny demo per model input, run on first use: ``input -> (run dir, exit code)``."""
    root = tmp_path_factory.mktemp("demos")
    done: dict[str, tuple] = {}

    def get(model_input: str):
        if model_input not in done:
            out = root / model_input.replace("+", "_")
            code = main(["demo", "--preset", "tiny", "--out", str(out), f"model.input={model_input}"])
            done[model_input] = (out, code)
        return done[model_input]

    return get


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("model_input", MODEL_INPUTS)
def test_every_input_through_every_command(model_input, command, demos, video, tmp_path, capsys):
    run, code = demos(model_input)
    assert code == 0
    checkpoint = run / "best.pt"
    if command == "demo":
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["model_input"] == model_input and 0.0 <= metrics["test_accuracy"] <= 1.0
        # the precision training ran in (the tiny preset keeps float32) and how many steps it took
        assert metrics["amp"] == "off" and isinstance(metrics["train_steps"], int) and metrics["train_steps"] > 0
        for name in ("curves.png", "confusion.png", "eval.json"):
            assert (run / name).is_file(), name
        # the flow pictures show the flow the model classified; a frames model has none, and says so
        # (the oracle's is the ground truth itself, which the benchmark strips already show)
        pictures = model_input not in FRAME_INPUTS + ("truth",)
        assert (run / "flows.png").is_file() == pictures
        assert metrics["flow_pictures"].startswith(str(run / "flows.png") if pictures else "none")
        # the flow the model classified (learned or OpenCV) is scored against the ground truth
        assert isinstance(metrics.get("flow_moving_epe"), float) == (model_input not in FRAME_INPUTS)
        if model_input == "truth":  # the oracle classifies the ground truth: no error at all
            assert metrics["flow_epe"] == 0.0 and metrics["flow_moving_epe"] == 0.0
        if model_input not in FRAME_INPUTS:
            for key in ("flow_epe", "zero_flow_epe", "dis_epe", "zero_flow_moving_epe", "dis_moving_epe"):
                assert isinstance(metrics[key], float), key
            # moving pixels are a subset of the valid ones, where zero flow is far from right
            assert 0 < metrics["flow_moving_pixels"] < metrics["flow_valid_pixels"]
            assert metrics["zero_flow_moving_epe"] > metrics["zero_flow_epe"] > 0
            columns = (run / "metrics.csv").read_text().splitlines()[0].split(",")
            for column in ("epe", "moving_epe", "zero_moving_epe", "dis_moving_epe"):
                assert column in columns, column
    elif command == "train":
        out = tmp_path / "train"
        assert main(["train", "--config", TINY, "--out", str(out), f"data.synthetic_dir={run / 'data'}",
                     f"model.input={model_input}"]) == 0
        assert (out / "best.pt").is_file() and (out / "metrics.csv").is_file()
    elif command == "eval":
        out = tmp_path / "eval"
        assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(run / "data"), "--split", "test",
                     "--out", str(out)]) == 0
        report = json.loads((out / "eval.json").read_text())
        # the demo's figures are what an independent `eval` of its checkpoint measures
        metrics = json.loads((run / "metrics.json").read_text())
        assert report["clip_accuracy"] == pytest.approx(metrics["test_accuracy"])
        assert report["mean_class_accuracy"] == pytest.approx(metrics["test_mean_class_accuracy"])
        if model_input not in FRAME_INPUTS:
            assert report["flow_moving_epe"] == pytest.approx(metrics["flow_moving_epe"], rel=1e-5)
    elif command == "flow":
        out = tmp_path / "flow"
        code = main(["flow", str(video), "--checkpoint", str(checkpoint), "--method", "all", "--out", str(out),
                     "--no-progress"])
        assert code == 0
        summary = json.loads((out / "summary.json").read_text())
        learned = model_input in LEARNED_INPUTS
        assert set(summary["methods"]) == ({"learned"} if learned else set()) | {"dis", "farneback"}
        assert summary["skipped"] == ([] if learned else ["learned"])
        if not learned:
            assert "skipped the learned method" in capsys.readouterr().out
        # --method learned alone: done, or refused before any work with one line naming the cause
        out = tmp_path / "learned"
        code = main(["flow", str(video), "--checkpoint", str(checkpoint), "--method", "learned", "--out", str(out),
                     "--no-progress"])
        if learned:
            assert code == 0 and (out / "flo" / "learned").is_dir()
        else:
            assert code == 2 and not out.exists()
            error = capsys.readouterr().err.strip()
            assert len(error.splitlines()) == 1
            assert f"no flow network (model.input={model_input})" in error
    elif model_input == "truth" and command in ("predict", "stream", "export"):
        # videos have no ground-truth flow: refused before any work, with one line naming the cause
        args = {"predict": ["predict", str(video)], "stream": ["stream", "--source", str(video)],
                "export": ["export", "--out", str(tmp_path / "model.onnx")]}[command]
        assert main(args + ["--checkpoint", str(checkpoint)]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "ground-truth flow (model.input=truth" in error
        assert not list(tmp_path.iterdir())
    elif command == "predict":
        out = tmp_path / "predict.json"
        assert main(["predict", str(video), "--checkpoint", str(checkpoint), "--clips", "2", "--top-k", "3",
                     "--save-flow", str(tmp_path / "flows"), "--json", str(out)]) == 0
        (result,) = json.loads(out.read_text())["videos"]
        assert len(result["top_k"]) == 3
        # the flow the model saw: learned or OpenCV; none for frames, and said so
        assert bool(result["flow_pictures"]) == (model_input not in FRAME_INPUTS)
        if model_input in FRAME_INPUTS:
            assert "computes no flow" in capsys.readouterr().out
    elif command == "stream":
        lines = tmp_path / "stream.jsonl"
        assert main(["stream", "--checkpoint", str(checkpoint), "--source", str(video), "--as-fast-as-possible",
                     "--json", str(lines)]) == 0
        records = [json.loads(line) for line in lines.read_text().splitlines()]
        assert records and all(0.0 <= r["probabilities"][0] <= 1.0 for r in records)
    elif command == "export":
        out = tmp_path / "model.onnx"
        assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
        graphs = sorted(p.name for p in tmp_path.glob("model*.onnx"))
        expected = ["model.classifier.onnx", "model.flow.onnx", "model.onnx"] if model_input in LEARNED_INPUTS \
            else ["model.onnx"]
        assert graphs == expected
        assert main(["predict", str(video), "--checkpoint", str(out), "--clips", "2"]) == 0  # the file runs
    elif command == "ablate":
        out = tmp_path / "ablate"
        assert main(["ablate", "--config", TINY, "--runs", model_input, "--seeds", "1", "--out", str(out)]) == 0
        result = json.loads((out / "runs" / model_input / "seed0" / "result.json").read_text())
        assert result["config"]["model"]["input"] == model_input
        assert f"| {model_input} | 1 |" in (out / "results.md").read_text()


def test_matrix_covers_every_input():
    assert _CHOICES["model.input"] is MODEL_INPUTS  # one list: the config checks what the matrix runs
    assert set(LEARNED_INPUTS) <= set(MODEL_INPUTS)


def test_matrix_covers_every_command():
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subcommands) == set(COMMANDS) | WITHOUT_MODEL, (
        "a new command that takes a model must join COMMANDS above (or WITHOUT_MODEL if it takes none)"
    )

"""predict, the streaming Recognizer, stream and export on a tiny model trained on real video files."""
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_prepare import write_video

import flowaction
from flowaction.cli import main
from flowaction.config import load_config
from flowaction.data.cache import ClipCache
from flowaction.data.prepare import prepare
from flowaction.engine.evaluate import run_evaluation
from flowaction.inference.loaded import load_model
from flowaction.inference.predict import clip_probabilities, predict_video, read_video
from flowaction.inference.stream import LatestFrameReader
from flowaction.engine.fit import fit
from flowaction.engine.loaders import make_loader

TINY = ["model.depth=10", "model.flow_width=8", "data.crop=32", "data.num_frames=7", "optim.epochs=1",
        "optim.batch_size=4", "data.test_clips=3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(videos root, cache, checkpoint) of a tiny joint model trained one epoch on 3 x 4 videos."""
    root = tmp_path_factory.mktemp("inference")
    videos = root / "videos"
    for c, name in enumerate(("jump", "wave", "clap")):
        for i in range(4):
            write_video(videos / name / f"{name}{i}.avi", 24, seed=10 * c + i, size=(48, 64))
    cache = root / "cache"
    prepare("folder", videos, cache, size=36, val_fraction=0.25, progress=False)
    cfg = load_config(None, TINY + [f"data.cache={cache}"])
    fit(cfg, ClipCache.open(cache), root / "run", progress=False, log=lambda *_: None)
    return videos, cache, root / "run" / "best.pt"


def test_predict_uses_exactly_the_preprocessing_of_eval(trained):
    videos, cache_dir, checkpoint = trained
    cache = ClipCache.open(cache_dir)
    model = load_model(checkpoint)
    assert model.frame_size == tuple(cache.index["frame_size"])  # recorded in the checkpoint
    loader = make_loader(model.cfg, cache, "val", "test")
    result = run_evaluation(model.model, loader, torch.device("cpu"), model.cfg.loss, False, desc="val")
    for video in sorted(set(result.videos.tolist())):
        expected = result.probs[result.videos == video].mean(axis=0)  # eval: softmax averaged over clips
        path = videos / cache.videos[video]["id"]
        predicted = predict_video(model, path, clips=model.cfg.data.test_clips, k=3)
        probabilities = {item["label"]: item["probability"] for item in predicted["top_k"]}
        for label, name in enumerate(cache.classes):
            assert probabilities[name] == pytest.approx(float(expected[label]), abs=1e-5), (path, name)


def test_predict_command_with_timeline_flow_pictures_and_json(trained, tmp_path, capsys):
    videos, _, checkpoint = trained
    out = tmp_path / "out.json"
    broken = tmp_path / "bad" / "broken.avi"
    broken.parent.mkdir()
    broken.write_bytes(b"not a video at all" * 100)
    args = ["predict", str(videos / "jump"), str(broken), "--checkpoint", str(checkpoint), "--top-k", "2",
            "--clips", "2", "--timeline", "0.4", "--save-flow", str(tmp_path / "flows"), "--json", str(out)]
    assert main(args) == 0  # the broken file is reported, the others are classified
    captured = capsys.readouterr()
    assert "broken.avi: cannot decode video" in captured.err
    report = json.loads(out.read_text())
    assert len(report["videos"]) == 4 and report["failed"][0]["video"] == str(broken)
    first = report["videos"][0]
    assert [len(first["top_k"]), first["clips"]] == [2, 2]
    assert first["top_k"][0]["probability"] >= first["top_k"][1]["probability"]
    # 24 frames at 25 frames/s in 0.4 s segments (10 frames): 3 segments covering the video
    assert [round(s["start_s"], 2) for s in first["timeline"]] == [0.0, 0.4, 0.8]
    assert first["timeline"][-1]["end_s"] == pytest.approx(24 / 25)
    for path in first["flow_pictures"]:
        assert (tmp_path / "flows").samefile(Path(path).parent)
    assert (tmp_path / "flows" / "jump0_flow.png").is_file() and (tmp_path / "flows" / "jump0_flow.gif").is_file()


def test_recognizer_reuses_flows_matches_whole_clips_and_stays_bounded(trained):
    videos, _, checkpoint = trained
    rec = flowaction.Recognizer.from_checkpoint(checkpoint, device="cpu", every=2, top_k=2)
    model = rec.model
    frames_bgr = []
    rng = np.random.default_rng(0)
    for t in range(60):  # any size, BGR: a texture moving right
        image = np.roll(rng.integers(0, 255, (50, 70), dtype=np.uint8) if t == 0 else frames_bgr[0][..., 0], t, axis=1)
        frames_bgr.append(np.repeat(image[..., None], 3, axis=2))
    predictions = [rec.push(frame) for frame in frames_bgr]
    made = [i for i, p in enumerate(predictions) if p is not None]
    # the first when a clip is full (frame span-1), then every 2 frames
    assert made == list(range(model.span - 1, 60, 2))
    # one triplet through the flow network per new frame, not a whole clip
    assert rec.flow_computations == 60 - 2
    assert len(rec.frames) == model.span and len(rec._flows) <= model.span  # memory does not grow
    last = predictions[made[-1]]
    assert last.frame == made[-1] and len(last.labels) == 2 and last.latency_ms > 0
    # the streamed prediction equals the whole-clip computation on the same preprocessed frames
    prepared = np.stack([model.prepare_frame(f) for f in frames_bgr])
    whole = clip_probabilities(model, prepared[: made[-1] + 1], [made[-1] + 1 - model.span])[0]
    np.testing.assert_allclose(last.scores, whole, atol=1e-5)
    # gray frames of another size are accepted; a bad one is a clear error
    assert isinstance(rec.push(np.ascontiguousarray(frames_bgr[0][..., 0])), flowaction.Prediction)
    with pytest.raises(ValueError, match="uint8"):
        rec.push(np.zeros((20, 20), np.float32))


def test_stream_command_on_a_file(trained, tmp_path, capsys):
    videos, _, checkpoint = trained
    lines = tmp_path / "stream.jsonl"
    assert main(["stream", "--checkpoint", str(checkpoint), "--source", str(videos / "wave" / "wave0.avi"),
                 "--as-fast-as-possible", "--every", "4", "--json", str(lines), "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "24 frames processed of 24 read (0 dropped)" in out
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    span = load_model(checkpoint).span
    assert [r["frame"] for r in records] == list(range(span - 1, 24, 4))
    assert all(len(r["labels"]) == 2 and r["dropped"] == 0 for r in records)
    assert main(["stream", "--checkpoint", str(checkpoint), "--source", str(tmp_path / "none.avi")]) == 2
    assert "cannot open video source" in capsys.readouterr().err


def test_reader_drops_frames_a_slow_consumer_cannot_take(trained):
    videos, _, _ = trained
    reader = LatestFrameReader(str(videos / "clap" / "clap1.avi"), lossless=False, realtime=True)  # 25 frames/s
    reader.start()
    taken = []
    while (item := reader.take()) is not None:
        taken.append(item[0])
        time.sleep(0.15)  # a model ~4x slower than the source
    reader.join()
    assert reader.read_frames == 24 and reader.dropped > 0
    assert len(taken) + reader.dropped == reader.read_frames
    assert taken == sorted(taken) and taken[-1] == 23  # always the newest frame, never behind


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torch-export", ".pt2")])
def test_export_matches_pytorch_and_runs_in_the_recognizer(trained, tmp_path, fmt, suffix, capsys):
    videos, _, checkpoint = trained
    out = tmp_path / f"model{suffix}"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max |difference| to PyTorch" in printed
    for role in ("flow", "classifier"):
        assert (tmp_path / f"model.{role}{suffix}").is_file()
    frames, _ = read_video(load_model(checkpoint), videos / "jump" / "jump1.avi")
    reference = load_model(checkpoint)
    exported = load_model(out)
    assert exported.kind == fmt and exported.classes == reference.classes
    # a dynamic batch: 3 clips at once
    starts = [0, 5, 10]
    np.testing.assert_allclose(clip_probabilities(exported, frames, starts),
                               clip_probabilities(reference, frames, starts), atol=1e-4)
    stream_ref = flowaction.Recognizer(reference)
    stream_exp = flowaction.Recognizer.from_checkpoint(out)
    for frame in frames[:12]:
        a, b = stream_ref.push(frame), stream_exp.push(frame)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_export_refuses_a_wrong_suffix(trained, tmp_path, capsys):
    _, _, checkpoint = trained
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "m.pt2")]) == 2
    assert "writes a .onnx file" in capsys.readouterr().err


def test_predict_returns_the_generated_class_of_video_files(tmp_path):
    """Right vs left motion, trained here; test clips of the generated benchmark written as video files."""
    from fractions import Fraction

    import av

    from flowaction.data.source import open_data

    cfg = load_config(None, [
        "data.synthetic.num_classes=2", "data.synthetic.size=40", "data.synthetic.num_frames=16",
        "data.synthetic.train_per_class=24", "data.synthetic.val_per_class=4", "data.synthetic.test_per_class=5",
        "data.crop=32", "data.test_clips=1", "model.depth=10", "model.flow_init=default", "augment.noise_std=0",
        "optim.flow_lr_scale=0.1", "optim.epochs=5", "optim.batch_size=8", f"data.synthetic_dir={tmp_path / 'data'}",
    ])
    cache = open_data(cfg, tmp_path)
    fit(cfg, cache, tmp_path / "run", progress=False, log=lambda *_: None)
    model = load_model(tmp_path / "run" / "best.pt")
    correct = []
    for index in cache.split("test"):
        record = cache.videos[index]
        frames = cache.frames(index)
        path = tmp_path / "videos" / f"{index}.avi"
        path.parent.mkdir(exist_ok=True)
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("mpeg4", rate=Fraction(25))
            stream.width, stream.height, stream.pix_fmt = 40, 40, "yuv420p"
            stream.bit_rate = 8_000_000
            for frame in frames:
                rgb = np.repeat(frame[..., None], 3, axis=2)
                for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        predicted = predict_video(model, path, clips=1, k=1)["top_k"][0]["label"]
        correct.append(predicted == cache.classes[record["label"]])
    assert np.mean(correct) >= 0.8, correct


def test_bad_sources_are_one_clear_line(trained, tmp_path, capsys):
    _, _, checkpoint = trained
    # a camera that does not open (no camera 7 here), a missing file, a folder without videos
    for argv, message in (
        (["stream", "--checkpoint", str(checkpoint), "--source", "7"], "cannot open video source '7'"),
        (["predict", str(tmp_path / "none.mp4"), "--checkpoint", str(checkpoint)], "does not exist"),
        (["predict", str(tmp_path), "--checkpoint", str(checkpoint)], "holds no video file"),
        (["stream", "--checkpoint", str(tmp_path / "none.pt"), "--source", "0"], "does not exist"),
    ):
        assert main(argv) == 2, argv
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and message in error, (argv, error)


def test_onnx_sessions_share_the_machine(monkeypatch):
    """ONNX Runtime's worker threads sleep after a run instead of spinning on the cores, one
    inter-op thread, and the intra-op count follows torch's unless FLOWACTION_ORT_THREADS says."""
    pytest.importorskip("onnxruntime")
    from flowaction.inference.loaded import ORT_THREADS_ENV, onnx_session_options

    monkeypatch.delenv(ORT_THREADS_ENV, raising=False)
    options = onnx_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == torch.get_num_threads() and options.inter_op_num_threads == 1
    monkeypatch.setenv(ORT_THREADS_ENV, "3")
    assert onnx_session_options().intra_op_num_threads == 3
    assert onnx_session_options(threads=1).intra_op_num_threads == 1
    monkeypatch.setenv(ORT_THREADS_ENV, "two")
    with pytest.raises(ValueError, match="FLOWACTION_ORT_THREADS='two'"):
        onnx_session_options()

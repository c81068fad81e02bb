"""Real-video preparation: split files, PyAV decoding, resumable sharded prepare, train + eval.

Fixture trees are built here: tiny MPEG-4 videos in the exact UCF101 / HMDB51 layouts (CRLF list
files, a class whose files are spelled differently from its folder) plus a folder-per-class tree,
with a corrupt, an empty and a too-short video among them.
"""
import hashlib
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from flowaction.cli import main
from flowaction.data import decode as decode_mod
from flowaction.data.cache import INDEX_NAME, ClipCache, finished_shards
from flowaction.data.decode import DecodeError, decode_gray, frame_size_for
from flowaction.data.prepare import prepare
from flowaction.data.splits import UNLABELED_CLASS, SplitError, folder_splits, load_splits, ucf101_splits, unlabeled_splits

UCF_CLASSES = ["ApplyEyeMakeup", "Basketball", "HandstandPushups"]
UCF_FILE_NAME = {"HandstandPushups": "HandStandPushups"}  # the real set's spelling difference


def write_video(path: Path, num_frames: int, seed: int, size=(48, 64), fps: int = 25) -> None:
    """A moving sinusoidal pattern, MPEG-4 in the container the extension names."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    fx, fy = rng.uniform(0.15, 0.4, 2)
    vx, vy = rng.uniform(-2, 2, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4" if path.suffix.lower() == ".mp4" else "avi") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(num_frames):
            image = 128 + 90 * np.sin(fx * (xx - vx * t)) * np.cos(fy * (yy - vy * t))
            rgb = np.repeat(image.astype(np.uint8)[..., None], 3, axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _crlf(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode())  # CRLF and a trailing blank line


def _ucf_name(cls: str, group: int) -> str:
    return f"{cls}/v_{UCF_FILE_NAME.get(cls, cls)}_g{group:02d}_c01.avi"


@pytest.fixture(scope="module")
def ucf_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ucf")
    videos, splits = root / "UCF-101", root / "ucfTrainTestlist"
    train, test = [], []
    for label, cls in enumerate(UCF_CLASSES):
        for group in (8, 9, 1, 2, 26):  # 8, 9 train; 1, 2 test; 26 in no list
            write_video(videos / _ucf_name(cls, group), 12 + 2 * group % 9, seed=100 * label + group)
        train += [f"{_ucf_name(cls, g)} {label + 1}  " for g in (8, 9)]  # trailing spaces
        test += [_ucf_name(cls, g) for g in (1, 2)]
    (videos / _ucf_name("Basketball", 10)).write_bytes(np.random.default_rng(0).bytes(5000))  # corrupt
    (videos / _ucf_name("ApplyEyeMakeup", 3)).write_bytes(b"")  # empty
    write_video(videos / _ucf_name("HandstandPushups", 10), 4, seed=7)  # too short
    train += [f"{_ucf_name('Basketball', 10)} 2", f"{_ucf_name('HandstandPushups', 10)} 3"]
    test += [_ucf_name("ApplyEyeMakeup", 3)]
    _crlf(splits / "classInd.txt", [f"{i + 1} {c}" for i, c in enumerate(UCF_CLASSES)])
    _crlf(splits / "trainlist01.txt", train)
    _crlf(splits / "testlist01.txt", test)
    return videos, splits


@pytest.fixture(scope="module")
def ucf_cache(ucf_tree, tmp_path_factory):
    videos, splits = ucf_tree
    out = tmp_path_factory.mktemp("ucf_cache")
    argv = ["prepare", "ucf101", "--root", str(videos), "--splits", str(splits), "--out", str(out), "--size", "36",
            "--no-progress"]
    assert main(argv) == 0
    return out


def _content(cache_dir: Path) -> dict:
    """Per video id: split, label, length and a hash of its frames (shard layout ignored)."""
    cache = ClipCache.open(cache_dir)
    return {
        v["id"]: (v["split"], v["label"], v["length"], hashlib.sha1(np.ascontiguousarray(cache.frames(i))).hexdigest())
        for i, v in enumerate(cache.videos)
    }


def test_decode_size_and_errors(ucf_tree, tmp_path):
    videos, _ = ucf_tree
    assert frame_size_for(240, 320, 64) == (64, 85) and frame_size_for(320, 240, 64) == (85, 64)
    decoded = decode_gray(videos / _ucf_name("Basketball", 8), (36, 48))
    assert decoded.frames.shape == (12 + 16 % 9, 36, 48) and decoded.frames.dtype == np.uint8
    assert decoded.fps == 25.0 and decoded.source_size == (48, 64) and decoded.frames.std() > 10
    assert decode_gray(videos / _ucf_name("Basketball", 8), (20, 20)).frames.shape[1:] == (20, 20)  # cover + crop
    for bad in (_ucf_name("Basketball", 10), _ucf_name("ApplyEyeMakeup", 3)):
        with pytest.raises(DecodeError):
            decode_gray(videos / bad, (36, 48))


def test_split_files(ucf_tree, tmp_path):
    videos, splits = ucf_tree
    plan = ucf101_splits(videos, splits, 1)
    assert plan.classes == UCF_CLASSES and plan.counts() == {"test": 7, "train": 8}
    # the class comes from the folder, not from the differently spelled file name
    assert {e.cls for e in plan.entries if "HandStand" in e.path} == {"HandstandPushups"}
    with pytest.raises(SplitError, match="1, 2 or 3"):
        ucf101_splits(videos, splits, 4)
    with pytest.raises(SplitError, match="testlist02"):
        ucf101_splits(videos, splits, 2)
    bad = tmp_path / "lists"
    shutil.copytree(splits, bad)
    _crlf(bad / "testlist01.txt", ["Skiing/v_Skiing_g01_c01.avi"])
    with pytest.raises(SplitError, match="class folder 'Skiing'"):
        ucf101_splits(videos, bad, 1)
    # a val split carved from train keeps UCF101 groups whole and leaves test alone
    carved = load_splits("ucf101", videos, splits, 1, val_from_train=0.3)
    assert carved.counts() == {"test": 7, "train": 5, "val": 3}


def test_ucf101_prepare(ucf_cache):
    report = json.loads((ucf_cache / "prepare_report.json").read_text())
    assert report["videos"] == {"test": 6, "train": 6} and report["classes"] == UCF_CLASSES
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    bad = {_ucf_name("Basketball", 10), _ucf_name("ApplyEyeMakeup", 3), _ucf_name("HandstandPushups", 10)}
    assert set(reasons) == bad
    assert "unreadable" in reasons[_ucf_name("Basketball", 10)] and "empty" in reasons[_ucf_name("ApplyEyeMakeup", 3)]
    assert "too short: 4 frames" in reasons[_ucf_name("HandstandPushups", 10)]
    assert report["frames"] > 0 and report["frames_per_second"] > 0
    cache = ClipCache.open(ucf_cache)
    assert cache.index["frame_size"] == [36, 48] and cache.frames(0).shape[1:] == (36, 48)
    assert cache.index["meta"]["kind"] == "ucf101" and cache.index["meta"]["split"] == 1
    labels = {v["id"]: v["label"] for v in cache.videos}
    assert labels[_ucf_name("HandstandPushups", 8)] == 2 and _ucf_name("Basketball", 26) not in labels


def test_hmdb51_prepare(tmp_path):
    root, splits = tmp_path / "hmdb51", tmp_path / "testTrainMulti_7030_splits"
    for c, cls in enumerate(("pour", "brush_hair")):
        names = [f"April_09_{cls}_u_nm_np1_ba_goo_{i}.avi" for i in range(4)]
        for i, name in enumerate(names):
            write_video(root / cls / name, 10, seed=10 * c + i)
        marks = [f"{n} {m} " for n, m in zip(names, (1, 1, 2, 0))]  # trailing space as in the real files
        _crlf(splits / f"{cls}_test_split1.txt", marks)
    report = prepare("hmdb51", root, tmp_path / "cache", splits, size=32, progress=False)
    assert report["videos"] == {"test": 2, "train": 4} and report["classes"] == ["brush_hair", "pour"]
    ids = {v["id"] for v in ClipCache.open(tmp_path / "cache").videos}
    assert "pour/April_09_pour_u_nm_np1_ba_goo_3.avi" not in ids  # mark 0: unused
    with pytest.raises(SplitError, match="1, 2 or 3"):
        prepare("hmdb51", root, tmp_path / "c2", splits, split=0, progress=False)
    (splits / "pour_test_split1.txt").unlink()
    with pytest.raises(SplitError, match="missing HMDB51 split file"):
        load_splits("hmdb51", root, splits, 1)


def _folder_tree(root: Path) -> None:
    for i, name in enumerate(["a.avi", "b.mp4", "c.AVI", "d.avi"]):
        write_video(root / "jump" / name, 10, seed=i)
    for i, name in enumerate(["x.mp4", "y.MP4", "z.avi"]):
        write_video(root / "wave" / name, 10, seed=10 + i)
    (root / "wave" / "notes.txt").write_text("not a video")


def test_unlabeled_splits_take_every_video_at_any_depth(tmp_path):
    for path in ("a.mp4", "b.AVI", "notes.txt", "cls/c.mp4", "cls/deeper/d.mkv", ".hidden/e.mp4"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"")
    plan = unlabeled_splits(tmp_path, val_fraction=0.25)
    assert plan.classes == [UNLABELED_CLASS]
    assert sorted(e.path for e in plan.entries) == ["a.mp4", "b.AVI", "cls/c.mp4", "cls/deeper/d.mkv"]
    assert [e.split for e in plan.entries].count("val") == 1
    assert plan == load_splits("unlabeled", tmp_path, None, 1, 0.25, min_classes=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SplitError, match="no video"):
        unlabeled_splits(tmp_path / "empty")


def test_folder_splits_and_lists(tmp_path):
    root = tmp_path / "videos"
    _folder_tree(root)
    plan = folder_splits(root, val_fraction=0.25, seed=3)
    assert plan.classes == ["jump", "wave"] and plan.counts() == {"train": 5, "val": 2}
    assert plan.entries == folder_splits(root, val_fraction=0.25, seed=3).entries  # deterministic
    write_video(root / "jump" / "e.mp4", 10, seed=99)  # a new video in one class ...
    after = folder_splits(root, val_fraction=0.25, seed=3)
    wave = lambda p: sorted((e.path, e.split) for e in p.entries if e.cls == "wave")  # noqa: E731
    assert wave(after) == wave(plan)  # ... leaves the other class's split alone
    (tmp_path / "train.txt").write_text("jump/a.avi\r\nwave/x.mp4\r\n")
    (tmp_path / "val.txt").write_text("wave/z.avi\n")
    listed = folder_splits(root, train_list=tmp_path / "train.txt", val_list=tmp_path / "val.txt")
    assert listed.counts() == {"train": 2, "val": 1}
    (tmp_path / "val.txt").write_text("run/q.avi\n")
    with pytest.raises(SplitError, match="class folder 'run'"):
        folder_splits(root, train_list=tmp_path / "train.txt", val_list=tmp_path / "val.txt")


class _Interrupt(Exception):
    """Stands for a kill in the middle of a prepare."""


_REAL_DECODE = decode_mod.decode_gray


def _counting_decoder(monkeypatch, calls: list, fail_after: int | None = None):
    """Make prepare's decoder log each call, and raise once ``fail_after`` calls were made."""
    real = _REAL_DECODE

    def decode(path, *args, **kwargs):
        if fail_after is not None and len(calls) >= fail_after:
            raise _Interrupt()
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(decode_mod, "decode_gray", decode)


def test_resume_after_interruption(ucf_tree, ucf_cache, tmp_path, monkeypatch):
    videos, splits = ucf_tree
    out = tmp_path / "cache"
    calls: list = []
    _counting_decoder(monkeypatch, calls, fail_after=5)
    with pytest.raises(_Interrupt):
        prepare("ucf101", videos, out, splits, size=36, shard_videos=2, progress=False)
    with pytest.raises(FileNotFoundError, match="not a complete clip cache"):
        ClipCache.open(out)
    done = {v["id"] for m in finished_shards(out) for v in m["videos"]}
    assert len(done) == 4  # two whole shards; the fifth video's shard never finished
    stamps = {p: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    calls.clear()
    _counting_decoder(monkeypatch, calls)
    report = prepare("ucf101", videos, out, splits, size=36, shard_videos=2, progress=False)
    decoded = {str(p.relative_to(videos)) for p in calls}
    assert not decoded & done and len(calls) == 14 - 4  # 12 good + corrupt + short, minus finished
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.exists())
    assert report["reused_videos"] == 4 and report["videos"] == {"test": 6, "train": 6}
    assert _content(out) == _content(ucf_cache)


def test_killed_run_that_adds_videos_drops_the_old_index(tmp_path, monkeypatch):
    root, out = tmp_path / "videos", tmp_path / "cache"
    _folder_tree(root)
    first = prepare("folder", root, out, size=32, val_fraction=0.25, progress=False)
    assert first["videos"] == {"train": 5, "val": 2} and (out / INDEX_NAME).is_file()
    write_video(root / "wave" / "w.avi", 10, seed=50)
    calls: list = []
    _counting_decoder(monkeypatch, calls, fail_after=0)
    with pytest.raises(_Interrupt):
        prepare("folder", root, out, size=32, val_fraction=0.25, progress=False)
    with pytest.raises(FileNotFoundError):
        ClipCache.open(out)  # the old index must not claim the changed cache is complete
    _counting_decoder(monkeypatch, calls)
    report = prepare("folder", root, out, size=32, val_fraction=0.25, progress=False)
    assert [p.name for p in calls] == ["w.avi"] and sum(report["videos"].values()) == 8
    assert ClipCache.open(out).index["frame_size"] == [32, 43]


def test_two_workers_match_one(ucf_tree, ucf_cache, tmp_path):
    videos, splits = ucf_tree
    report = prepare("ucf101", videos, tmp_path / "cache", splits, size=36, workers=2, shard_videos=3, progress=False)
    assert report["videos"] == {"test": 6, "train": 6} and len(report["skipped"]) == 3
    # What two workers promise is the same cache as one; which worker decoded which video depends on
    # scheduling and is not asserted.
    assert _content(tmp_path / "cache") == _content(ucf_cache)


def test_train_and_eval_on_prepared_ucf101(ucf_cache, tmp_path):
    run, evaluation = tmp_path / "run", tmp_path / "eval"
    assert main([
        "train", "--data", str(ucf_cache), "--out", str(run), "model.depth=10", "model.flow_width=8",
        "data.num_frames=7", "data.crop=32", "optim.epochs=1", "optim.batch_size=4", "model.triplet_stride=2",
        "data.val_split=test", "data.test_clips=2",
    ]) == 0
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--data", str(ucf_cache), "--split", "test",
                 "--out", str(evaluation)]) == 0
    report = json.loads((evaluation / "eval.json").read_text())
    assert {"clip_accuracy", "video_accuracy", "top5_video_accuracy", "per_class"} <= set(report)
    assert len(report["per_class"]) == 3 and report["num_clips"] == 12
    assert (evaluation / "confusion.png").is_file()

"""A catalogue of bad inputs for `prepare`: each is reported with its reason and no good video is lost."""
import ctypes
import ctypes.util
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from test_prepare import write_video

from flowaction.cli import main
from flowaction.data.cache import ClipCache
from flowaction.data.prepare import prepare
from flowaction.data.splits import SplitError, folder_splits


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for _ in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _variable_rate(path: Path, frames: int = 20) -> None:
    """Frames at irregular times (pts 0, 1, 3, 4, 7, ...) in a 1/30 s time base."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 30)
        pts = 0
        for t in range(frames):
            image = np.full((48, 64, 3), (t * 11) % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = pts
            frame.time_base = Fraction(1, 30)
            pts += 1 + (t % 3)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


GOOD = {"jump": 3, "wave": 3}


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """Good videos in two classes plus one of every kind of bad input, with the reason expected."""
    root = tmp_path_factory.mktemp("messy") / "videos"
    for c, (name, count) in enumerate(GOOD.items()):
        for i in range(count):
            write_video(root / name / f"{name}{i}.avi", 12, seed=10 * c + i)
    write_video(root / "jump" / "odd_size.avi", 12, seed=50, size=(30, 200))  # extreme aspect ratio
    write_video(root / "wave" / "odd_rate.avi", 12, seed=51, fps=7)  # 7 frames/s
    _variable_rate(root / "wave" / "variable_rate.mp4")
    bad = {}
    (root / "jump" / "zero.avi").write_bytes(b"")
    bad["jump/zero.avi"] = "empty"
    good_bytes = (root / "jump" / "jump0.avi").read_bytes()
    (root / "jump" / "truncated.avi").write_bytes(good_bytes[: len(good_bytes) // 3])
    bad["jump/truncated.avi"] = ""  # reported, or decoded up to the cut: either way, not a crash
    (root / "wave" / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    bad["wave/corrupt.mp4"] = "unreadable"
    _audio_only(root / "wave" / "audio_only.mp4")
    bad["wave/audio_only.mp4"] = "no video stream"
    write_video(root / "jump" / "short.avi", 3, seed=52)
    bad["jump/short.avi"] = "frames"
    (root / "wave" / "notes.txt").write_text("not a video: not listed at all")
    (root / "wave" / "renamed.mp4").write_text("a text file with a video name")
    bad["wave/renamed.mp4"] = "unreadable"
    return root, bad


def _content(cache_dir: Path) -> dict:
    cache = ClipCache.open(cache_dir)
    return {v["id"]: (v["split"], v["label"], hashlib.sha1(np.ascontiguousarray(cache.frames(i))).hexdigest())
            for i, v in enumerate(cache.videos)}


@pytest.mark.parametrize("workers", [1, 2])
def test_every_bad_input_is_reported_and_no_good_video_is_lost(messy, tmp_path, workers):
    root, bad = messy
    report = prepare("folder", root, tmp_path / "cache", size=36, val_fraction=0.0, workers=workers, progress=False)
    skipped = {item["path"]: item["reason"] for item in report["skipped"]}
    for path, reason in bad.items():
        if path == "jump/truncated.avi" and path not in skipped:
            continue  # decoded up to the cut
        assert path in skipped, path
        assert reason.lower() in skipped[path].lower(), (path, skipped[path])
    ids = set(_content(tmp_path / "cache"))
    good = {f"{name}/{name}{i}.avi" for name, count in GOOD.items() for i in range(count)}
    assert good | {"jump/odd_size.avi", "wave/odd_rate.avi", "wave/variable_rate.mp4"} <= ids
    assert "wave/notes.txt" not in ids and "wave/notes.txt" not in skipped  # not a video extension: not listed


def test_roots_and_split_lists_that_are_wrong(messy, tmp_path, capsys):
    root, _ = messy
    assert main(["prepare", "folder", "--root", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["prepare", "folder", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "c")]) == 2
    assert "no class folder with videos" in capsys.readouterr().err
    # an unknown class, then duplicates, other line endings and a BOM, and a missing video
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "unknown.txt").write_text("jump/jump0.avi\nswim/swim0.avi\n")
    with pytest.raises(SplitError, match="class folder 'swim'"):
        folder_splits(root, train_list=lists / "unknown.txt")
    (lists / "train.txt").write_bytes("\ufeffjump/jump0.avi\r\njump/jump0.avi\r\nwave/wave0.avi\rjump/nothere.avi\n".encode())
    (lists / "val.txt").write_bytes(b"jump/jump1.avi\nwave/wave1.avi\n")
    plan = folder_splits(root, train_list=lists / "train.txt", val_list=lists / "val.txt")
    paths = [entry.path for entry in plan.entries]
    assert paths.count("jump/jump0.avi") == 1 and "wave/wave0.avi" in paths  # deduplicated, CR line ends read
    report = prepare("folder", root, tmp_path / "listed", size=36, train_list=lists / "train.txt",
                     val_list=lists / "val.txt", progress=False)
    assert {"path": "jump/nothere.avi", "reason": "missing file"} in report["skipped"]
    assert report["videos"] == {"train": 2, "val": 2}


def test_a_decoder_crash_skips_that_video(messy, tmp_path):
    import crashing_decoder

    root, _ = messy
    report = prepare("folder", root, tmp_path / "cache", size=36, val_fraction=0.0, workers=2, progress=False,
                     decoder=crashing_decoder.decode_or_crash)
    skipped = {item["path"]: item["reason"] for item in report["skipped"]}
    assert "crash" in skipped["jump/jump1.avi"].lower()
    ids = set(_content(tmp_path / "cache"))
    assert "jump/jump0.avi" in ids and "wave/wave2.avi" in ids and "jump/jump1.avi" not in ids


def test_prepare_killed_at_random_moments_then_rerun_equals_an_uninterrupted_run(messy, tmp_path):
    root, _ = messy
    prepare("folder", root, tmp_path / "whole", size=36, val_fraction=0.2, shard_videos=2, progress=False)
    command = [sys.executable, "-m", "flowaction", "prepare", "folder", "--root", str(root), "--out",
               str(tmp_path / "killed"), "--size", "36", "--shard-videos", "2", "--no-progress"]
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(6):
        victim = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # the whole prepare takes about a second here: kills land in start-up, decoding or indexing
        time.sleep(float(rng.uniform(0.05, 1.2)))
        if victim.poll() is None:
            victim.send_signal(signal.SIGKILL)
            kills += 1
        victim.wait()
    subprocess.run(command, check=True, capture_output=True)
    assert _content(tmp_path / "killed") == _content(tmp_path / "whole")
    assert kills >= 1


def test_ray_prepare_equals_the_local_one(messy, tmp_path, capsys):
    root, _ = messy
    local = prepare("folder", root, tmp_path / "local", size=36, workers=2, shard_videos=3, progress=False)
    assert main(["prepare", "folder", "--root", str(root), "--out", str(tmp_path / "ray"), "--size", "36",
                 "--workers", "2", "--shard-videos", "3", "--ray", "local", "--no-progress"]) == 0
    assert "ray: " in capsys.readouterr().out
    assert _content(tmp_path / "ray") == _content(tmp_path / "local")  # same videos, labels, splits and frames
    import json

    report = json.loads((tmp_path / "ray" / "prepare_report.json").read_text())
    assert report["skipped"] == local["skipped"] and report["videos"] == local["videos"]


def _without_root_file_access(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``command`` so that file permissions apply to it. Root reads any file (a chmod alone
    proves nothing), so as root the child drops the two capabilities that bypass permission checks
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) from its bounding set before it starts: it stays root
    and can still import everything, but no longer reads a file or lists a folder that its mode
    forbids."""
    drop = None
    if os.geteuid() == 0:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

        def drop():
            for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
                if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, preexec_fn=drop, timeout=300)


def test_unreadable_videos_are_skipped_and_an_unreadable_class_folder_is_one_clear_line(tmp_path):
    root = tmp_path / "videos"
    for c, name in enumerate(("jump", "wave")):
        for i in range(3):
            write_video(root / name / f"{name}{i}.avi", 12, seed=20 * c + i)
    write_video(root / "jump" / "locked.avi", 12, seed=99)
    (root / "jump" / "locked.avi").chmod(0)
    try:
        flowaction = [sys.executable, "-m", "flowaction", "prepare", "folder", "--root", str(root), "--no-progress"]
        done = _without_root_file_access(flowaction + ["--out", str(tmp_path / "cache")], tmp_path)
        assert done.returncode == 0, done.stderr
        report = json.loads((tmp_path / "cache" / "prepare_report.json").read_text())
        skipped = {item["path"]: item["reason"] for item in report["skipped"]}
        assert "permission denied" in skipped["jump/locked.avi"].lower()
        assert sum(report["videos"].values()) == 6  # every readable video kept
        (root / "swim").mkdir()
        (root / "swim" / "swim0.avi").write_bytes((root / "jump" / "jump0.avi").read_bytes())
        (root / "swim").chmod(0)
        done = _without_root_file_access(flowaction + ["--out", str(tmp_path / "cache2")], tmp_path)
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert f"cannot list {root / 'swim'}: permission denied" in done.stderr
    finally:  # pytest must be able to clean up
        for path in (root / "jump" / "locked.avi", root / "swim"):
            if path.exists():
                path.chmod(0o755)

"""How fast ``prepare`` turns UCF101-like videos into the clip cache, and which decode path to use.

Builds (in a temporary directory) UCF101-like videos: 320 x 240 MPEG-4 AVI at 25 fps, a smooth
texture panning with a moving blob, about UCF101's bit rate. Then measures

1. decode paths, frames/s on one core (medians of interleaved repeats, and as ratios to raw
   decoding, since this machine's speed varies 2-3x from day to day), each path's mean absolute
   difference in gray levels from area-averaging the full-size gray image (``gray_cv2_area``);
2. ``prepare`` with 1 and 2 worker processes, and 2 with FFmpeg threads on (videos/s, frames/s,
   wall time incl. process start, which is also measured alone so the steady rate can be given);
3. the time to prepare all of UCF101 (13,320 videos, about 2.5 million frames) at those rates.

Run: ``.venv/bin/python benchmarks/bench_prepare.py [--videos 96 --frames 150 --out FILE]``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from flowaction.data.decode import CONVERSIONS, decode_gray, frame_size_for
from flowaction.data.prepare import prepare

UCF101_VIDEOS, UCF101_FRAMES = 13_320, 2_500_000


def _smooth_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-pass noise in [0, 255]: natural images are mostly smooth, which shapes MPEG-4's work."""
    import cv2

    noise = rng.random((height // 8, width // 8)).astype(np.float32)
    texture = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    texture += 0.08 * rng.random((height, width)).astype(np.float32)  # some fine detail
    return 255 * (texture - texture.min()) / (np.ptp(texture) + 1e-6)


def write_ucf_like(path: Path, num_frames: int, seed: int, bit_rate: int = 550_000) -> None:
    """One 320 x 240, 25 fps MPEG-4 AVI: the camera pans over a texture, a bright blob moves."""
    rng = np.random.default_rng(seed)
    height, width = 240, 320
    texture = _smooth_texture(rng, height + 64, width + 256)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    pan = rng.uniform(0.5, 1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = width, height, "yuv420p", bit_rate
        for t in range(num_frames):
            x0 = int(pan * t) % 256
            gray = texture[32 : 32 + height, x0 : x0 + width].copy()
            cx, cy = 160 + 100 * np.sin(t / 15), 120 + 60 * np.cos(t / 11)
            gray += 120 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 400)
            gray = np.clip(gray, 0, 255).astype(np.uint8)
            rgb = np.stack([gray, np.roll(gray, 3, 1), 255 - gray], axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def build_ucf_like(root: Path, count: int, frames: int) -> tuple[Path, Path]:
    """``count`` videos in UCF101's layout and list files (4 classes, all in trainlist01)."""
    videos, splits = root / "UCF-101", root / "ucfTrainTestlist"
    classes = ["ApplyEyeMakeup", "Basketball", "Biking", "Diving"]
    lines = []
    for i in range(count):
        cls = classes[i % len(classes)]
        rel = f"{cls}/v_{cls}_g{8 + i // len(classes):02d}_c01.avi"
        write_ucf_like(videos / rel, frames + (i % 5) * 10 - 20, seed=i)
        lines.append(f"{rel} {classes.index(cls) + 1}")
    splits.mkdir(parents=True)
    (splits / "classInd.txt").write_text("".join(f"{i + 1} {c}\r\n" for i, c in enumerate(classes)))
    (splits / "trainlist01.txt").write_text("\r\n".join(lines) + "\r\n")
    (splits / "testlist01.txt").write_text("")
    return videos, splits


def _raw_decode(path: Path, threads: bool) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if threads:
            stream.thread_type = "AUTO"
        else:
            stream.codec_context.thread_count = 1
        return sum(1 for _ in container.decode(stream))


def measure_paths(files: list[Path], size: tuple[int, int], repeats: int) -> dict:
    """frames/s of each path over ``files``; paths interleaved in every repeat so drift is shared."""
    paths = ["raw", "raw_threads_auto", *CONVERSIONS, "sws_area_threads_auto"]
    rates: dict[str, list[float]] = {p: [] for p in paths}
    for _ in range(repeats):
        for name in paths:
            started, frames = time.perf_counter(), 0
            for file in files:
                if name.startswith("raw"):
                    frames += _raw_decode(file, threads=name.endswith("auto"))
                else:
                    method = name.replace("_threads_auto", "")
                    frames += decode_gray(file, size, method, threads=name.endswith("auto")).num_frames
            rates[name].append(frames / (time.perf_counter() - started))
    reference = decode_gray(files[0], size, "gray_cv2_area").frames.astype(np.float32)
    raw = statistics.median(rates["raw"])
    table = {}
    for name in paths:
        median = statistics.median(rates[name])
        entry = {"frames_per_second": median, "ratio_to_raw": median / raw, "runs": rates[name]}
        if not name.startswith("raw"):
            method = name.replace("_threads_auto", "")
            frames = decode_gray(files[0], size, method).frames
            entry["mean_abs_diff_vs_area"] = float(np.abs(frames - reference).mean())
        table[name] = entry
    return table


def startup_seconds(files: list[Path], workers: int, tmp: Path, size: int) -> float:
    """Wall time of preparing ``workers`` videos with ``workers`` processes: mostly process start."""
    if workers == 1:
        return 0.0
    for i, file in enumerate(files[:workers]):
        (tmp / "mini" / "c").mkdir(parents=True, exist_ok=True)
        os.link(file, tmp / "mini" / "c" / f"{i}.avi")
    report = prepare("folder", tmp / "mini", tmp / "mini_cache", workers=workers, size=size, val_fraction=0.0,
                     progress=False)
    return report["seconds"]


def measure_prepare(videos: Path, splits: Path, tmp: Path, size: int, startup: float, repeats: int) -> list[dict]:
    """Prepare runs with 1 and 2 workers, interleaved ``repeats`` times (other jobs share this
    machine, so the best run shows the capacity and the median a typical day). The UCF101
    estimate uses the rate without the one-off process start-up."""
    # (workers, FFmpeg threads): does thread_type AUTO help when every core already runs a worker?
    settings = [(1, False), (2, False), (2, True)]
    reports: dict[tuple[int, bool], list[dict]] = {key: [] for key in settings}
    for repeat in range(repeats):
        for workers, threads in settings:
            out = tmp / f"cache-w{workers}-{threads}-{repeat}"
            reports[workers, threads].append(
                prepare("ucf101", videos, out, splits, workers=workers, size=size, threads=threads, progress=False)
            )
    runs = []
    for (workers, threads), group in reports.items():
        start = startup if workers > 1 else 0.0
        # start-up is only subtracted from runs much longer than it (tiny runs would divide by ~0)
        steady = [r["decoded_frames"] / (r["seconds"] - start if r["seconds"] > 2 * start else r["seconds"])
                  for r in group]
        runs.append({
            "workers": workers,
            "threads": threads,
            "seconds": [r["seconds"] for r in group],
            "startup_seconds": start,
            "videos": group[0]["decoded_videos"],
            "frames": group[0]["decoded_frames"],
            "videos_per_second": statistics.median(r["videos_per_second"] for r in group),
            "frames_per_second": statistics.median(r["frames_per_second"] for r in group),
            "steady_frames_per_second": statistics.median(steady),
            "best_steady_frames_per_second": max(steady),
            "ucf101_minutes": UCF101_FRAMES / statistics.median(steady) / 60,
            "ucf101_minutes_best": UCF101_FRAMES / max(steady) / 60,
        })
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=96)
    parser.add_argument("--frames", type=int, default=150, help="frames per video (about +-20)")
    parser.add_argument("--path-videos", type=int, default=8, help="videos used to compare decode paths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prepare-repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="stored short side")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prepare.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        videos, splits = build_ucf_like(tmp, args.videos, args.frames)
        build_s = time.perf_counter() - started
        files = sorted(videos.rglob("*.avi"))
        size = frame_size_for(240, 320, args.size)
        paths = measure_paths(files[: args.path_videos], size, args.repeats)
        startup = startup_seconds(files, 2, tmp, args.size)
        runs = measure_prepare(videos, splits, tmp, args.size, startup, args.prepare_repeats)
        mb = sum(f.stat().st_size for f in files) / 1e6
    result = {
        "machine": {"cpus": os.cpu_count()},
        "videos": {"count": args.videos, "size": "320x240", "fps": 25, "codec": "mpeg4 avi",
                   "mean_kbit_per_s": mb * 8e3 / (runs[0]["frames"] / 25), "build_seconds": build_s},
        "stored_size": list(size),
        "decode_paths": paths,
        "prepare": runs,
        "ucf101": {"videos": UCF101_VIDEOS, "frames": UCF101_FRAMES},
    }
    print(f"{'decode path':26s} {'frames/s':>9s} {'x raw':>6s} {'MAD':>6s}")
    for name, entry in paths.items():
        mad = entry.get("mean_abs_diff_vs_area")
        print(f"{name:26s} {entry['frames_per_second']:9.0f} {entry['ratio_to_raw']:6.2f} "
              f"{'' if mad is None else f'{mad:6.2f}'}")
    print(f"\n{'prepare':14s} {'median s':>8s} {'start s':>8s} {'videos/s':>9s} {'frames/s':>9s} {'steady f/s':>10s} "
          f"{'best f/s':>9s} {'UCF101 min (median / best)':>27s}")
    for run in runs:
        label = f"workers={run['workers']}" + (" +thr" if run["threads"] else "")
        print(f"{label:14s} {statistics.median(run['seconds']):8.2f} {run['startup_seconds']:8.2f} "
              f"{run['videos_per_second']:9.1f} {run['frames_per_second']:9.0f} "
              f"{run['steady_frames_per_second']:10.0f} {run['best_steady_frames_per_second']:9.0f} "
              f"{run['ucf101_minutes']:15.1f} / {run['ucf101_minutes_best']:.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

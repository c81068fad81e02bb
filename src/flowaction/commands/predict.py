"""``flowaction predict``: classify video files (or folders of them) with a trained model."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from flowaction.data.cache import atomic_write_json
from flowaction.data.decode import DecodeError
from flowaction.data.splits import VIDEO_EXTENSIONS
from flowaction.inference.loaded import load_model
from flowaction.inference.predict import predict_video


def video_files(paths: list[Path]) -> list[Path]:
    """Files as given; a folder gives every video file under it (sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
            if not inside:
                raise FileNotFoundError(f"{path} holds no video file ({', '.join(VIDEO_EXTENSIONS)})")
            found.extend(inside)
        elif not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        else:
            found.append(path)
    return found


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
    videos = video_files(paths)
    if save_flow is not None and save_flow.exists() and not save_flow.is_dir():
        raise FileExistsError(f"--save-flow {save_flow} is a file, not a folder")
    model = load_model(checkpoint, device)
    if save_flow is not None and model.input == "frames":
        log("--save-flow: model.input=frames classifies frames and computes no flow: no flow pictures")
    results, failed = [], []
    for video in videos:
        try:
            result = predict_video(model, video, clips, top_k, timeline, save_flow)
        except DecodeError as error:  # one bad file is reported, the others still run
            warn(f"{video}: cannot decode video: {error}")
            failed.append({"video": str(video), "error": str(error)})
            continue
        results.append(result)
        best = "  ".join(f"{item['label']} {item['probability']:.3f}" for item in result["top_k"])
        log(f"{video}: {best}")
        for segment in result.get("timeline", []):
            top = segment["top_k"][0]
            log(f"  {segment['start_s']:7.1f}-{segment['end_s']:7.1f} s: {top['label']} {top['probability']:.3f}")
    if json_path:
        atomic_write_json(json_path, {"checkpoint": str(checkpoint), "videos": results, "failed": failed})
        log(f"wrote {json_path}")
    return 0 if results else 2

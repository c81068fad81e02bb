"""``flowaction stream``: recognise actions live from a camera, a video file or a network stream.

A reader thread owns the source and keeps only the newest frame. When the model is slower than
the source, the frames it could not take are dropped (and counted) instead of queueing up, so the
prediction always concerns the present and memory stays flat. A file plays at its own frame rate,
like a camera, unless ``as_fast_as_possible``: then every frame is processed, none dropped.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from flowaction.inference.recognizer import Prediction, Recognizer


class LatestFrameReader(threading.Thread):
    """Reads ``source`` (camera index, file or URL) with OpenCV on its own thread.

    ``take()`` returns the newest unread ``(index, frame)``; frames overwritten before being taken
    are counted in ``dropped``. With ``lossless`` the reader waits for each frame to be taken.
    """

    def __init__(self, source: str, lossless: bool = False, realtime: bool = True) -> None:
        super().__init__(daemon=True)
        self.source = source
        # OpenCV's own warnings on a source it cannot open (one line per backend tried) would come
        # before, and say less than, the error below
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self.capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not self.capture.isOpened():
            if source.isdigit():
                hint = f" (no camera {source} here, or OpenCV cannot reach it: cameras are numbered from 0)"
            else:
                hint = " (no such file)" if "://" not in source and not Path(source).exists() else ""
            raise ValueError(f"cannot open video source {source!r}{hint}")
        self.fps = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.is_file = not source.isdigit() and Path(source).is_file()
        self.lossless = lossless
        self.pace = realtime and self.is_file and self.fps > 0  # a camera paces itself
        self.read_frames = 0
        self.dropped = 0
        self.finished = False
        self._latest: tuple[int, np.ndarray] | None = None
        self._cond = threading.Condition()
        self._halt = threading.Event()

    def run(self) -> None:
        started = time.perf_counter()
        try:
            while not self._halt.is_set():
                ok, frame = self.capture.read()
                if not ok:
                    break
                if self.pace:  # play a file at its own rate
                    delay = started + self.read_frames / self.fps - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                with self._cond:
                    if self.lossless:
                        while self._latest is not None and not self._halt.is_set():
                            self._cond.wait(0.1)
                    elif self._latest is not None:
                        self.dropped += 1
                    self._latest = (self.read_frames, frame)
                    self.read_frames += 1
                    self._cond.notify_all()
        finally:
            self.capture.release()
            with self._cond:
                self.finished = True
                self._cond.notify_all()

    def take(self, timeout: float = 5.0) -> tuple[int, np.ndarray] | None:
        """The newest frame not taken yet; None when the source has ended (or ``timeout`` passed)."""
        with self._cond:
            if self._latest is None and not self.finished:
                self._cond.wait_for(lambda: self._latest is not None or self.finished, timeout)
            item, self._latest = self._latest, None
            self._cond.notify_all()
            return item

    def stop(self) -> None:
        self._halt.set()
        with self._cond:
            self._cond.notify_all()


def run_stream(
    checkpoint: str | Path,
    source: str,
    every: int = 1,
    top_k: int = 5,
    device: str = "cpu",
    as_fast_as_possible: bool = False,
    show: bool = False,
    json_path: str | Path | None = None,
    max_frames: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Recognise a live source until it ends, ``max_frames`` are processed or Ctrl-C; return a summary.

    Each prediction is printed (label, probability, frames/s processed, latency, frames dropped)
    and, with ``json_path``, written as one JSON line.
    """
    recognizer = Recognizer.from_checkpoint(checkpoint, device=device, every=every, top_k=top_k)
    reader = LatestFrameReader(source, lossless=as_fast_as_possible, realtime=not as_fast_as_possible)
    handle = open(json_path, "w") if json_path else None
    latencies: list[float] = []
    processed, predictions, last = 0, 0, None
    started = time.perf_counter()
    interrupted = False
    reader.start()
    try:
        while max_frames is None or processed < max_frames:
            item = reader.take()
            if item is None:
                break
            index, frame = item
            prediction = recognizer.push(frame)
            processed += 1
            if prediction is not None:
                predictions += 1
                latencies.append(prediction.latency_ms)
                rate = processed / max(time.perf_counter() - started, 1e-9)
                last = prediction
                log(f"frame {index:6d}: {prediction.label} {prediction.probability:.2f} | {rate:5.1f} frames/s | "
                    f"latency {prediction.latency_ms:6.1f} ms | dropped {reader.dropped}")
                if handle:
                    handle.write(json.dumps({"source_frame": index, **prediction.to_dict(),
                                             "dropped": reader.dropped}) + "\n")
                    handle.flush()
            if show and not _show(frame, last, reader.dropped):
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        reader.stop()
        reader.join(timeout=5)
        if handle:
            handle.close()
        if show:
            cv2.destroyAllWindows()
    seconds = time.perf_counter() - started
    summary = {
        "source": source, "frames_read": reader.read_frames, "frames_processed": processed,
        "frames_dropped": reader.dropped, "predictions": predictions, "seconds": seconds,
        "frames_per_second": processed / seconds if seconds > 0 else 0.0, "source_fps": reader.fps,
        "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies else None,
        "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies else None,
        "flow_computations": recognizer.flow_computations, "interrupted": interrupted,
        "last": last.to_dict() if last else None,
    }
    return summary


def _show(frame: np.ndarray, prediction: Prediction | None, dropped: int) -> bool:
    """Draw the label over the frame in a window; False when the user pressed q or Esc."""
    image = frame.copy()
    text = f"{prediction.label} {prediction.probability:.2f}  {prediction.latency_ms:.0f} ms  dropped {dropped}" \
        if prediction else "filling the clip..."
    cv2.putText(image, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 0), 2)
    try:
        cv2.imshow("flowaction", image)
        key = cv2.waitKey(1) & 0xFF
    except cv2.error as error:
        raise ValueError(f"--show needs a display and an OpenCV build with GUI support ({error})") from error
    return key not in (ord("q"), 27)


def describe_stream(summary: dict) -> str:
    """The line ``flowaction stream`` ends with: frames, drops, predictions, rate and latency."""
    p50, p95 = summary["latency_ms_p50"], summary["latency_ms_p95"]
    latency = f"latency p50 {p50:.1f} ms, p95 {p95:.1f} ms" if p50 is not None else "no prediction (source too short?)"
    return (f"{'interrupted' if summary['interrupted'] else 'done'}: {summary['frames_processed']} frames processed of "
            f"{summary['frames_read']} read ({summary['frames_dropped']} dropped), {summary['predictions']} "
            f"predictions, {summary['frames_per_second']:.1f} frames/s, {latency}")


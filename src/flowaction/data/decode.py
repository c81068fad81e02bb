"""Decode a video file with PyAV into small grayscale frames ``(L, H, W)`` uint8.

Every video of a cache is stored at one size ``(H, W)``: a video is scaled (keeping its aspect
ratio) to the smallest size that covers ``H x W``, then centre-cropped, so a set of mixed aspect
ratios still fills one array shape. :func:`frame_size_for` gives the usual size from a short side
(320 x 240 at short side 64 -> 85 x 64).

The conversion from a decoded frame to a small gray array decides the speed of ``prepare`` more
than decoding does. The paths in :data:`CONVERSIONS` are measured by
``benchmarks/bench_prepare.py``; the default, ``sws_area``, lets swscale convert to gray and
downscale with area averaging in one pass, through ONE reformatter kept for the whole video:
``VideoFrame.reformat`` builds a new swscale context on every call, which alone made that path
several times slower. swscale's gray output is full-range luma (16..235 stretched to 0..255).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import av
import numpy as np
from av.video.reformatter import VideoReformatter

DEFAULT_METHOD = "sws_area"


class DecodeError(RuntimeError):
    """A video that cannot be opened or decoded, or that has no frames."""


@dataclass
class DecodedVideo:
    """``frames`` ``(L, H, W)`` uint8; ``fps`` frames per second (0 if unknown);
    ``source_size`` the coded ``(height, width)`` in pixels."""

    frames: np.ndarray
    fps: float
    source_size: tuple[int, int]

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def frame_size_for(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(H, W)`` with the short side ``short_side`` and the aspect ratio of ``height x width``."""
    if height <= width:
        return short_side, max(short_side, int(round(width * short_side / height)))
    return max(short_side, int(round(height * short_side / width))), short_side


def cover_size(height: int, width: int, out_h: int, out_w: int) -> tuple[int, int]:
    """The smallest ``(h, w)`` with the source's aspect ratio that covers ``out_h x out_w``."""
    scale = max(out_h / height, out_w / width)
    return max(out_h, int(round(height * scale))), max(out_w, int(round(width * scale)))


def centre_crop(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """The centre ``out_h x out_w`` of an image or a stack of them (the last two axes)."""
    top, left = (image.shape[-2] - out_h) // 2, (image.shape[-1] - out_w) // 2
    return image[..., top : top + out_h, left : left + out_w]


# A conversion maps (frame, (cover_h, cover_w), state) to a gray uint8 image of the cover size.
Conversion = Callable[[av.VideoFrame, tuple[int, int], dict], np.ndarray]


def _sws_area(frame: av.VideoFrame, cover: tuple[int, int], state: dict) -> np.ndarray:
    reformatter = state.setdefault("reformatter", VideoReformatter())
    return reformatter.reformat(frame, cover[1], cover[0], "gray", interpolation="AREA").to_ndarray()


def _frame_reformat(frame: av.VideoFrame, cover: tuple[int, int], state: dict) -> np.ndarray:
    # a new swscale context per frame: kept only to measure what reusing one saves
    return frame.reformat(cover[1], cover[0], "gray", interpolation="AREA").to_ndarray()


def _gray_cv2_area(frame: av.VideoFrame, cover: tuple[int, int], state: dict) -> np.ndarray:
    import cv2

    return cv2.resize(frame.to_ndarray(format="gray"), (cover[1], cover[0]), interpolation=cv2.INTER_AREA)


def _rgb_cv2(frame: av.VideoFrame, cover: tuple[int, int], state: dict) -> np.ndarray:
    import cv2

    gray = cv2.cvtColor(frame.to_ndarray(format="rgb24"), cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, (cover[1], cover[0]), interpolation=cv2.INTER_AREA)


_LIMITED_TO_FULL = np.clip((np.arange(256) - 16) * 255.0 / 219.0 + 0.5, 0, 255).astype(np.uint8)


def _luma_cv2_area(frame: av.VideoFrame, cover: tuple[int, int], state: dict) -> np.ndarray:
    import cv2

    if not frame.format.name.startswith("yuv"):
        return _gray_cv2_area(frame, cover, state)
    plane = frame.planes[0]  # the Y plane is the gray image already: no colour conversion
    luma = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)[:, : frame.width]
    small = cv2.resize(luma, (cover[1], cover[0]), interpolation=cv2.INTER_AREA)
    return small if frame.format.name.startswith("yuvj") else _LIMITED_TO_FULL[small]


CONVERSIONS: dict[str, Conversion] = {
    "sws_area": _sws_area,
    "frame_reformat": _frame_reformat,
    "gray_cv2_area": _gray_cv2_area,
    "rgb_cv2": _rgb_cv2,
    "luma_cv2_area": _luma_cv2_area,
}


def probe(path: str | Path) -> tuple[int, int]:
    """The coded ``(height, width)`` of a video's first video stream, without decoding."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError(f"{path}: no video stream")
            context = container.streams.video[0].codec_context
            if not context.width or not context.height:
                raise DecodeError(f"{path}: unknown frame size")
            return int(context.height), int(context.width)
    except DecodeError:
        raise
    except Exception as error:  # FFmpeg, OS and format errors all mean "unreadable" here
        raise DecodeError(f"unreadable ({type(error).__name__}: {error})") from error


def decode_gray(
    path: str | Path,
    size: tuple[int, int],
    method: str = DEFAULT_METHOD,
    threads: bool = False,
) -> DecodedVideo:
    """Decode every frame of ``path`` to gray ``size`` = ``(H, W)`` pixels (cover, centre crop).

    Args:
        method: a key of :data:`CONVERSIONS`.
        threads: let FFmpeg decode with its own threads (``thread_type="AUTO"``); off by default
            because ``prepare`` runs one single-threaded process per core.

    Raises:
        DecodeError: the file cannot be opened, has no video stream, fails while decoding, or
            yields no frame.
    """
    convert = CONVERSIONS[method]
    out_h, out_w = size
    frames: list[np.ndarray] = []
    state: dict = {}
    try:
        container = av.open(str(path))
    except Exception as error:
        raise DecodeError(f"unreadable ({type(error).__name__}: {error})") from error
    with container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        if threads:
            stream.thread_type = "AUTO"
        else:
            stream.codec_context.thread_count = 1
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        shape, cover = None, (out_h, out_w)
        try:
            for frame in container.decode(stream):
                if (frame.height, frame.width) != shape:  # a stream may change size midway
                    shape = (frame.height, frame.width)
                    cover = cover_size(frame.height, frame.width, out_h, out_w)
                frames.append(np.ascontiguousarray(centre_crop(convert(frame, cover, state), out_h, out_w)))
        except Exception as error:
            reason = f"decoding failed after {len(frames)} frames ({type(error).__name__}: {error})"
            raise DecodeError(reason) from error
    if not frames:
        raise DecodeError("no frames decoded")
    return DecodedVideo(np.stack(frames), fps, shape)


def write_gray_video(path: str | Path, frames: np.ndarray, fps: float = 25.0) -> Path:
    """Write gray frames ``(L, H, W)`` uint8 as an MPEG-4 video (``.mp4`` or ``.avi`` by the suffix;
    odd sizes are padded by a repeated edge row or column, as the codec needs even ones)."""
    path = Path(path)
    frames = np.asarray(frames, dtype=np.uint8)
    height, width = frames.shape[1:]
    pad = ((0, 0), (0, height % 2), (0, width % 2))
    frames = np.pad(frames, pad, mode="edge") if any(p[1] for p in pad) else frames
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4" if path.suffix.lower() == ".mp4" else "avi") as container:
        stream = container.add_stream("mpeg4", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.bit_rate = 4_000_000  # small frames: nearly lossless at this rate
        for frame in frames:
            image = av.VideoFrame.from_ndarray(np.repeat(frame[..., None], 3, axis=2), format="rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path

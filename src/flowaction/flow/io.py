"""Middlebury ``.flo`` optical-flow files.

Layout (all little-endian): 4-byte magic, the float32 202021.25 whose bytes spell ``b"PIEH"``;
int32 width; int32 height; then ``height * width`` pairs of float32 ``(u, v)``, row-major with u
and v interleaved. This is the format of OpenCV's ``cv2.readOpticalFlow`` / ``cv2.writeOpticalFlow``
and of Sintel, FlyingChairs and Middlebury, so files are interchangeable with them. In memory
flows follow the project layout ``(2, H, W)`` (channel 0 = u, +right; channel 1 = v, +down;
pixels), whereas OpenCV uses ``(H, W, 2)``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FLO_MAGIC", "read_flo", "write_flo"]

#: The four bytes of the float32 202021.25 written little-endian ("PIEH").
FLO_MAGIC: bytes = b"PIEH"
_HEADER_BYTES = 12
# Sanity bound on each side: a corrupt header would otherwise ask for terabytes.
_MAX_SIDE = 1 << 16


def read_flo(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a Middlebury ``.flo`` file.

    Args:
        path: file to read.

    Returns:
        Flow of shape ``(2, H, W)``, float32, pixels (channel 0 = u, channel 1 = v).

    Raises:
        ValueError: if the magic is wrong, the size fields are implausible, or the file length
            does not match ``12 + 8 * W * H`` bytes (truncated or trailing data).
    """
    data = Path(path).read_bytes()
    if len(data) < _HEADER_BYTES:
        raise ValueError(f"{path}: {len(data)} bytes is too short for a .flo header (12 bytes)")
    if data[:4] != FLO_MAGIC:
        raise ValueError(
            f"{path}: not a .flo file (magic {data[:4]!r}, "
            f"expected {FLO_MAGIC!r} = float 202021.25)"
        )
    width, height = (int(x) for x in np.frombuffer(data, dtype="<i4", count=2, offset=4))
    if not (0 < width <= _MAX_SIDE and 0 < height <= _MAX_SIDE):
        raise ValueError(f"{path}: implausible .flo size width={width}, height={height}")
    expected = _HEADER_BYTES + 8 * width * height
    if len(data) != expected:
        raise ValueError(
            f"{path}: .flo of {width}x{height} should be {expected} bytes, file has {len(data)}"
        )
    interleaved = np.frombuffer(data, dtype="<f4", offset=_HEADER_BYTES).reshape(height, width, 2)
    # (H, W, 2) -> (2, H, W); astype copies, so the result is writable and native-endian.
    return interleaved.transpose(2, 0, 1).astype(np.float32)


def write_flo(path: str | os.PathLike[str], flow: Any) -> None:
    """Write a flow as a Middlebury ``.flo`` file, atomically.

    The bytes go to a temporary file in the same directory, which then replaces ``path`` with
    ``os.replace``, so readers never see a half-written file and an interrupted write leaves any
    previous file intact.

    Args:
        path: destination file (its directory must exist).
        flow: flow ``(2, H, W)``, pixels; numpy array or torch tensor; stored as float32.

    Raises:
        ValueError: if ``flow`` is not ``(2, H, W)`` with positive sides.
    """
    if hasattr(flow, "detach"):  # torch tensor, without importing torch here
        flow = flow.detach().cpu().numpy()
    flow_np = np.asarray(flow)
    if flow_np.ndim != 3 or flow_np.shape[0] != 2 or min(flow_np.shape[1:]) < 1:
        raise ValueError(f"flow must have shape (2, H, W), got {flow_np.shape}")
    _, height, width = flow_np.shape
    if max(height, width) > _MAX_SIDE:
        raise ValueError(f"flow of {width}x{height} exceeds the {_MAX_SIDE}-pixel side limit")
    header = FLO_MAGIC + np.array([width, height], dtype="<i4").tobytes()
    body = np.ascontiguousarray(flow_np.transpose(1, 2, 0), dtype="<f4").tobytes()

    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(header)
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file 0600; give it the usual permissions of a data file.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        # Never leave the temporary file behind, whatever interrupted the write.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise

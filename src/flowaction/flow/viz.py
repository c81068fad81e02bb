"""Flow visualisation: Middlebury colour coding, comparison panels and clip animations.

The colour coding is the one of Baker et al., "A Database and Evaluation Methodology for Optical
Flow" (Middlebury): hue encodes direction on a 55-colour wheel (red -> yellow -> green -> cyan ->
blue -> magenta -> red), saturation encodes speed relative to a maximum radius, and speeds beyond
that radius are dimmed. With the project convention (u = +right, v = +down, image y axis down):
right = red, down = yellow, left = cyan, up = blue/violet, zero = white.
Nothing here touches global matplotlib state: figures are built with the object-oriented API on
an Agg canvas.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "make_color_wheel", "flow_to_color", "color_wheel_legend", "flow_panel", "flow_animation",
]

# Wheel segments (Baker et al.; uneven lengths spread the hues perceptually):
# (name, number of colours, channel held at 255, channel that ramps, ramp up (+1) or down (-1)).
_SEGMENTS = (
    ("RY", 15, 0, 1, +1), ("YG", 6, 1, 0, -1), ("GC", 4, 1, 2, +1),
    ("CB", 11, 2, 1, -1), ("BM", 13, 2, 0, +1), ("MR", 6, 0, 2, -1),
)


def make_color_wheel() -> np.ndarray:
    """The Middlebury colour wheel: ``(55, 3)`` float64 RGB values in [0, 255].

    Each segment holds one channel at 255 while another ramps linearly (``floor(255 * i / n)``)
    up or down, walking red -> yellow -> green -> cyan -> blue -> magenta -> back to red.
    """
    rows = []
    for _, count, held, ramped, direction in _SEGMENTS:
        ramp = np.floor(255.0 * np.arange(count) / count)
        block = np.zeros((count, 3))
        block[:, held] = 255.0
        block[:, ramped] = ramp if direction > 0 else 255.0 - ramp
        rows.append(block)
    return np.concatenate(rows, axis=0)


def _to_numpy(array: Any) -> np.ndarray:
    """NumPy view of an array or (detached, CPU) torch tensor, without importing torch."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _known_mask(flow: np.ndarray, valid: Any | None) -> np.ndarray:
    """``(H, W)`` bool: finite, not a 'no flow' sentinel (Middlebury uses >1e9), and valid."""
    known = np.all(np.isfinite(flow), axis=0) & np.all(np.abs(np.nan_to_num(flow)) < 1e9, axis=0)
    if valid is not None:
        known &= _to_numpy(valid).astype(bool)
    return known


def _max_magnitude(flows: Sequence[np.ndarray]) -> float:
    """Largest finite speed (pixels) over some ``(2, H, W)`` flows; 0 if there is none."""
    best = 0.0
    for flow in flows:
        known = _known_mask(flow, None)
        if known.any():
            best = max(best, float(np.hypot(flow[0], flow[1])[known].max()))
    return best


def flow_to_color(flow: Any, max_flow: float | None = None, valid: Any | None = None) -> np.ndarray:
    """Colour-code a flow field with the Middlebury wheel.

    Args:
        flow: ``(2, H, W)`` flow in pixels (u = +right, v = +down).
        max_flow: speed (pixels) that maps to full saturation; faster pixels keep their hue but
            are dimmed to 75 %. None: the largest valid speed in ``flow``.
        valid: optional ``(H, W)`` bool mask; invalid, NaN/inf or >1e9 pixels are drawn black.

    Returns:
        ``(H, W, 3)`` uint8 RGB image. Zero flow is white.
    """
    flow_np = _to_numpy(flow).astype(np.float64)
    if flow_np.ndim != 3 or flow_np.shape[0] != 2:
        raise ValueError(f"flow must have shape (2, H, W), got {flow_np.shape}")
    known = _known_mask(flow_np, valid)
    u = np.where(known, flow_np[0], 0.0)
    v = np.where(known, flow_np[1], 0.0)
    magnitude = np.hypot(u, v)
    if max_flow is None:
        max_flow = float(magnitude[known].max()) if known.any() else 0.0
    if not max_flow > 0:  # all-zero flow: any radius works, it stays white
        max_flow = 1.0
    radius = magnitude / max_flow

    wheel = make_color_wheel() / 255.0
    n_colours = wheel.shape[0]
    # Direction -> position on the wheel: angle in [-1, 1] (units of pi) spans the whole wheel,
    # so u > 0 (angle +-1) lands on its red ends and u < 0 (angle 0) on cyan in the middle.
    angle = np.arctan2(-v, -u) / np.pi
    position = (angle + 1.0) / 2.0 * (n_colours - 1)
    lower = np.floor(position).astype(np.int64)
    upper = (lower + 1) % n_colours
    frac = (position - lower)[..., None]
    colour = (1.0 - frac) * wheel[lower] + frac * wheel[upper]

    inside = (radius <= 1.0)[..., None]
    # Inside the radius: blend from white (speed 0) to the full hue; beyond it: dim the hue.
    colour = np.where(inside, 1.0 - radius[..., None] * (1.0 - colour), colour * 0.75)
    image = np.floor(255.0 * np.clip(colour, 0.0, 1.0)).astype(np.uint8)
    image[~known] = 0
    return image


def color_wheel_legend(size: int = 64) -> np.ndarray:
    """A colour key: ``(size, size, 3)`` uint8 RGB disc where each pixel's offset from the centre
    is its flow (rim = ``max_flow``, so full saturation); white outside the disc.
    """
    if size < 2:
        raise ValueError(f"legend size must be >= 2, got {size}")
    centre = (size - 1) / 2.0
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    flow = np.stack([(xs - centre) / centre, (ys - centre) / centre])
    image = flow_to_color(flow, max_flow=1.0)
    image[np.hypot(flow[0], flow[1]) > 1.0] = 255
    return image


def _kind(item: np.ndarray) -> str:
    """Classify a panel cell: 'flow' ``(2, H, W)``, 'rgb' ``(H, W, 3|4)`` or 'scalar' ``(H, W)``."""
    if item.ndim == 3 and item.shape[0] == 2:
        return "flow"
    if item.ndim == 3 and item.shape[-1] in (3, 4):
        return "rgb"
    if item.ndim == 2:
        return "scalar"
    raise ValueError(f"cannot show shape {item.shape}: expected (2,H,W), (H,W) or (H,W,3)")


def flow_panel(
    path: str | os.PathLike[str],
    rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    max_flow: float | None = None,
    cmaps: Mapping[str, str] | None = None,
    row_labels: Sequence[str] | None = None,
    legend: bool = True,
    title: str | None = None,
    cell_inches: float = 2.0,
    dpi: int = 100,
) -> Path:
    """Write a PNG grid comparing flows side by side, one labelled column per name.

    Args:
        path: output PNG file.
        rows: one row (mapping column name -> array) or a sequence of them, e.g. ``{"frame": I0,
            "learned flow": f, "DIS": g, "ground truth": gt, "warp error": e}``. Columns appear
            in first-seen key order; a row lacking a column leaves that cell blank. Arrays:
            ``(2, H, W)`` flows (colour-coded), ``(H, W)`` scalar images, ``(H, W, 3)`` RGB.
        max_flow: speed (pixels) of full saturation. None: the largest speed over every flow cell
            of the picture, so that all its flows share one scale and compare.
        cmaps: column name -> colormap for scalar columns (``{"warp error": "magma"}``), one
            scale per column from 0 to the column's largest value, shown by a colour bar; other
            scalar columns are grey on [0, 1] (float) or [0, 255] (uint8).
        row_labels: optional label per row, left of the first column.
        legend: add a "colour key" column: the wheel, titled with the picture's full-saturation
            speed (in the first row; the scale is the same for every row).
        title: figure title; cell_inches: size of one cell; dpi: output resolution.

    Returns:
        The path written.
    """
    # Object-oriented matplotlib on an explicit Agg canvas: no pyplot, no global backend change.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    row_list = [rows] if isinstance(rows, Mapping) else list(rows)
    if not row_list:
        raise ValueError("flow_panel needs at least one row")
    columns: list[str] = []
    for row in row_list:
        columns.extend(name for name in row if name not in columns)
    if row_labels is not None and len(row_labels) != len(row_list):
        raise ValueError(f"{len(row_labels)} row labels for {len(row_list)} rows")
    cmaps = dict(cmaps or {})
    n_cols = len(columns) + (1 if legend else 0)
    arrays_per_row = [{name: _to_numpy(value) for name, value in row.items()} for row in row_list]
    flows = [a.astype(np.float64) for arrays in arrays_per_row for a in arrays.values() if _kind(a) == "flow"]
    picture_max = max_flow if max_flow is not None else _max_magnitude(flows)
    # one scale per colour-mapped scalar column, over all rows
    column_max = {
        name: max([float(np.nanmax(a[name])) for a in arrays_per_row if name in a and a[name].size] or [0.0]) or 1.0
        for name in cmaps
    }

    fig = Figure(figsize=(cell_inches * n_cols, cell_inches * len(row_list) + 0.4), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(len(row_list), n_cols, squeeze=False))
    for r, arrays in enumerate(arrays_per_row):
        for c, name in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[r], fontsize=9)
            if name not in arrays:
                ax.set_frame_on(False)
                continue
            item = arrays[name]
            kind = _kind(item)
            if kind == "flow":
                ax.imshow(flow_to_color(item, max_flow=picture_max or None), interpolation="nearest")
            elif kind == "rgb":
                ax.imshow(item, interpolation="nearest")
            elif name in cmaps:
                image = ax.imshow(item, cmap=cmaps[name], vmin=0.0, vmax=column_max[name], interpolation="nearest")
                bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
                bar.ax.tick_params(labelsize=7)
            else:
                top = 255 if item.dtype == np.uint8 else 1.0
                ax.imshow(item, cmap="gray", vmin=0, vmax=top, interpolation="nearest")
        if legend:
            ax = axes[r, -1]
            ax.set_axis_off()
            if r == 0:  # one scale for the whole picture: one key
                ax.imshow(color_wheel_legend(65), interpolation="bilinear")
                if flows:
                    ax.set_title(f"key: rim = {picture_max:.3g} px", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, out)
    return out


def flow_animation(
    frames: Any,
    flows: Any,
    path: str | os.PathLike[str],
    *,
    max_flow: float | None = None,
    fps: float = 8.0,
    scale: int | None = None,
    gap: int = 4,
    label: str | None = None,
    first_index: Sequence[int] | None = None,
) -> Path:
    """Write a clip as an animation of ``frame t | colour-coded flow t | key`` side by side, under a
    caption naming ``label`` (e.g. the method), the frame pair and the key's full-saturation speed.

    Args:
        frames: ``(T, H, W)`` grayscale frames, uint8 or float in [0, 1].
        flows: ``(T-1, 2, H, W)`` flows (array or list of arrays), pixels, ``flows[t]`` from frame
            t into frame t+1.
        path: output file; ``.mp4`` is encoded with PyAV (H.264), anything else is a GIF (PIL).
        max_flow: speed (pixels) of full saturation; None: the clip's largest speed, one scale
            for every frame so that colours compare over time.
        fps: frames per second.
        scale: integer nearest-neighbour upscaling (None: enough to make frames >= 128 px high,
            since 56 x 56 clips are tiny on screen).
        gap: white pixels between the panels (after scaling).
        label: caption prefix, e.g. ``"learned"``; first_index: the video frame index of each
            flow's first frame (default ``0, 1, ...``), shown as ``frames i->i+1``.

    Returns:
        The path written; the animation has ``T - 1`` frames (a progress bar under them keeps
        them distinct; PIL would merge identical consecutive GIF frames).
    """
    frames_np = _to_numpy(frames)
    if frames_np.ndim != 3 or frames_np.shape[0] < 2:
        raise ValueError(f"frames must be (T, H, W) with T >= 2, got {frames_np.shape}")
    n_frames, height, width = frames_np.shape
    flows_np = np.stack([_to_numpy(f) for f in flows]).astype(np.float64)
    if flows_np.shape != (n_frames - 1, 2, height, width):
        expected = (n_frames - 1, 2, height, width)
        raise ValueError(f"flows must have shape {expected}, got {flows_np.shape}")
    if max_flow is None:
        max_flow = _max_magnitude(list(flows_np)) or None
    if scale is None:
        scale = max(1, math.ceil(128 / height))
    if frames_np.dtype != np.uint8:
        frames_np = np.clip(np.rint(frames_np.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)

    starts = list(range(n_frames - 1)) if first_index is None else [int(i) for i in first_index]
    if len(starts) != n_frames - 1:
        raise ValueError(f"first_index needs {n_frames - 1} entries, got {len(starts)}")
    key = color_wheel_legend(height * scale)
    images = []
    for t in range(n_frames - 1):
        left = np.repeat(frames_np[t][..., None], 3, axis=2)
        right = flow_to_color(flows_np[t], max_flow=max_flow)
        spacer = np.full((height * scale, gap, 3), 255, dtype=np.uint8)
        up = [np.repeat(np.repeat(x, scale, axis=0), scale, axis=1) for x in (left, right)]
        image = np.concatenate([up[0], spacer, up[1], spacer, key], axis=1)
        caption = f"{label + '  ' if label else ''}frames {starts[t]}->{starts[t] + 1}  key: rim = {max_flow or 0:.3g} px"
        image = np.concatenate([_caption(caption, image.shape[1]), image], axis=0)
        # A progress bar under the pair shows where in the clip we are, and keeps consecutive
        # frames distinct so the GIF writer does not merge them when the clip is static.
        bar = np.full((max(3, scale), image.shape[1], 3), 255, dtype=np.uint8)
        bar[:, : max(1, round(image.shape[1] * (t + 1) / (n_frames - 1)))] = 96
        images.append(np.concatenate([image, bar], axis=0))

    out = Path(path)
    if out.suffix.lower() == ".mp4":
        _write_mp4(out, images, fps)
    else:
        _write_gif(out, images, fps)
    return out


def _caption(text: str, width: int, height: int = 14) -> np.ndarray:
    """A white ``(height, width, 3)`` strip with ``text`` in black (PIL's built-in font)."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(strip).text((2, 1), text, fill=(0, 0, 0))
    return np.asarray(strip)


def _write_gif(path: Path, images: list[np.ndarray], fps: float) -> None:
    """Animated GIF via PIL, looping forever; written to a temp name then renamed into place."""
    from PIL import Image

    pil_images = [Image.fromarray(image) for image in images]
    tmp = path.with_name(f".{path.name}.tmp")
    pil_images[0].save(
        tmp, format="GIF", save_all=True, append_images=pil_images[1:],
        duration=max(1, round(1000 / fps)), loop=0,
    )
    os.replace(tmp, path)


def _write_mp4(path: Path, images: list[np.ndarray], fps: float) -> None:
    """H.264 MP4 via PyAV (yuv420p, so the frame is padded to even sides as the codec needs)."""
    from fractions import Fraction

    import av

    height, width = images[0].shape[:2]
    even_h, even_w = height + height % 2, width + width % 2
    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = even_w, even_h, "yuv420p"
        for image in images:
            padded = np.full((even_h, even_w, 3), 255, dtype=np.uint8)
            padded[:height, :width] = image
            for packet in stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
    os.replace(tmp, path)

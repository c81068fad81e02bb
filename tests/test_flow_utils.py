"""Tests of flowaction.flow: metrics, .flo I/O, colour coding, panels/animations, classical flow."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from flowaction.flow.classical import ClassicalFlow, classical_flow, clip_classical_flow
from flowaction.flow.io import read_flo, write_flo
from flowaction.flow.metrics import (
    FlowErrors,
    endpoint_error,
    flow_metrics,
    photometric_errors,
)
from flowaction.flow.viz import (
    color_wheel_legend,
    flow_animation,
    flow_panel,
    flow_to_color,
    make_color_wheel,
)

SHIFT = (1.5, -0.5)  # (u, v) pixels: right 1.5, up 0.5


def smooth_texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """``(H, W)`` float32 in [0, 1]: blurred noise, smooth enough for sub-pixel flow."""
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 2.0)
    return (texture - texture.min()) / (texture.max() - texture.min())


def shifted(frame: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """``frame`` moved by ``shift``: result(x) = frame(x - shift), so the flow frame -> result is
    ``shift`` everywhere (frame(x) = result(x + shift))."""
    matrix = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    height, width = frame.shape
    return cv2.warpAffine(frame, matrix, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def constant_flow(u: float, v: float, height: int = 4, width: int = 5) -> np.ndarray:
    flow = np.empty((2, height, width), dtype=np.float32)
    flow[0], flow[1] = u, v
    return flow


# ---------------------------------------------------------------- metrics


def test_constant_error_3_4_gives_epe_5() -> None:
    # Quarter-pixel gt so that gt + (3, 4) is exact in float32 and EPE is exactly 5 everywhere.
    gt = np.random.default_rng(1).integers(-8, 8, size=(2, 2, 6, 7)).astype(np.float32) / 4
    pred = gt.copy()
    pred[:, 0] += 3.0
    pred[:, 1] += 4.0
    assert endpoint_error(pred, gt) == pytest.approx(5.0, abs=1e-6)
    metrics = flow_metrics(pred, gt)
    assert metrics["px1"] == metrics["px3"] == metrics["px5"] == 0.0  # 5 is not < 5
    assert metrics["outlier"] == 1.0  # 5 > 3 px and > 5 % of |gt| <= 2.9


def test_thresholds_and_valid_mask() -> None:
    gt = np.zeros((2, 1, 5), dtype=np.float32)
    pred = gt.copy()
    pred[0, 0] = [0.5, 2.0, 4.0, 6.0, 100.0]  # the last pixel will be masked out
    valid = np.array([[True, True, True, True, False]])
    metrics = flow_metrics(pred, gt, valid)
    assert metrics["epe"] == pytest.approx((0.5 + 2 + 4 + 6) / 4)
    assert (metrics["px1"], metrics["px3"], metrics["px5"]) == (0.25, 0.5, 0.75)
    assert metrics["outlier"] == 0.5
    assert all(math.isnan(x) for x in flow_metrics(pred, gt, np.zeros_like(valid)).values())


def test_outlier_needs_both_3px_and_5_percent() -> None:
    gt = constant_flow(100.0, 0.0, 1, 3)  # |gt| = 100: 5 % is 5 px
    pred = gt.copy()
    pred[0, 0] += [2.0, 4.0, 6.0]  # 2: below 3 px; 4: > 3 px but < 5 %; 6: both -> outlier
    assert flow_metrics(pred, gt)["outlier"] == pytest.approx(1 / 3)


def test_angular_error() -> None:
    flow = np.random.default_rng(2).normal(size=(2, 8, 8)) * 3
    assert flow_metrics(flow, flow)["angular_error"] == pytest.approx(0.0, abs=1e-5)
    # (1,0,1) vs (0,0,1): cos = 1/sqrt(2) -> 45 deg; (1,0,1) vs (0,1,1): cos = 1/2 -> 60 deg.
    right, still, down = constant_flow(1, 0), constant_flow(0, 0), constant_flow(0, 1)
    assert flow_metrics(right, still)["angular_error"] == pytest.approx(45.0)
    assert flow_metrics(right, down)["angular_error"] == pytest.approx(60.0)


def test_metrics_accept_torch_and_reject_bad_shapes() -> None:
    torch = pytest.importorskip("torch")
    gt = torch.zeros(3, 2, 4, 4)
    pred = (gt + torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)).requires_grad_()
    assert endpoint_error(pred, gt, torch.ones(3, 4, 4, dtype=torch.bool)) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        endpoint_error(np.zeros((3, 4, 4)), np.zeros((3, 4, 4)))
    with pytest.raises(ValueError):
        endpoint_error(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))


def test_accumulator_is_pixel_weighted() -> None:
    gt_a = torch.zeros((1, 2, 2, 2))
    pred_a = gt_a.clone()
    pred_a[:, 0] = 10.0  # EPE 10 everywhere, but only one valid pixel
    valid_a = torch.tensor([[[True, False], [False, False]]])
    gt_b, pred_b = torch.zeros((1, 2, 1, 3)), torch.zeros((1, 2, 1, 3))  # 3 pixels, EPE 0
    acc = FlowErrors(within=(1.0, 3.0))
    acc.add(gt_a, valid_a, {"learned": pred_a})
    acc.add(gt_b, torch.ones((1, 1, 3), dtype=torch.bool), {"learned": pred_b})
    result = acc.result()
    assert result["valid_pixels"] == 4
    assert result["epe"] == pytest.approx(10 / 4)  # a mean of batch means would say 5
    assert result["px1"] == pytest.approx(3 / 4) and result["px3"] == pytest.approx(3 / 4)
    # the same as one big batch, and merging adds the sums
    other = FlowErrors(within=(1.0, 3.0))
    other.merge(acc)
    other.merge(acc)
    assert other.result()["epe"] == pytest.approx(result["epe"]) and other.result()["valid_pixels"] == 8
    assert FlowErrors().result() == {}


def test_photometric_errors_true_flow_beats_zero_flow() -> None:
    frame0 = smooth_texture(56, 56)
    # Whole-pixel shift: the warp gives frame0 back exactly, leaving Charbonnier's floor
    # eps^(2 alpha).
    whole = (2.0, -1.0)
    exact = photometric_errors(frame0, shifted(frame0, whole), constant_flow(*whole, 56, 56))
    assert exact["l1"] < 1e-6
    assert exact["charbonnier"] == pytest.approx((1e-3**2) ** 0.45, rel=1e-3)
    # Sub-pixel shift: two bilinear interpolations leave ~0.01 of error (measured 0.0097).
    frame1 = shifted(frame0, SHIFT)
    true = photometric_errors(frame0, frame1, constant_flow(*SHIFT, 56, 56))
    zero = photometric_errors(frame0, frame1, np.zeros((2, 56, 56), np.float32))
    reverse = photometric_errors(frame0, frame1, constant_flow(-SHIFT[0], -SHIFT[1], 56, 56))
    assert true["l1"] < 0.02
    assert zero["l1"] > 4 * true["l1"] and reverse["l1"] > 4 * true["l1"]
    assert zero["charbonnier"] > 3 * true["charbonnier"]
    # In-frame share: x + 1.5 <= 55 keeps 54 columns, y - 0.5 >= 0 keeps 55 rows.
    assert true["in_frame"] == pytest.approx(54 * 55 / 56**2)


# ---------------------------------------------------------------- .flo I/O


def test_flo_round_trip_with_opencv(tmp_path: Path) -> None:
    flow = np.random.default_rng(3).normal(size=(2, 5, 7)).astype(np.float32) * 4
    ours = tmp_path / "ours.flo"
    write_flo(ours, flow)
    np.testing.assert_array_equal(cv2.readOpticalFlow(str(ours)), flow.transpose(1, 2, 0))
    np.testing.assert_array_equal(read_flo(ours), flow)
    theirs = tmp_path / "theirs.flo"
    assert cv2.writeOpticalFlow(str(theirs), np.ascontiguousarray(flow.transpose(1, 2, 0)))
    loaded = read_flo(theirs)
    assert loaded.shape == (2, 5, 7) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, flow)
    assert ours.read_bytes() == theirs.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.flo", "theirs.flo"]  # no temp left


def test_flo_rejects_bad_files(tmp_path: Path) -> None:
    good = tmp_path / "good.flo"
    write_flo(good, np.zeros((2, 3, 4), np.float32))
    data = good.read_bytes()
    bad_magic = tmp_path / "magic.flo"
    bad_magic.write_bytes(b"XXXX" + data[4:])
    with pytest.raises(ValueError, match="magic"):
        read_flo(bad_magic)
    truncated = tmp_path / "short.flo"
    truncated.write_bytes(data[:-4])
    with pytest.raises(ValueError, match="bytes"):
        read_flo(truncated)
    with pytest.raises(ValueError):
        write_flo(tmp_path / "x.flo", np.zeros((3, 4, 2)))


# ---------------------------------------------------------------- colour coding


def test_color_wheel_has_55_colours() -> None:
    wheel = make_color_wheel()
    assert wheel.shape == (55, 3)
    np.testing.assert_array_equal(wheel[0], [255, 0, 0])  # RY starts at pure red
    np.testing.assert_array_equal(wheel[15], [255, 255, 0])  # YG starts at yellow


def test_directions_map_to_wheel_colours() -> None:
    # Hue position = (atan2(-v, -u) / pi + 1) / 2 * 54 on the 55-colour wheel (RY 0-14, YG 15-20,
    # GC 21-24, CB 25-35, BM 36-48, MR 49-54):
    #   right (u>0): atan2(-0, -u) = -pi -> position 0: pure red (the wheel's start/end).
    #   left  (u<0): atan2(0, +) = 0 -> position 27, in CB: B = 255, G = 255 - 46, R = 0: cyan.
    #   up    (v<0): atan2(+, 0) = pi/2 -> position 40.5, in BM: B = 255, R ~ 88: blue/violet.
    #   down  (v>0): atan2(-, 0) = -pi/2 -> position 13.5, in RY: R = 255, G ~ 230: yellow.
    def colour(u: float, v: float) -> np.ndarray:
        return flow_to_color(constant_flow(u, v), max_flow=2.0)[0, 0].astype(int)

    r, g, b = colour(2.0, 0.0)
    assert r == 255 and g < 30 and b < 30
    r, g, b = colour(-2.0, 0.0)
    assert r < 30 and g > 180 and b == 255
    r, g, b = colour(0.0, -2.0)
    assert b == 255 and r < 120 and g < 30
    r, g, b = colour(0.0, 2.0)
    assert r == 255 and g > 200 and b < 30


def test_flow_to_color_zero_white_dimming_and_unknown() -> None:
    image = flow_to_color(np.zeros((2, 3, 4)))
    assert image.shape == (3, 4, 3) and image.dtype == np.uint8
    assert (image == 255).all()
    half = flow_to_color(constant_flow(1.0, 0.0), max_flow=2.0)[0, 0]
    np.testing.assert_array_equal(half, [255, 127, 127])  # half-way from white to red
    beyond = flow_to_color(constant_flow(4.0, 0.0), max_flow=2.0)[0, 0]
    np.testing.assert_array_equal(beyond, [191, 0, 0])  # out of range: 75 % of red
    flow = constant_flow(1.0, 1.0)
    flow[0, 0, 0] = np.nan
    valid = np.ones((4, 5), bool)
    valid[1, 1] = False
    coded = flow_to_color(flow, valid=valid)
    assert (coded[0, 0] == 0).all() and (coded[1, 1] == 0).all() and coded[2, 2].max() == 255
    legend = color_wheel_legend(33)
    assert legend.shape == (33, 33, 3)
    assert (legend[16, 16] == 255).all() and (legend[0, 0] == 255).all()  # centre, outside


# ---------------------------------------------------------------- panels and animations


def test_flow_panel_writes_png(tmp_path: Path) -> None:
    from PIL import Image

    frame = smooth_texture(24, 24)
    gt = constant_flow(*SHIFT, 24, 24)
    row = {"frame": frame, "learned flow": gt * 0.9, "ground truth": gt,
           "warp error": np.abs(frame - shifted(frame, SHIFT))}
    out = flow_panel(tmp_path / "panel.png", [row, row], cmaps={"warp error": "magma"},
                     row_labels=["clip a", "clip b"], title="test", cell_inches=1.0, dpi=50)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 0


def test_flow_animation_gif_and_mp4(tmp_path: Path) -> None:
    from PIL import Image

    frames = np.stack([shifted(smooth_texture(20, 24), (t * 1.0, 0.0)) for t in range(5)])
    flows = np.stack([constant_flow(1.0, 0.0, 20, 24)] * 4)
    gif = flow_animation(frames, flows, tmp_path / "clip.gif", fps=5)
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.n_frames == 4
    # A static clip still gives T - 1 frames (the progress bar keeps them distinct).
    static = flow_animation(np.zeros((4, 8, 8)), np.zeros((3, 2, 8, 8)), tmp_path / "s.gif")
    with Image.open(static) as image:
        assert image.n_frames == 3
    av = pytest.importorskip("av")
    mp4 = flow_animation(frames, list(flows), tmp_path / "clip.mp4", fps=5)
    with av.open(str(mp4)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4
    with pytest.raises(ValueError):
        flow_animation(frames, flows[:2], tmp_path / "bad.gif")


# ---------------------------------------------------------------- classical flow


@pytest.mark.parametrize("method", ["dis", "farneback"])
@pytest.mark.parametrize("size", [(56, 56), (240, 320)])
def test_classical_flow_recovers_subpixel_shift(method: str, size: tuple[int, int]) -> None:
    frame0 = smooth_texture(*size, seed=4)
    frame1 = shifted(frame0, SHIFT)
    margin = 8  # the border sees reflected texture that does not move with the shift
    gt = constant_flow(*SHIFT, *size)
    for first, second in [(frame0, frame1), ((frame0 * 255).round().astype(np.uint8),
                                             (frame1 * 255).round().astype(np.uint8))]:
        flow = classical_flow(first, second, method=method)
        assert flow.shape == (2, *size) and flow.dtype == np.float32
        interior = (slice(None), slice(margin, -margin), slice(margin, -margin))
        assert endpoint_error(flow[interior], gt[interior]) < 0.3


def test_dis_upsamples_tiny_frames_and_clip_helper() -> None:
    frame0 = smooth_texture(10, 10, seed=5)
    flow = ClassicalFlow("dis")(frame0, frame0)  # raw OpenCV DIS refuses 10 x 10
    assert flow.shape == (2, 10, 10) and np.abs(flow).max() < 0.5
    frames = np.stack([shifted(smooth_texture(40, 48, seed=6), (t * 1.0, 0.0)) for t in range(4)])
    flows = clip_classical_flow(frames, method="dis")
    assert flows.shape == (3, 2, 40, 48) and flows.dtype == np.float32
    assert np.median(flows[:, 0, 8:-8, 8:-8]) == pytest.approx(1.0, abs=0.2)
    with pytest.raises(ValueError):
        classical_flow(frame0, frame0, method="lucas-kanade")

"""The ``flow`` command and :func:`flowaction.inference.video_flow.estimate_video_flow` on a generated video."""
import json
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
import torch

from flowaction.checkpoint import save_checkpoint
from flowaction.cli import main
from flowaction.config import from_dict, to_dict
from flowaction.inference.video_flow import estimate_video_flow, video_pairs
from flowaction.models.build import build_model

HEIGHT, WIDTH, FRAMES, SPEED = 64, 80, 12, 2  # SPEED: pixels per frame, to the right
TINY = ["model.depth=10", "model.flow_width=8", "data.crop=32", "data.num_frames=7"]


def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth noise with strong contrast, uint8 ``(height, width)``: DIS needs texture to lock on."""
    noise = np.random.default_rng(seed).normal(size=(height, width)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    smooth = (smooth - smooth.mean()) / smooth.std()
    return np.clip(128 + 45 * smooth, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """mpeg4 AVI, 64 x 80, 12 frames of a texture translating right by 2 px per frame."""
    path = tmp_path_factory.mktemp("video") / "moving.avi"
    texture = _texture(HEIGHT, WIDTH + SPEED * FRAMES)
    origin = SPEED * FRAMES
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.bit_rate = 8_000_000  # near-lossless: compression noise must not hide the motion
        for t in range(FRAMES):
            # frame_t(x) = texture(x - 2t): the content moves right by integer pixels
            gray = np.ascontiguousarray(texture[:, origin - SPEED * t : origin - SPEED * t + WIDTH])
            frame = av.VideoFrame.from_ndarray(np.repeat(gray[..., None], 3, axis=2), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised tiny model, saved as a real checkpoint (nothing is trained)."""
    cfg = from_dict({}, TINY)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=4)
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    save_checkpoint(path, {"config": to_dict(cfg), "classes": ["a", "b", "c", "d"], "model": model.state_dict()})
    return path


def test_flow_command_all_methods(video, checkpoint, tmp_path):
    out = tmp_path / "flow"
    code = main(["flow", str(video), "--checkpoint", str(checkpoint), "--out", str(out), "--method", "all",
                 "--no-progress"])
    assert code == 0
    pairs = FRAMES - 2  # stride 1: a triplet (t-1, t, t+1) for every middle frame
    for method in ("learned", "dis", "farneback"):
        files = sorted((out / "flo" / method).glob("*.flo"))
        assert [f.name for f in files] == [f"{p:06d}.flo" for p in range(pairs)]
        flow = cv2.readOpticalFlow(str(files[0]))
        assert flow.shape == (64, 80, 2)  # the whole frame at the training scale, OpenCV's (H, W, 2) layout
        assert (out / f"flow_{method}.gif").stat().st_size > 0
    assert (out / "panel.png").stat().st_size > 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_pairs"] == pairs and summary["num_frames"] == FRAMES
    assert summary["frame_size"] == [64, 80] and summary["stride"] == 1 and summary["crop"] == 0
    # the tiny config keeps the default generated-benchmark size: decoded at short side 64
    assert summary["short_side"] == 64 and summary["decoded_size"] == [64, 80]
    for method in ("learned", "dis", "farneback"):
        row = summary["methods"][method]
        for key in ("charbonnier", "l1", "ms_per_pair"):
            assert np.isfinite(row[key]) and row[key] >= 0, (method, key)
    # the random model's flow heads start at zero: it scores exactly what zero flow scores,
    # while DIS explains the motion far better
    assert summary["methods"]["learned"]["l1"] == pytest.approx(summary["zero_flow"]["l1"])
    assert summary["methods"]["dis"]["l1"] < 0.5 * summary["zero_flow"]["l1"]

    # frames go in in the right order: DIS sees the texture move right by 2 px per frame
    dis = np.stack([cv2.readOpticalFlow(str(out / "flo" / "dis" / f"{p:06d}.flo")) for p in range(pairs)])
    interior = dis[:, 6:-6, 6:-6]
    assert interior[..., 0].mean() == pytest.approx(SPEED, abs=0.3)
    assert abs(interior[..., 1].mean()) < 0.3


def test_python_api_stride_and_max_frames(video):
    result = estimate_video_flow(video, "dis", size=64, crop=0, stride=3, max_frames=10)
    assert result["frames"].shape == (10, 64, 80) and result["frames"].dtype == np.float32
    assert 0.0 <= result["frames"].min() and result["frames"].max() <= 1.0
    assert list(result["pairs"]) == [0, 3, 6] == list(video_pairs(10, 3))
    assert result["flows"].shape == (3, 2, 64, 80)
    assert result["flows"][:, 0, 8:-8, 8:-8].mean() == pytest.approx(SPEED, abs=0.3)


def test_training_stride_whole_frame_and_classical_only(video, checkpoint, tmp_path):
    out = tmp_path / "flow"
    args = ["flow", str(video), "--checkpoint", str(checkpoint), "--out", str(out), "--method", "farneback",
            "--stride", "train", "--crop", "0", "--max-frames", "9", "--no-progress"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    # the tiny config keeps the default model.triplet_stride = 3: pairs 0->1, 3->4, 6->7
    assert summary["stride"] == 3 and summary["num_pairs"] == 3 and summary["frame_size"] == [64, 80]
    assert list(summary["methods"]) == ["farneback"]
    assert sorted(f.name for f in (out / "flo" / "farneback").iterdir()) == ["000000.flo", "000003.flo", "000006.flo"]
    assert not (out / "flo" / "learned").exists()


def test_errors_exit_2_with_a_message(video, tmp_path, capsys):
    missing = tmp_path / "missing.avi"
    assert main(["flow", str(missing), "--out", str(tmp_path / "a"), "--method", "dis", "--no-progress"]) == 2
    assert "no video at" in capsys.readouterr().err

    assert main(["flow", str(video), "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    assert "--checkpoint" in capsys.readouterr().err

    args = ["flow", str(video), "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "c")]
    assert main(args + ["--no-progress"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err

    corrupt = tmp_path / "corrupt.avi"
    corrupt.write_bytes(b"RIFF" + bytes(range(256)) * 8)  # an AVI header, then garbage
    assert main(["flow", str(corrupt), "--out", str(tmp_path / "d"), "--method", "dis", "--no-progress"]) == 2
    assert "cannot decode" in capsys.readouterr().err

    assert main(["flow", str(video), "--out", str(tmp_path / "e"), "--method", "dis", "--stride", "0"]) == 2
    assert "--stride" in capsys.readouterr().err


def test_crop_only_on_request_and_labelled_gifs(video, checkpoint, tmp_path):
    from PIL import Image

    out = tmp_path / "flow"
    assert main(["flow", str(video), "--checkpoint", str(checkpoint), "--out", str(out), "--method", "dis",
                 "--crop", "32", "--max-frames", "5", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frame_size"] == [32, 32] and summary["crop"] == 32
    with Image.open(out / "flow_dis.gif") as gif:
        frames = []
        for index in range(gif.n_frames):
            gif.seek(index)
            frames.append(np.asarray(gif.convert("RGB")))
    scale = 4  # 32-px frames are scaled to >= 128 px
    # caption strip (14 px) over frame | flow | colour key, progress bar under them
    assert frames[0].shape[1] == 3 * 32 * scale + 2 * 4
    captions = [f[:14] for f in frames]
    assert all((c < 128).any() for c in captions)  # text is drawn
    assert not np.array_equal(captions[0], captions[1])  # the frame index changes from frame to frame
    key = frames[0][14 : 14 + 32 * scale, -32 * scale :]
    assert len(np.unique(key.reshape(-1, 3), axis=0)) > 50  # a colour wheel, not a blank cell

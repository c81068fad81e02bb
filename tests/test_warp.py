import cv2
import numpy as np
import pytest
import torch

from flowaction.warp import backward_warp, in_frame_mask


def test_integer_shift_is_exact():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 12, 15)
    flow = torch.zeros(2, 2, 12, 15)
    flow[:, 0] = 2.0  # sample two pixels to the right
    flow[:, 1] = -1.0  # and one up
    out = backward_warp(image, flow)
    mask = in_frame_mask(flow)
    # exact up to the float32 rounding of grid_sample's coordinate normalisation
    assert torch.allclose(out[:, :, 1:, :-2], image[:, :, :-1, 2:], atol=1e-6, rtol=0)
    assert mask[:, 0, 1:, :-2].eq(1).all()
    assert mask[:, 0, 0, :].eq(0).all() and mask[:, 0, :, -2:].eq(0).all()


def test_zero_flow_is_identity():
    image = torch.rand(1, 1, 9, 7)
    assert torch.allclose(backward_warp(image, torch.zeros(1, 2, 9, 7)), image, atol=1e-6)


def test_matches_opencv_remap_on_subpixel_flow():
    rng = np.random.default_rng(0)
    height, width = 40, 50
    image = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 2)
    flow = rng.uniform(-3, 3, (2, height, width)).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    expected = cv2.remap(image, xs + flow[0], ys + flow[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    out = backward_warp(torch.from_numpy(image)[None, None], torch.from_numpy(flow)[None])[0, 0].numpy()
    interior = (slice(4, -4), slice(4, -4))  # away from the border, where both sample inside
    # OpenCV interpolates with 5-bit fixed-point weights, so agree to ~1/32 of the local contrast
    assert np.abs(out[interior] - expected[interior]).max() < 0.01
    assert np.abs(out[interior] - expected[interior]).mean() < 2e-3


def test_gradient_wrt_flow_gradcheck():
    torch.manual_seed(0)
    image = torch.rand(1, 2, 6, 7, dtype=torch.float64)
    # stay away from integer positions, where bilinear interpolation has a kink
    flow = (torch.rand(1, 2, 6, 7, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: backward_warp(image, f), (flow,), eps=1e-6, atol=1e-5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        backward_warp(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 8, 9))

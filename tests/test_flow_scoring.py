"""Flow scoring during training and evaluation: all valid pixels and moving pixels, on hand-made fields."""
import numpy as np
import pytest
import torch

from flowaction.flow.metrics import MOVING_THRESHOLD, FlowErrors, flow_summary
from flowaction.engine.evaluate import gt_flow_for_model, score_flows


def _field(values: list[tuple[float, float]]) -> torch.Tensor:
    """A 1 x 4 flow field (1, 2, 1, 4) from four (u, v) vectors."""
    return torch.tensor(values, dtype=torch.float32).T.reshape(1, 2, 1, 4)


def test_moving_pixels_are_valid_and_longer_than_the_threshold():
    gt = _field([(0, 0), (0.05, 0), (3, 4), (1, 0)])  # |gt| = 0, 0.05, 5, 1
    valid = torch.tensor([[[True, True, True, False]]])
    pred = _field([(1, 0), (0.05, 0), (3, 0), (9, 9)])  # errors 1, 0, 4, (invalid)
    errors = FlowErrors()
    errors.add(gt, valid, {"learned": pred, "zero": torch.zeros_like(gt)})
    result = errors.result()
    assert result["valid_pixels"] == 3 and result["moving_pixels"] == 1  # only the (3, 4) pixel moves
    assert result["epe"] == pytest.approx((1 + 0 + 4) / 3)
    assert result["moving_epe"] == pytest.approx(4.0)
    assert result["zero_epe"] == pytest.approx((0 + 0.05 + 5) / 3)
    assert result["zero_moving_epe"] == pytest.approx(5.0)
    assert MOVING_THRESHOLD == 0.1


def test_pixel_weighted_over_batches_and_none_without_moving_pixels():
    errors = FlowErrors()
    static = torch.zeros(1, 2, 1, 4)
    errors.add(static, torch.ones(1, 1, 4, dtype=torch.bool), {"learned": static + 1.0})
    assert errors.result()["moving_epe"] is None  # nothing moves: no moving-pixel score
    moving_gt = _field([(2, 0)] * 4)
    errors.add(moving_gt, torch.tensor([[[True, False, False, False]]]), {"learned": moving_gt})
    result = errors.result()
    # 4 static pixels with error sqrt(2), 1 moving pixel with error 0: a pixel-weighted mean
    assert result["epe"] == pytest.approx(4 * np.sqrt(2) / 5)
    assert result["moving_epe"] == pytest.approx(0.0)
    names = flow_summary(result)
    assert names["flow_epe"] == result["epe"] and names["flow_moving_epe"] == 0.0 and names["dis_epe"] is None


def test_score_flows_puts_dis_and_zero_on_the_same_pixels():
    rng = np.random.default_rng(0)
    texture = rng.random((40, 48)).astype(np.float32)
    texture = torch.nn.functional.avg_pool2d(torch.from_numpy(texture)[None, None], 3, 1, 1)[0, 0]
    shift = 2  # every frame moves 2 px to the right: frame t+1 (x) = frame t (x - 2)
    frames = torch.stack([torch.roll(texture, t * shift, dims=1) for t in range(4)])[None, None]  # (1, 1, 4, H, W)
    flow = torch.zeros(1, 3, 2, 40, 48)
    flow[:, :, 0] = shift
    valid = torch.ones(1, 3, 40, 48, dtype=torch.bool)
    valid[..., :6] = valid[..., -6:] = False  # the wrapped-around border is not a true match
    batch = {"frames": frames, "flow": flow, "valid": valid}
    learned = torch.zeros(1, 2, 1, 40, 48)
    learned[:, 0] = shift
    result = score_flows(learned, batch, stride=3).result()
    assert result["epe"] == pytest.approx(0.0) and result["moving_epe"] == pytest.approx(0.0)
    assert result["zero_moving_epe"] == pytest.approx(2.0) and result["moving_pixels"] == result["valid_pixels"]
    assert result["dis_moving_epe"] < 0.5  # DIS finds a plain translation
    gt, mask = gt_flow_for_model(flow, valid, 1, 3)
    assert gt.shape == (1, 2, 1, 40, 48) and mask.shape == (1, 1, 40, 48)

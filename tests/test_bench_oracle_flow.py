"""The oracle benchmark's pooled ground truth keeps the mean motion and loses the motion boundaries."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_oracle_flow.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_oracle_flow_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pooling_by_one_is_the_truth_itself():
    flow = torch.randn(2, 3, 2, 12, 12)
    assert _bench().pooled_flow(flow, 1) is flow


def test_a_uniform_flow_survives_pooling_and_a_thin_moving_limb_is_blurred():
    bench = _bench()
    uniform = torch.full((1, 1, 2, 16, 16), 1.5)
    assert torch.allclose(bench.pooled_flow(uniform, 4), uniform, atol=1e-6)
    limb = torch.zeros(1, 1, 2, 16, 16)
    limb[..., 0, :, 7:9] = 2.0  # a 2-pixel-wide column moving 2 px to the right
    pooled = bench.pooled_flow(limb, 4)
    assert pooled.shape == limb.shape
    assert float(pooled[..., 0, :, 7:9].max()) < 1.5           # the limb's own motion is diluted
    assert float(pooled[..., 0, :, 3].abs().max()) > 0.1       # and spread onto the still pixels beside it
    assert abs(float(pooled[..., 0, :, :].sum()) - float(limb[..., 0, :, :].sum())) < 0.1 * float(limb.sum())

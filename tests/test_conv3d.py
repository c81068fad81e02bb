"""The 3D convolution trains right in reduced precision on a CPU: its weight gradient is taken over
the input padded beforehand there, and the gradients of a bf16-trained 3D ResNet agree with
float32 on the short clips a joint model feeds it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flowaction.config import from_dict
from flowaction.models import conv3d as conv3d_module
from flowaction.models.resnet3d import resnet3d
from flowaction.speedups import apply_cpu_speedups


def _gradients(net: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, bf16: bool) -> dict[str, torch.Tensor]:
    net.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = net(x)
    F.cross_entropy(logits.float(), labels).backward()
    return {name: p.grad.clone() for name, p in net.named_parameters()}


@pytest.mark.parametrize("speedups", [False, True])
# 2, 5 and 8 steps: after the stem, the deep stages see 1 to 4 steps under a 3-step kernel
@pytest.mark.parametrize("steps", [2, 5, 8])
def test_a_bf16_trained_3d_resnet_gets_the_float32_gradients_on_short_clips(steps, speedups) -> None:
    torch.manual_seed(0)
    net = resnet3d(10, in_channels=2, num_classes=14)
    if speedups:
        apply_cpu_speedups(net, from_dict({}))
    x = torch.randn(4, 2, steps, 40, 40)
    labels = torch.arange(4)
    reference = _gradients(net, x, labels, bf16=False)
    reduced = _gradients(net, x, labels, bf16=True)
    for name, grad in reduced.items():
        assert torch.isfinite(grad).all(), name
        # bf16 activations through ten layers put up to a third of a gradient's norm off; a
        # convolution whose weight gradient is computed wrong is 0.7 or more off, or not finite
        error = (grad - reference[name]).norm() / reference[name].norm()
        assert error <= 0.5, f"{name}: relative error {error:.2f}"


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 7])
def test_the_stem_convolutions_bf16_weight_gradient_matches_float32(steps) -> None:
    torch.manual_seed(0)
    weight = torch.randn(16, 2, 7, 7, 7, requires_grad=True)
    x = torch.randn(2, 2, steps, 20, 20)
    grad_out = torch.randn(2, 16, steps, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv3d_module.conv3d(x, weight, None, (1, 2, 2), (3, 3, 3))
    reduced, = torch.autograd.grad(out, weight, grad_out.to(out.dtype))
    exact, = torch.autograd.grad(F.conv3d(x, weight, None, (1, 2, 2), (3, 3, 3)), weight, grad_out)
    assert torch.isfinite(reduced).all()
    assert (reduced - exact).abs().max().item() <= 0.02 * exact.abs().max().item()


@pytest.mark.parametrize("kernel,stride,padding,dilation,size", [
    ((7, 7, 7), (1, 2, 2), (3, 3, 3), (1, 1, 1), (5, 20, 20)), ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), (2, 5, 5)),
    ((3, 3, 3), (2, 2, 2), (1, 2, 1), (1, 2, 1), (3, 6, 7)),
])
def test_the_padded_weight_gradient_route_gives_the_convolutions_own_gradients(kernel, stride, padding, dilation,
                                                                               size) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, *kernel, dtype=torch.float64, requires_grad=True)
    out = conv3d_module.PaddedWeightGradConv3d.apply(x, weight, stride, padding, dilation, 1)
    expected = F.conv3d(x, weight, None, stride, padding, dilation)
    grad_out = torch.randn_like(expected)
    torch.testing.assert_close(out, expected)
    for mine, theirs in zip(torch.autograd.grad(out, (x, weight), grad_out),
                            torch.autograd.grad(expected, (x, weight), grad_out)):
        torch.testing.assert_close(mine, theirs)


def test_conv3d_takes_the_route_only_when_a_cpu_trains_in_reduced_precision(monkeypatch) -> None:
    calls = []
    original = conv3d_module.PaddedWeightGradConv3d.apply
    monkeypatch.setattr(conv3d_module.PaddedWeightGradConv3d, "apply", lambda *a: calls.append(a[0].dtype) or original(*a))
    conv = conv3d_module.Conv3d(2, 4, kernel_size=3, padding=1, bias=True)
    x = torch.randn(1, 2, 2, 6, 6, requires_grad=True)
    conv(x)  # float32 training
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x)  # bf16 inference
    unpadded = conv3d_module.Conv3d(2, 4, kernel_size=(1, 3, 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        unpadded(x)  # nothing to pad
        out = conv(x)  # bf16 training
        reference = F.conv3d(x, conv.weight, conv.bias, 1, 1)
        conv(torch.randn(1, 2, 3, 6, 6, requires_grad=True))  # 3 steps, padding 1: oneDNN's own is right
    assert calls == [torch.bfloat16]
    torch.testing.assert_close(out.float(), reference.float(), rtol=0.02, atol=0.02)  # the bias is added too
    out.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32 and conv.bias.grad is not None


@pytest.mark.parametrize("steps,padding,expected", [(1, 1, False), (2, 1, True), (3, 1, False), (2, 3, True),
                                                    (6, 3, True), (7, 3, False), (5, 0, False)])
def test_the_route_covers_the_clips_the_temporal_padding_covers(steps, padding, expected) -> None:
    assert conv3d_module.needs_padded_weight_grad(torch.empty(1, 1, steps, 4, 4), (padding, 1, 1)) is expected


# the shapes left to oneDNN: a clip longer than both sides' temporal padding, or one step long
@pytest.mark.parametrize("kernel,channels,steps,side,stride", [
    (3, 64, 1, 10, (1, 1, 1)), (3, 64, 3, 10, (1, 1, 1)), (3, 64, 3, 2, (1, 1, 1)), (3, 64, 4, 1, (1, 1, 1)),
    (3, 64, 3, 10, (2, 2, 2)), (3, 128, 5, 4, (2, 2, 2)), (3, 128, 8, 5, (1, 1, 1)),
    (7, 2, 1, 40, (1, 2, 2)), (7, 2, 7, 40, (1, 2, 2)), (7, 2, 8, 20, (1, 2, 2)),
])
def test_onednns_own_bf16_weight_gradient_is_right_outside_the_route(kernel, channels, steps, side, stride) -> None:
    padding = (kernel // 2,) * 3
    assert not conv3d_module.needs_padded_weight_grad(torch.empty(1, 1, steps, side, side), padding)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, channels, steps, side, side, generator=generator)
    weight = torch.randn(64, channels, kernel, kernel, kernel, generator=generator) * 0.05
    grad = torch.randn(F.conv3d(x, weight, None, stride, padding).shape, generator=generator)

    def weight_grad(dtype):
        return torch.ops.aten.convolution_backward(grad.to(dtype), x.to(dtype), weight.to(dtype), None, stride,
                                                   padding, (1, 1, 1), False, (0, 0, 0), 1, (False, True, False))[1]

    exact, reduced = weight_grad(torch.float64), weight_grad(torch.bfloat16).double()
    # bf16 rounding puts 0.3 % of the norm off; the wrong gradients inside the route are 86 % off or NaN
    assert torch.isfinite(reduced).all() and (reduced - exact).norm() / exact.norm() <= 0.02

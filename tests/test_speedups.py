"""The CPU speed-ups: the same outputs and gradients as plain PyTorch, switched by config keys."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flowaction.config import from_dict
from flowaction.models.build import build_model
from flowaction.models.conv3d import Conv3d
from flowaction.models.resnet3d import resnet3d
from flowaction.speedups import apply_cpu_speedups, kernels
from flowaction.speedups.kernels import CpuConv3d


# the last two need padding on one side only (or crop input nobody reads): the F.pad path
_CONVS = [(3, 1, 1), (3, 2, 1), ((7, 7, 7), (1, 2, 2), (3, 3, 3)), (3, 1, 0), (3, 3, 1), (5, 3, 4)]
_SIZES = [(1, 1, 1), (1, 2, 2), (2, 4, 3), (3, 5, 1), (5, 7, 7)]


@pytest.mark.parametrize("kernel,stride,padding,size", [
    (k, s, p, n) for k, s, p in _CONVS for n in _SIZES
    if all(size + 2 * pad >= ker for size, ker, pad in zip(n, *(torch.nn.modules.utils._triple(v) for v in (k, p))))
])
def test_trimmed_conv_gives_the_outputs_and_gradients_of_the_full_kernel(kernel, stride, padding, size) -> None:
    torch.manual_seed(0)
    conv = CpuConv3d(3, 4, kernel, stride=stride, padding=padding, bias=True).double()
    x = torch.randn(2, 3, *size, dtype=torch.double, requires_grad=True)
    ours = conv(x)
    reference = F.conv3d(x, conv.weight, conv.bias, conv.stride, conv.padding)
    assert ours.shape == reference.shape and torch.allclose(ours, reference, atol=1e-12)
    grad = torch.randn_like(ours)
    mine = torch.autograd.grad(ours, (x, conv.weight, conv.bias), grad)
    full = torch.autograd.grad(reference, (x, conv.weight, conv.bias), grad)
    for a, b in zip(mine, full):
        assert torch.allclose(a, b, atol=1e-12)


def test_trimmed_conv_drops_the_taps_that_only_see_padding(monkeypatch) -> None:
    conv = CpuConv3d(2, 2, 3, padding=1, bias=False)
    calls = []
    original = F.conv3d
    # record the kernel each convolution runs with
    monkeypatch.setattr(F, "conv3d", lambda x, w, *args: calls.append(tuple(w.shape[2:])) or original(x, w, *args))
    conv(torch.randn(1, 2, 1, 1, 1))  # one position: only the centre tap reaches the input
    conv(torch.randn(1, 2, 1, 4, 4))  # one frame: the temporal taps -1 and +1 see padding only
    conv(torch.randn(1, 2, 3, 4, 4))  # every tap reaches the input: the whole kernel
    assert calls == [(1, 1, 1), (1, 3, 3), (3, 3, 3)]
    with pytest.raises(RuntimeError):  # an input smaller than the kernel: PyTorch's own error
        CpuConv3d(2, 2, 3)(torch.randn(1, 2, 1, 4, 4))


@pytest.mark.parametrize("kernel,stride,padding,size", [
    (k, s, p, n) for k, s, p in _CONVS + [((2, 4, 3), (2, 3, 2), (0, 2, 1))] for n in [(2, 4, 3), (5, 7, 7), (5, 8, 8)]
    if all(size + 2 * pad >= ker for size, ker, pad in zip(n, *(torch.nn.modules.utils._triple(v) for v in (k, p))))
])
def test_phase_input_gradient_equals_the_convolutions_own(kernel, stride, padding, size) -> None:
    from flowaction.speedups.kernels import PhaseInputGradConv3d

    torch.manual_seed(0)
    stride, padding, kernel = (torch.nn.modules.utils._triple(v) for v in (stride, padding, kernel))
    x = torch.randn(2, 3, *size, dtype=torch.double, requires_grad=True)
    weight = torch.randn(5, 3, *kernel, dtype=torch.double, requires_grad=True)
    reference = F.conv3d(x, weight, None, stride, padding)
    grad = torch.randn_like(reference)
    expected = torch.autograd.grad(reference, (x, weight), grad)
    for padded_weight_grad in (False, True):  # the weight gradient over the input padded beforehand, or not
        ours = PhaseInputGradConv3d.apply(x, weight, stride, padding, padded_weight_grad)
        assert ours.shape == reference.shape and torch.allclose(ours, reference, atol=1e-12)
        for a, b in zip(torch.autograd.grad(ours, (x, weight), grad), expected):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_the_stem_takes_the_phase_input_gradient_when_training_on_a_cpu(monkeypatch, amp) -> None:
    calls = []
    original = kernels.PhaseInputGradConv3d.apply
    monkeypatch.setattr(kernels.PhaseInputGradConv3d, "apply", lambda *a: calls.append(a[0].shape) or original(*a))
    torch.manual_seed(0)
    net = apply_cpu_speedups(resnet3d(10, in_channels=2, num_classes=3), from_dict({}))
    flows = torch.randn(2, 2, 5, 32, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
        net(flows).float().sum().backward()
    assert calls == [flows.shape]  # the stem only: the later convolutions have 64+ input channels
    reference = flows.grad.clone()
    weight_grad = net.conv1.weight.grad.clone()
    flows.grad = None
    net.zero_grad()
    apply_cpu_speedups(net, from_dict({}, ["cpu.phase_input_grad=false"]))  # oneDNN's input gradient everywhere
    with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
        net(flows).float().sum().backward()
    tolerance = 1e-4 if amp is None else 2e-2  # bf16 rounds the two routes' sums differently
    scale = reference.abs().max().item()
    assert torch.allclose(flows.grad, reference, rtol=tolerance, atol=tolerance * scale)
    assert torch.allclose(net.conv1.weight.grad, weight_grad, rtol=tolerance,
                          atol=tolerance * weight_grad.abs().max().item())
    apply_cpu_speedups(net, from_dict({}))
    with torch.no_grad():
        net(flows)  # inference and export: the plain convolution
    net(flows.detach())  # a ResNet on precomputed flows: no input gradient to compute
    assert len(calls) == 1


def test_a_config_saved_with_the_switchs_earlier_name_still_loads() -> None:
    assert from_dict({"cpu": {"gemm_input_grad": False}}).cpu.phase_input_grad is False
    assert from_dict({"cpu": {"gemm_input_grad": True}}).cpu.phase_input_grad is True


@pytest.mark.parametrize("switches", [[], ["cpu.trim_kernels=false"], ["cpu.phase_input_grad=false"],
                                      ["cpu.trim_kernels=false", "cpu.phase_input_grad=false"]])
def test_speedups_keep_the_parameter_names_outputs_and_gradients_of_the_plain_model(switches) -> None:
    cfg = from_dict({}, ["model.depth=10", "data.crop=32", *switches])
    torch.manual_seed(0)
    plain = build_model(cfg, 4)
    fast = build_model(cfg, 4)
    fast.load_state_dict(plain.state_dict())
    names = list(plain.state_dict())
    apply_cpu_speedups(fast, cfg)
    assert list(fast.state_dict()) == names  # checkpoints load either way
    convs = [m for m in fast.action_net.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size != (1, 1, 1)]
    on = cfg.cpu.trim_kernels or cfg.cpu.phase_input_grad
    assert all(isinstance(m, CpuConv3d) == on for m in convs) and convs
    assert all(m.trim == cfg.cpu.trim_kernels and m.phase_input_grad == cfg.cpu.phase_input_grad
               for m in convs if on)
    assert not any(isinstance(m, CpuConv3d) for m in fast.flow_net.modules())  # the ResNet's only
    frames = torch.rand(2, 1, 16, 32, 32)
    outputs, gradients = [], []
    for model in (plain, fast):
        logits, _ = model(frames)
        logits.sum().backward()
        outputs.append(logits.detach())
        gradients.append(model.action_net.layer4[0].conv1.weight.grad)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-3, atol=1e-5)


def test_speedups_are_undone_when_both_switches_are_off() -> None:
    net = apply_cpu_speedups(resnet3d(10, in_channels=2, num_classes=3), from_dict({}))
    assert isinstance(net.conv1, CpuConv3d)
    apply_cpu_speedups(net, from_dict({}, ["cpu.trim_kernels=false", "cpu.phase_input_grad=false"]))
    assert type(net.conv1) is Conv3d and not hasattr(net.conv1, "trim")

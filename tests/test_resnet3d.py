"""Tests for flowaction.models.resnet3d (Hara et al. 3D ResNets)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flowaction.models.resnet3d import ResNet3d, resnet3d

# Written out independently of the module under test (Hara's generate_model).
BLOCKS = {
    10: ("basic", [1, 1, 1, 1]),
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
    200: ("bottleneck", [3, 24, 36, 3]),
}
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _block_specs(depth: int, widen: float = 1.0):
    """Yield (layer_idx, block_idx, kind, c_in, width, c_out, stride) per residual block."""
    kind, counts = BLOCKS[depth]
    widths = [int(w * widen) for w in (64, 128, 256, 512)]
    c_in = widths[0]
    for li, (w, n) in enumerate(zip(widths, counts), start=1):
        c_out = w if kind == "basic" else 4 * w
        for bi in range(n):
            stride = 2 if (li > 1 and bi == 0) else 1
            yield li, bi, kind, c_in, w, c_out, stride
            c_in = c_out


def expected_shapes(depth: int, shortcut: str, in_ch: int = 3, classes: int = 400,
                    t: int = 7, widen: float = 1.0) -> dict[str, tuple[int, ...]]:
    """Hara's state-dict key -> shape, built from the architecture description."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int, k: tuple[int, int, int]) -> None:
        shapes[f"{name}.weight"] = (cout, cin, *k)

    def bn(name: str, c: int) -> None:
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (c,)
        shapes[f"{name}.running_mean"] = shapes[f"{name}.running_var"] = (c,)
        shapes[f"{name}.num_batches_tracked"] = ()

    c0 = int(64 * widen)
    conv("conv1", in_ch, c0, (t, 7, 7))
    bn("bn1", c0)
    c_last = c0
    for li, bi, kind, c_in, w, c_out, stride in _block_specs(depth, widen):
        p = f"layer{li}.{bi}"
        if kind == "basic":
            conv(f"{p}.conv1", c_in, w, (3, 3, 3)); bn(f"{p}.bn1", w)
            conv(f"{p}.conv2", w, w, (3, 3, 3)); bn(f"{p}.bn2", w)
        else:
            conv(f"{p}.conv1", c_in, w, (1, 1, 1)); bn(f"{p}.bn1", w)
            conv(f"{p}.conv2", w, w, (3, 3, 3)); bn(f"{p}.bn2", w)
            conv(f"{p}.conv3", w, c_out, (1, 1, 1)); bn(f"{p}.bn3", c_out)
        if shortcut == "B" and bi == 0 and (stride != 1 or c_in != c_out):
            conv(f"{p}.downsample.0", c_in, c_out, (1, 1, 1)); bn(f"{p}.downsample.1", c_out)
        c_last = c_out
    shapes["fc.weight"] = (classes, c_last)
    shapes["fc.bias"] = (classes,)
    return shapes


def expected_param_count(depth: int, shortcut: str, in_ch: int = 3, classes: int = 400,
                         t: int = 7, widen: float = 1.0) -> int:
    """Sum of conv / BN-affine / fc parameter counts (BN running stats are buffers)."""
    total = 0
    for key, shape in expected_shapes(depth, shortcut, in_ch, classes, t, widen).items():
        if key.rsplit(".", 1)[1] in BN_BUFFERS:
            continue
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_reference_count_resnet18_shortcut_a() -> None:
    # External anchor: Hara's resnet-18 (shortcut A, Kinetics-400) has 33,235,280 parameters.
    assert expected_param_count(18, "A") == 33_235_280
    with torch.device("meta"):
        model = resnet3d(18, shortcut="A")
    assert _n_params(model) == 33_235_280


@pytest.mark.parametrize("shortcut", ["A", "B"])
@pytest.mark.parametrize("depth", sorted(BLOCKS))
def test_param_count(depth: int, shortcut: str) -> None:
    with torch.device("meta"):  # no memory / init cost, even for depth 200
        model = resnet3d(depth, in_channels=3, num_classes=400, shortcut=shortcut)
    assert _n_params(model) == expected_param_count(depth, shortcut)


@pytest.mark.parametrize("kwargs", [
    dict(depth=10, shortcut="B", widen_factor=0.5),
    dict(depth=50, shortcut="A", widen_factor=2.0),
    dict(depth=18, shortcut="B", in_channels=2, num_classes=10, conv1_t_size=3),
])
def test_param_count_options(kwargs: dict) -> None:
    kw = dict(kwargs)
    depth, shortcut = kw.pop("depth"), kw.pop("shortcut")
    with torch.device("meta"):
        model = resnet3d(depth, shortcut=shortcut, **kw)
    expected = expected_param_count(depth, shortcut, in_ch=kw.get("in_channels", 3),
                                    classes=kw.get("num_classes", 400),
                                    t=kw.get("conv1_t_size", 7),
                                    widen=kw.get("widen_factor", 1.0))
    assert _n_params(model) == expected


def test_state_dict_keys_resnet18_b() -> None:
    with torch.device("meta"):
        model = resnet3d(18, shortcut="B")
    keys = set(model.state_dict())
    # Independently spelled-out module prefixes for Hara's resnet-18 (shortcut B).
    convs = ["conv1"] + [f"layer{l}.{b}.conv{c}" for l in range(1, 5) for b in range(2)
                         for c in (1, 2)] + [f"layer{l}.0.downsample.0" for l in (2, 3, 4)]
    bns = ["bn1"] + [f"layer{l}.{b}.bn{c}" for l in range(1, 5) for b in range(2)
                     for c in (1, 2)] + [f"layer{l}.0.downsample.1" for l in (2, 3, 4)]
    expected = {f"{c}.weight" for c in convs}
    expected |= {f"{b}.{s}" for b in bns for s in ("weight", "bias") + BN_BUFFERS}
    expected |= {"fc.weight", "fc.bias"}
    assert keys == expected
    for name in ["conv1.weight", "bn1.running_var", "layer1.0.conv1.weight",
                 "layer1.0.bn1.weight", "layer2.0.downsample.0.weight",
                 "layer2.0.downsample.1.num_batches_tracked", "layer4.1.bn2.bias", "fc.bias"]:
        assert name in keys
    assert "layer1.0.downsample.0.weight" not in keys  # layer1 keeps the identity
    assert model.state_dict()["conv1.weight"].shape == (64, 3, 7, 7, 7)
    assert model.state_dict()["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1, 1)


@pytest.mark.parametrize("depth,shortcut", [(10, "B"), (10, "A"), (50, "B")])
def test_hara_named_state_dict_loads_strict(depth: int, shortcut: str) -> None:
    shapes = expected_shapes(depth, shortcut)
    gen = torch.Generator().manual_seed(0)
    ckpt = {k: (torch.tensor(7) if k.endswith("num_batches_tracked")
                else torch.randn(s, generator=gen)) for k, s in shapes.items()}
    if depth >= 50:
        with torch.device("meta"):
            model = resnet3d(depth, shortcut=shortcut)
        model.load_state_dict(ckpt, strict=True, assign=True)
    else:
        model = resnet3d(depth, shortcut=shortcut)
        model.load_state_dict(ckpt, strict=True)
    sd = model.state_dict()
    assert set(sd) == set(ckpt)
    for k, v in ckpt.items():
        assert torch.equal(sd[k], v), k


def test_shortcut_a_has_no_downsample_keys() -> None:
    for depth in (18, 50):
        with torch.device("meta"):
            model = resnet3d(depth, shortcut="A")
        assert not [k for k in model.state_dict() if "downsample" in k]
        assert not [n for n, _ in model.named_parameters() if "downsample" in n]


def test_shortcut_a_is_subsample_plus_zero_channels() -> None:
    model = resnet3d(10, shortcut="A")
    ds = model.layer2[0].downsample
    x = torch.randn(2, 64, 3, 5, 5)
    y = ds(x)
    ref = torch.cat([x[:, :, ::2, ::2, ::2], torch.zeros(2, 64, 2, 3, 3)], dim=1)
    assert y.shape == (2, 128, 2, 3, 3)
    assert torch.equal(y, ref)
    assert torch.equal(F.avg_pool3d(x, 1, 2), x[:, :, ::2, ::2, ::2])


@pytest.mark.parametrize("depth", [10, 18])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_forward_shapes_two_channels(depth: int, shortcut: str) -> None:
    torch.manual_seed(0)
    model = resnet3d(depth, in_channels=2, num_classes=7, shortcut=shortcut)
    x = torch.randn(2, 2, 4, 32, 32)
    model.train()
    assert model(x).shape == (2, 7)
    model.eval()
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert feats.shape == (2, model.feature_dim) and model.feature_dim == 512


def test_forward_options_shapes() -> None:
    model = resnet3d(10, in_channels=2, num_classes=5, conv1_t_size=3, conv1_t_stride=2,
                     no_max_pool=True, widen_factor=0.5).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 2, 8, 24, 24))
    assert out.shape == (1, 5)
    assert model.conv1.kernel_size == (3, 7, 7) and model.conv1.stride == (2, 2, 2)
    assert model.conv1.padding == (1, 3, 3) and model.feature_dim == 256


def test_stem_and_init_follow_hara() -> None:
    model = resnet3d(10)
    c = model.conv1
    assert (c.kernel_size, c.stride, c.padding, c.bias) == ((7, 7, 7), (1, 2, 2), (3, 3, 3), None)
    mp = model.maxpool
    assert (mp.kernel_size, mp.stride, mp.padding) == (3, 2, 1)
    assert model.fc.bias is not None
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    # kaiming_normal_(mode="fan_out", relu): std = sqrt(2 / (out_ch * kernel volume))
    w = model.layer3[0].conv2.weight
    expected_std = (2.0 / (256 * 27)) ** 0.5
    assert abs(w.std().item() / expected_std - 1) < 0.05


@pytest.mark.parametrize("depth,shortcut", [(10, "A"), (18, "B")])
def test_every_parameter_gets_gradient(depth: int, shortcut: str) -> None:
    torch.manual_seed(0)
    model = resnet3d(depth, in_channels=2, num_classes=4, shortcut=shortcut).train()
    x = torch.randn(2, 2, 4, 32, 32, requires_grad=True)
    model(x).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        resnet3d(19)
    with pytest.raises(ValueError):
        resnet3d(18, shortcut="C")
    assert isinstance(resnet3d(10, num_classes=3), ResNet3d)

import pytest
import torch

from flowaction.losses import LossWeights, joint_loss
from flowaction.models.flownet import FlowNet
from flowaction.models.joint import JointModel
from flowaction.models.build import build_joint_model
from flowaction.triplets import num_triplets


@pytest.mark.parametrize("stride,expected", [(1, 14), (3, 5), (2, 7)])
def test_joint_model_shapes(stride, expected):
    model = build_joint_model(num_classes=6, depth=10, flow_width=8, triplet_stride=stride)
    logits, flows = model(torch.rand(2, 1, 16, 40, 40))
    assert num_triplets(16, stride) == expected
    assert logits.shape == (2, 6)
    assert flows.shape == (2, 2, expected, 40, 40)


def test_triplets_are_the_right_frames():
    model = build_joint_model(num_classes=2, depth=10, flow_width=8, triplet_stride=3)
    frames = torch.arange(16, dtype=torch.float32).view(1, 1, 16, 1, 1).expand(2, 1, 16, 4, 4)
    groups = model.triplets(frames)  # (B*N, 1, 3, H, W)
    assert groups.shape == (10, 1, 3, 4, 4)
    assert groups[1, 0, :, 0, 0].tolist() == [3.0, 4.0, 5.0]
    assert groups[5, 0, :, 0, 0].tolist() == [0.0, 1.0, 2.0]  # second clip starts again


@pytest.mark.parametrize("size", [(56, 56), (37, 50)])
def test_flownet_output_in_input_resolution(size):
    net = FlowNet(width=8)
    out = net(torch.rand(3, 1, 3, *size))
    assert out.shape == (3, 2, *size)
    with pytest.raises(ValueError):
        net(torch.rand(3, 1, 4, *size))


def _tiny_joint():
    torch.manual_seed(0)
    model = build_joint_model(num_classes=3, depth=10, flow_width=8, triplet_stride=2)
    # start the flow predictors away from zero so the gradient path is not trivially blocked
    for module in model.flow_net.modules():
        if isinstance(module, torch.nn.Conv2d) and module.out_channels == 2:
            torch.nn.init.normal_(module.weight, std=0.01)
    return model


def test_classification_loss_alone_trains_the_flow_network():
    model = _tiny_joint()
    frames = torch.rand(2, 1, 7, 32, 32)
    logits, flows = model(frames)
    weights = LossWeights(classification=1.0, photometric=0.0, smoothness=0.0)
    joint_loss(logits, torch.tensor([0, 2]), flows, frames, 2, weights)["total"].backward()
    stem_grad = model.flow_net.stem.weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0


def test_every_parameter_gets_a_gradient_from_the_joint_loss():
    model = _tiny_joint()
    frames = torch.rand(2, 1, 7, 32, 32)
    logits, flows = model(frames)
    joint_loss(logits, torch.tensor([0, 2]), flows, frames, 2)["total"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_joint_model_rejects_wrong_layout():
    model = build_joint_model(num_classes=2, depth=10, flow_width=8)
    with pytest.raises(ValueError):
        model(torch.rand(2, 3, 16, 32, 32))
    assert isinstance(model, JointModel)


def test_refine_level_starts_at_the_coarse_flow_and_corrects_every_pixel():
    torch.manual_seed(0)
    net = FlowNet(width=8, refine=True)
    for name in ("predict3", "predict2", "predict1"):  # give the coarse levels some flow
        torch.nn.init.normal_(getattr(net, name).weight, std=0.1)
    triplets = torch.rand(2, 1, 3, 20, 24)
    coarse_only = FlowNet(width=8)
    coarse_only.load_state_dict({k: v for k, v in net.state_dict().items()
                                 if not k.startswith(("dec0", "predict0"))})
    refined, pyramid = net(triplets, return_pyramid=True)
    # zero-initialised correction: the output is the upsampled half-resolution flow
    assert torch.equal(refined, coarse_only(triplets))
    assert pyramid[0].shape[-2:] == (10, 12)
    # a non-zero correction changes single pixels: not a bilinear upsample of a 10 x 12 field
    torch.nn.init.normal_(net.predict0.weight, std=0.1)
    correction = net(triplets) - coarse_only(triplets)
    assert correction.abs().mean() > 1e-3
    smooth = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(correction, 2), scale_factor=2,
                                             mode="bilinear", align_corners=False)
    assert (correction - smooth).abs().mean() > 0.1 * correction.abs().mean()


def test_flow_refine_config_builds_the_refine_level():
    from flowaction.config import from_dict
    from flowaction.models.build import build_model

    with_level = build_model(from_dict({}, ["model.flow_refine=true", "model.depth=10"]), 3)
    without = build_model(from_dict({}, ["model.depth=10"]), 3)
    assert with_level.flow_net.refine and hasattr(with_level.flow_net, "predict0")
    assert not without.flow_net.refine and not hasattr(without.flow_net, "predict0")


def test_flow_input_scale_runs_the_same_weights_on_enlarged_frames_and_returns_the_frames_grid():
    from flowaction.config import ConfigError, from_dict
    from flowaction.models.build import build_model

    torch.manual_seed(0)
    plain = FlowNet(width=8)
    for name in ("predict3", "predict2", "predict1"):  # some flow to compare
        torch.nn.init.normal_(getattr(plain, name).weight, std=0.1)
    enlarged = FlowNet(width=8, input_scale=2)
    enlarged.load_state_dict(plain.state_dict())  # the same weights fit: the switch adds none
    triplets = torch.rand(2, 1, 3, 20, 24)
    flow = enlarged(triplets)
    assert flow.shape == (2, 2, 20, 24)
    # by definition: the plain network on the frames enlarged 2x, its flow averaged over 2 x 2
    # cells and its vectors halved (pixels of the frames' own grid)
    big = torch.nn.functional.interpolate(triplets[:, 0], scale_factor=2, mode="bilinear",
                                          align_corners=False).unsqueeze(1)
    expected = torch.nn.functional.avg_pool2d(plain(big), 2) / 2
    assert torch.allclose(flow, expected, atol=1e-6)
    assert not torch.allclose(flow, plain(triplets), atol=1e-3)  # it is not the plain network's flow
    # its pyramid works at twice the frames' resolution: the finest level is the frames' grid
    assert enlarged(triplets, return_pyramid=True)[1][0].shape[-2:] == (20, 24)
    model = build_model(from_dict({}, ["model.flow_input_scale=2", "model.depth=10"]), 3)
    assert model.flow_net.input_scale == 2
    with pytest.raises(ConfigError, match="model.flow_input_scale must be > 0"):
        from_dict({}, ["model.flow_input_scale=0"])


def test_one_frame_model_sees_one_repeated_frame_and_nothing_else():
    from flowaction.models.joint import one_frame

    clips = torch.rand(3, 1, 8, 6, 6)
    still = one_frame(clips)  # eval: the middle frame
    assert torch.equal(still, clips[:, :, 4:5].expand_as(clips))
    torch.manual_seed(0)
    drawn = one_frame(clips, random=True)  # training: one frame drawn per clip, repeated
    for b in range(3):
        frame = drawn[b, :, 0]
        assert all(torch.equal(drawn[b, :, t], frame) for t in range(8))
        assert any(torch.equal(frame, clips[b, :, t]) for t in range(8))
    model = build_joint_model(num_classes=4, depth=10, input="one-frame").eval()
    # in eval mode every frame but the middle one can change without changing the prediction
    other = clips.clone()
    other[:, :, :4] = torch.rand(3, 1, 4, 6, 6)
    other[:, :, 5:] = torch.rand(3, 1, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(model(clips)[0], model(other)[0])
        assert not torch.allclose(model(clips)[0], model(torch.rand(3, 1, 8, 6, 6))[0])


def test_truth_model_classifies_the_ground_truth_of_the_triplets_pairs():
    from flowaction.config import LossWeights
    from flowaction.engine.step import forward_batch

    model = build_joint_model(num_classes=3, depth=10, triplet_stride=3, input="truth")
    flow = torch.randn(2, 15, 2, 8, 8)
    batch = {"frames": torch.rand(2, 1, 16, 8, 8), "label": torch.tensor([0, 2]), "flow": flow,
             "valid": torch.ones(2, 15, 8, 8, dtype=torch.bool)}
    logits, flows, _ = forward_batch(model, batch, torch.device("cpu"), LossWeights())
    assert logits.shape == (2, 3)
    assert torch.equal(flows, flow[:, [0, 3, 6, 9, 12]].transpose(1, 2))  # pair j*s -> j*s+1
    with pytest.raises(ValueError, match="ground-truth flow"):
        forward_batch(model, {k: v for k, v in batch.items() if k != "flow"}, torch.device("cpu"), LossWeights())


def test_the_pyramid_search_finds_a_motion_beyond_the_plain_cost_volume_and_warping_cancels_it():
    """At 1/8 resolution a shift of 8 px is one cell: the coarse cost is smallest there. After the
    second frame is warped back by that flow, the next level's cost is smallest at no shift."""
    torch.manual_seed(0)
    texture = torch.nn.functional.avg_pool2d(torch.randn(1, 1, 80, 80), 3, 1, 1)
    first, second = texture[..., 8:72, 8:72], texture[..., 8:72, 0:64]  # second = first moved 8 px right
    net = FlowNet(pyramid=True)
    r = net.search_radius
    shifts = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    coarse = net._level_cost(first, second, (8, 8), None)[..., 2:6, 2:6].mean((0, 2, 3))
    assert shifts[int(coarse.argmin())] == (0, 1)  # one cell of 8 px, to the right
    # the plain network's cost volume reaches +-3 px at full resolution: it cannot hold 8 px
    assert net.correlation_radius < 8
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 0] = 2.0  # the 8 px motion in pixels of the 1/4 level
    warped = net._level_cost(first, second, (16, 16), flow)[..., 4:12, 4:12].mean((0, 2, 3))
    assert shifts[int(warped.argmin())] == (0, 0)


def test_flow_pyramid_config_builds_it_and_weights_of_the_other_kind_are_refused(tmp_path):
    from flowaction.config import from_dict
    from flowaction.models.build import build_model
    from flowaction.models.weights import load_flow_weights, save_flow_weights

    model = build_model(from_dict({}, ["model.flow_pyramid=true", "model.depth=10"]), 3)
    assert model.flow_net.pyramid and hasattr(model.flow_net, "mix3")
    assert model(torch.rand(1, 1, 4, 40, 40))[1].shape == (1, 2, 1, 40, 40)  # stride 3: one triplet
    save_flow_weights(tmp_path / "pyramid.pt", model.flow_net, {})
    loaded = FlowNet(pyramid=True)
    load_flow_weights(loaded, tmp_path / "pyramid.pt")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.flow_net.state_dict().items())
    with pytest.raises(ValueError, match="with the search at every level.*model.flow_pyramid=false"):
        load_flow_weights(FlowNet(), tmp_path / "pyramid.pt")
    with pytest.raises(ValueError, match="without the search at every level.*model.flow_pyramid=true"):
        load_flow_weights(FlowNet(pyramid=True), "default")


@pytest.mark.parametrize("size", [(8, 8), (7, 8), (8, 5), (3, 3)])
def test_the_cost_volumes_pooling_equals_average_pooling_with_ceil_mode(size):
    from flowaction.models.flownet import _pool2

    x = torch.rand(3, 9, *size)
    expected = torch.nn.functional.avg_pool2d(x, 2, ceil_mode=True)
    ours = _pool2(x.clone())
    assert ours.shape == expected.shape and torch.allclose(ours, expected, atol=1e-6)


def test_the_cost_volume_holds_the_pooled_squared_difference_at_every_shift():
    net = FlowNet()
    r = net.correlation_radius
    first, second = torch.rand(2, 1, 12, 10), torch.rand(2, 1, 12, 10)
    padded = torch.nn.functional.pad(second, (r, r, r, r), mode="replicate")
    expected = torch.cat([(first - padded[..., r + dy:r + dy + 12, r + dx:r + dx + 10]).square()
                          for dy in range(-r, r + 1) for dx in range(-r, r + 1)], dim=1)
    expected = torch.nn.functional.avg_pool2d(expected, 2, ceil_mode=True)
    ours = net._cost_volume(first, second)
    assert ours.shape == (2, (2 * r + 1) ** 2, 6, 5) and torch.allclose(ours, expected, atol=1e-6)


def test_a_wider_search_finds_a_motion_the_default_radius_cannot_hold():
    """24 px is three cells at 1/8 resolution: beyond the default search of +-2 cells, the smallest
    cost of ``flow_search=3`` there."""
    torch.manual_seed(0)
    texture = torch.nn.functional.avg_pool2d(torch.randn(1, 1, 112, 112), 3, 1, 1)
    first, second = texture[..., 24:88, 24:88], texture[..., 24:88, 0:64]  # second = first moved 24 px right
    wide, default = FlowNet(pyramid=True, search_radius=3), FlowNet(pyramid=True)
    assert default.search_radius == 2
    r = wide.search_radius
    shifts = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    cost = wide._level_cost(first, second, (8, 8), None)
    assert cost.shape[1] == 49 and default._level_cost(first, second, (8, 8), None).shape[1] == 25
    assert shifts[int(cost[..., 3:5, 3:5].mean((0, 2, 3)).argmin())] == (0, 3)
    assert wide(torch.rand(1, 1, 3, 40, 48)).shape == (1, 2, 40, 48)


def test_flow_features_compare_an_encoders_features_of_each_frame_at_every_level():
    torch.manual_seed(0)
    net = FlowNet(pyramid=True, features=True)
    first, second = torch.rand(2, 1, 37, 45), torch.rand(2, 1, 37, 45)
    levels = net._pyramid_inputs(first, second)
    # the same encoder for both frames, at the resolution of each decoder level (1/2, 1/4, 1/8)
    assert [tuple(a.shape[1:]) for a, _ in levels] == [(8, 19, 23), (16, 10, 12), (32, 5, 6)]
    assert torch.equal(levels[0][1], net.feat1(second))
    assert torch.equal(levels[2][0], net.feat3(net.feat2(net.feat1(first))))
    # the cost of C channels is the mean of the channels' own costs
    a, b = levels[1]
    per_channel = torch.stack([net._level_cost(a[:, c:c + 1], b[:, c:c + 1], (10, 12), None) for c in range(16)])
    torch.testing.assert_close(net._level_cost(a, b, (10, 12), None), per_channel.mean(0))
    # the plain search compares the frames themselves, and the features are trained by the flow loss
    assert FlowNet(pyramid=True)._pyramid_inputs(first, second)[0][0] is first
    trained = FlowNet(pyramid=True, features=True, zero_output=False)  # zero predictors pass no gradient
    trained(torch.rand(1, 1, 3, 37, 45)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.feat1.parameters())


def test_flow_features_need_the_pyramid_and_files_of_another_search_are_refused_naming_both(tmp_path):
    from flowaction.config import ConfigError, from_dict
    from flowaction.models.build import build_model, flow_network
    from flowaction.models.weights import load_flow_weights, save_flow_weights

    with pytest.raises(ValueError, match="pyramid=True"):
        FlowNet(features=True)
    with pytest.raises(ConfigError, match="model.flow_pyramid=true"):
        from_dict({}, ["model.flow_features=true"])
    with pytest.raises(ConfigError, match="model.flow_search must be > 0"):
        from_dict({}, ["model.flow_search=0"])
    cfg = from_dict({}, ["model.flow_pyramid=true", "model.flow_features=true", "model.flow_search=3", "model.depth=10"])
    net = build_model(cfg, 3).flow_net
    assert net.features and net.search_radius == 3 and isinstance(flow_network(cfg.model), FlowNet)
    save_flow_weights(tmp_path / "feat.pt", net, {})
    loaded = FlowNet(pyramid=True, features=True, search_radius=3)
    load_flow_weights(loaded, tmp_path / "feat.pt")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="model.flow_features=true; this model has model.flow_features=false"):
        load_flow_weights(FlowNet(pyramid=True, search_radius=3), tmp_path / "feat.pt")
    with pytest.raises(ValueError, match="model.flow_search=3; this model has model.flow_search=2"):
        load_flow_weights(FlowNet(pyramid=True, features=True), tmp_path / "feat.pt")
    load_flow_weights(FlowNet(pyramid=True), "scenes")  # a file written before the keys: the defaults

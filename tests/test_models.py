import pytest
import torch

from flowaction.losses import LossWeights, joint_loss
from flowaction.models.flownet import FlowNet
from flowaction.models.joint import JointModel, build_joint_model, num_triplets


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

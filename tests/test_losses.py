import numpy as np
import pytest
import torch

from flowaction.losses import LossWeights, charbonnier, joint_loss, photometric_loss, smoothness_loss


def test_charbonnier_values():
    x = torch.tensor([0.0, 1.0, -2.0])
    assert torch.allclose(charbonnier(x, alpha=0.5, eps=0.0), x.abs())
    assert charbonnier(torch.tensor(0.0), 0.45, 1e-3).item() == pytest.approx((1e-6) ** 0.45)
    assert charbonnier(torch.tensor(3.0), 0.45, 1e-3).item() == pytest.approx((9 + 1e-6) ** 0.45)


def test_smoothness_zero_for_constant_flow_and_positive_otherwise():
    flow = torch.ones(2, 2, 10, 10) * torch.tensor([1.5, -0.5]).view(1, 2, 1, 1)
    floor = 4 * (1e-6) ** 0.45  # four terms at zero gradient are eps^(2 alpha) each
    assert smoothness_loss(flow).item() == pytest.approx(floor, rel=1e-4)
    assert smoothness_loss(flow, eps=0.0).item() == 0.0
    rough = flow + torch.randn_like(flow)
    assert smoothness_loss(rough).item() > 0.5


def test_photometric_loss_masks_out_of_frame_samples():
    frame = torch.rand(1, 1, 16, 16)
    # a flow that points everything 100 px away: nothing is in frame, the loss must not divide by 0
    far = torch.full((1, 2, 16, 16), 100.0)
    assert torch.isfinite(photometric_loss(frame, frame, far))
    assert photometric_loss(frame, frame, far).item() == 0.0


def test_photometric_loss_small_with_ground_truth_flow_of_generated_clip():
    from flowaction.data.synthetic import SyntheticSpec, clip_rng, render_clip

    spec = SyntheticSpec()
    for label in range(spec.num_classes):
        clip = render_clip(label, clip_rng(3, "test", label), spec)
        frames = torch.from_numpy(clip.frames.astype(np.float32) / 255.0)
        prev, cur = frames[:-1, None], frames[1:, None]
        gt = torch.from_numpy(clip.flow)
        valid = torch.from_numpy(clip.valid)[:, None].float()
        with_gt = photometric_loss(prev, cur, gt, alpha=0.5, eps=0.0, extra_mask=valid).item()
        with_zero = photometric_loss(prev, cur, torch.zeros_like(gt), alpha=0.5, eps=0.0, extra_mask=valid).item()
        # alpha 0.5, eps 0: the mean absolute intensity error on valid pixels
        assert with_gt < 0.01, (label, with_gt)
        assert with_gt < 0.5 * with_zero, (label, with_gt, with_zero)


def test_joint_loss_combines_the_terms_with_their_weights():
    torch.manual_seed(0)
    frames = torch.rand(2, 1, 7, 12, 12)
    flows = torch.randn(2, 2, 3, 12, 12, requires_grad=True)
    logits = torch.randn(2, 4, requires_grad=True)
    labels = torch.tensor([1, 3])
    weights = LossWeights(classification=0.5, photometric=2.0, smoothness=0.3)
    terms = joint_loss(logits, labels, flows, frames, stride=2, weights=weights)
    expected = 0.5 * terms["classification"] + 2.0 * terms["photometric"] + 0.3 * terms["smoothness"]
    assert torch.allclose(terms["total"], expected)
    # the photometric term pairs frame j*s with j*s+1 of each triplet, clip-major
    prev = frames[:, :, [0, 2, 4]].transpose(1, 2).flatten(0, 1)
    cur = frames[:, :, [1, 3, 5]].transpose(1, 2).flatten(0, 1)
    direct = photometric_loss(prev, cur, flows.transpose(1, 2).flatten(0, 1))
    assert torch.allclose(terms["photometric"], direct)


def test_census_and_ssim_terms_ignore_a_brightness_change_that_charbonnier_pays_for():
    from flowaction.losses import photometric_loss

    generator = torch.Generator().manual_seed(0)
    prev = torch.rand(2, 1, 24, 24, generator=generator) * 0.6 + 0.2
    cur = prev + 0.15  # the light changed; nothing moved
    zero = torch.zeros(2, 2, 24, 24)
    charbonnier = float(photometric_loss(prev, cur, zero, term="charbonnier"))
    census = float(photometric_loss(prev, cur, zero, term="census"))
    ssim = float(photometric_loss(prev, cur, zero, term="ssim"))
    # census: only the Charbonnier floor (eps^2)^alpha = 0.002 is left
    assert charbonnier > 0.1 and census < 0.01 and ssim < 0.25 * charbonnier


def test_edge_aware_smoothness_lets_the_flow_break_at_an_image_edge():
    from flowaction.losses import smoothness_loss

    image = torch.zeros(1, 1, 16, 16)
    image[..., 8:] = 1.0  # an edge between columns 7 and 8
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 0, :, 8:] = 2.0  # the flow breaks exactly there
    plain = float(smoothness_loss(flow, image=image, edge_weight=0.0))
    aware = float(smoothness_loss(flow, image=image, edge_weight=10.0))
    assert aware < 0.1 * plain
    moved = torch.zeros(1, 2, 16, 16)
    moved[:, 0, :, 4:] = 2.0  # a break where the image is flat is not excused
    assert float(smoothness_loss(moved, image=image, edge_weight=10.0)) == pytest.approx(plain, rel=0.01)


def test_occlusion_masks_leave_out_pixels_that_fail_the_forward_backward_check():
    from flowaction.loss_variants import forward_backward_visibility
    from flowaction.losses import photometric_loss

    generator = torch.Generator().manual_seed(1)
    prev, cur = torch.rand(1, 1, 16, 16, generator=generator), torch.rand(1, 1, 16, 16, generator=generator)
    forward = torch.zeros(1, 2, 16, 16)
    backward = torch.zeros(1, 2, 16, 16)
    backward[:, 0, :, :8] = 3.0  # inconsistent on the left half: occluded there
    visible = forward_backward_visibility(forward, backward)
    assert visible[..., :8].max() == 0 and visible[..., 8:].min() == 1
    masked = float(photometric_loss(prev, cur, forward, extra_mask=visible))
    right_half = float(photometric_loss(prev[..., 8:], cur[..., 8:], forward[..., 8:]))
    assert masked == pytest.approx(right_half, rel=1e-4)  # the occluded half does not count


def test_second_order_smoothness_is_free_on_affine_flow_and_first_order_is_not():
    # a rotation plus an expansion: the flow of the demo's hardest classes, linear in x and y
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    x, y = xs - 7.5, ys - 7.5
    affine = torch.stack((-0.05 * y + 0.03 * x, 0.05 * x + 0.03 * y))[None]
    first = float(smoothness_loss(affine, eps=0.0, order=1))
    second = float(smoothness_loss(affine, eps=0.0, order=2))
    assert first > 0.1
    assert second < 1e-4
    # a curved field is not free under either order
    curved = torch.stack((0.01 * x * x, 0.01 * y * y))[None]
    assert float(smoothness_loss(curved, eps=0.0, order=2)) > 0.01
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        smoothness_loss(affine, order=3)


def test_smooth_order_reaches_the_joint_loss():
    flow = torch.zeros(1, 2, 2, 8, 8)
    flow[:, 0] = torch.arange(8.0) * 0.1  # u grows linearly along x: affine
    frames = torch.rand(1, 1, 6, 8, 8)
    first = flow_terms_with(LossWeights(smooth_order=1, eps=0.0), flow, frames)
    second = flow_terms_with(LossWeights(smooth_order=2, eps=0.0), flow, frames)
    assert first["smoothness"] > 0.05
    assert second["smoothness"] < 1e-4
    assert float(first["photometric"]) == float(second["photometric"])


def flow_terms_with(weights, flow, frames):
    from flowaction.losses import flow_loss_terms

    return {k: float(v) for k, v in flow_loss_terms(flow, frames, 3, weights).items()}


def test_long_pair_doubles_the_photometric_evidence_of_a_sub_pixel_motion():
    # three frames of a smooth pattern moving 0.3 px right per frame: frame_t(x) = pattern(x - 0.3 t)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")

    def pattern(x, y):
        return 0.5 + 0.2 * torch.sin(0.5 * x + 0.3 * y) + 0.2 * torch.cos(0.35 * y - 0.4 * x)

    frames = torch.stack([pattern(xs - 0.3 * t, ys) for t in range(3)])[None, None]
    truth = torch.zeros(1, 2, 1, 32, 32)
    truth[:, 0] = 0.3
    single, both = LossWeights(eps=1e-6), LossWeights(eps=1e-6, long_pair=1.0)
    terms = {name: {flow: float(flow_terms_with(w, f, frames)["photometric"])
                    for flow, f in (("true", truth), ("zero", torch.zeros_like(truth)))}
             for name, w in (("single", single), ("both", both))}
    # at the true flow both are small; at zero flow the long pair's error (0.6 px) is larger, so
    # the average of both pairs exceeds the single pair's
    assert terms["both"]["true"] < 0.2 * terms["both"]["zero"]
    assert terms["both"]["zero"] > 1.3 * terms["single"]["zero"]

"""Every baseline and loss switch trains: a few steps on one fixed batch lower its loss."""
import pytest
import torch

from flowaction.commands.ablate import VARIANTS, variant_config
from flowaction.config import from_dict
from flowaction.engine.step import forward_batch
from flowaction.data.source import open_data
from flowaction.models.build import build_model
from flowaction.engine.loaders import make_loader
from flowaction.engine.optim import stage_weights

TINY = [
    "data.synthetic.num_classes=4", "data.synthetic.size=36", "data.synthetic.num_frames=7",
    "data.synthetic.train_per_class=2", "data.synthetic.val_per_class=1", "data.synthetic.test_per_class=1",
    "data.num_frames=7", "data.crop=32", "model.depth=10", "model.flow_width=8", "model.triplet_stride=2",
    "optim.batch_size=8", "optim.epochs=2", "augment.noise_std=0",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    return open_data(from_dict({}, TINY + [f"data.synthetic_dir={root / 'data'}"]), root)


# the study's sweeps of clip length, triplet stride and loss weights only change numbers that the
# variants above already exercise; their configs are checked below instead of training each
SWEEPS = {"T8": ("data", "num_frames", 8), "T32": ("data", "num_frames", 32), "s1": ("model", "triplet_stride", 1),
          "a2=1": ("loss", "photometric", 1.0), "a2=10": ("loss", "photometric", 10.0),
          "a2=1000": ("loss", "photometric", 1000.0), "a3=0.1": ("loss", "smoothness", 0.1),
          "a3=10": ("loss", "smoothness", 10.0)}


@pytest.mark.parametrize("variant", sorted(set(VARIANTS) - set(SWEEPS)))
def test_variant_trains_and_loss_decreases(variant, cache):
    torch.manual_seed(0)
    cfg = variant_config(from_dict({}, TINY), variant, seed=0)
    model = build_model(cfg, len(cache.classes))
    batch = next(iter(make_loader(cfg, cache, "train", "val")))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    # the last epoch's weights (for two-stage: the classifier stage; its flow stage is tested below)
    weights, freeze = stage_weights(cfg, cfg.optim.epochs - 1)
    losses = []
    for _ in range(8):
        model.train()
        logits, flows, terms = forward_batch(model, batch, torch.device("cpu"), weights, freeze_flow=freeze)
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
        losses.append(float(terms["total"].detach()))
    assert losses[-1] < losses[0], losses
    if cfg.model.input in ("dis", "farneback", "learned", "learned+frames"):
        assert flows is not None and flows.shape[1] == 2


def test_two_stage_switches_from_flow_to_classifier():
    cfg = variant_config(from_dict({}, TINY + ["optim.epochs=4"]), "two-stage", seed=0)
    first, frozen_first = stage_weights(cfg, 0)
    second, frozen_second = stage_weights(cfg, 3)
    assert first.classification == 0 and first.photometric > 0 and not frozen_first
    assert second.photometric == 0 and second.smoothness == 0 and second.classification > 0 and frozen_second


def test_two_stage_first_stage_trains_only_the_flow_network(cache):
    torch.manual_seed(0)
    cfg = variant_config(from_dict({}, TINY), "two-stage", seed=0)
    model = build_model(cfg, len(cache.classes))
    batch = next(iter(make_loader(cfg, cache, "train", "val")))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    weights, freeze = stage_weights(cfg, 0)
    for _ in range(2):
        _, _, terms = forward_batch(model, batch, torch.device("cpu"), weights, freeze_flow=freeze)
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
    after = model.state_dict()
    assert not torch.equal(before["flow_net.stem.weight"], after["flow_net.stem.weight"])
    assert torch.equal(before["action_net.fc.weight"], after["action_net.fc.weight"])


@pytest.mark.parametrize("variant", sorted(SWEEPS))
def test_sweep_variant_sets_what_its_name_says(variant):
    section, key, value = SWEEPS[variant]
    cfg = variant_config(from_dict({}, TINY), variant, seed=0)
    assert getattr(getattr(cfg, section), key) == value


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="learned"):
        variant_config(from_dict({}, TINY), "learnt", seed=0)

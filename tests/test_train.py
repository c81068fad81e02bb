from pathlib import Path

import pytest
import torch

from flowaction.checkpoint import load_checkpoint, save_checkpoint
from flowaction.cli import main
from flowaction.config import from_dict
from flowaction.data.synthetic import CLASS_NAMES
from flowaction.data.source import open_data
from flowaction.models.build import build_model
from flowaction.engine.optim import build_optimizer
from flowaction.engine.fit import fit
from flowaction.engine.loaders import make_loader
from flowaction.engine.loop import train_one_epoch

TINY = [
    "data.synthetic.num_classes=4", "data.synthetic.size=36", "data.synthetic.num_frames=7",
    "data.synthetic.train_per_class=2", "data.synthetic.val_per_class=1", "data.synthetic.test_per_class=1",
    "data.num_frames=7", "data.crop=32", "data.test_clips=1", "model.depth=10", "model.flow_width=8",
    "model.triplet_stride=2", "optim.batch_size=8",
]


def test_tiny_run_overfits_a_few_clips(tmp_path):
    # no augmentation, no crop jitter, constant learning rate: 8 clips of 4 classes are learnt
    # by heart, measured in eval mode on the same clips
    cfg = from_dict({}, TINY + [
        "optim.lr=2e-3", "optim.schedule=constant", "augment.noise_std=0", "augment.brightness=0",
        "augment.contrast=0", "augment.gamma=0", "data.crop=36",
    ])
    torch.manual_seed(0)
    cache = open_data(cfg, tmp_path)
    model = build_model(cfg, len(cache.classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    loader = make_loader(cfg, cache, "train", "train", shuffle=True)
    step = 0
    history = []
    for epoch in range(40):
        metrics, step = train_one_epoch(model, loader, optimizer, cfg, torch.device("cpu"), epoch, step, 40, progress=False)
        history.append(metrics)
    # train accuracy, as the batch-norm layers see the batch in training mode: with 8 clips of
    # 36 x 36 the last stage is 1 x 1 x 1, and running statistics lag far behind
    assert history[-1]["accuracy"] == 1.0
    assert history[-1]["classification"] < 0.2 * history[0]["classification"]


def test_train_writes_run_directory_and_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), *TINY, "optim.epochs=1", f"data.synthetic_dir={tmp_path / 'data'}"]
    assert main(args) == 0
    for name in ("config.yaml", "metrics.csv", "curves.png", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 0 and state["classes"] == list(CLASS_NAMES[:4])
    # resuming with more epochs continues at epoch 1 instead of starting again
    args[args.index("optim.epochs=1")] = "optim.epochs=2"
    assert main(args + ["--resume"]) == 0
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 1 and state["step"] == 2
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # header + (train, val) x 2 epochs


def test_config_typo_is_reported_with_valid_keys(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "optim.lr" in err


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "config": {}, "classes": ["a"]})
    assert not (tmp_path / "c.pt.tmp").exists()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))

    marker = tmp_path / "payload-ran"

    class Evil:
        def __reduce__(self):  # unpickling would create the marker file
            return (Path.touch, (marker,))

    torch.save({"format": 1, "model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="contains code or objects") as caught:
        load_checkpoint(tmp_path / "evil.pt")
    assert "weights_only=False" not in str(caught.value) and not marker.exists()
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="truncated, corrupt or another format"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "junk.pt").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"format": 99, "model": {}}, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match="newer flowaction"):
        load_checkpoint(tmp_path / "newer.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a flowaction checkpoint"):
        load_checkpoint(tmp_path / "list.pt")


def test_adam_implementations_take_the_same_steps():
    # optim.adam picks PyTorch's fused, foreach or per-tensor Adam: the same rule, rounding apart,
    # for gradients from 1e-12 to 1
    torch.manual_seed(0)
    models, optimizers = [], []
    for impl in ("fused", "foreach", "loop"):
        cfg = from_dict({}, TINY + [f"optim.adam={impl}"])
        model = build_model(cfg, 4)
        if models:
            model.load_state_dict(models[0].state_dict())
        models.append(model)
        optimizers.append(build_optimizer(cfg, model))
    assert optimizers[0].defaults["fused"] and optimizers[1].defaults["foreach"]
    initial = [p.detach().clone() for p in models[0].parameters()]
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=generator) * 10.0 ** -int(torch.randint(0, 13, (1,), generator=generator))
                 for p in models[0].parameters()]
        for model, optimizer in zip(models, optimizers):
            for parameter, grad in zip(model.parameters(), grads):
                parameter.grad = grad.clone()
            optimizer.step()
    for other in models[1:]:
        for a, b in zip(models[0].parameters(), other.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # the steps moved every weight (by about the learning rate), so the comparison above means something
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(models[0].parameters(), initial))


@pytest.mark.parametrize("scale", [1e-3, 1e3, float("nan")])
def test_clip_gradients_equals_pytorchs_clipping_and_skips_a_unit_factor(monkeypatch, scale):
    from flowaction.engine.optim import clip_gradients

    torch.manual_seed(0)
    ours, theirs = (torch.nn.Linear(7, 5) for _ in range(2))
    theirs.load_state_dict(ours.state_dict())
    for a, b in zip(ours.parameters(), theirs.parameters()):
        a.grad = torch.randn_like(a) * scale
        b.grad = a.grad.clone()
    calls = []
    original = torch.nn.utils.clip_grads_with_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_", lambda *a: calls.append(a) or original(*a))
    clip_gradients(ours.parameters(), 1.0)
    torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, equal_nan=True)  # to the bit
    assert len(calls) == (0 if scale == 1e-3 else 1)  # within bounds: no pass over the gradients

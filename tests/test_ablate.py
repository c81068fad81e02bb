import json

from flowaction.cli import main

TINY = [
    "data.synthetic.num_classes=4", "data.synthetic.size=36", "data.synthetic.num_frames=7",
    "data.synthetic.train_per_class=4", "data.synthetic.val_per_class=1", "data.synthetic.test_per_class=1",
    "data.num_frames=7", "data.crop=32", "data.test_clips=1", "model.depth=10", "model.flow_width=8",
    "model.triplet_stride=2", "optim.batch_size=8", "optim.epochs=1",
]


def test_ablate_writes_summary_and_resumes(tmp_path):
    out = tmp_path / "study"
    args = ["ablate", "--runs", "learned,frames", "--seeds", "2", "--sweep", "2,4", "--sweep-runs", "learned,dis", "--out", str(out), *TINY]
    assert main(args) == 0
    table = (out / "results.md").read_text()
    for text in ("| learned | 2 |", "| frames | 2 |", "Sample efficiency", "| dis |", "flowaction ablate"):
        assert text in table, text
    assert (out / "ablation.png").is_file() and (out / "sample_efficiency.png").is_file()
    result = json.loads((out / "runs" / "learned" / "seed1" / "result.json").read_text())
    assert result["config"]["seed"] == 1 and result["flow_epe"] is not None and result["parameters"] > 0
    assert not (out / "runs" / "learned" / "seed1" / "best.pt").exists()  # checkpoints dropped
    # n=2 trains on 2 clips per class (1 step an epoch) for exactly the steps of a full-data run (2)
    small = json.loads((out / "sweep" / "n2" / "dis" / "seed0" / "result.json").read_text())
    full = json.loads((out / "runs" / "learned" / "seed0" / "result.json").read_text())
    assert small["config"]["data"]["max_train_per_class"] == 2 and small["steps"] == full["steps"] == 2
    # a second run finds every result and trains nothing: results are unchanged
    stamp = (out / "runs" / "frames" / "seed0" / "result.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "runs" / "frames" / "seed0" / "result.json").stat().st_mtime_ns == stamp


def test_ablate_rejects_unknown_variant(tmp_path, capsys):
    assert main(["ablate", "--runs", "learned,nope", "--seeds", "1", "--out", str(tmp_path), *TINY]) == 2
    assert "nope" in capsys.readouterr().err


def test_summary_only_trains_nothing(tmp_path):
    assert main(["ablate", "--runs", "learned", "--seeds", "1", "--summary-only", "--out", str(tmp_path), *TINY]) == 0
    assert not (tmp_path / "runs").exists()
    assert "--summary-only" not in (tmp_path / "results.md").read_text()

import json

import pytest

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
    sweep_rows = [line for line in table.split("## Sample efficiency")[1].splitlines() if line.startswith("| dis |")]
    assert sweep_rows and sweep_rows[0].count("(2 seeds)") == 2  # every cell says how many runs it holds
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


def test_pair_accuracy_is_the_share_right_within_the_pair():
    from flowaction.commands.ablate import pair_accuracy, pair_count

    classes = ["walk", "sit-down", "stand-up"]
    # sit-down: 6 right, 2 called stand-up, 2 called walk (left out); stand-up: 4 right, 4 called sit-down
    confusion = [[5, 0, 0], [2, 6, 2], [0, 4, 4]]
    assert pair_accuracy(confusion, classes, ("sit-down", "stand-up")) == 10 / 16
    assert pair_accuracy([[1, 0, 0], [0, 0, 0], [0, 0, 0]], classes, ("sit-down", "stand-up")) is None
    assert pair_count(confusion, classes, ("sit-down", "stand-up")) == 16  # what the share is of


def test_actions_study_reports_each_time_reversed_pair_and_controls_start_fresh(tmp_path):
    from flowaction.commands.ablate import variant_config
    from flowaction.config import load_config, preset_path

    base = load_config(preset_path("actions"))
    assert base.model.flow_init == "scenes"  # the joint model starts from a shipped flow network
    for variant in ("truth", "dis", "frames", "one-frame"):  # no flow network: nothing to start from
        assert variant_config(base, variant, 0).model.flow_init == "none"
    assert variant_config(base, "learned", 0).model.flow_init == "scenes"
    assert (base.model.flow_pyramid, base.model.flow_input_scale) == (True, 2)
    study = load_config(preset_path("actions-study"))  # the recipe the committed study was run with
    assert (study.model.flow_init, study.model.flow_pyramid, study.model.flow_input_scale) == ("actions", False, 1)
    assert study.optim.epochs > base.optim.epochs and study.data == base.data
    paper = variant_config(base, "paper", 0).model  # the paper's training: from scratch, whole gradient
    assert (paper.flow_init, paper.flow_grad_scale) == ("none", 1.0)
    out = tmp_path / "study"
    actions = [a for a in TINY if not a.startswith("data.synthetic.num_classes")] + [
        "data.synthetic.kind=actions", "data.synthetic.num_classes=0", "data.synthetic.train_per_class=1",
        "data.synthetic.test_per_class=2"]
    assert main(["ablate", "--runs", "truth,one-frame", "--seeds", "1", "--out", str(out), *actions]) == 0
    table = (out / "results.md").read_text()
    assert "generated actions benchmark" in table
    assert "| variant | sit-down / stand-up | raise-arms / lower-arms |" in table
    result = json.loads((out / "runs" / "truth" / "seed0" / "result.json").read_text())
    assert len(result["classes"]) == 14 and len(result["confusion"]) == 14
    assert sum(map(sum, result["confusion"])) == 28  # every test video counted once
    from flowaction.commands.ablate import pair_count

    counts = [pair_count(result["confusion"], result["classes"], p) for p in (("sit-down", "stand-up"),
                                                                              ("raise-arms", "lower-arms"))]
    row = next(line for line in table.split("## Within")[1].splitlines() if line.startswith("| truth |"))
    assert [cell.strip().rsplit(" ", 1)[-1] for cell in row.split("|")[2:4]] == [f"({n})" for n in counts]


def test_a_clip_longer_than_the_generated_videos_is_refused_before_anything_runs(tmp_path):
    from flowaction.commands.ablate import run_ablation

    with pytest.raises(ValueError, match="variant T32: clips of 32 frames, but the generated videos have 16"):
        run_ablation("actions", ["learned", "T32"], 1, tmp_path / "study", progress=False)
    assert not (tmp_path / "study" / "data").exists()  # nothing generated


def test_a_flow_network_of_another_shape_is_refused_before_anything_runs_and_default_variants_fit(tmp_path):
    from flowaction.commands.ablate import run_ablation, variant_config
    from flowaction.config import load_config, preset_path

    base = load_config(preset_path("actions"))  # the scene network, with the search at every level
    for variant in ("learned-pretrained", "smooth2", "long-pair", "refine"):  # from the default network: no search
        assert not variant_config(base, variant, 0).model.flow_pyramid
    with pytest.raises(ValueError, match="variant learned: .*search at every level.*model.flow_pyramid=true"):
        run_ablation("actions", ["learned"], 1, tmp_path / "study", overrides=["model.flow_pyramid=false"],
                     progress=False)
    assert not (tmp_path / "study" / "data").exists()  # nothing generated

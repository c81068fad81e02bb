"""The figure-flow benchmark runs end to end, and its truth row scores as the truth must."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_figure_flow.py"


def test_the_figure_flow_benchmark_scores_the_truth_exactly_and_the_methods_sensibly(tmp_path):
    out = tmp_path / "figure_flow.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--clips-per-class", "1", "--flow-weights", "default",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    methods = ["truth", "zero", "learned", "dis", "farneback"]
    assert report["methods"] == methods and report["clips"] == 14
    assert len(report["classes"]) == 14
    for group in [report["overall"], *report["classes"].values()]:
        assert set(group["methods"]) == set(methods)
        assert group["figure_pixels"] > 0 and group["background_pixels"] > 0
        truth = group["methods"]["truth"]
        assert truth["gain"] == pytest.approx(1.0, abs=1e-6)
        assert truth["figure_epe"] == pytest.approx(0.0, abs=1e-6)
        assert truth["background_epe"] == pytest.approx(0.0, abs=1e-6)
    overall = report["overall"]
    assert overall["mean_relative_speed_px"] > 0
    for method in ("learned", "dis"):
        assert -1.0 < overall["methods"][method]["gain"] < 2.0
    for method in methods[1:]:
        assert overall["methods"][method]["figure_epe"] > 0
    assert "| truth | 0.000 | 0.000 | 1.000 |" in done.stdout


def test_the_input_scale_option_runs_the_networks_on_enlarged_frames(tmp_path):
    reports = {}
    for scale in (1, 2):
        out = tmp_path / f"scale{scale}.json"
        done = subprocess.run([sys.executable, str(SCRIPT), "--clips-per-class", "1", "--flow-weights", "default",
                               "--input-scale", str(scale), "--out", str(out)], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        reports[scale] = json.loads(out.read_text())
    assert reports[2]["input_scale"] == {"learned": 2}
    one, two = (reports[s]["overall"]["methods"] for s in (1, 2))
    assert two["truth"]["gain"] == pytest.approx(1.0, abs=1e-6)
    assert two["dis"] == one["dis"]  # only the networks see the enlarged frames
    assert two["learned"]["figure_epe"] != pytest.approx(one["learned"]["figure_epe"], abs=1e-4)

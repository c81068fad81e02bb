"""Every benchmark script still imports what it uses from the package (a rename cannot strand one)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("bench_*.py"))


def test_there_are_benchmark_scripts():
    assert len(SCRIPTS) >= 9


def _load(script: Path):
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # module-level imports only: nothing runs without main()
    return module


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_a_benchmark_script_imports_and_has_a_main(script):
    assert callable(getattr(_load(script), "main", None))


def test_the_flow_benchmarks_name_two_pretrain_runs_apart_and_refuse_a_name_twice(tmp_path):
    from flowaction.models.flownet import FlowNet
    from flowaction.models.weights import save_flow_weights

    flow_weights = _load(SCRIPTS[0].parent / "flow_weights.py")
    for run in ("census", "occlusion"):
        (tmp_path / run).mkdir()
        save_flow_weights(tmp_path / run / "flownet.pt", FlowNet(width=8), {})
    both = f"{tmp_path / 'census' / 'flownet.pt'},{tmp_path / 'occlusion' / 'flownet.pt'}"
    assert list(flow_weights.flow_models(f"default,{both}")) == ["learned", "learned-census", "learned-occlusion"]
    assert flow_weights.method_name("/x/my-net.pt") == "learned-my-net"
    with pytest.raises(SystemExit, match="both be reported as learned-census"):
        flow_weights.flow_models(f"{both},{tmp_path / 'census' / 'flownet.pt'}")


def test_the_flow_benchmarks_build_the_network_shape_a_weights_file_holds(tmp_path):
    from flowaction.models.flownet import FlowNet
    from flowaction.models.weights import save_flow_weights

    flow_weights = _load(SCRIPTS[0].parent / "flow_weights.py")
    save_flow_weights(tmp_path / "pyr.pt", FlowNet(width=8, pyramid=True, features=True, search_radius=3), {})
    assert flow_weights.flow_shape(str(tmp_path / "pyr.pt")) == {
        "flow_width": 8, "flow_refine": False, "flow_pyramid": True, "flow_features": True, "flow_search": 3,
        "flow_input_scale": 1}
    assert flow_weights.flow_shape("default")["flow_pyramid"] is False
    net = flow_weights.flow_model(str(tmp_path / "pyr.pt")).flow_net
    assert net.pyramid and net.features and net.search_radius == 3


def test_the_flow_benchmarks_run_a_checkpoint_at_the_input_scale_it_was_trained_at(tmp_path):
    from flowaction.checkpoint import save_checkpoint
    from flowaction.models.build import build_joint_model

    flow_weights = _load(SCRIPTS[0].parent / "flow_weights.py")
    model = build_joint_model(num_classes=3, depth=10, flow_width=8, flow_pyramid=True, flow_input_scale=2)
    config = {"model": {"flow_width": 8, "flow_pyramid": True, "flow_input_scale": 2}}
    save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "config": config, "classes": ["a", "b", "c"]})
    shape = flow_weights.flow_shape(str(tmp_path / "best.pt"))
    assert shape == {"flow_width": 8, "flow_refine": False, "flow_pyramid": True, "flow_features": False,
                     "flow_search": 2, "flow_input_scale": 2}
    assert flow_weights.flow_model(str(tmp_path / "best.pt")).flow_net.input_scale == 2


def test_the_actions_strip_draws_the_flow_of_a_pyramid_checkpoint(tmp_path):
    from flowaction.checkpoint import save_checkpoint
    from flowaction.models.build import build_joint_model

    bench = _load(SCRIPTS[0].parent / "bench_actions.py")
    model = build_joint_model(num_classes=3, depth=10, flow_pyramid=True, flow_input_scale=2)
    config = {"model": {"flow_width": 16, "flow_pyramid": True, "flow_input_scale": 2}}
    save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "config": config, "classes": ["a", "b", "c"]})
    bench.strip(tmp_path / "strip.png", 32, str(tmp_path / "best.pt"))
    assert (tmp_path / "strip.png").stat().st_size > 10_000


def test_the_oracle_benchmarks_flow_error_runs_a_shipped_network_by_name_at_another_input_scale(tmp_path):
    from flowaction.config import load_config, preset_path
    from flowaction.data.source import open_data

    bench = _load(SCRIPTS[0].parent / "bench_oracle_flow.py")
    sizes = [f"data.synthetic.{split}_per_class=1" for split in ("train", "val", "test")]
    cfg = load_config(preset_path("motion"), [f"data.synthetic_dir={tmp_path / 'data'}", *sizes])
    cache = open_data(cfg, tmp_path, progress=False)
    errors = {}
    for scale in (1, 2):
        errors[scale] = bench.flow_error_per_class(cfg, cache, None, "scenes", input_scale=scale)
        assert cfg.model.flow_pyramid and cfg.model.flow_input_scale == scale  # the file's shape, the scale asked
    assert set(errors[2]) == set(cache.classes)
    assert all(errors[1][name]["dis_epe"] == errors[2][name]["dis_epe"] for name in cache.classes)  # same pixels
    assert all(errors[1][name]["learned_epe"] != errors[2][name]["learned_epe"] for name in cache.classes)

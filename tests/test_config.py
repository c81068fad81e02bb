import pytest

from flowaction.config import Config, ConfigError, from_dict, load_config, save_config, valid_keys


def test_unknown_key_suggests_the_nearest_keys_not_the_whole_list():
    with pytest.raises(ConfigError) as info:
        from_dict({"optim": {"lrr": 0.1}})
    message = str(info.value)
    assert "optim.lrr" in message and "did you mean 'optim.lr'?" in message and "model.depth" not in message
    with pytest.raises(ConfigError, match=r"did you mean 'optim\.epochs'\?"):
        from_dict({}, ["optim.epoch=2"])
    with pytest.raises(ConfigError, match=r"did you mean 'data\.crop'\?"):  # right name, wrong section
        from_dict({}, ["optim.crop=32"])


def test_unknown_override_is_an_error():
    with pytest.raises(ConfigError, match="did you mean .model.depth."):
        from_dict({}, ["model.dept=10"])


def test_overrides_are_typed():
    cfg = from_dict({}, ["optim.lr=3e-4", "model.depth=10", "augment.hflip=true", "data.cache=/x"])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.model.depth == 10 and cfg.augment.hflip is True and cfg.data.cache == "/x"
    with pytest.raises(ConfigError, match="expected int"):
        from_dict({}, ["model.depth=ten"])


@pytest.mark.parametrize("override", ["model.depth=11", "model.shortcut=C", "optim.batch_size=0", "data.num_frames=2", "loss.smoothness=-1"])
def test_invalid_values_are_rejected(override):
    with pytest.raises(ConfigError):
        from_dict({}, [override])


def test_yaml_round_trip(tmp_path):
    cfg = from_dict({"model": {"depth": 34}}, ["optim.epochs=3"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and again != Config()
    assert "data.synthetic.num_classes" in valid_keys()


def test_a_model_without_a_flow_network_starts_fresh_unless_told_otherwise():
    from flowaction.config import no_flow_start

    assert no_flow_start(["model.input=frames"], "learned") == ["model.input=frames", "model.flow_init=none"]
    assert no_flow_start([" model.input = dis"], "learned")[-1] == "model.flow_init=none"
    assert no_flow_start(["seed=1"], "truth") == ["seed=1", "model.flow_init=none"]  # from the base's input
    assert no_flow_start(["model.input=learned+frames"], "frames") == ["model.input=learned+frames"]
    assert no_flow_start(["seed=1"], "learned") == ["seed=1"]
    given = ["model.input=frames", "model.flow_init=default"]  # said explicitly: kept (and refused later)
    assert no_flow_start(given, "learned") == given

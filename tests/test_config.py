"""Typed configs: YAML + key=value overrides, type errors named, resolved config saved."""

import pytest
import yaml

from raypipe.config import ConfigError, load_config, parse_overrides, save_config
from raypipe.recipes.pairs import PairsJobConfig


def test_defaults_yaml_and_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data:\n  sampling:\n    fps: 4\ndims: [VQ, TA]\nout: here\n")
    cfg = load_config(PairsJobConfig, cfg_file, ["data.sampling.max_frames=16", "data.rows_per_block=8"])
    assert cfg.data.sampling.fps == 4.0 and isinstance(cfg.data.sampling.fps, float)
    assert cfg.data.sampling.max_frames == 16 and cfg.data.rows_per_block == 8
    assert cfg.dims == ["VQ", "TA"] and cfg.out == "here"
    assert cfg.data.sampling.max_pixels == 448 * 448  # untouched default


def test_float_written_without_a_dot():
    cfg = load_config(PairsJobConfig, None, ["data.sampling.fps=1e1"])
    assert cfg.data.sampling.fps == 10.0


def test_override_beats_file_and_null(tmp_path):
    cfg = load_config(PairsJobConfig, None, ["data.manifest=/x/m.parquet", "data.video_root=null"])
    assert cfg.data.manifest == "/x/m.parquet" and cfg.data.video_root is None


def test_unknown_key_and_wrong_type_are_named():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['fsp'\] in data.sampling"):
        load_config(PairsJobConfig, None, ["data.sampling.fsp=4"])
    with pytest.raises(ConfigError, match="data.sampling.max_frames: expected an integer"):
        load_config(PairsJobConfig, None, ["data.sampling.max_frames=many"])
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["data.sampling.fps"])
    with pytest.raises(ConfigError, match="expected a list"):
        load_config(PairsJobConfig, None, ["dims=VQ"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(PairsJobConfig, None, ["data.sampling.fps=3.5", "out=o"])
    path = save_config(cfg, tmp_path / "run")
    assert yaml.safe_load(path.read_text())["data"]["sampling"]["fps"] == 3.5
    assert load_config(PairsJobConfig, path) == cfg


def test_shipped_configs_load():
    from raypipe.recipes.demo import DEFAULT_CONFIG, DemoConfig

    cfg = load_config(DemoConfig, DEFAULT_CONFIG)
    assert cfg.data.sampling.fps == 4.0 and cfg.synth.size == "56x56"
    load_config(PairsJobConfig, DEFAULT_CONFIG.parent / "pairs_tiny.yaml")


def test_dict_valued_fields_are_replaced_but_sections_merge(tmp_path):
    """`data.weights={VQ: 1}` means only VQ (a dict-valued field is a value, not a section); sections still merge
    key by key (train.lr leaves train.batch alone)."""
    from raypipe.recipes.train_flow import FlowTrainConfig

    path = tmp_path / "c.yaml"
    path.write_text("data: {weights: {MQ: 1.0}}\ntrain: {batch: 3}\n")
    cfg = load_config(FlowTrainConfig, path, ["data.weights={VQ: 2.0}", "train.lr=0.5"])
    assert cfg.data.weights == {"VQ": 2.0}
    assert cfg.train.batch == 3 and cfg.train.lr == 0.5 and cfg.data.source == "labels"
    assert load_config(FlowTrainConfig, path).data.weights == {"MQ": 1.0}


def test_frame_cache_is_a_train_reward_setting_only():
    """data.cache_frames is honoured by train-reward alone; elsewhere it is an unknown key, not silently ignored."""
    from raypipe.config import ConfigError, load_config
    from raypipe.recipes.pairs import PairsJobConfig
    from raypipe.recipes.train_reward import RewardTrainConfig

    assert load_config(RewardTrainConfig, None, ["data.cache_frames=true"]).data.cache_frames is True
    assert load_config(RewardTrainConfig, "configs/reward_tiny.yaml", []).data.cache_frames is True
    with pytest.raises(ConfigError, match="cache_frames"):
        load_config(PairsJobConfig, None, ["data.cache_frames=true"])


def test_bad_yaml_is_one_line_naming_the_key_or_file(tmp_path):
    with pytest.raises(ConfigError, match=r"override data.sampling.fps: .* is not a YAML value") as e:
        parse_overrides(["data.sampling.fps={4:"])
    assert "\n" not in str(e.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML: .* line 2") as e:
        load_config(PairsJobConfig, bad)
    assert "\n" not in str(e.value)

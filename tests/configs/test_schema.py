"""The config schema accepts the authors' YAML files unchanged and rejects bad keys/values."""
from pathlib import Path

import pytest
import yaml

from configs.schema import LightningDiTConfig, cfg_channels_value, load_config, parse_cli

ROOT = Path(__file__).resolve().parents[2]
AUTHOR_CONFIGS = [
    "configs/config_details.yaml",
    "configs/lightningdit_xl_vavae_f16d32.yaml",
    "configs/reproductions/lightningdit_xl_vavae_f16d32_64ep_cfg.yaml",
    "configs/reproductions/lightningdit_xl_vavae_f16d32_800ep_cfg.yaml",
]


@pytest.mark.parametrize("name", AUTHOR_CONFIGS)
def test_author_configs_load_with_their_values(name):
    path = ROOT / name
    cfg = load_config(str(path))
    raw = yaml.safe_load(path.read_text())
    # every key of the file arrives unchanged in the typed config
    for section, values in raw.items():
        if not isinstance(values, dict):
            assert cfg[section] == values
            continue
        for key, value in values.items():
            assert cfg[section][key] == value, f"{section}.{key}"
    assert cfg.model.model_type == "LightningDiT-XL/1"
    assert cfg.model.in_chans == 32 and cfg.data.latent_multiplier == 1.0


def test_paper_sampling_settings():
    c64 = load_config(str(ROOT / AUTHOR_CONFIGS[2]))
    c800 = load_config(str(ROOT / AUTHOR_CONFIGS[3]))
    assert (c64.sample.cfg_scale, c64.sample.cfg_interval_start) == (10.0, 0.10)
    assert (c800.sample.cfg_scale, c800.sample.cfg_interval_start) == (6.7, 0.125)
    for c in (c64, c800):
        assert c.sample.timestep_shift == 0.3 and c.sample.num_sampling_steps == 250
        assert cfg_channels_value(c) == 3  # faithful default: guidance on 3 channels


def test_reference_defaults_when_keys_absent(tmp_path):
    path = tmp_path / "minimal.yaml"
    path.write_text("model:\n  model_type: LightningDiT-B/1\n")
    cfg = load_config(str(path))
    # train.py/inference.py defaults of the reference (REFERENCE §3.2)
    assert cfg.model.in_chans == 4 and cfg.data.latent_multiplier == 0.18215
    assert cfg.data.latent_norm is False and cfg.optimizer.max_grad_norm is None
    assert cfg.sample.timestep_shift == 0.0 and cfg.sample.cfg_interval_start == 0.0


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  model_type: LightningDiT-B/1\n  use_swigluu: true\n")
    with pytest.raises(ValueError) as err:
        load_config(str(path))
    msg = str(err.value)
    assert "model.use_swigluu" in msg and "bad.yaml" in msg and "\n" not in msg


def test_wrong_type_names_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_steps: many\n")
    with pytest.raises(ValueError, match=r"train\.max_steps"):
        load_config(str(path))


def test_bad_choice_and_cfg_channels():
    with pytest.raises(ValueError, match="transport.path_type"):
        load_config(None, ["transport.path_type=Cosine"])
    with pytest.raises(ValueError, match="sample.cfg_channels"):
        load_config(None, ["sample.cfg_channels=some"])
    assert cfg_channels_value(load_config(None, ["sample.cfg_channels=all"])) is None
    assert cfg_channels_value(load_config(None, ["sample.cfg_channels=32"])) == 32


def test_overrides_and_cli_spellings():
    config = str(ROOT / AUTHOR_CONFIGS[1])
    for argv in ([config, "sample.cfg_scale=6.7", "train.max_steps=10"],
                 ["--config", config, "sample.cfg_scale=6.7", "train.max_steps=10"]):
        cfg, _ = parse_cli(argv)
        assert cfg.sample.cfg_scale == 6.7 and cfg.train.max_steps == 10
    with pytest.raises(SystemExit, match="data.nope"):
        parse_cli([config, "data.nope=1"])
    with pytest.raises(SystemExit, match="config file not found"):
        parse_cli(["missing.yaml"])


def test_config_is_read_only():
    cfg = load_config(None)
    with pytest.raises(Exception):
        cfg.train.max_steps = 3
    assert isinstance(LightningDiTConfig().train.max_steps, int)

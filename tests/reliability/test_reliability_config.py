"""Configs are validated at the door: bad files, bad keys and out-of-range values stop the entry
scripts with one line naming the file (or the override) and the key, before anything is written."""
import pytest
from omegaconf import OmegaConf

import inference
import train
import train_tokenizer
from configs.schema import _RANGES, load_config
from tokenizer.train_config import TRAIN_RANGES, load_train_config

from conftest import TINY_CONFIG, TOKENIZER_CONFIG, error_of, snapshot

ENTRY_POINTS = {"train": train.main, "inference": inference.main, "train_tokenizer": train_tokenizer.main}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_no_config_is_an_error_not_defaults(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = error_of(ENTRY_POINTS[name], [])
    assert "no config file given" in message
    assert list(tmp_path.iterdir()) == []             # no stray run directory


BAD_YAML = [
    ("", "empty config file"),
    ("# only a comment\n", "empty config file"),
    ("- a\n- b\n", "expected a YAML mapping"),
    ("train: [1, 2\n", "not valid YAML (line 2)"),
    ("hello\n", "unknown config key 'hello'"),
    ("train:\n  max_stepz: 3\n", "unknown config key 'train.max_stepz'"),
    ("train:\n  max_steps: many\n", "bad value for 'train.max_steps'"),
]


@pytest.mark.parametrize("name, content, expected", [("train", *case) for case in BAD_YAML] + [
    (name, *case) for name in ("inference", "train_tokenizer") for case in BAD_YAML[::3]])
def test_bad_yaml_names_the_file(name, content, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    before = snapshot(tmp_path)
    message = error_of(ENTRY_POINTS[name], [str(bad), "train.output_dir=out"])
    assert message.startswith(f"error: {bad}: ") and expected in message, message
    assert snapshot(tmp_path) == before


def test_directory_and_missing_file(tmp_path):
    assert "is a directory" in error_of(train.main, [str(tmp_path)])
    assert "config file not found: " + str(tmp_path / "nope.yaml") in error_of(train.main, [str(tmp_path / "nope.yaml")])


@pytest.mark.parametrize("override, key", [
    ("train.max_steps=-1", "train.max_steps"), ("train.global_batch_size=0", "train.global_batch_size"),
    ("train.log_every=0", "train.log_every"), ("train.ckpt_every=-5", "train.ckpt_every"),
    ("train.ema_decay=1.5", "train.ema_decay"), ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.beta2=1.0", "optimizer.beta2"), ("sample.num_sampling_steps=0", "sample.num_sampling_steps"),
    ("sample.cfg_scale=-1", "sample.cfg_scale"), ("sample.cfg_interval_start=1.5", "sample.cfg_interval_start"),
    ("sample.fid_num=0", "sample.fid_num"), ("sample.per_proc_batch_size=0", "sample.per_proc_batch_size"),
    ("data.num_classes=0", "data.num_classes"), ("data.num_workers=-1", "data.num_workers"),
    ("model.class_dropout_prob=1.2", "model.class_dropout_prob"), ("train.keep_last_n=0", "train.keep_last_n"),
    ("optimizer.max_grad_norm=-1", "optimizer.max_grad_norm"), ("sample.timestep_shift=nan", "sample.timestep_shift"),
])
def test_range_errors_are_attributed_to_the_override(override, key, tmp_path):
    message = error_of(train.main, [TINY_CONFIG, f"train.output_dir={tmp_path}/out", override])
    assert message.startswith(f"error: override '{override}': ") and f"'{key}'" in message, message
    assert not (tmp_path / "out").exists()


def test_range_error_in_the_yaml_names_the_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  global_batch_size: 0\n")
    assert error_of(train.main, [str(bad)]).startswith(f"error: {bad}: ")


def test_every_range_key_exists_and_the_shipped_configs_pass():
    """A misspelt key in a range table would silently check nothing."""
    for cfg, ranges in ((load_config(TINY_CONFIG), _RANGES), (load_train_config(TOKENIZER_CONFIG), TRAIN_RANGES)):
        for key in ranges:
            parent, _, leaf = key.rpartition(".")
            assert leaf in OmegaConf.select(cfg, parent), key


@pytest.mark.parametrize("override", ["data.params.batch_size=0", "train.max_steps=-3", "train.log_every=0",
                                      "model.base_learning_rate=0", "model.params.lossconfig.params.disc_start=-1"])
def test_tokenizer_ranges_attributed_to_the_override(override, tmp_path):
    message = error_of(train_tokenizer.main, [TOKENIZER_CONFIG, f"train.output_dir={tmp_path}/out", override])
    assert message.startswith(f"error: override '{override}': "), message
    assert not (tmp_path / "out").exists()

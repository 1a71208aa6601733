"""Configs from the internet (docs/reliability.md, Security): resolvers never run, references stay
small, names that become paths stay one component, and every key that scales work or memory has
an upper bound."""
import json
import os
import time

import pytest

import train
from configs.schema import _RANGES, load_config
from conftest import REPO, TINY_CONFIG, TOKENIZER_CONFIG, error_of
from tokenizer.train_config import load_train_config
from utils.safe_yaml import MAX_DEPTH, load_yaml

SECRET = "s3cr3t-token-4c1d"


def all_bytes(root):
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def test_yaml_reading_an_environment_variable_is_refused_and_the_secret_written_nowhere(tmp_path, monkeypatch,
                                                                                          latents, capsys):
    monkeypatch.setenv("LEAKED", SECRET)
    monkeypatch.chdir(tmp_path)
    yaml = tmp_path / "downloaded.yaml"
    yaml.write_text("train:\n  exp_name: run-${oc.env:LEAKED}\n  max_steps: 2\n")
    message = error_of(train.main, [str(yaml), f"data.data_path={latents}", f"train.output_dir={tmp_path / 'out'}"])
    assert "downloaded.yaml" in message and "train.exp_name" in message and "oc.env" in message
    out = capsys.readouterr()
    assert SECRET not in message + out.out + out.err
    assert SECRET.encode() not in all_bytes(tmp_path) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["${oc.env:LEAKED}", "${oc.decode:'{a: 1}'}", "x${oc.env:HOME,y}", "${foo:bar}"])
def test_resolvers_are_refused_in_files_and_overrides(tmp_path, value, monkeypatch):
    monkeypatch.setenv("LEAKED", SECRET)
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  exp_name: \"{value}\"\n")
    with pytest.raises(ValueError, match=r"c\.yaml: 'train\.exp_name' = .*resolver interpolations"):
        load_config(str(path))
    if "{a" not in value:   # (a dotlist value with braces is parsed as a mapping, refused anyway)
        with pytest.raises(ValueError, match=r"^override 'train\.exp_name=.*resolver interpolations"):
            load_config(TINY_CONFIG, [f"train.exp_name={value}"])


def test_tokenizer_yamls_refuse_resolvers(tmp_path):
    from tokenizer.factory import tokenizer_type
    from tokenizer.vavae import load_tokenizer_config

    path = tmp_path / "tok.yaml"
    path.write_text((REPO / "configs/tiny/tiny_vavae_f4d4.yaml").read_text().replace(
        "ckpt_path: null", "ckpt_path: ${oc.env:HOME}/vae.pt"))
    for load in (load_tokenizer_config, tokenizer_type):
        with pytest.raises(ValueError, match="'ckpt_path' = .*resolver"):
            load(path)


def test_plain_references_keep_working():
    """SFD's SemVAE config (`${variables.bottleneck_dim}`-style references) loads and resolves."""
    cfg = load_yaml(REPO / "configs/tokenizer/semvae_train/ch16.yaml")
    assert cfg.model.bottleneck_dim == 16 and cfg.data.model_name == "dinov2_vitb14_reg"
    assert cfg.training.checkpointing.checkpoint_dir == "outputs/semantic_vae/dinov2_vitb14_reg/transformer_ch16/checkpoints"
    assert cfg.training.log.swandb_exp_name == "arch_transformer_ch16"


def test_references_resolve_against_overrides_and_relative_keys(tmp_path):
    """References bind late, as in OmegaConf: an override of the referenced key is followed."""
    path = tmp_path / "c.yaml"
    path.write_text("ckpt_path: /w/${train.exp_name}.pt\ntrain:\n  exp_name: run\n"
                    "sample:\n  cfg_scale_sem: ${.cfg_scale}\n  cfg_scale: 2.5\n")
    assert load_config(str(path)).ckpt_path == "/w/run.pt"
    cfg = load_config(str(path), ["train.exp_name=other"])
    assert cfg.ckpt_path == "/w/other.pt" and cfg.sample.cfg_scale_sem == 2.5


def growing(levels, fan, seed="x" * 8):
    """`a{i}` = `a{i-1}` repeated `fan` times: 8 * fan**levels characters once resolved."""
    lines = ["v:", f"  a0: {seed}"] + [f"  a{i}: " + f"${{v.a{i - 1}}}" * fan for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels,fan,refusal", [(12, 4, "resolves to \\d+ characters"), (40, 2, "deeper than")])
def test_growing_references_are_refused_before_resolving(tmp_path, levels, fan, refusal):
    path = tmp_path / "bomb.yaml"
    path.write_text(growing(levels, fan))    # 134 MB and 8 TB if resolved
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"bomb\.yaml: 'v\.a\d+'.*{refusal}"):
        load_config(str(path))
    assert time.perf_counter() - start < 5
    assert path.stat().st_size < 2000


def test_deep_and_cyclic_references_are_refused(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("a0: x\n" + "".join(f"a{i}: ${{a{i - 1}}}\n" for i in range(1, MAX_DEPTH + 3)))
    with pytest.raises(ValueError, match="deeper than"):
        load_yaml(deep)
    cyclic = tmp_path / "cyclic.yaml"
    cyclic.write_text("a: ${b}\nb: x${a}\n")
    with pytest.raises(ValueError, match="cyclic"):
        load_yaml(cyclic)


def test_yaml_alias_bombs_are_refused(tmp_path):
    path = tmp_path / "alias.yaml"
    path.write_text("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
                    + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)))
    with pytest.raises(ValueError, match="aliases expand"):
        load_yaml(path)


@pytest.mark.parametrize("name", ["../escaped", "/tmp/escaped", "a/b", "..", ".", "", "a\\b", "bad\nname", "tab\tname"])
def test_exp_name_is_one_path_component(name):
    quoted = json.dumps(name)   # a YAML double-quoted string: control characters survive
    with pytest.raises(ValueError, match=r"'train\.exp_name'.*single file or directory name"):
        load_config(TINY_CONFIG, [f"train.exp_name={quoted}"])
    with pytest.raises(ValueError, match=r"'train\.exp_name'.*single file or directory name"):
        load_train_config(TOKENIZER_CONFIG, [f"train.exp_name={quoted}"])


def test_a_traversing_exp_name_creates_nothing(tmp_path, latents):
    out = tmp_path / "runs" / "out"
    message = error_of(train.main, [TINY_CONFIG, f"data.data_path={latents}", f"train.output_dir={out}",
                                    "train.exp_name=../../escaped"])
    assert "train.exp_name" in message
    assert not (tmp_path / "escaped").exists() and not out.exists()


def test_vae_model_name_is_one_path_component():
    with pytest.raises(ValueError, match="'vae.model_name'"):
        load_config(TINY_CONFIG, ["vae.model_name=../../../etc/passwd"])


SCALING = ["data.image_size", "data.num_classes", "data.num_workers", "model.in_chans", "model.hidden_size",
           "model.depth", "model.num_heads", "model.patch_size", "train.max_steps", "train.global_batch_size",
           "train.micro_batch_size", "train.eval_num", "train.eval_steps", "train.eval_batch_size",
           "train.num_valid_batches", "transport.diffusion_steps", "sample.num_sampling_steps",
           "sample.per_proc_batch_size", "sample.fid_num", "vae.downsample_ratio"]


@pytest.mark.parametrize("key", SCALING)
def test_keys_that_scale_work_or_memory_have_an_upper_bound(key):
    high = _RANGES[key].high
    assert high is not None
    with pytest.raises(ValueError, match=rf"^override '{key}=\d+': bad value for '{key}': \d+ \(must be in "):
        load_config(TINY_CONFIG, [f"{key}={int(high) + 1}"])


@pytest.mark.parametrize("key", ["sample.atol", "sample.rtol"])
def test_ode_tolerances_cannot_vanish(key):
    with pytest.raises(ValueError, match=rf"'{key}': 1e-300 \(must be in \[1e-12, 1.0\]\)"):
        load_config(TINY_CONFIG, [f"{key}=1e-300"])


def test_every_released_config_is_within_the_bounds():
    import glob

    for path in glob.glob(str(REPO / "configs/**/*.yaml"), recursive=True):
        if "tokenizer" in path or path.endswith(("config_details.yaml", "tiny_vavae_f4d4.yaml")):
            continue
        load_config(path)


TOKENIZER_SCALING = {"model.params.ddconfig.ch": 1 << 15, "data.params.num_workers": 256,
                     "data.params.batch_size": 1 << 20, "model.params.embed_dim": 1 << 16,
                     "train.max_steps": 10 ** 9}


@pytest.mark.parametrize("key,high", sorted(TOKENIZER_SCALING.items()))
def test_tokenizer_keys_have_upper_bounds(key, high):
    with pytest.raises(ValueError, match=rf"'{key}'"):
        load_train_config(TOKENIZER_CONFIG, [f"{key}={high + 1}"])


def test_tokenizer_ch_mult_is_bounded():
    with pytest.raises(ValueError, match="ch_mult"):
        load_train_config(TOKENIZER_CONFIG, ["model.params.ddconfig.ch_mult=[1,2,100000]"])


@pytest.mark.parametrize("kwargs", ["{checkpoint_path: /etc/passwd}", "{pretrained_cfg_overlay: {file: x}}",
                                    "{pretrained: true}", "{embed_dim: 100000000}"])
def test_foundation_model_kwargs_are_limited_to_known_keys(kwargs):
    with pytest.raises(ValueError, match="model.params.foundation.model_kwargs"):
        load_train_config(TOKENIZER_CONFIG, [f"model.params.foundation.model_kwargs={kwargs}"])


def test_foundation_model_refuses_unknown_kwargs_directly():
    from tokenizer.foundation import FoundationModel

    with pytest.raises(ValueError, match="unknown key 'checkpoint_path'"):
        FoundationModel("dinov2", random_init=True, model_kwargs={"embed_dim": 32, "checkpoint_path": os.devnull})

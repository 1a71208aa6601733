"""The config schema accepts the authors' YAML files unchanged and rejects bad keys/values."""
import ast
import dataclasses
import inspect
import logging
import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

import transport
from configs import schema
from configs.schema import (DataConfig, LightningDiTConfig, ModelConfig, SampleConfig, TransportConfig,
                            cfg_channels_value, load_config, parse_cli)
from datasets.img_latent_dataset import ImgLatentDataset
from datasets.order import LABEL_MODES
from models.build import build_model
from models.lightningdit import LightningDiT, LightningDiT_models
from tokenizer.foundation import FOUNDATION_MODELS
from tokenizer.losses import DISC_LOSSES
from tokenizer.train_config import TokenizerTrainConfig, load_train_config, validate_train_config
from transport import Sampler, create_transport
from transport.integrators import LAST_STEPS, ODE_METHODS, SDE_METHODS
from transport.path import DIFFUSION_FORMS

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
    # train.py/inference.py defaults of the reference (docs/reference_behaviour.md §3.2)
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


#################################################################################
#         One schema: choices from the registries, compat keys, defaults         #
#################################################################################

def test_choices_are_the_registries_themselves():
    assert schema._CHOICES["model.model_type"] is LightningDiT_models
    assert schema._CHOICES["transport.path_type"] is transport.PATH_TYPES
    assert schema._CHOICES["transport.prediction"] is transport.PREDICTIONS
    assert schema._CHOICES["transport.loss_weight"] is transport.LOSS_WEIGHTS
    assert schema._CHOICES["sample.label_mode"] is LABEL_MODES
    assert schema._CHOICES["sample.diffusion_form"] is DIFFUSION_FORMS
    assert schema._CHOICES["sample.last_step"] is LAST_STEPS
    assert schema.SAMPLING_METHODS == {"ODE": ODE_METHODS, "SDE": SDE_METHODS}


@pytest.mark.parametrize("key, registry, value", [
    ("model.model_type", LightningDiT_models, "LightningDiT-T/2"),
    ("transport.path_type", transport.PATH_TYPES, "Cosine"),
    ("transport.prediction", transport.PREDICTIONS, "x0"),
    ("transport.loss_weight", transport.LOSS_WEIGHTS, "snr"),
    ("sample.sampling_method", ODE_METHODS, "my_solver"),
])
def test_a_registry_entry_is_a_valid_choice(monkeypatch, key, registry, value):
    with pytest.raises(ValueError, match=re.escape(key)):
        load_config(None, [f"{key}={value}"])
    monkeypatch.setitem(registry, value, next(iter(registry.values())))
    assert OmegaConf.select(load_config(None, [f"{key}={value}"]), key) == value


def test_sampling_method_is_checked_against_the_mode():
    assert load_config(None, ["sample.sampling_method=dopri5"]).sample.sampling_method == "dopri5"
    with pytest.raises(ValueError, match="sample.mode=SDE expects one of \\('Euler', 'Heun'\\)"):
        load_config(None, ["sample.mode=SDE"])  # the default 'euler' is an ODE method
    assert load_config(None, ["sample.mode=SDE", "sample.sampling_method=Heun"]).sample.mode == "SDE"
    with pytest.raises(ValueError, match="sample.last_step"):
        load_config(None, ["sample.last_step=Midpoint"])


def test_tokenizer_choices_are_the_registries(monkeypatch):
    tiny = str(ROOT / "configs/tokenizer/tiny_cpu.yaml")
    with pytest.raises(ValueError, match="model.params.use_vf"):
        load_train_config(tiny, ["model.params.use_vf=dino_v9"])
    monkeypatch.setitem(FOUNDATION_MODELS, "dino_v9", FOUNDATION_MODELS["dinov2"])
    assert load_train_config(tiny, ["model.params.use_vf=dino_v9"]).model.params.use_vf == "dino_v9"
    with pytest.raises(ValueError, match="disc_loss"):
        load_train_config(tiny, ["model.params.lossconfig.params.disc_loss=wgan"])
    monkeypatch.setitem(DISC_LOSSES, "wgan", DISC_LOSSES["hinge"])
    assert load_train_config(tiny, ["model.params.lossconfig.params.disc_loss=wgan"])


def ignored_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("ignored: ")]


def test_compat_key_set_to_a_non_default_value_is_logged_once(caplog):
    caplog.set_level(logging.INFO)
    load_config(str(ROOT / AUTHOR_CONFIGS[0]))  # train.ckpt: null, sample.likelihood: false
    assert ignored_lines(caplog) == []
    load_config(None, ["train.use_checkpoint=false", "sample.likelihood=true", "train.ckpt=x.pt"])
    lines = ignored_lines(caplog)
    assert [line.split(" (")[0] for line in lines] == [
        "ignored: train.ckpt=x.pt", "ignored: train.use_checkpoint=False", "ignored: sample.likelihood=True"]
    assert all(line.endswith(")") and len(line.split(" (", 1)[1]) > 10 for line in lines)  # says why


def test_tokenizer_compat_keys_are_logged(caplog):
    caplog.set_level(logging.INFO)
    load_train_config(str(ROOT / "configs/tokenizer/tiny_cpu.yaml"))
    assert ignored_lines(caplog) == []
    load_train_config(str(ROOT / "configs/tokenizer/f16d32_vfdinov2.yaml"))  # the authors' 32-GPU run
    assert [line.split(" (")[0] for line in ignored_lines(caplog)] == [
        "ignored: lightning.trainer.accelerator=gpu", "ignored: lightning.trainer.devices=8",
        "ignored: lightning.trainer.num_nodes=4",
        "ignored: lightning.trainer.strategy=ddp_find_unused_parameters_true"]


def leaf_keys(schema_cls, prefix=""):
    for f in dataclasses.fields(schema_cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            yield from leaf_keys(type(default), f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


def names_the_code_reads() -> tuple:
    """(identifiers, string constants) of the non-test Python sources: attribute names, parameter
    and keyword names (the loss constructor is fed by `**loss_kwargs`), string subscripts, plus the
    two validation functions. The schema modules themselves are left out (their range tables name
    every key), and so are comments and docstrings."""
    skip = {ROOT / "configs/schema.py", ROOT / "tokenizer/train_config.py"}
    sources = [p.read_text() for p in ROOT.rglob("*.py") if p not in skip
               and not {"tests", "docs"} & set(p.relative_to(ROOT).parts)
               and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    sources += [inspect.getsource(schema._validate), inspect.getsource(validate_train_config)]
    names, strings = set(), set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.keyword) and node.arg:
                names.add(node.arg)
            elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                names.add(node.slice.value)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.add(node.value)
    return names, strings


@pytest.mark.parametrize("schema_cls", [LightningDiTConfig, TokenizerTrainConfig])
def test_every_schema_key_is_read_or_listed_as_compat(schema_cls):
    """A key counts as read when its last name is read somewhere (`x.name`, a `name` parameter or
    keyword, `x["name"]`) or its dotted path is a string constant. Names shared by two sections
    (model.use_checkpoint / train.use_checkpoint) are not told apart, so this finds keys whose name
    nothing reads at all."""
    names, strings = names_the_code_reads()
    compat = schema_cls.compat_keys
    structured = OmegaConf.structured(schema_cls)
    assert all(OmegaConf.select(structured, k, default="missing") != "missing" for k in compat)
    unread = [key for key in leaf_keys(schema_cls)
              if key not in compat and key.rsplit(".", 1)[-1] not in names and key not in strings]
    assert unread == []
    # the check has teeth: a compat key that no code reads is found without its listing
    if schema_cls is LightningDiTConfig:
        assert "likelihood" not in names and "sample.likelihood" not in strings


def documented_call(section: str, call: str) -> dict:
    """name -> default of `call(...)` as written in docs/reference_behaviour.md `section`."""
    doc = (ROOT / "docs/reference_behaviour.md").read_text()
    start = doc.index(f"### {section} ")
    text = doc[start:doc.index("\n### ", start + 1)]
    args = re.search(re.escape(call) + r"\(([^)]*)\)", text).group(1)
    return {name.strip(): ast.literal_eval(value.strip())
            for name, value in (a.split("=") for a in args.split(",") if "=" in a)}


def documented_script_default(key: str):
    """The 'default' cell of `key` in the §3.2 table (keys train.py reads, default when absent)."""
    doc = (ROOT / "docs/reference_behaviour.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith(f"| `{key}` |"))
    cell = row.rstrip("|").rsplit("|", 1)[1].replace("*", "").split("(")[0].strip()
    return ast.literal_eval(cell)


def signature_defaults(fn) -> dict:
    return {n: p.default for n, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_documented_defaults_of_the_scripts_and_the_classes():
    # The authors' scripts default the keys one way (§3.2) ...
    assert documented_script_default("model.in_chans") == schema.SCRIPT_IN_CHANS == ModelConfig.in_chans == 4
    assert documented_script_default("data.latent_norm") == schema.SCRIPT_LATENT_NORM == DataConfig.latent_norm
    assert (documented_script_default("data.latent_multiplier") == schema.SCRIPT_LATENT_MULTIPLIER
            == DataConfig.latent_multiplier == 0.18215)
    # ... and their classes another (§4.4, §1.2); both class signatures stay the authors'.
    dataset = documented_call("4.4", "ImgLatentDataset")
    assert dataset == {"latent_norm": True, "latent_multiplier": 1.0}
    # (SFD's keyword-only additions, latent_sv_norm=False etc., keep the authors' two defaults)
    assert {k: v for k, v in signature_defaults(ImgLatentDataset).items() if k in dataset} == dataset
    dit = documented_call("1.2", "LightningDiT")
    assert dit["in_channels"] == 32 and len(dit) == 16
    assert {k: v for k, v in signature_defaults(LightningDiT).items() if k in dit} == dit
    # Every other constructor default the schema shares is the schema's.
    model = ModelConfig()
    for key in ("class_dropout_prob", "learn_sigma", "use_qknorm", "use_swiglu", "use_rope", "use_rmsnorm",
                "wo_shift", "use_checkpoint"):
        assert dit[key] == getattr(model, key), key


def test_entry_code_passes_the_config_values_not_the_class_defaults():
    cfg = load_config(None, ["model.hidden_size=32", "model.depth=1", "model.num_heads=2",
                             "model.patch_size=1", "data.image_size=32"])
    assert build_model(cfg).in_channels == schema.SCRIPT_IN_CHANS  # not LightningDiT's 32
    calls = [node for p in ROOT.rglob("*.py") if not {"tests", ".venv"} & set(p.relative_to(ROOT).parts)
             for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.Call)
             and getattr(node.func, "id", getattr(node.func, "attr", None)) == "ImgLatentDataset"]
    assert calls
    for call in calls:
        assert len(call.args) == 3 or {"latent_norm", "latent_multiplier"} <= {k.arg for k in call.keywords}


def test_transport_and_sampler_defaults_are_the_schema_defaults():
    tr, s = TransportConfig(), SampleConfig()
    assert {k: v for k, v in signature_defaults(create_transport).items() if hasattr(tr, k)} == {
        k: getattr(tr, k) for k in ("path_type", "prediction", "loss_weight", "train_eps", "sample_eps",
                                    "use_cosine_loss", "use_lognorm", "lognorm_until_step", "mask_clipped_phases")}
    sde = signature_defaults(Sampler.sample_sde)
    assert (sde["sampling_method"] in SDE_METHODS and sde["num_steps"] == s.num_sampling_steps
            and (sde["diffusion_form"], sde["diffusion_norm"], sde["last_step"], sde["last_step_size"])
            == (s.diffusion_form, s.diffusion_norm, s.last_step, s.last_step_size))
    # Sampler.sample_ode keeps SiT's defaults (§2.5); the pipeline always passes the config's.
    ode = signature_defaults(Sampler.sample_ode)
    assert {k: ode[k] for k in ("sampling_method", "num_steps")} == {
        k: v for k, v in documented_call("2.5", "sample_ode").items() if k in ("sampling_method", "num_steps")}
    assert (ode["atol"], ode["rtol"]) == (s.atol, s.rtol)

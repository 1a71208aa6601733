"""The one configuration schema for LightningDiT training, sampling and evaluation.

Every key the authors' YAML files use (hustvl/LightningDiT `configs/*.yaml`, docs/reference_behaviour.md §3.2
and §8) is declared here once, with its type and the reference default. Keys the reference read
without a default (it would crash when they were absent) default to the released value. Keys
that the reference lacks are marked "ours" and default to the reference behaviour.

`load_config(path, overrides)` reads a YAML file, merges `a.b=value` overrides, and raises a
one-line `ValueError` naming the file and key on unknown keys or values of the wrong type. Files
may come from anywhere (docs/reliability.md, Security): resolver interpolations are refused and
plain ones bounded (utils/safe_yaml.py), every key that scales work or memory has an upper bound
(`_RANGES`), and keys that become file names are one path component (`PATH_COMPONENT_KEYS`).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, NamedTuple, Optional, Sequence, Type

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from datasets.order import LABEL_MODES
from models.lightningdit import LightningDiT_models
from sampling.guidance import parse_cfg_channels
from transport import LOSS_WEIGHTS, PATH_TYPES, PREDICTIONS, REPA_MODES
from transport.integrators import LAST_STEPS, ODE_METHODS, SDE_METHODS
from transport.path import DIFFUSION_FORMS
from utils.safe_yaml import check_interpolations, load_yaml, refuse_resolvers

logger = logging.getLogger(__name__)

# The authors' train.py / inference.py defaults when a YAML omits the key (docs/reference_behaviour.md
# §3.2, §7.1). Their classes default differently, LightningDiT(in_channels=32) (§1.2) and
# ImgLatentDataset(latent_norm=True, latent_multiplier=1.0) (§4.4); those signatures stay as the
# authors wrote them, and every caller here passes the config value, so these are the ones that
# apply (§9.2). The released YAMLs set all three (32, true, 1.0).
SCRIPT_IN_CHANS = 4
SCRIPT_LATENT_NORM = False
SCRIPT_LATENT_MULTIPLIER = 0.18215

# Keys accepted only so that the authors' YAMLs load unchanged; nothing here reads them. A load
# logs "ignored: key=value (why)" for each one set to a value other than its schema default.
COMPAT_KEYS: Dict[str, str] = {
    "train.ckpt": "the authors' train.py never reads it either; resume with train.resume=true",
    "train.use_checkpoint": "the authors' train.py only prints it; model.use_checkpoint turns on "
                            "gradient checkpointing",
    "sample.likelihood": "the authors' inference.py never reads it; likelihoods come from "
                         "transport.Sampler.sample_ode_likelihood",
}


@dataclass
class DataConfig:
    data_path: str = "path/to/your/latents"      # latent shard dir (or dir with latents_stats.pt)
    fid_reference_file: Optional[str] = None     # ADM reference batch (VIRTUAL_imagenet256_labeled.npz)
    image_size: int = 256
    num_classes: int = 1000
    num_workers: int = 8
    latent_norm: bool = SCRIPT_LATENT_NORM
    latent_multiplier: float = SCRIPT_LATENT_MULTIPLIER
    valid_path: Optional[str] = None             # held-out latent dir for validation loss (ours: works)
    # SFD: standardise the semantic channels with `latents_sv_stats.pt` (SFD's default when absent: false)
    latent_sv_norm: bool = False


@dataclass
class VAEConfig:
    model_name: str = "vavae_f16d32"             # -> configs/tokenizer/{model_name}.yaml
    downsample_ratio: int = 16
    config_path: Optional[str] = None            # ours: explicit tokenizer YAML, overrides model_name


@dataclass
class ModelConfig:
    model_type: str = "LightningDiT-XL/1"
    use_qknorm: bool = False
    use_swiglu: bool = False
    use_rope: bool = False
    use_rmsnorm: bool = False
    wo_shift: bool = False
    in_chans: int = SCRIPT_IN_CHANS
    use_checkpoint: bool = False                 # gradient checkpointing (the key the reference reads)
    learn_sigma: bool = False
    class_dropout_prob: float = 0.1              # ours: the reference always uses the constructor default
    # ours: torch.compile the blocks (speed only): true | false | auto (CUDA yes, CPU no; models.build.should_compile)
    compile: Any = "auto"
    # ours: override the registry size of model_type (tiny CPU configs); None = registry value
    hidden_size: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    patch_size: Optional[int] = None
    # SFD (docs/reference_behaviour.md, SFD part; defaults = SFD's train.py defaults = plain LightningDiT):
    semantic_chans: int = 0                      # the last `semantic_chans` of in_chans are semantic
    semfirst_delta_t: float = 0.0                # how far the semantic channels run ahead (0: synchronous)
    semantic_weight: float = 1.0                 # MSE weight of the semantic channels
    use_repa: bool = False                       # REPA projector + loss against pre-extracted features
    repa_dino_version: Optional[str] = None      # the REPA target encoder (its width sets the projector)
    repa_feat_depth: Optional[int] = None        # REPA on the output of this block (1-based)
    repa_projector_dim: int = 2048               # ours: the REPA projector's hidden width (SFD's constant)
    repa_weight: float = 1.0
    repa_mode: str = "cos"                       # cos | mse | cos_mse
    semfirst_infer_interval_mode: str = "both"   # which parts the CFG interval applies to: tex | sem | both


@dataclass
class TrainConfig:
    max_steps: int = 80000
    global_batch_size: int = 1024
    global_seed: int = 0                         # ours: seeds training too (the reference did not)
    output_dir: str = "output"
    exp_name: Optional[str] = None               # None -> "{index:03d}-{model type}" (fixed upstream bug)
    ckpt: Optional[str] = None                   # COMPAT_KEYS
    log_every: int = 100
    ckpt_every: int = 20000
    resume: bool = False
    # ours: start over in an existing run directory (old checkpoints and logs are moved aside to
    # `NAME.old-<timestamp>`, never deleted); without it or `resume`, an existing run is an error
    overwrite: bool = False
    allow_config_change: bool = False            # ours: resume although run-changing keys differ
    use_checkpoint: bool = True                  # COMPAT_KEYS
    weight_init: Optional[str] = None            # warm start checkpoint (shape-mismatch rule, §3.7)
    ema_decay: float = 0.9999                    # ours: named; reference constant
    keep_last_n: Optional[int] = None            # ours: delete older checkpoints
    valid_every: Optional[int] = None            # ours: validation loss interval (needs data.valid_path)
    num_valid_batches: int = 8                   # ours
    # ours: per-process micro-batch; None = global batch / processes (the reference, no accumulation).
    # Accumulation steps = global_batch_size / (processes * micro_batch_size).
    micro_batch_size: Optional[int] = None
    eval_every: Optional[int] = None             # ours: sample + FID with the EMA model every N steps
    eval_num: int = 1000                         # ours: images per evaluation (fixed seeds, class-balanced)
    eval_steps: int = 50                         # ours: Euler steps of the evaluation sampler
    eval_cfg_scale: float = 1.0                  # ours: guidance of the evaluation sampler (1 = none)
    eval_batch_size: int = 32                    # ours: per-process sampling batch of the evaluation
    report_to: str = "tensorboard"               # ours: tensorboard | wandb | all | none (JSONL always)
    spike_factor: Optional[float] = 3.0          # ours: warn when a window loss > k x running median


@dataclass
class OptimizerConfig:
    lr: float = 2e-4
    beta2: float = 0.95
    max_grad_norm: Optional[float] = None        # None: no clipping (released configs)


@dataclass
class TransportConfig:
    path_type: str = "Linear"
    prediction: str = "velocity"
    loss_weight: Optional[str] = None
    sample_eps: Optional[float] = None
    train_eps: Optional[float] = None
    use_cosine_loss: bool = False
    use_lognorm: bool = False
    lognorm_until_step: Optional[int] = None     # ours: 800-epoch recipe switches lognorm off at 600k
    # ours: rectified_flow (the keys above) | ddpm (DiT's baseline, Table 1 row 0: linear betas,
    # eps + learned sigma with model.learn_sigma, MSE + L_vb; sampled with the ancestral chain
    # respaced to sample.num_sampling_steps; the path/prediction/eps/lognorm keys are unused)
    objective: str = "rectified_flow"
    diffusion_steps: int = 1000                  # ours: DDPM chain length T (objective ddpm)
    # ours (SFD, model.semfirst_delta_t > 0): leave out of the MSE the channels of a group whose time
    # is clipped (texture before delta, semantics after 1: the channels the sampler freezes), counting
    # them as 0 in the mean over C H W; false = SFD, which trains them (docs/reference_behaviour.md §12.3.2)
    mask_clipped_phases: bool = False


@dataclass
class SampleConfig:
    mode: str = "ODE"                            # ODE | SDE (ours: SDE works)
    # ODE: any torchdiffeq method (euler, heun2, dopri5, ...) or ours, euler_phase / heun2_phase
    # (fixed grid with nodes on SFD's phase boundaries, docs/reference_behaviour.md §12.4.2); SDE: Euler | Heun
    sampling_method: str = "euler"
    atol: float = 1e-6
    rtol: float = 1e-3
    reverse: bool = False
    likelihood: bool = False                     # COMPAT_KEYS
    num_sampling_steps: int = 250
    per_proc_batch_size: int = 4
    fid_num: int = 50000
    cfg_scale: float = 1.0
    cfg_interval_start: float = 0.0
    timestep_shift: float = 0.0
    # ours: guided channels. "3" = the reference's quirk (docs/reference_behaviour.md §1.10, the published FIDs);
    # "all" = guidance on every latent channel.
    cfg_channels: str = "3"
    label_mode: str = "uniform"                  # ours: uniform (reference) | balanced (fid_num/classes each)
    precision: str = "fp32"                      # ours: fp32 (reference, TF32 on GPU) | bf16
    skip_uncond_outside_interval: bool = True    # ours: same samples, fewer network evaluations
    diffusion_form: str = "SBDM"                 # ours: SDE options
    diffusion_norm: float = 1.0
    last_step: Optional[str] = "Mean"
    last_step_size: float = 0.04
    # SFD: class-balanced labels (the same as label_mode=balanced; either one turns it on)
    balanced_sampling: bool = False
    autoguidance: bool = False                   # SFD: guide with a weaker network (cfg_scale > 1)
    autoguidance_config: Optional[str] = None    # SFD: the guide's YAML (its ckpt_path and model)
    # SFD's --autoguidance_ckpt_iter (AUTOGUIDANCE_CKPT_ITER): the guide checkpoint of iteration K
    # thousand, {K*1000:07d}.pt in the folder of the guide YAML's ckpt_path (None: that ckpt_path)
    autoguidance_ckpt_iter: Optional[int] = None
    cfg_scale_sem: Optional[float] = None        # SFD: per-part guidance scales (None: cfg_scale)
    cfg_scale_tex: Optional[float] = None


@dataclass
class LightningDiTConfig:
    ckpt_path: Optional[str] = None              # checkpoint used by inference.py
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    compat_keys: ClassVar[Mapping[str, str]] = COMPAT_KEYS


REPORT_TO = ("tensorboard", "wandb", "all", "none")  # train.report_to
INTERVAL_MODES = ("tex", "sem", "both")                # model.semfirst_infer_interval_mode (SFD)

SAMPLING_METHODS = {"ODE": ODE_METHODS, "SDE": SDE_METHODS}   # sample.mode -> sample.sampling_method
SAMPLE_PRECISIONS = ("fp32", "bf16")                          # sample.precision (inference.py)

# Allowed values, from the registries that implement them where one exists (checked at load, so a
# typo fails before any model is built; membership is tested at load time, so registry additions
# are accepted).
_CHOICES = {
    "model.model_type": LightningDiT_models,
    "transport.path_type": PATH_TYPES,
    "transport.prediction": PREDICTIONS,
    "transport.loss_weight": LOSS_WEIGHTS,
    "transport.objective": ("rectified_flow", "ddpm"),
    "sample.mode": SAMPLING_METHODS,
    "sample.label_mode": LABEL_MODES,
    "sample.precision": SAMPLE_PRECISIONS,
    "sample.diffusion_form": DIFFUSION_FORMS,
    "sample.last_step": LAST_STEPS,
    "model.compile": (True, False, "auto"),
    "train.report_to": REPORT_TO,
    "model.repa_mode": REPA_MODES,
    "model.semfirst_infer_interval_mode": INTERVAL_MODES,
}


def _validate(cfg: DictConfig, source: str) -> None:
    """Value checks that types alone cannot express."""
    for key, allowed in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ValueError(f"{source}: bad value for '{key}': {value!r} (expected one of {tuple(allowed)})")
    methods = SAMPLING_METHODS[cfg.sample.mode]
    if cfg.sample.sampling_method not in methods:
        raise ValueError(f"{source}: bad value for 'sample.sampling_method': {cfg.sample.sampling_method!r} "
                         f"(sample.mode={cfg.sample.mode} expects one of {tuple(methods)})")
    try:
        parse_cfg_channels(cfg.sample.cfg_channels)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    if cfg.model.semantic_chans >= cfg.model.in_chans:
        raise ValueError(f"{source}: bad value for 'model.semantic_chans': {cfg.model.semantic_chans} "
                         f"(must be below model.in_chans = {cfg.model.in_chans})")
    if cfg.model.semfirst_delta_t > 0 and cfg.model.semantic_chans == 0:
        raise ValueError(f"{source}: 'model.semfirst_delta_t' > 0 needs 'model.semantic_chans' > 0")
    if cfg.train.global_batch_size <= 0:
        raise ValueError(f"{source}: 'train.global_batch_size' must be positive, got {cfg.train.global_batch_size}")
    for key in PATH_COMPONENT_KEYS:
        check_path_component(OmegaConf.select(cfg, key), key, source)


class Range(NamedTuple):
    """Allowed interval of a numeric key; `None` bounds are open-ended."""
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False          # True: value must be > low (else >= low)
    high_open: bool = False         # True: value must be < high (else <= high)

    def holds(self, value: float) -> bool:
        if value != value:          # NaN
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


POSITIVE, NON_NEGATIVE, UNIT = Range(0, low_open=True), Range(0), Range(0.0, 1.0)


def up_to(high: float, low: float = 0, low_open: bool = True) -> Range:
    """(low, high] (default: positive, at most `high`): the bound of a key that scales work or
    memory, far above every value of the papers so that no recipe hits it, low enough that a
    downloaded config cannot ask for an impossible allocation or a run of years."""
    return Range(low, high, low_open=low_open)


# Upper bounds shared by both schemas (configs/schema.py, tokenizer/train_config.py).
MAX_IMAGE_SIZE = 8192            # pixels per side (papers: 256, 512)
MAX_BATCH = 1 << 20              # images per batch (papers: 1024 global, 4 per process when sampling)
MAX_WORKERS = 256                # DataLoader workers per process (papers: 8, 16)
MAX_STEPS = 10 ** 9              # optimizer steps / sampling batches (papers: 4M steps at most)
MAX_IMAGES = 10 ** 8             # images generated or read in one run (papers: 50k FID samples)
MAX_CHANNELS = 1 << 16           # latent, feature or class counts (papers: 32 channels, 1000 classes)
MAX_WIDTH = 1 << 15              # network widths (LightningDiT-XL: 1152)
MAX_LAYERS = 1024                # network depths / head counts (LightningDiT-XL: 28 blocks, 16 heads)

# Range checks at load (None = an optional key left unset: not checked).
_RANGES = {
    "data.image_size": up_to(MAX_IMAGE_SIZE), "data.num_classes": up_to(MAX_CHANNELS * 16),
    "data.num_workers": up_to(MAX_WORKERS, low_open=False),
    "data.latent_multiplier": POSITIVE, "vae.downsample_ratio": up_to(MAX_IMAGE_SIZE),
    "model.in_chans": up_to(MAX_CHANNELS), "model.class_dropout_prob": UNIT, "model.hidden_size": up_to(MAX_WIDTH),
    "model.depth": up_to(MAX_LAYERS), "model.num_heads": up_to(MAX_LAYERS), "model.patch_size": up_to(MAX_IMAGE_SIZE),
    "train.max_steps": up_to(MAX_STEPS, low_open=False), "train.global_batch_size": up_to(MAX_BATCH),
    "train.global_seed": NON_NEGATIVE, "train.log_every": POSITIVE, "train.ckpt_every": POSITIVE,
    "train.ema_decay": UNIT, "train.keep_last_n": POSITIVE, "train.valid_every": POSITIVE,
    "train.num_valid_batches": up_to(MAX_STEPS),
    "train.micro_batch_size": up_to(MAX_BATCH), "train.eval_every": POSITIVE, "train.eval_num": up_to(MAX_IMAGES),
    "train.eval_steps": up_to(MAX_STEPS), "train.eval_cfg_scale": NON_NEGATIVE,
    "train.eval_batch_size": up_to(MAX_BATCH),
    "train.spike_factor": Range(1.0, low_open=True),
    "optimizer.lr": POSITIVE, "optimizer.beta2": Range(0.0, 1.0, high_open=True),
    "optimizer.max_grad_norm": POSITIVE,
    "transport.sample_eps": Range(0.0, 1.0, high_open=True),
    "transport.train_eps": Range(0.0, 1.0, high_open=True),
    "transport.lognorm_until_step": NON_NEGATIVE, "transport.diffusion_steps": Range(2, MAX_STEPS),
    # adaptive ODE tolerances: a vanishing one makes dopri5 take astronomically many steps
    "sample.atol": Range(1e-12, 1.0), "sample.rtol": Range(1e-12, 1.0), "sample.num_sampling_steps": up_to(MAX_STEPS),
    "sample.per_proc_batch_size": up_to(MAX_BATCH), "sample.fid_num": up_to(MAX_IMAGES),
    "sample.cfg_scale": NON_NEGATIVE,
    "sample.cfg_interval_start": UNIT, "sample.timestep_shift": NON_NEGATIVE,
    "sample.diffusion_norm": NON_NEGATIVE, "sample.last_step_size": Range(0.0, 1.0, True, True),
    "model.semantic_chans": Range(0, MAX_CHANNELS), "model.semfirst_delta_t": Range(0.0, 1.0),
    "model.semantic_weight": NON_NEGATIVE, "model.repa_feat_depth": up_to(MAX_LAYERS),
    "model.repa_projector_dim": up_to(MAX_WIDTH), "model.repa_weight": NON_NEGATIVE,
    "sample.cfg_scale_sem": NON_NEGATIVE, "sample.cfg_scale_tex": NON_NEGATIVE,
    "sample.autoguidance_ckpt_iter": POSITIVE,
}
# Keys whose value becomes one file or directory name (`{output_dir}/{exp_name}`,
# `configs/tokenizer/{model_name}.yaml`): a single path component.
PATH_COMPONENT_KEYS = ("train.exp_name", "vae.model_name")


def check_path_component(value: Any, key: str, source: str) -> None:
    """ValueError unless `value` (when set) is one file or directory name: not empty, '.' or
    '..', without a path separator or control characters, so it cannot leave its directory."""
    if value is None:
        return
    text = str(value)
    separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if text in ("", ".", "..") or any(c in separators or ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(f"{source}: bad value for '{key}': {text!r} (must be a single file or directory "
                         "name: no '/', '\\', '..' or control characters)")


def check_ranges(cfg: DictConfig, ranges: Dict[str, Range], source: str) -> None:
    """One-line ValueError for the first numeric key of `ranges` whose value is outside its range."""
    for key, allowed in ranges.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and not isinstance(value, bool) and not allowed.holds(value):
            raise ValueError(f"{source}: bad value for '{key}': {value!r} (must be {allowed})")


def attribute_to_override(err: ValueError, path: Optional[str], overrides: Sequence[str]) -> ValueError:
    """Re-attribute a validation error about key K to the override that set K, if any."""
    text = str(err)
    match = re.search(r"'([\w.]+)'", text)
    keyed = [(item, item.split("=", 1)[0].strip()) for item in reversed(list(overrides))]
    # The key the message quotes first, else any overridden key the message names.
    culprit = next((item for item, key in keyed if match and key == match.group(1)), None) or next(
        (item for item, key in keyed if re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", text)), None)
    if culprit is None:
        return err
    prefix = f"{path}: " if path else "config: "
    return ValueError(f"override '{culprit}': {text[len(prefix):] if text.startswith(prefix) else text}")


def _first_line(text: str) -> str:
    return str(text).strip().splitlines()[0]


def cfg_channels_value(cfg: DictConfig) -> Optional[int]:
    """`sample.cfg_channels` as the model expects it: an int, or None for all channels."""
    return parse_cfg_channels(cfg.sample.cfg_channels)


def _load_yaml(path: str) -> DictConfig:
    """A YAML config file as a mapping; an empty, unparsable or non-mapping file is a ValueError,
    and so are resolver interpolations and oversized ones (utils/safe_yaml.py)."""
    try:
        data = load_yaml(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    except (UnicodeDecodeError, IsADirectoryError) as err:
        raise ValueError(f"{path}: not a YAML text file ({type(err).__name__})") from None
    if not isinstance(data, DictConfig):
        raise ValueError(f"{path}: expected a YAML mapping (key: value), got a list")
    if len(data) == 0:
        raise ValueError(f"{path}: empty config file")
    return data


def load_config(path: Optional[str], overrides: Sequence[str] = (),
                schema: Type = LightningDiTConfig) -> DictConfig:
    """Load `path` (YAML) onto `schema`, apply `key=value` overrides, and validate.

    Unknown keys and ill-typed values raise `ValueError` naming the file (or override) and key.
    """
    cfg = OmegaConf.structured(schema)
    sources: List[tuple] = []
    if path is not None:
        if Path(path).is_dir():
            raise ValueError(f"{path}: is a directory, not a YAML config file")
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        sources.append((str(path), _load_yaml(path)))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override '{item}' is not of the form key=value")
        sources.append((f"override '{item}'", OmegaConf.from_dotlist([item])))
    for source, update in sources:
        refuse_resolvers(update, source)
        try:
            cfg = OmegaConf.merge(cfg, update)
        except ConfigKeyError as err:
            raise ValueError(f"{source}: unknown config key '{err.full_key}'") from None
        except ValidationError as err:
            raise ValueError(f"{source}: bad value for '{err.full_key}': {_first_line(err.msg)}") from None
        except OmegaConfBaseException as err:
            raise ValueError(f"{source}: {_first_line(err.msg)}") from None
    try:  # before anything reads a value: references are resolved on reading
        check_interpolations(cfg, str(path) if path else "config")
    except ValueError as err:
        raise attribute_to_override(err, path, overrides) from None
    if schema is LightningDiTConfig:
        try:
            _validate(cfg, str(path) if path else "config")
            check_ranges(cfg, _RANGES, str(path) if path else "config")
        except ValueError as err:
            raise attribute_to_override(err, path, overrides) from None
    _log_ignored_keys(cfg, schema)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _log_ignored_keys(cfg: DictConfig, schema: Type) -> None:
    """Log each of `schema.compat_keys` that is set to a value other than its schema default."""
    defaults = OmegaConf.structured(schema)
    for key, why in getattr(schema, "compat_keys", {}).items():
        value = OmegaConf.select(cfg, key)
        if value != OmegaConf.select(defaults, key):
            logger.warning("ignored: %s=%s (%s)", key, value, why)


def parse_cli(argv: Optional[Sequence[str]] = None, description: str = "",
              schema: Type = LightningDiTConfig,
              extra_args: Optional[Any] = None) -> tuple:
    """Parse `[--config] CONFIG [key=value ...]` plus script flags; returns (cfg, args).

    `extra_args(parser)` may add script-specific flags (e.g. `--demo`).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config_pos", nargs="?", metavar="CONFIG", help="YAML config file")
    parser.add_argument("--config", dest="config_opt", help="YAML config file (alternative spelling)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    if extra_args is not None:
        extra_args(parser)
    args = parser.parse_intermixed_args(argv)
    config = args.config_opt or args.config_pos
    overrides = list(args.overrides)
    if args.config_opt and args.config_pos:
        # `--config X a=b`: argparse puts the first override into config_pos
        overrides.insert(0, args.config_pos)
    if config is None:
        raise SystemExit(f"error: no config file given (usage: {parser.prog} CONFIG [key=value ...]; "
                         f"e.g. {'configs/tiny/lightningdit_tiny.yaml' if schema is LightningDiTConfig else 'configs/tokenizer/tiny_cpu.yaml'})")
    if config is not None and "=" in config and not Path(config).exists():
        raise SystemExit(f"error: expected a config file before overrides, got '{config}'")
    try:
        cfg = load_config(config, overrides, schema)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    return cfg, args


def to_container(cfg: DictConfig) -> dict:
    """Plain dict of a config (for checkpoints and JSON logs)."""
    return OmegaConf.to_container(cfg, resolve=True)

"""The one configuration schema for LightningDiT training, sampling and evaluation.

Every key the authors' YAML files use (hustvl/LightningDiT `configs/*.yaml`, REFERENCE.md §3.2
and §8) is declared here once, with its type and the reference default. Keys the reference read
without a default (it would crash when they were absent) default to the released value. Keys
that the reference lacks are marked "ours" and default to the reference behaviour.

`load_config(path, overrides)` reads a YAML file, merges `a.b=value` overrides, and raises a
one-line `ValueError` naming the file and key on unknown keys or values of the wrong type.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Type

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError


@dataclass
class DataConfig:
    data_path: str = "path/to/your/latents"      # latent shard dir (or dir with latents_stats.pt)
    fid_reference_file: Optional[str] = None     # ADM reference batch (VIRTUAL_imagenet256_labeled.npz)
    image_size: int = 256
    num_classes: int = 1000
    num_workers: int = 8
    latent_norm: bool = False                    # reference default when absent; released YAMLs set true
    # train.py/inference.py default when absent (REFERENCE §9.2); the released YAMLs set 1.0.
    latent_multiplier: float = 0.18215
    valid_path: Optional[str] = None             # held-out latent dir for validation loss (ours: works)


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
    in_chans: int = 4                            # reference default when absent; released YAMLs set 32
    use_checkpoint: bool = False                 # gradient checkpointing (the key the reference reads)
    learn_sigma: bool = False
    class_dropout_prob: float = 0.1              # ours: the reference always uses the constructor default
    compile: bool = False                        # ours: torch.compile the blocks (speed only)
    # ours: override the registry size of model_type (tiny CPU configs); None = registry value
    hidden_size: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    patch_size: Optional[int] = None


@dataclass
class TrainConfig:
    max_steps: int = 80000
    global_batch_size: int = 1024
    global_seed: int = 0                         # ours: seeds training too (the reference did not)
    output_dir: str = "output"
    exp_name: Optional[str] = None               # None -> "{index:03d}-{model type}" (fixed upstream bug)
    ckpt: Optional[str] = None                   # unused by the reference; kept for compatibility
    log_every: int = 100
    ckpt_every: int = 20000
    resume: bool = False
    use_checkpoint: bool = True                  # reference: only logged; model.use_checkpoint acts
    weight_init: Optional[str] = None            # warm start checkpoint (shape-mismatch rule, §3.7)
    ema_decay: float = 0.9999                    # ours: named; reference constant
    keep_last_n: Optional[int] = None            # ours: delete older checkpoints
    valid_every: Optional[int] = None            # ours: validation loss interval (needs data.valid_path)
    num_valid_batches: int = 8                   # ours


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


@dataclass
class SampleConfig:
    mode: str = "ODE"                            # ODE | SDE (ours: SDE works)
    sampling_method: str = "euler"
    atol: float = 1e-6
    rtol: float = 1e-3
    reverse: bool = False
    likelihood: bool = False
    num_sampling_steps: int = 250
    per_proc_batch_size: int = 4
    fid_num: int = 50000
    cfg_scale: float = 1.0
    cfg_interval_start: float = 0.0
    timestep_shift: float = 0.0
    # ours: guided channels. "3" = the reference's quirk (REFERENCE §1.10, the published FIDs);
    # "all" = guidance on every latent channel.
    cfg_channels: str = "3"
    label_mode: str = "uniform"                  # ours: uniform (reference) | balanced (fid_num/classes each)
    precision: str = "fp32"                      # ours: fp32 (reference, TF32 on GPU) | bf16
    skip_uncond_outside_interval: bool = True    # ours: same samples, fewer network evaluations
    diffusion_form: str = "SBDM"                 # ours: SDE options
    diffusion_norm: float = 1.0
    last_step: Optional[str] = "Mean"
    last_step_size: float = 0.04


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


_CHOICES = {
    "transport.path_type": ("Linear", "GVP", "VP"),
    "transport.prediction": ("velocity", "noise", "score"),
    "transport.loss_weight": (None, "velocity", "likelihood"),
    "sample.mode": ("ODE", "SDE"),
    "sample.label_mode": ("uniform", "balanced"),
    "sample.precision": ("fp32", "bf16"),
}


def _validate(cfg: DictConfig, source: str) -> None:
    """Value checks that types alone cannot express."""
    for key, allowed in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ValueError(f"{source}: bad value for '{key}': {value!r} (expected one of {allowed})")
    channels = cfg.sample.cfg_channels
    if channels != "all" and not (channels.isdigit() and int(channels) > 0):
        raise ValueError(f"{source}: bad value for 'sample.cfg_channels': {channels!r} "
                         "(expected a positive integer or 'all')")
    if cfg.train.global_batch_size <= 0:
        raise ValueError(f"{source}: 'train.global_batch_size' must be positive, got {cfg.train.global_batch_size}")


def _first_line(text: str) -> str:
    return str(text).strip().splitlines()[0]


def cfg_channels_value(cfg: DictConfig) -> Optional[int]:
    """`sample.cfg_channels` as the model expects it: an int, or None for all channels."""
    channels = cfg.sample.cfg_channels
    return None if channels == "all" else int(channels)


def load_config(path: Optional[str], overrides: Sequence[str] = (),
                schema: Type = LightningDiTConfig) -> DictConfig:
    """Load `path` (YAML) onto `schema`, apply `key=value` overrides, and validate.

    Unknown keys and ill-typed values raise `ValueError` naming the file (or override) and key.
    """
    cfg = OmegaConf.structured(schema)
    sources: List[tuple] = []
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        sources.append((str(path), OmegaConf.load(path)))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override '{item}' is not of the form key=value")
        sources.append((f"override '{item}'", OmegaConf.from_dotlist([item])))
    for source, update in sources:
        try:
            cfg = OmegaConf.merge(cfg, update)
        except ConfigKeyError as err:
            raise ValueError(f"{source}: unknown config key '{err.full_key}'") from None
        except ValidationError as err:
            raise ValueError(f"{source}: bad value for '{err.full_key}': {_first_line(err.msg)}") from None
        except OmegaConfBaseException as err:
            raise ValueError(f"{source}: {_first_line(err.msg)}") from None
    if schema is LightningDiTConfig:
        _validate(cfg, str(path) if path else "config")
    OmegaConf.set_readonly(cfg, True)
    return cfg


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

"""Schema of the VA-VAE training YAMLs (`configs/tokenizer/*.yaml`).

The layout is the authors' LDM one (REFERENCE.md §6.1-6.3): `ckpt_path`, `init_weight`,
`model.{base_learning_rate, target, params.{embed_dim, use_vf, reverse_proj, proj_fix, lossconfig,
ddconfig}}`, `data.params`, `lightning.trainer`, so the same file also serves `tokenizer/vavae.py`
(which reads `ckpt_path` and `model.params.{embed_dim, ddconfig}`). Defaults are the reference's
(`LPIPSWithDiscriminator` constructor defaults for the loss). Keys marked "ours" are additions with
defaults equal to the reference behaviour. Load with `load_train_config(path, overrides)`: unknown
keys and ill-typed values raise a one-line ValueError naming the key (configs/schema.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from configs.schema import load_config

# Accepted `target` strings: ours, and the authors' (so their YAMLs load unchanged).
MODEL_TARGETS = ("tokenizer.vavae_model.VAVAEModel", "ldm.models.autoencoder.AutoencoderKL")
LOSS_TARGETS = ("tokenizer.losses.LPIPSWithDiscriminator", "ldm.modules.losses.LPIPSWithDiscriminator",
                "ldm.modules.losses.contperceptual.LPIPSWithDiscriminator")
# lightning.trainer.precision -> accelerate mixed_precision
PRECISIONS = {"32": "no", "32-true": "no", "bf16": "bf16", "bf16-mixed": "bf16"}


@dataclass
class LossParams:
    disc_start: Optional[int] = None         # required (the reference has no default)
    logvar_init: float = 0.0
    kl_weight: float = 1.0
    pixelloss_weight: float = 1.0            # stored, unused (reference)
    disc_num_layers: int = 3
    disc_in_channels: int = 3
    disc_factor: float = 1.0
    disc_weight: float = 1.0
    perceptual_weight: float = 1.0
    use_actnorm: bool = False
    disc_conditional: bool = False
    disc_loss: str = "hinge"
    pp_style: bool = False
    vf_weight: float = 1e2
    adaptive_vf: bool = False
    cos_margin: float = 0.0
    distmat_margin: float = 0.0
    distmat_weight: float = 1.0
    cos_weight: float = 1.0
    vf_loss_type: Optional[str] = None       # inference YAML key; only 'combined_v3' (= this loss)
    disc_ndf: int = 64                       # ours
    # ours: False = disc_start counts batches; True = counts the reference's Lightning global_step
    # (2 optimizer steps per batch), so `disc_start: 5001` behaves exactly as in the reference.
    disc_start_counts_optimizer_steps: bool = False
    lpips_vgg_weights: Optional[str] = None  # ours: vgg16-397923af.pth (default $LPIPS_VGG_WEIGHTS)
    lpips_random_init: bool = False          # ours: tests / demos without VGG weights
    lpips_train_mode: bool = True            # ours: LPIPS dropout active in training (reference)


@dataclass
class LossConfig:
    target: str = LOSS_TARGETS[0]
    params: LossParams = field(default_factory=LossParams)


@dataclass
class FoundationConfig:                      # ours (the reference downloads from the HF hub)
    weights: Optional[str] = None            # local timm / original DINOv2 / MAE file
    normalize_input: bool = False            # False = reference ([-1, 1] input, issue #78)
    random_init: bool = False                # tests / demos only
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # timm overrides (tiny test ViTs)


@dataclass
class DDConfig:
    double_z: bool = True
    z_channels: int = 32
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: List[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    num_res_blocks: int = 2
    attn_resolutions: List[int] = field(default_factory=lambda: [16])
    dropout: float = 0.0


@dataclass
class ModelParams:
    monitor: str = "val/rec_loss"
    embed_dim: int = 32
    use_vf: Optional[str] = None             # None | dinov2 | mae
    reverse_proj: bool = False
    proj_fix: bool = False
    foundation: FoundationConfig = field(default_factory=FoundationConfig)
    lossconfig: LossConfig = field(default_factory=LossConfig)
    ddconfig: DDConfig = field(default_factory=DDConfig)


@dataclass
class ModelConfig:
    base_learning_rate: float = 1e-4         # used as is (the reference's --scale_lr is ignored)
    target: str = MODEL_TARGETS[0]
    params: ModelParams = field(default_factory=ModelParams)


@dataclass
class SplitConfig:
    data_root: Optional[str] = None          # image folder (ImageFolder layout or flat)
    size: int = 256
    max_images: Optional[int] = None         # ours: use the first N files (sorted)


@dataclass
class DataParams:
    batch_size: int = 8                      # per process
    num_workers: Optional[int] = None        # None -> 2 * batch_size (reference)
    wrap: bool = True                        # accepted for compatibility; unused
    train: SplitConfig = field(default_factory=SplitConfig)
    validation: SplitConfig = field(default_factory=SplitConfig)


@dataclass
class DataConfig:
    target: str = "main.DataModuleFromConfig"  # accepted for compatibility; unused
    params: DataParams = field(default_factory=DataParams)


@dataclass
class TrainerConfig:
    """`lightning.trainer`: only max_epochs and precision act; the process count comes from the
    launcher (tools/launch.sh), devices / num_nodes / strategy are informational."""
    accelerator: Optional[str] = None
    devices: Any = None
    num_nodes: int = 1
    strategy: Optional[str] = None
    max_epochs: Optional[int] = None
    precision: Any = 32                      # 32 (reference) | bf16 | bf16-mixed


@dataclass
class LightningConfig:
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class TrainRunConfig:                        # ours
    output_dir: str = "logs"                 # run dir = {output_dir}/{exp_name} (reference: logs/{stem})
    exp_name: Optional[str] = None           # None -> config file stem
    seed: int = 23                           # reference main.py default
    max_steps: Optional[int] = None          # batches; overrides lightning.trainer.max_epochs
    log_every: int = 50
    sample_every: int = 750                  # reference ImageLogger batch_frequency
    num_sample_images: int = 4               # reference max_images
    val_every: Optional[int] = None          # None -> end of every epoch (reference)
    val_max_batches: Optional[int] = None    # None -> the whole validation set
    ckpt_every: Optional[int] = None         # None -> end of every epoch (reference)
    keep_last_n: Optional[int] = None        # None -> keep all (reference save_top_k=-1)
    resume: bool = True                      # auto-resume from the run dir (reference)
    resume_from: Optional[str] = None        # explicit training checkpoint


@dataclass
class TokenizerTrainConfig:
    ckpt_path: Optional[str] = None          # weights VA_VAE loads (inference); unused by training
    init_weight: Optional[str] = None        # warm start (the key the reference reads)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lightning: LightningConfig = field(default_factory=LightningConfig)
    train: TrainRunConfig = field(default_factory=TrainRunConfig)


def mixed_precision(cfg: DictConfig) -> str:
    """accelerate's mixed_precision for `lightning.trainer.precision`."""
    value = str(cfg.lightning.trainer.precision)
    if value not in PRECISIONS:
        raise ValueError(f"bad value for 'lightning.trainer.precision': {value!r} "
                         f"(expected one of {sorted(PRECISIONS)}; fp16 is not supported)")
    return PRECISIONS[value]


def validate_train_config(cfg: DictConfig, source: str = "config") -> None:
    """Value checks beyond types; raises ValueError naming the key."""
    params = cfg.model.params
    loss = params.lossconfig.params
    checks = [
        (cfg.model.target in MODEL_TARGETS, "model.target", cfg.model.target, MODEL_TARGETS),
        (params.lossconfig.target in LOSS_TARGETS, "model.params.lossconfig.target",
         params.lossconfig.target, LOSS_TARGETS),
        (params.use_vf in (None, "dinov2", "mae"), "model.params.use_vf", params.use_vf, (None, "dinov2", "mae")),
        (loss.disc_loss in ("hinge", "vanilla"), "model.params.lossconfig.params.disc_loss",
         loss.disc_loss, ("hinge", "vanilla")),
        (loss.vf_loss_type in (None, "combined_v3"), "model.params.lossconfig.params.vf_loss_type",
         loss.vf_loss_type, (None, "combined_v3")),
    ]
    for ok, key, value, allowed in checks:
        if not ok:
            raise ValueError(f"{source}: bad value for '{key}': {value!r} (expected one of {allowed})")
    if loss.disc_start is None:
        raise ValueError(f"{source}: 'model.params.lossconfig.params.disc_start' must be set "
                         "(the long recipe's stage YAMLs fill the reference's blanks)")
    if params.ddconfig.z_channels != params.embed_dim:
        raise ValueError(f"{source}: 'model.params.embed_dim' ({params.embed_dim}) must equal "
                         f"'model.params.ddconfig.z_channels' ({params.ddconfig.z_channels})")
    if cfg.train.max_steps is None and cfg.lightning.trainer.max_epochs is None:
        raise ValueError(f"{source}: set 'lightning.trainer.max_epochs' or 'train.max_steps'")
    if cfg.data.params.batch_size <= 0:
        raise ValueError(f"{source}: 'data.params.batch_size' must be positive")
    mixed_precision(cfg)


def load_train_config(path: Optional[str], overrides: Sequence[str] = ()) -> DictConfig:
    """Load and validate a tokenizer training YAML (+ `a.b=value` overrides); read-only result."""
    cfg = load_config(path, overrides, schema=TokenizerTrainConfig)
    validate_train_config(cfg, str(path) if path else "config")
    return cfg


def loss_kwargs(cfg: DictConfig) -> Dict[str, Any]:
    """`LPIPSWithDiscriminator(**loss_kwargs(cfg))` arguments."""
    params = OmegaConf.to_container(cfg.model.params.lossconfig.params, resolve=True)
    params.pop("vf_loss_type")
    return params

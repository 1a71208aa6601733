"""Schema of the VA-VAE training YAMLs (`configs/tokenizer/*.yaml`).

The layout is the authors' LDM one (docs/reference_behaviour.md §6.1-6.3): `ckpt_path`, `init_weight`,
`model.{base_learning_rate, target, params.{embed_dim, use_vf, reverse_proj, proj_fix, lossconfig,
ddconfig}}`, `data.params`, `lightning.trainer`, so the same file also serves `tokenizer/vavae.py`
(which reads `ckpt_path` and `model.params.{embed_dim, ddconfig}`). Defaults are the reference's
(`LPIPSWithDiscriminator` constructor defaults for the loss). Keys marked "ours" are additions with
defaults equal to the reference behaviour. Load with `load_train_config(path, overrides)`: unknown
keys and ill-typed values raise a one-line ValueError naming the key (configs/schema.py).

The authors' own training YAMLs (`vavae/configs/*.yaml`) load unchanged, `target:` keys and all
(`configs/tokenizer/authors/` holds copies), and resolve to the same run as ours:
- `data.params.{train,validation}: {target: ldm.data.imagenet.ImageNet*, params: {data_root}}`
  becomes our `data_root`: `{data_root}/ILSVRC2012_train/data` (validation:
  `ILSVRC2012_validation/data`), the folders the authors' ImageNet classes read
  (docs/reference_behaviour.md §6.2);
- `disc_start_counts_optimizer_steps` unset follows `model.target`: the authors' target counts
  Lightning's optimizer steps as their trainer did, ours counts batches;
- the long recipe's blank per-stage keys stop with one line naming them and the stage files.
`resolve_train_config` applies these rules; `load_train_config` calls it.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from configs.schema import (MAX_BATCH, MAX_CHANNELS, MAX_IMAGE_SIZE, MAX_IMAGES, MAX_LAYERS, MAX_STEPS,
                            MAX_WIDTH, MAX_WORKERS, NON_NEGATIVE, POSITIVE, REPORT_TO, UNIT, Range,
                            attribute_to_override, check_path_component, check_ranges, load_config, up_to)
from tokenizer.foundation import FOUNDATION_MODELS, check_model_kwargs
from tokenizer.losses import DISC_LOSSES
from training.lr_schedule import DECAYS, LRSchedule

# Accepted `target` strings: ours, and the authors' (so their YAMLs load unchanged).
MODEL_TARGETS = ("tokenizer.vavae_model.VAVAEModel", "ldm.models.autoencoder.AutoencoderKL")
LOSS_TARGETS = ("tokenizer.losses.LPIPSWithDiscriminator", "ldm.modules.losses.LPIPSWithDiscriminator",
                "ldm.modules.losses.contperceptual.LPIPSWithDiscriminator")
# lightning.trainer.precision -> accelerate mixed_precision
PRECISIONS = {"32": "no", "32-true": "no", "bf16": "bf16", "bf16-mixed": "bf16"}
VF_LOSS_TYPES = (None, "combined_v3")    # the authors' name of the one VF loss (tokenizer/losses.py)
# The authors' ImageNet dataset targets and the folder each reads under its `data_root`.
AUTHORS_DATA_TARGETS = {"ldm.data.imagenet.ImageNetTrain": "ILSVRC2012_train/data",
                        "ldm.data.imagenet.ImageNetValidation": "ILSVRC2012_validation/data"}
# Keys the authors' f16d32_vfdinov2_long.yaml leaves blank, to be filled per stage by hand.
PER_STAGE_KEYS = ("model.params.lossconfig.params.disc_start", "model.params.lossconfig.params.vf_weight",
                  "model.params.lossconfig.params.distmat_margin", "model.params.lossconfig.params.cos_margin",
                  "lightning.trainer.max_epochs")
LONG_RECIPE_STAGES = "configs/tokenizer/f16d32_vfdinov2_long_stage{1,2,3}.yaml"

# Keys of the authors' LDM / Lightning layout that nothing here reads (they load unchanged; a load
# logs "ignored: key=value (why)" for each one set to a value other than its schema default).
COMPAT_KEYS: Dict[str, str] = {
    "model.params.monitor": "no metric picks checkpoints; train.keep_last_n prunes the oldest",
    "model.params.lossconfig.params.pixelloss_weight": "the authors' loss stores it and never reads it",
    "data.target": "the images are always read by tokenizer.data from data.params.train / validation",
    "data.params.wrap": "an epoch is one pass over data.params.train",
    "lightning.trainer.accelerator": "tools/launch.sh picks the device",
    "lightning.trainer.devices": "tools/launch.sh sets the processes per node from GPUS_PER_NODE",
    "lightning.trainer.num_nodes": "tools/launch.sh sets the node count from NNODES (or an unambiguous WORLD_SIZE)",
    "lightning.trainer.strategy": "accelerate always runs DDP",
}


@dataclass
class LossParams:
    disc_start: Optional[int] = None         # required (the reference has no default)
    logvar_init: float = 0.0
    kl_weight: float = 1.0
    pixelloss_weight: float = 1.0            # COMPAT_KEYS
    disc_num_layers: int = 3
    disc_in_channels: int = 3
    disc_factor: float = 1.0
    disc_weight: float = 1.0
    perceptual_weight: float = 1.0
    use_actnorm: bool = False
    disc_conditional: bool = False
    disc_loss: str = "hinge"
    pp_style: bool = False
    vf_weight: Optional[float] = 1e2         # (Optional: a blank value is reported by name)
    adaptive_vf: bool = False
    cos_margin: Optional[float] = 0.0        # m1
    distmat_margin: Optional[float] = 0.0    # m2
    distmat_weight: float = 1.0              # 0 -> "mcos only" (paper Table 5)
    cos_weight: float = 1.0                  # 0 -> "mdms only" (paper Table 5)
    vf_loss_type: Optional[str] = None       # inference YAML key; only 'combined_v3' (= this loss)
    disc_ndf: int = 64                       # ours
    # ours: False = disc_start counts batches; True = counts the reference's Lightning global_step
    # (2 optimizer steps per batch), so `disc_start: 5001` behaves exactly as in the reference.
    # None: True for the authors' model.target (their files), False for ours.
    disc_start_counts_optimizer_steps: Optional[bool] = None
    lpips_vgg_weights: Optional[str] = None  # ours: vgg16-397923af.pth (default $LPIPS_VGG_WEIGHTS)
    lpips_random_init: bool = False          # ours: tests / demos without VGG weights
    lpips_train_mode: bool = True            # ours: LPIPS dropout active in training (reference)


@dataclass
class LossConfig:
    target: str = LOSS_TARGETS[0]
    params: LossParams = field(default_factory=LossParams)


@dataclass
class FoundationConfig:                      # ours (the reference downloads from the HF hub)
    weights: Optional[str] = None            # local timm / original DINOv2, MAE, SAM or open_clip file
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
    monitor: str = "val/rec_loss"            # COMPAT_KEYS
    embed_dim: int = 32
    use_vf: Optional[str] = None             # None | dinov2 | mae | sam | clip
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
class AuthorsSplitParams:
    data_root: Optional[str] = None          # the authors' ImageNet root (see the module docstring)


@dataclass
class SplitConfig:
    data_root: Optional[str] = None          # image folder (ImageFolder layout or flat)
    size: int = 256
    max_images: Optional[int] = None         # ours: use the first N files (sorted)
    target: Optional[str] = None             # the authors' dataset class (their layout)
    params: AuthorsSplitParams = field(default_factory=AuthorsSplitParams)


@dataclass
class DataParams:
    batch_size: int = 8                      # per process
    num_workers: Optional[int] = None        # None -> 2 * batch_size (reference)
    wrap: bool = True                        # COMPAT_KEYS
    train: SplitConfig = field(default_factory=SplitConfig)
    validation: SplitConfig = field(default_factory=SplitConfig)


@dataclass
class DataConfig:
    target: str = "main.DataModuleFromConfig"  # COMPAT_KEYS
    params: DataParams = field(default_factory=DataParams)


@dataclass
class TrainerConfig:
    """`lightning.trainer`: only max_epochs and precision act; the others are COMPAT_KEYS."""
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
class LRScheduleConfig:                      # ours: training/lr_schedule.py; the defaults = constant LR (reference)
    """Multiplier of `model.base_learning_rate` as a function of the step, for both optimizers:
    linear warm-up from `warmup_start` x lr over `warmup_steps`, lr until `decay_start`, then
    `decay` to `final` x lr at `total_steps` (held after). The fields are `LRSchedule`'s."""
    warmup_steps: int = 0
    warmup_start: float = 0.0
    decay_start: Optional[int] = None        # None: no decay
    total_steps: Optional[int] = None        # the step at which the decay reaches `final`
    final: float = 0.0
    decay: str = "cosine"                    # cosine | linear


@dataclass
class TrainRunConfig:                        # ours
    output_dir: str = "logs"                 # run dir = {output_dir}/{exp_name} (reference: logs/{stem})
    exp_name: Optional[str] = None           # None -> config file stem
    seed: int = 23                           # reference main.py default
    max_steps: Optional[int] = None          # batches; overrides lightning.trainer.max_epochs
    log_every: int = 50
    report_to: str = "tensorboard"           # tensorboard | wandb | all | none (metrics.jsonl always)
    sample_every: int = 750                  # reference ImageLogger batch_frequency
    num_sample_images: int = 4               # reference max_images
    val_every: Optional[int] = None          # None -> end of every epoch (reference)
    val_max_batches: Optional[int] = None    # None -> the whole validation set
    ckpt_every: Optional[int] = None         # None -> end of every epoch (reference)
    keep_last_n: Optional[int] = None        # None -> keep all (reference save_top_k=-1)
    resume: bool = True                      # auto-resume from the run dir (reference)
    overwrite: bool = False                  # ours: start over (old outputs moved aside, not deleted)
    allow_config_change: bool = False        # ours: resume although run-changing keys differ
    resume_from: Optional[str] = None        # explicit training checkpoint
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)


@dataclass
class TokenizerTrainConfig:
    ckpt_path: Optional[str] = None          # weights VA_VAE loads (inference); unused by training
    init_weight: Optional[str] = None        # warm start (the key the reference reads)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lightning: LightningConfig = field(default_factory=LightningConfig)
    train: TrainRunConfig = field(default_factory=TrainRunConfig)
    compat_keys: ClassVar[Mapping[str, str]] = COMPAT_KEYS


# Range checks at load (None = an optional key left unset: not checked). Keys that scale work or
# memory are bounded far above the authors' values (configs/schema.py `up_to`).
TRAIN_RANGES = {
    "model.base_learning_rate": POSITIVE, "model.params.embed_dim": up_to(MAX_CHANNELS),
    "model.params.lossconfig.params.disc_start": NON_NEGATIVE,
    "model.params.lossconfig.params.kl_weight": NON_NEGATIVE,
    "model.params.lossconfig.params.disc_num_layers": up_to(MAX_LAYERS),
    "model.params.lossconfig.params.disc_in_channels": up_to(MAX_CHANNELS),
    "model.params.lossconfig.params.disc_factor": NON_NEGATIVE,
    "model.params.lossconfig.params.disc_weight": NON_NEGATIVE,
    "model.params.lossconfig.params.perceptual_weight": NON_NEGATIVE,
    "model.params.lossconfig.params.vf_weight": NON_NEGATIVE,
    "model.params.lossconfig.params.cos_margin": Range(0.0, 2.0),
    "model.params.lossconfig.params.distmat_margin": Range(0.0, 2.0),
    "model.params.lossconfig.params.distmat_weight": NON_NEGATIVE,
    "model.params.lossconfig.params.cos_weight": NON_NEGATIVE,
    "model.params.lossconfig.params.disc_ndf": up_to(MAX_WIDTH),
    "model.params.ddconfig.z_channels": up_to(MAX_CHANNELS), "model.params.ddconfig.resolution": up_to(MAX_IMAGE_SIZE),
    "model.params.ddconfig.in_channels": up_to(MAX_CHANNELS), "model.params.ddconfig.out_ch": up_to(MAX_CHANNELS),
    "model.params.ddconfig.ch": up_to(MAX_WIDTH), "model.params.ddconfig.num_res_blocks": up_to(MAX_LAYERS),
    "model.params.ddconfig.dropout": Range(0.0, 1.0, high_open=True),
    "data.params.batch_size": up_to(MAX_BATCH), "data.params.num_workers": up_to(MAX_WORKERS, low_open=False),
    "data.params.train.size": up_to(MAX_IMAGE_SIZE), "data.params.train.max_images": up_to(MAX_IMAGES),
    "data.params.validation.size": up_to(MAX_IMAGE_SIZE), "data.params.validation.max_images": up_to(MAX_IMAGES),
    "lightning.trainer.num_nodes": up_to(MAX_BATCH), "lightning.trainer.max_epochs": up_to(MAX_STEPS),
    "train.seed": NON_NEGATIVE, "train.max_steps": up_to(MAX_STEPS), "train.log_every": POSITIVE,
    "train.sample_every": POSITIVE, "train.num_sample_images": up_to(MAX_BATCH), "train.val_every": POSITIVE,
    "train.val_max_batches": up_to(MAX_STEPS), "train.ckpt_every": POSITIVE, "train.keep_last_n": POSITIVE,
    "train.lr_schedule.warmup_steps": NON_NEGATIVE, "train.lr_schedule.warmup_start": UNIT,
    "train.lr_schedule.decay_start": NON_NEGATIVE, "train.lr_schedule.total_steps": POSITIVE,
    "train.lr_schedule.final": UNIT,
}
# Lists whose entries scale the network: ch_mult (widths ch * mult, one level per entry) and the
# attention resolutions.
LIST_BOUNDS = {"model.params.ddconfig.ch_mult": (up_to(MAX_WIDTH), 64),
               "model.params.ddconfig.attn_resolutions": (up_to(MAX_IMAGE_SIZE), 64)}


def _check_lists(cfg: DictConfig, source: str) -> None:
    """Each list of `LIST_BOUNDS`: at most its length, every entry in its range."""
    for key, (allowed, max_len) in LIST_BOUNDS.items():
        values = OmegaConf.select(cfg, key) or []
        if len(values) > max_len or not all(isinstance(v, int) and allowed.holds(v) for v in values):
            raise ValueError(f"{source}: bad value for '{key}': {list(values)} (at most {max_len} entries, "
                             f"each {allowed})")


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
        (params.use_vf is None or params.use_vf in FOUNDATION_MODELS, "model.params.use_vf", params.use_vf,
         (None, *FOUNDATION_MODELS)),
        (loss.disc_loss in DISC_LOSSES, "model.params.lossconfig.params.disc_loss", loss.disc_loss,
         tuple(DISC_LOSSES)),
        (loss.vf_loss_type in VF_LOSS_TYPES, "model.params.lossconfig.params.vf_loss_type",
         loss.vf_loss_type, VF_LOSS_TYPES),
        (cfg.train.report_to in REPORT_TO, "train.report_to", cfg.train.report_to, REPORT_TO),
        (cfg.train.lr_schedule.decay in DECAYS, "train.lr_schedule.decay", cfg.train.lr_schedule.decay, DECAYS),
    ]
    for ok, key, value, allowed in checks:
        if not ok:
            raise ValueError(f"{source}: bad value for '{key}': {value!r} (expected one of {allowed})")
    blank = [key for key in PER_STAGE_KEYS if OmegaConf.select(cfg, key) is None
             and not (key == "lightning.trainer.max_epochs" and cfg.train.max_steps is not None)]
    if blank:
        raise ValueError(f"{source}: blank keys {', '.join(blank)}: the authors' long recipe fills "
                         f"them by hand per stage; train with {LONG_RECIPE_STAGES} "
                         "(or set each with key=value)")
    if params.ddconfig.z_channels != params.embed_dim:
        raise ValueError(f"{source}: 'model.params.embed_dim' ({params.embed_dim}) must equal "
                         f"'model.params.ddconfig.z_channels' ({params.ddconfig.z_channels})")
    if cfg.train.max_steps is None and cfg.lightning.trainer.max_epochs is None:
        raise ValueError(f"{source}: set 'lightning.trainer.max_epochs' or 'train.max_steps'")
    check_ranges(cfg, TRAIN_RANGES, source)
    _check_lists(cfg, source)
    try:
        check_model_kwargs(OmegaConf.to_container(params.foundation.model_kwargs, resolve=True))
    except ValueError as err:
        raise ValueError(f"{source}: bad value for 'model.params.foundation.model_kwargs': {err}") from None
    check_path_component(cfg.train.exp_name, "train.exp_name", source)
    mixed_precision(cfg)
    lr_schedule(cfg, source)


def lr_schedule(cfg: DictConfig, source: str = "config") -> Optional[LRSchedule]:
    """`train.lr_schedule` as an `LRSchedule`; None for the default constant LR (the reference's)."""
    fields = OmegaConf.to_container(cfg.train.lr_schedule)
    if fields["warmup_steps"] == 0 and fields["decay_start"] is None:
        return None
    try:
        return LRSchedule(**fields)
    except ValueError as err:
        raise ValueError(f"{source}: bad 'train.lr_schedule': {err}") from None


def counts_optimizer_steps(cfg: DictConfig) -> bool:
    """`disc_start_counts_optimizer_steps`, its unset value following `model.target`."""
    value = cfg.model.params.lossconfig.params.disc_start_counts_optimizer_steps
    return cfg.model.target != MODEL_TARGETS[0] if value is None else bool(value)


def _fold_authors_split(split: DictConfig, key: str, source: str) -> None:
    """`{target, params: {data_root}}` (the authors' layout) -> our `data_root`, in place."""
    root = split.params.data_root
    if root is None:
        return
    sub = AUTHORS_DATA_TARGETS.get(split.target)
    folder = posixpath.join(root, sub) if sub else root
    if split.data_root is not None and split.data_root != folder:
        raise ValueError(f"{source}: both '{key}.data_root' ({split.data_root}) and "
                         f"'{key}.params.data_root' ({root}) are set; keep one")
    split.data_root, split.params.data_root = folder, None


def resolve_train_config(cfg: DictConfig, source: str = "config") -> DictConfig:
    """Validate, then apply the authors'-layout rules of the module docstring; read-only copy."""
    validate_train_config(cfg, source)
    out = OmegaConf.merge(OmegaConf.structured(TokenizerTrainConfig), OmegaConf.to_container(cfg))
    for split in ("train", "validation"):
        _fold_authors_split(out.data.params[split], f"data.params.{split}", source)
    out.model.params.lossconfig.params.disc_start_counts_optimizer_steps = counts_optimizer_steps(cfg)
    OmegaConf.set_readonly(out, True)
    return out


def load_train_config(path: Optional[str], overrides: Sequence[str] = ()) -> DictConfig:
    """Load, validate and resolve a tokenizer training YAML (+ `a.b=value` overrides); read-only."""
    cfg = load_config(path, overrides, schema=TokenizerTrainConfig)
    try:
        return resolve_train_config(cfg, str(path) if path else "config")
    except ValueError as err:
        raise attribute_to_override(err, path, overrides) from None


def loss_kwargs(cfg: DictConfig) -> Dict[str, Any]:
    """`LPIPSWithDiscriminator(**loss_kwargs(cfg))` arguments."""
    params = OmegaConf.to_container(cfg.model.params.lossconfig.params, resolve=True)
    params.pop("vf_loss_type")
    params["disc_start_counts_optimizer_steps"] = counts_optimizer_steps(cfg)
    return params

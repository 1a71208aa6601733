"""Schema of SFD's Semantic VAE training YAMLs (`configs/tokenizer/semvae_train/*.yaml`).

SFD's layout loads unchanged (docs/reference_behaviour.md, §12.1.3; SFD
`tokenizer/configs/semvae_train/ch16.yaml`): a free `variables:` section whose values the others
reference as `${variables.x}`, then `model` (variational, bottleneck_dim, arch, params), `data`
(the pre-extracted training features) and `training` (precision, length, optimizer, scheduler,
loss weights, checkpointing, evaluation, logging). Defaults of keys SFD's trainer requires are the
released ch16 values; `model.params` defaults are SFD's constructor defaults; `.get` defaults are
SFD's. Keys marked "ours" are additions whose defaults keep SFD's behaviour.

Load with `load_semvae_config(path, overrides)`: unknown keys and ill-typed values raise a
one-line ValueError naming the key (configs/schema.py), `${...}` references are resolved, and the
values are checked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from configs.schema import NON_NEGATIVE, POSITIVE, REPORT_TO, Range, attribute_to_override, check_ranges, load_config
from tokenizer.semvae import ARCHS, COS_AXES

OPTIMIZERS = ("AdamW", "Adam")            # training.optimizer.type (SFD's two)
MIXED_PRECISIONS = ("no", "bf16")          # training.mixed_precision (accelerate's names)

# Keys SFD's YAML carries that nothing here reads (a load logs each one set to a non-default value).
COMPAT_KEYS: Dict[str, str] = {
    "model.params.placeholder": "SFD's linear-arch example sets it; no arch reads it",
    "training.evaluation.output_dir": "SFD creates it and writes nothing there; evaluation rows go to metrics.jsonl",
    "training.log.swandb_exp_name": "SFD's SwanLab logging is switched off in its code; see training.log.report_to",
}


@dataclass
class ModelParams:                         # SFD's SemanticVariationalAutoEncoder defaults
    hidden_dim: int = 512
    num_layers: int = 2                    # mlp / resnet
    num_res_blocks: int = 2                # resnet
    transformer_heads: int = 6
    transformer_blocks: int = 12
    placeholder: Optional[int] = None      # COMPAT_KEYS


@dataclass
class ModelConfig:
    variational: bool = True
    bottleneck_dim: int = 16
    arch: str = "transformer"              # linear | mlp | resnet | transformer
    params: ModelParams = field(default_factory=ModelParams)


@dataclass
class DataConfig:
    feature_dir: Optional[str] = None      # {feature_dir}/{model_name}/features_{max_samples}samples.safetensors
    model_name: str = "dinov2_vitb14_reg"  # the semantic encoder (tokenizer/foundation.py) and sub-folder
    max_samples: Optional[int] = None      # the N of the file name; None: the folder's only features file
    batch_size: int = 64                   # per process
    num_workers: int = 4
    shuffle: bool = True


@dataclass
class OptimizerConfig:
    type: str = "AdamW"
    lr: float = 5e-5
    weight_decay: Optional[float] = None   # ours; None: torch's default (AdamW 0.01, Adam 0), as SFD


@dataclass
class SchedulerConfig:
    warmup_steps: int = 500                # linear from 0.01 x lr (SFD: 0 counts as 1)
    constant_steps: int = 800_000
    min_lr_factor: float = 0.1             # ours: the cosine's floor (SFD's setup_scheduler default)


@dataclass
class LossConfig:
    mse_weight: float = 1.0
    cos_weight: float = 1.0
    l1_weight: float = 0.0
    kl_weight: float = 1e-7
    classification_weight: float = 0.0     # > 0: a linear head on the mean-pooled latent, cross-entropy
    cos_axis: str = "token"                # ours: token = SFD's cosine along dim 1; feature = per token


@dataclass
class CheckpointingConfig:
    save_every: int = 100_000
    checkpoint_dir: Optional[str] = None   # must be {training.log.log_dir}/checkpoints (the default)
    keep_last_n: Optional[int] = None      # ours; None: keep all (SFD)


@dataclass
class EvaluationConfig:
    feature_dir: Optional[str] = None      # held-out features; None / "": no evaluation
    model_name: Optional[str] = None       # None: data.model_name
    max_samples: Optional[int] = None      # None: the folder's only features file
    batch_size: int = 32                   # SFD's default
    eval_every: int = 2000
    output_dir: Optional[str] = None       # COMPAT_KEYS


@dataclass
class LogConfig:
    log_dir: str = "outputs/semantic_vae"  # the run directory (log.txt, metrics.jsonl, loss_curve.png)
    log_every: int = 100
    swandb_exp_name: Optional[str] = None  # COMPAT_KEYS
    report_to: str = "tensorboard"         # ours: tensorboard | wandb | all | none


@dataclass
class TrainingConfig:
    mixed_precision: str = "no"            # no | bf16 (autocast; ch16.yaml: bf16)
    max_epochs: Optional[int] = None       # None: no limit (SFD: 1e10)
    total_iterations: int = 1_000_000      # the schedule's end; semantic_ae_final.pt is written there
    checkpoint_path: str = ""              # SFD: resume from this checkpoint (ours or SFD's)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    checkpointing: CheckpointingConfig = field(default_factory=CheckpointingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    log: LogConfig = field(default_factory=LogConfig)
    seed: int = 0                          # ours: model init, data order, posterior noise
    max_steps: Optional[int] = None        # ours: stop after this many steps (the schedule is unchanged)
    resume: bool = True                    # ours: continue the run in log_dir
    overwrite: bool = False                # ours: start over (old outputs moved aside, not deleted)
    allow_config_change: bool = False      # ours: resume although run-changing keys differ


@dataclass
class SemVAETrainConfig:
    variables: Dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    compat_keys: ClassVar[Mapping[str, str]] = COMPAT_KEYS


RANGES = {
    "model.bottleneck_dim": POSITIVE, "model.params.hidden_dim": POSITIVE, "model.params.num_layers": POSITIVE,
    "model.params.num_res_blocks": NON_NEGATIVE, "model.params.transformer_heads": POSITIVE,
    "model.params.transformer_blocks": NON_NEGATIVE,
    "data.max_samples": POSITIVE, "data.batch_size": POSITIVE, "data.num_workers": NON_NEGATIVE,
    "training.max_epochs": POSITIVE, "training.total_iterations": POSITIVE,
    "training.optimizer.lr": POSITIVE, "training.optimizer.weight_decay": NON_NEGATIVE,
    "training.scheduler.warmup_steps": NON_NEGATIVE, "training.scheduler.constant_steps": NON_NEGATIVE,
    "training.scheduler.min_lr_factor": Range(0.0, 1.0),
    "training.loss.mse_weight": NON_NEGATIVE, "training.loss.cos_weight": NON_NEGATIVE,
    "training.loss.l1_weight": NON_NEGATIVE, "training.loss.kl_weight": NON_NEGATIVE,
    "training.loss.classification_weight": NON_NEGATIVE,
    "training.checkpointing.save_every": POSITIVE, "training.checkpointing.keep_last_n": POSITIVE,
    "training.evaluation.max_samples": POSITIVE, "training.evaluation.batch_size": POSITIVE,
    "training.evaluation.eval_every": POSITIVE, "training.log.log_every": POSITIVE,
    "training.seed": NON_NEGATIVE, "training.max_steps": POSITIVE,
}


def _resolve(cfg: DictConfig, source: str) -> DictConfig:
    """Resolve `${...}` references and re-check the types of the resolved values."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        return OmegaConf.merge(OmegaConf.structured(SemVAETrainConfig), resolved)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        where = f" in '{key}'" if key else ""
        raise ValueError(f"{source}: bad reference{where}: {str(err.msg).splitlines()[0]}") from None


def resolve_semvae_config(cfg: DictConfig, source: str = "config") -> DictConfig:
    """Resolved, checked, read-only copy of a loaded config (checkpoint_dir filled in)."""
    out = _resolve(cfg, source)
    checks = [("model.arch", out.model.arch, ARCHS),
              ("training.optimizer.type", out.training.optimizer.type, OPTIMIZERS),
              ("training.mixed_precision", out.training.mixed_precision, MIXED_PRECISIONS),
              ("training.loss.cos_axis", out.training.loss.cos_axis, COS_AXES),
              ("training.log.report_to", out.training.log.report_to, REPORT_TO)]
    for key, value, allowed in checks:
        if value not in allowed:
            raise ValueError(f"{source}: bad value for '{key}': {value!r} (expected one of {allowed})")
    check_ranges(out, RANGES, source)
    if not out.data.feature_dir:
        raise ValueError(f"{source}: 'data.feature_dir' is not set (the folder of the pre-extracted "
                         "features: tools/extract_semantic_features.py --output_root)")
    m = out.model
    if m.arch == "transformer" and m.params.hidden_dim % m.params.transformer_heads:
        raise ValueError(f"{source}: 'model.params.hidden_dim' {m.params.hidden_dim} is not divisible by "
                         f"'model.params.transformer_heads' {m.params.transformer_heads}")
    log_dir = out.training.log.log_dir.rstrip("/")
    expected = f"{log_dir}/checkpoints"
    ckpt_dir = out.training.checkpointing.checkpoint_dir
    if ckpt_dir is None:
        out.training.checkpointing.checkpoint_dir = expected
    elif ckpt_dir.rstrip("/") != expected:
        raise ValueError(f"{source}: 'training.checkpointing.checkpoint_dir' ({ckpt_dir}) must be "
                         f"'training.log.log_dir'/checkpoints ({expected}): the run directory owns its checkpoints "
                         "(in SFD's YAMLs both follow variables.output_root)")
    if out.training.evaluation.model_name is None:
        out.training.evaluation.model_name = out.data.model_name
    OmegaConf.set_readonly(out, True)
    return out


def load_semvae_config(path: Optional[str], overrides: Sequence[str] = ()) -> DictConfig:
    """Load, resolve and check a Semantic VAE training YAML (+ `a.b=value` overrides); read-only."""
    cfg = load_config(path, overrides, schema=SemVAETrainConfig)
    try:
        return resolve_semvae_config(cfg, str(path) if path else "config")
    except ValueError as err:
        raise attribute_to_override(err, path, overrides) from None

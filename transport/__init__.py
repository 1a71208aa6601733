"""Flow-matching transport (SiT layout, docs/reference_behaviour.md §2): `create_transport` and `Sampler`.

`create_transport` maps config strings to a `Transport` with the reference's eps rules
(docs/reference_behaviour.md §2.1, 2.4), minus its sample_eps bug:
- VP: train_eps defaults to 1e-5 and sample_eps to 1e-3.
- Linear/GVP with a noise or score model: both default to 1e-3.
- Linear/GVP with a velocity model: both forced to 0, whatever is passed (faithful; the SDE
  sampler then uses `sde_eps` to avoid t = 0, see Transport.check_interval).

`build_transport(cfg)` returns that `Transport` with the config's time schedule (`build_schedule`:
LightningDiT's one channel group, or SFD's texture + semantic groups) and SFD's loss settings, or
with `transport.objective: ddpm` DiT's DDPM (`ddpm.GaussianDiffusion`, same training interface;
sampled by `ddpm_sampler.DDPMSampler`).
"""
from typing import Optional, Sequence

from .ddpm import GaussianDiffusion, create_ddpm
from .schedule import TimeSchedule
from .transport import REPA_MODES, ModelType, PathType, Sampler, Transport, WeightType

__all__ = ["create_transport", "build_transport", "build_schedule", "Sampler", "Transport", "TimeSchedule",
           "ModelType", "PathType", "WeightType", "PATH_TYPES", "PREDICTIONS", "LOSS_WEIGHTS", "REPA_MODES"]

# Config string -> enum: the registries behind `transport.path_type`, `transport.prediction` and
# `transport.loss_weight` (configs/schema.py validates against these dicts).
PATH_TYPES = {"Linear": PathType.LINEAR, "GVP": PathType.GVP, "VP": PathType.VP}
PREDICTIONS = {"velocity": ModelType.VELOCITY, "noise": ModelType.NOISE, "score": ModelType.SCORE}
LOSS_WEIGHTS = {None: WeightType.NONE, "none": WeightType.NONE, "velocity": WeightType.VELOCITY,
                "likelihood": WeightType.LIKELIHOOD}


def create_transport(path_type: str = "Linear", prediction: str = "velocity",
                     loss_weight: Optional[str] = None, train_eps: Optional[float] = None,
                     sample_eps: Optional[float] = None, use_cosine_loss: bool = False,
                     use_lognorm: bool = False, *, lognorm_mean: float = 0.0,
                     lognorm_std: float = 1.0, lognorm_until_step: Optional[int] = None,
                     sde_eps: float = 1e-3, schedule: Optional[TimeSchedule] = None,
                     group_weights: Optional[Sequence[float]] = None, mask_clipped_phases: bool = False,
                     repa_weight: float = 1.0, repa_mode: str = "cos") -> Transport:
    """Build a `Transport` from config values (positional order as train.py / inference.py use).

    Unknown path_type / prediction / loss_weight strings raise ValueError (upstream raises
    KeyError for paths and silently falls back to velocity / no weight for the others).
    `lognorm_until_step`: from this training step on, t is drawn uniformly (None = never).
    `schedule` (default one group), `group_weights`, `mask_clipped_phases`, `repa_*`: see `Transport`.
    """
    if path_type not in PATH_TYPES:
        raise ValueError(f"unknown transport path_type {path_type!r}; expected one of {list(PATH_TYPES)}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown transport prediction {prediction!r}; expected one of {list(PREDICTIONS)}")
    if loss_weight not in LOSS_WEIGHTS:
        raise ValueError(f"unknown transport loss_weight {loss_weight!r}; expected one of {list(LOSS_WEIGHTS)}")
    path, model_type = PATH_TYPES[path_type], PREDICTIONS[prediction]
    if path == PathType.VP:
        train_eps = 1e-5 if train_eps is None else train_eps
        sample_eps = 1e-3 if sample_eps is None else sample_eps
    elif model_type != ModelType.VELOCITY:
        train_eps = 1e-3 if train_eps is None else train_eps
        sample_eps = 1e-3 if sample_eps is None else sample_eps
    else:  # velocity on Linear/GVP is finite everywhere: both forced to 0 (docs/reference_behaviour.md §2.1)
        train_eps, sample_eps = 0.0, 0.0
    return Transport(model_type=model_type, path_type=path, loss_type=LOSS_WEIGHTS[loss_weight],
                     train_eps=train_eps, sample_eps=sample_eps, use_cosine_loss=bool(use_cosine_loss),
                     use_lognorm=bool(use_lognorm), lognorm_mean=lognorm_mean, lognorm_std=lognorm_std,
                     lognorm_until_step=lognorm_until_step, sde_eps=sde_eps, schedule=schedule,
                     group_weights=group_weights, mask_clipped_phases=mask_clipped_phases,
                     repa_weight=repa_weight, repa_mode=repa_mode)


def build_schedule(cfg) -> TimeSchedule:
    """The config's time schedule: SFD's texture + semantic groups when `model.semantic_chans` > 0
    (the last semantic_chans of `model.in_chans`, `model.semfirst_delta_t` ahead; 0 = one time),
    else LightningDiT's one group of `model.in_chans` channels."""
    m = cfg.model
    if m.semantic_chans > 0:
        return TimeSchedule.semantic_first(m.in_chans - m.semantic_chans, m.semantic_chans, m.semfirst_delta_t)
    return TimeSchedule.single(m.in_chans)


def build_transport(cfg):
    """The training objective of the config: `create_transport` (docs/reference_behaviour.md §2.1)
    with the config's time schedule, SFD's semantic MSE weight and REPA settings (§12.3), or with
    `transport.objective: ddpm` DiT's DDPM (`transport/ddpm.py`, learned sigma iff `model.learn_sigma`)."""
    tr, m = cfg.transport, cfg.model
    if getattr(tr, "objective", "rectified_flow") == "ddpm":
        return build_ddpm(cfg)
    schedule = build_schedule(cfg)
    weights = [m.semantic_weight if name == "sem" else 1.0 for name in schedule.names]
    return create_transport(tr.path_type, tr.prediction, tr.loss_weight, tr.train_eps, tr.sample_eps,
                            use_cosine_loss=tr.use_cosine_loss, use_lognorm=tr.use_lognorm,
                            lognorm_until_step=tr.lognorm_until_step, schedule=schedule,
                            group_weights=weights, mask_clipped_phases=tr.mask_clipped_phases,
                            repa_weight=m.repa_weight, repa_mode=m.repa_mode)


def build_ddpm(cfg) -> GaussianDiffusion:
    """DiT's DDPM from the config; the flow-only keys must be off (they would be silently unused)."""
    tr, m = cfg.transport, cfg.model
    if tr.use_cosine_loss or tr.use_lognorm:
        raise ValueError("transport.objective ddpm: set transport.use_cosine_loss and transport.use_lognorm "
                         "to false (they belong to the rectified-flow objective)")
    if m.semantic_chans > 0 or m.use_repa:
        raise ValueError("transport.objective ddpm: set model.semantic_chans to 0 and model.use_repa to false "
                         "(SFD's channel groups and REPA belong to the rectified-flow objective)")
    return create_ddpm(tr.diffusion_steps, learn_sigma=bool(cfg.model.learn_sigma))

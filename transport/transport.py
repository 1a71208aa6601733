"""The flow-matching objective (`Transport`) and its samplers (`Sampler`).

Follows SiT's `transport/transport.py` as used by LightningDiT (docs/reference_behaviour.md
§2.1-2.7) and SFD's semantic-first extension of it (§12.3-12.4), keeping the behaviour the
published numbers depend on and fixing what is broken upstream:

- Every time goes through one `TimeSchedule` (transport/schedule.py): LightningDiT's one channel
  group, or SFD's texture and semantic groups with the semantics `delta` ahead.
- Logit-normal t draws use torch's generator (seedable), not scipy/numpy's global RNG (§9.2), and
  can be switched off from a given training step (`lognorm_until_step`, §3.6).
- `sample_ode(reverse=True)` integrates data -> noise on the flipped grid (upstream asserts).
- `sample_sde` on the Linear/GVP paths starts at t0 = `sde_eps` > 0 when the sample eps is 0,
  because the SBDM diffusion has a 1/t singularity at t = 0 (upstream returns NaN).
- `sample_ode_likelihood` works (upstream raises TypeError) and offers an exact divergence.
- The SDE drift calls the network once per evaluation (upstream calls it twice: drift and score).
- Samplers consume one `denoiser(x, s)` (s the base time, a host float) returning the raw network
  output with guidance applied; the conversion to a drift and the phase masks live here.
"""
import enum
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import path
from .integrators import (FIXED_GRID_METHODS, LAST_STEPS, ODE_METHODS, PHASE_METHODS, fixed_grid_solve,
                          likelihood_solve, ode_solve, randn_like, sde_solve)
from .schedule import TimeSchedule
from .utils import mean_flat, snap_to_breakpoints, time_grid

# The samplers' network call: denoiser(x (B, ...), s) -> raw network output (B, ...), s the base
# time as a host float, guidance already applied (sampling/guidance.py builds it).
Denoiser = Callable[[Tensor, float], Tensor]

REPA_MODES = ("cos", "mse", "cos_mse")


class ModelType(enum.Enum):
    """What the network predicts."""
    NOISE = enum.auto()     # x0 (epsilon)
    SCORE = enum.auto()     # grad log p_t(x)
    VELOCITY = enum.auto()  # u_t


class PathType(enum.Enum):
    LINEAR = enum.auto()
    GVP = enum.auto()
    VP = enum.auto()


class WeightType(enum.Enum):
    """Loss weighting for noise/score predictions (ignored for velocity, as upstream)."""
    NONE = enum.auto()
    VELOCITY = enum.auto()
    LIKELIHOOD = enum.auto()


PATH_CLASSES = {PathType.LINEAR: path.ICPlan, PathType.GVP: path.GVPCPlan, PathType.VP: path.VPCPlan}


class Transport:
    """Training objective on the path x_t = alpha_t x1 + sigma_t x0 (x0 noise, x1 data, t: 0 -> 1).

    schedule: the channel groups and their times (default: one group). group_weights: the MSE
    weight of each group (SFD: 1 for texture, `semantic_weight` for semantics). mask_clipped_phases:
    drop from the MSE the channels whose group time is clipped (docs/reference_behaviour.md
    §12.3.2; off = SFD). repa_weight / repa_mode: the REPA term (§12.3.3), computed when the
    network returns (output, projected features).

    Logit-normal schedule switch-off (issue 3, item 3): `use_lognorm` is a plain mutable attribute,
    and `lognorm_until_step` (None = never switch off) makes `training_losses(..., step=s)` draw t
    uniformly once s >= lognorm_until_step. train.py passes its global optimizer step (0-based,
    number of completed updates); the 800-epoch recipe uses 600_000 (docs/reference_behaviour.md §3.6).
    """

    def __init__(self, *, model_type: ModelType, path_type: PathType, loss_type: WeightType,
                 train_eps: float, sample_eps: float, use_cosine_loss: bool = False,
                 use_lognorm: bool = False, lognorm_mean: float = 0.0, lognorm_std: float = 1.0,
                 lognorm_until_step: Optional[int] = None, sde_eps: float = 1e-3,
                 schedule: Optional[TimeSchedule] = None, group_weights: Optional[Sequence[float]] = None,
                 mask_clipped_phases: bool = False, repa_weight: float = 1.0, repa_mode: str = "cos"):
        self.model_type = model_type
        self.path_type = path_type
        self.loss_type = loss_type
        self.path_sampler = PATH_CLASSES[path_type]()
        self.train_eps = train_eps
        self.sample_eps = sample_eps
        self.use_cosine_loss = use_cosine_loss
        self.use_lognorm = use_lognorm
        self.lognorm_mean = lognorm_mean
        self.lognorm_std = lognorm_std
        self.lognorm_until_step = lognorm_until_step
        self.sde_eps = sde_eps
        self.schedule = TimeSchedule.single() if schedule is None else schedule
        weights = (1.0,) * self.schedule.num_groups if group_weights is None else tuple(map(float, group_weights))
        if len(weights) != self.schedule.num_groups:
            raise ValueError(f"{len(weights)} loss weights for {self.schedule.num_groups} channel groups")
        self.group_weights = weights
        self.mask_clipped_phases = mask_clipped_phases
        if repa_mode not in REPA_MODES:
            raise ValueError(f"unknown repa_mode {repa_mode!r}; expected one of {REPA_MODES}")
        self.repa_weight = repa_weight
        self.repa_mode = repa_mode
        if model_type != ModelType.VELOCITY and (not self.schedule.synchronous or set(weights) != {1.0}):
            raise ValueError("channel groups with their own times or loss weights need transport.prediction "
                             "velocity (as SFD)")

    # ------------------------------------------------------------------ time interval and draws

    def check_interval(self, *, sde: bool = False, eval: bool = False, diffusion_form: str = "SBDM",
                       last_step_size: float = 0.0) -> Tuple[float, float]:
        """The (t0, t1) integration / training interval of one channel group
        (docs/reference_behaviour.md §2.4); samplers widen it with `schedule.span`.

        Fix: for SDE sampling on the Linear/GVP paths an eps of 0 (velocity models) is replaced by
        `self.sde_eps`, because the SBDM diffusion and the score are singular at t = 0 and t = 1.
        """
        t0, t1 = 0.0, 1.0
        eps = self.sample_eps if eval else self.train_eps
        if self.path_type == PathType.VP:
            t1 = 1 - eps if (not sde or last_step_size == 0) else 1 - last_step_size
        elif self.model_type != ModelType.VELOCITY or sde:
            if sde and eps == 0:
                eps = self.sde_eps  # fix of the upstream NaN (docs/reference_behaviour.md §2.6)
            not_velocity = self.model_type != ModelType.VELOCITY
            t0 = eps if (diffusion_form == "SBDM" and sde) or not_velocity else 0.0
            t1 = 1 - eps if (not sde or last_step_size == 0) else 1 - last_step_size
        return t0, t1

    def lognorm_active(self, step: Optional[int] = None) -> bool:
        """Whether t is drawn logit-normal at training step `step` (None: ignore the switch-off)."""
        if not self.use_lognorm:
            return False
        return self.lognorm_until_step is None or step is None or step < self.lognorm_until_step

    def sample_t(self, batch_size: int, *, generator: Optional[torch.Generator] = None,
                 step: Optional[int] = None) -> Tensor:
        """Base training times t (B,) float32 in [t0, t1] on the generator's device (CPU by
        default, as upstream), before the schedule's stretch.

        Uniform on (t0, t1), or sigmoid(N(lognorm_mean, lognorm_std^2)) scaled into (t0, t1).
        """
        t0, t1 = self.check_interval()
        device = generator.device if generator is not None else torch.device("cpu")
        if self.lognorm_active(step):
            n = torch.randn(batch_size, generator=generator, device=device)
            t = torch.sigmoid(n * self.lognorm_std + self.lognorm_mean)
        else:
            t = torch.rand(batch_size, generator=generator, device=device)
        return t * (t1 - t0) + t0

    # ------------------------------------------------------------------ training loss

    def training_losses(self, model: Callable, x1: Tensor, model_kwargs: Optional[dict] = None,
                        t: Optional[Tensor] = None, x0: Optional[Tensor] = None, *,
                        generator: Optional[torch.Generator] = None, step: Optional[int] = None,
                        repa_target: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Per-sample loss terms for the data batch x1 (B, C, H, W).

        `t` (B,), the base time before the schedule's stretch, and the noise `x0` (B, C, H, W),
        when given, replace the random draws (validation curves, tests, exact resume). `generator`
        seeds the draws; `step` drives the logit-normal switch-off. `repa_target` (B, D, h, w), as
        the shards store it (fp16 allowed), is the REPA target when the model returns
        (output, projected features (B, h*w, D)).

        Returns {'pred': output, 'loss': (B,), 'cos_loss': (B,) with use_cosine_loss,
        'repa_loss': (B,) with REPA, already times repa_weight}. Every key ending in 'loss' is a
        term of the optimised sum.
        """
        model_kwargs = {} if model_kwargs is None else model_kwargs
        schedule = self.schedule
        schedule.check_channels(x1)
        if t is None:
            t = self.sample_t(x1.shape[0], generator=generator, step=step)
        t = t.to(x1)
        if x0 is None:
            x0 = randn_like(x1, generator)
        tau = schedule.stretch(t)
        times = schedule.group_times(tau)
        t_x = schedule.channel_times(times, x1)  # (B, 1, 1, 1), or (B, C, 1, 1) per channel group
        xt, ut = self.path_sampler.plan(t_x, x0, x1)
        out = model(xt, schedule.model_times(times), **model_kwargs)
        pred, features = out if isinstance(out, tuple) else (out, None)
        if pred.shape != xt.shape:
            raise ValueError(f"model output shape {tuple(pred.shape)} != input shape {tuple(xt.shape)}")
        terms = {"pred": pred}
        if self.model_type == ModelType.VELOCITY:
            terms["loss"] = self._velocity_mse(pred, ut, tau, x1)
            if self.use_cosine_loss:
                # cosine along channels at each location, then the mean over H, W (docs/reference_behaviour.md §2.3)
                terms["cos_loss"] = mean_flat(1 - F.cosine_similarity(pred, ut, dim=1))
        else:
            _, drift_var = self.path_sampler.compute_drift(xt, t_x)
            sigma_t, _ = self.path_sampler.compute_sigma_t(t_x)
            if self.loss_type == WeightType.VELOCITY:
                weight = (drift_var / sigma_t) ** 2
            elif self.loss_type == WeightType.LIKELIHOOD:
                weight = drift_var / sigma_t ** 2
            else:
                weight = 1
            if self.model_type == ModelType.NOISE:
                terms["loss"] = mean_flat(weight * (pred - x0) ** 2)
            else:
                terms["loss"] = mean_flat(weight * (pred * sigma_t + x0) ** 2)
        if features is not None:
            if repa_target is None:
                raise ValueError("the model returned REPA features (model.use_repa) but training_losses "
                                 "got no repa_target")
            terms["repa_loss"] = self.repa_loss(features, repa_target)
        return terms

    def _velocity_mse(self, pred: Tensor, ut: Tensor, tau: Tensor, x1: Tensor) -> Tensor:
        """Channel-weighted MSE per sample, SFD's order (docs/reference_behaviour.md §12.3.2):
        square, scale each weighted group's channels, mean over (C, H, W). With
        `mask_clipped_phases` the channels of a clipped group count as 0 in that mean (its
        normalisation stays C H W)."""
        sq = (pred - ut) ** 2
        for sl, w in zip(self.schedule.slices(), self.group_weights):
            if w != 1.0:
                sq[:, sl] *= w  # in place on the fresh square (its backward does not need it)
        if self.mask_clipped_phases:
            mask = self.schedule.channel_mask(tau, x1)
            if mask is not None:
                sq = sq * mask
        return mean_flat(sq)

    def repa_loss(self, features: Tensor, target: Tensor) -> Tensor:
        """REPA alignment per sample (B,), times repa_weight (docs/reference_behaviour.md §12.3.3).

        features (B, N, D) from the network's projector; target (B, D, h, w) with N = h w, cast to
        float32 and laid out token-major as SFD does (its einops 'b c h w -> b (h w) c').
        cos: mean over tokens of 1 - cos(target, features) over D; mse: mean squared error;
        cos_mse: their mean.
        """
        b, d = target.shape[:2]
        target = target.to(device=features.device, dtype=torch.float32)
        target = target.permute(0, 2, 3, 1).reshape(b, -1, d)  # (B, h*w, D)
        if target.shape != features.shape:
            raise ValueError(f"REPA target {tuple(target.shape)} (tokens, features) does not match the "
                             f"projected features {tuple(features.shape)}")
        if self.repa_mode == "cos":
            loss = mean_flat(1 - F.cosine_similarity(target, features, dim=-1))
        elif self.repa_mode == "mse":
            loss = mean_flat((target - features) ** 2)
        else:
            loss = (mean_flat(1 - F.cosine_similarity(target, features, dim=-1))
                    + mean_flat((target - features) ** 2)) / 2
        return loss * self.repa_weight

    # ------------------------------------------------------------------ model output conversions

    def times_like(self, s: float, x: Tensor) -> Tensor:
        """The time s (host float) broadcast against x as the paths take it: (B, 1, ..., 1)
        float32 (the reference's `ones(B) * t`)."""
        return torch.full((x.shape[0],) + (1,) * (x.ndim - 1), s, dtype=torch.float32, device=x.device)

    def velocity_and_score(self, out: Tensor, x: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
        """Convert one network output into (velocity, score) at x (B, ...) and the broadcast time t."""
        ps = self.path_sampler
        if self.model_type == ModelType.VELOCITY:
            return out, ps.get_score_from_velocity(out, x, t)
        if self.model_type == ModelType.SCORE:
            score = out
        else:
            sigma_t, _ = ps.compute_sigma_t(t)
            score = out / -sigma_t
        return ps.get_velocity_from_score(score, x, t), score

    def velocity(self, out: Tensor, x: Tensor, s: float) -> Tensor:
        """The probability-flow velocity from one network output at base time s (a host float)."""
        if self.model_type == ModelType.VELOCITY:
            return out
        return self.velocity_and_score(out, x, self.times_like(s, x))[0]


class Sampler:
    """Sampling functions for a `Transport`. Each `sample_*` returns fn(x, denoiser) with
    `denoiser(x (B, ...), s) -> raw network output (B, ...)`, s the base time as a host float."""

    def __init__(self, transport: Transport):
        self.transport = transport
        self.schedule = transport.schedule

    def ode_grid(self, num_steps: int, timestep_shift: float = 0.0, reverse: bool = False) -> Tensor:
        """The ODE base-time grid (num_steps,) float32 on the CPU, flipped if reverse.

        num_steps points over schedule.span(t0, t1) = [t0, t1 + D], shifted as SFD does
        (docs/reference_behaviour.md §2.5, §12.4.1); for one group the reference's grid exactly.
        """
        t0, t1 = self.transport.check_interval(eval=True)
        start, end = self.schedule.span(t0, t1)
        scale = 1.0 if self.schedule.synchronous else 1.0 + self.schedule.max_lead
        grid = time_grid(start, end, num_steps, timestep_shift, scale)
        return grid.flip(0) if reverse else grid

    def phase_grid(self, num_steps: int, timestep_shift: float = 0.0, reverse: bool = False) -> Tensor:
        """`ode_grid` with the nearest interior node moved onto each of the schedule's breakpoints
        (docs/reference_behaviour.md §12.4.2), so every step lies inside one phase."""
        grid = snap_to_breakpoints(self.ode_grid(num_steps, timestep_shift), self.schedule.breakpoints())
        return grid.flip(0) if reverse else grid

    def _drift(self, denoiser: Denoiser, x: Tensor) -> Callable[..., Tensor]:
        """drift(x, s, flags=None): the velocity from denoiser(x, s) times the phase mask of the
        groups `flags` (default: those that move at s). No multiply when all groups move."""
        tr, schedule = self.transport, self.schedule
        masks: Dict[Tuple[bool, ...], Tensor] = {}

        def drift(x_: Tensor, s: float, flags: Optional[Tuple[bool, ...]] = None) -> Tensor:
            v = tr.velocity(denoiser(x_, s), x_, s)
            if schedule.synchronous:
                return v
            flags = schedule.active(s) if flags is None else flags
            if all(flags):
                return v
            if flags not in masks:
                masks[flags] = schedule.group_mask(flags, x)
            return v * masks[flags]

        return drift

    def sample_ode(self, sampling_method: str = "dopri5", num_steps: int = 50, atol: float = 1e-6,
                   rtol: float = 1e-3, reverse: bool = False,
                   timestep_shift: float = 0.0) -> Callable[[Tensor, Denoiser], Tensor]:
        """Probability-flow ODE sampler over the base time (docs/reference_behaviour.md §2.5, §12.4).

        Returns fn(x, denoiser) -> trajectory (num_steps, B, ...), [-1] the final state. Forward:
        x ~ N(0, I) at the start of the span to data at its end; reverse=True: data to noise on
        the flipped grid, the network always at the true time (upstream asserts). Methods:
        - 'euler', 'heun2': our fixed-grid steppers, torchdiffeq's arithmetic bit for bit; N grid
          points give N - 1 steps (euler: N - 1 network calls, never at the last point);
        - 'euler_phase', 'heun2_phase': the same steppers on `phase_grid` (nodes on the
          breakpoints), each step with the phase mask of the open phase it lies in;
        - any other torchdiffeq method (dopri5, rk4, midpoint, ...) through torchdiffeq.odeint.
        Frozen channel groups get a zero drift (the phase mask: a lagging group moves iff
        tau >= its lag, a leading one iff tau <= lag + 1, tested at each evaluation time).
        """
        if sampling_method not in ODE_METHODS:
            raise ValueError(f"unknown ODE sampling_method {sampling_method!r}; expected one of {ODE_METHODS}")
        phase = sampling_method in PHASE_METHODS
        grid = (self.phase_grid if phase else self.ode_grid)(num_steps, timestep_shift, reverse)
        schedule = self.schedule
        if phase:  # the phase of each step, from its midpoint (strictly inside one phase)
            mids = ((grid[1:] + grid[:-1]) / 2).tolist()
            step_flags = [schedule.active(m) for m in mids]

        def sample(x: Tensor, denoiser: Denoiser) -> Tensor:
            drift = self._drift(denoiser, x)
            if phase:
                return fixed_grid_solve(lambda x_, s, k: drift(x_, s, step_flags[k]), x, grid,
                                        PHASE_METHODS[sampling_method])
            if sampling_method in FIXED_GRID_METHODS:
                return fixed_grid_solve(lambda x_, s, k: drift(x_, s), x, grid, sampling_method)
            return ode_solve(drift, x, grid, method=sampling_method, atol=atol, rtol=rtol)

        return sample

    def _one_time_only(self, what: str) -> None:
        if not self.schedule.synchronous:
            raise ValueError(f"{what} needs one time for every channel group (model.semfirst_delta_t = 0); "
                             "sample SFD with sample.mode=ODE")

    def sample_sde(self, sampling_method: str = "Euler", diffusion_form: str = "SBDM",
                   diffusion_norm: float = 1.0, last_step: Optional[str] = "Mean",
                   last_step_size: float = 0.04, num_steps: int = 250, *,
                   generator: Optional[torch.Generator] = None) -> Callable[[Tensor, Denoiser], Tensor]:
        """Reverse-diffusion SDE sampler dx = (v + g s) dt + sqrt(2 g) dW (docs/reference_behaviour.md §2.6).

        The grid is linspace(t0, t1, num_steps) with t1 = 1 - last_step_size; the last step
        ('Mean': x + (v + g s) * last_step_size, 'Tweedie': E[x1 | x], 'Euler': x + v *
        last_step_size, None: identity) then reaches t = 1. For Linear/GVP velocity models t0 is
        `transport.sde_eps` (default 1e-3) instead of the upstream 0 (1/t singularity -> NaN).
        Returns fn(x, denoiser) -> states (num_steps, B, ...), [-1] the sample. One time for all
        channel groups only.
        """
        self._one_time_only("sample.mode=SDE")
        if last_step not in LAST_STEPS:
            raise ValueError(f"unknown last_step {last_step!r}; expected one of {LAST_STEPS}")
        if last_step is None:
            last_step_size = 0.0
        tr, ps = self.transport, self.transport.path_sampler
        t0, t1 = tr.check_interval(sde=True, eval=True, diffusion_form=diffusion_form,
                                   last_step_size=last_step_size)
        grid = torch.linspace(t0, t1, num_steps, dtype=torch.float32)

        def diffusion(x: Tensor, s: float) -> Tensor:
            return ps.compute_diffusion(x, tr.times_like(s, x), form=diffusion_form, norm=diffusion_norm)

        def sample(x: Tensor, denoiser: Denoiser) -> Tensor:
            def v_and_s(x_, s):
                return tr.velocity_and_score(denoiser(x_, s), x_, tr.times_like(s, x_))

            def sde_drift(x_, s):
                v, score = v_and_s(x_, s)
                return v + diffusion(x_, s) * score

            def final(x_, s):
                if last_step == "Mean":
                    return x_ + sde_drift(x_, s) * last_step_size
                if last_step == "Euler":
                    return x_ + v_and_s(x_, s)[0] * last_step_size
                # Tweedie: E[x1 | x_t] = (x + sigma^2 score) / alpha
                t = tr.times_like(s, x_)
                alpha_t, _ = ps.compute_alpha_t(t)
                sigma_t, _ = ps.compute_sigma_t(t)
                return (x_ + sigma_t ** 2 * v_and_s(x_, s)[1]) / alpha_t

            return sde_solve(sde_drift, diffusion, x, grid, method=sampling_method,
                             last_step=final if last_step is not None else None, generator=generator)

        return sample

    def sample_ode_likelihood(self, sampling_method: str = "dopri5", num_steps: int = 50,
                              atol: float = 1e-6, rtol: float = 1e-3, *,
                              divergence: str = "hutchinson",
                              generator: Optional[torch.Generator] = None) -> Callable[[Tensor, Denoiser], Tuple[Tensor, Tensor]]:
        """Log-likelihood of data under the probability-flow ODE (docs/reference_behaviour.md §2.7, fixed).

        Integrates from the data end t1 to the noise end t0 (num_steps grid points, unshifted).
        divergence='exact' takes the Jacobian trace with one autograd pass per dimension (small
        dims); 'hutchinson' uses one Rademacher probe per solve (seed it with `generator`).
        Returns fn(x, denoiser) -> (logp (B,) in nats, z (B, ...) prior-space points). One time
        for all channel groups only.
        """
        self._one_time_only("the likelihood")
        grid = self.ode_grid(num_steps, 0.0, reverse=True)
        tr = self.transport

        def sample(x: Tensor, denoiser: Denoiser) -> Tuple[Tensor, Tensor]:
            return likelihood_solve(lambda x_, s: tr.velocity(denoiser(x_, s), x_, s), x, grid,
                                    method=sampling_method, atol=atol, rtol=rtol,
                                    divergence=divergence, generator=generator)

        return sample

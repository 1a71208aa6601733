"""The flow-matching objective (`Transport`) and its samplers (`Sampler`).

Follows SiT's `transport/transport.py` as used by LightningDiT (docs/reference_behaviour.md §2.1-2.7), keeping the
behaviour the published numbers depend on and fixing what is broken upstream:

- Logit-normal t draws use torch's generator (seedable), not scipy/numpy's global RNG (docs/reference_behaviour.md §9.2), and can be switched off from a given training step (`lognorm_until_step`, docs/reference_behaviour.md §3.6).
- `sample_ode(reverse=True)` integrates data -> noise on the flipped grid (upstream asserts).
- `sample_sde` on the Linear/GVP paths starts at t0 = `sde_eps` > 0 when the sample eps is 0,
  because the SBDM diffusion has a 1/t singularity at t = 0 (upstream returns NaN).
- `sample_ode_likelihood` works (upstream raises TypeError) and offers an exact divergence.
- The SDE drift calls the network once per evaluation (upstream calls it twice: drift and score).
"""
import enum
import logging
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import path
from .integrators import LAST_STEPS, likelihood_solve, ode_solve, randn_like, sde_solve
from .utils import expand_t_like_x, mean_flat, time_grid

logger = logging.getLogger(__name__)


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

    Logit-normal schedule switch-off (issue 3, item 3): `use_lognorm` is a plain mutable attribute,
    and `lognorm_until_step` (None = never switch off) makes `training_losses(..., step=s)` draw t
    uniformly once s >= lognorm_until_step. train.py passes its global optimizer step (0-based,
    number of completed updates); the 800-epoch recipe uses 600_000 (docs/reference_behaviour.md §3.6).
    """

    def __init__(self, *, model_type: ModelType, path_type: PathType, loss_type: WeightType,
                 train_eps: float, sample_eps: float, use_cosine_loss: bool = False,
                 use_lognorm: bool = False, lognorm_mean: float = 0.0, lognorm_std: float = 1.0,
                 lognorm_until_step: Optional[int] = None, sde_eps: float = 1e-3):
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

    # ------------------------------------------------------------------ time interval and draws

    def check_interval(self, train_eps: float, sample_eps: float, *, diffusion_form: str = "SBDM",
                       sde: bool = False, reverse: bool = False, eval: bool = False,
                       last_step_size: float = 0.0) -> Tuple[float, float]:
        """The (t0, t1) integration / training interval of docs/reference_behaviour.md §2.4.

        Fix: for SDE sampling on the Linear/GVP paths an eps of 0 (velocity models) is replaced by
        `self.sde_eps`, because the SBDM diffusion and the score are singular at t = 0 and t = 1.
        `reverse` keeps the reference's (1 - t0, 1 - t1) mapping; `Sampler` does not use it (it
        flips the grid instead, so the model always sees the true time).
        """
        t0, t1 = 0.0, 1.0
        eps = sample_eps if eval else train_eps
        if self.path_type == PathType.VP:
            t1 = 1 - eps if (not sde or last_step_size == 0) else 1 - last_step_size
        elif self.model_type != ModelType.VELOCITY or sde:
            if sde and eps == 0:
                eps = self.sde_eps  # fix of the upstream NaN (docs/reference_behaviour.md §2.6)
            not_velocity = self.model_type != ModelType.VELOCITY
            t0 = eps if (diffusion_form == "SBDM" and sde) or not_velocity else 0.0
            t1 = 1 - eps if (not sde or last_step_size == 0) else 1 - last_step_size
        if reverse:
            t0, t1 = 1 - t0, 1 - t1
        return t0, t1

    def lognorm_active(self, step: Optional[int] = None) -> bool:
        """Whether t is drawn logit-normal at training step `step` (None: ignore the switch-off)."""
        if not self.use_lognorm:
            return False
        return self.lognorm_until_step is None or step is None or step < self.lognorm_until_step

    def sample_t(self, batch_size: int, *, generator: Optional[torch.Generator] = None,
                 step: Optional[int] = None) -> Tensor:
        """Training times (B,) float32 on the generator's device (CPU by default, as upstream).

        Uniform on (t0, t1), or sigmoid(N(lognorm_mean, lognorm_std^2)) scaled into (t0, t1).
        """
        t0, t1 = self.check_interval(self.train_eps, self.sample_eps)
        device = generator.device if generator is not None else torch.device("cpu")
        if self.lognorm_active(step):
            n = torch.randn(batch_size, generator=generator, device=device)
            t = torch.sigmoid(n * self.lognorm_std + self.lognorm_mean)
        else:
            t = torch.rand(batch_size, generator=generator, device=device)
        return t * (t1 - t0) + t0

    def sample(self, x1: Tensor, *, generator: Optional[torch.Generator] = None,
               step: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """(t (B,), x0 (B, ...), x1) with t and the noise x0 drawn for the data batch x1."""
        t = self.sample_t(x1.shape[0], generator=generator, step=step).to(x1)
        x0 = randn_like(x1, generator)
        return t, x0, x1

    # ------------------------------------------------------------------ training loss

    def training_losses(self, model: Callable[..., Tensor], x1: Tensor,
                        model_kwargs: Optional[dict] = None, t: Optional[Tensor] = None,
                        x0: Optional[Tensor] = None, *, generator: Optional[torch.Generator] = None,
                        step: Optional[int] = None) -> Dict[str, Tensor]:
        """Per-sample losses for the data batch x1 (B, C, H, W).

        `t` (B,) and `x0` (B, C, H, W), when given, replace the random draws (validation curves,
        tests, exact resume). `generator` seeds the draws; `step` drives the logit-normal
        switch-off. Returns {'loss': (B,), 'pred': model output, 'cos_loss': (B,) if enabled}.
        """
        model_kwargs = {} if model_kwargs is None else model_kwargs
        if t is None:
            t = self.sample_t(x1.shape[0], generator=generator, step=step)
        t = t.to(x1)
        if x0 is None:
            x0 = randn_like(x1, generator)
        t, xt, ut = self.path_sampler.plan(t, x0, x1)
        pred = model(xt, t, **model_kwargs)
        if pred.shape != xt.shape:
            raise ValueError(f"model output shape {tuple(pred.shape)} != input shape {tuple(xt.shape)}")
        terms = {"pred": pred}
        if self.model_type == ModelType.VELOCITY:
            terms["loss"] = mean_flat((pred - ut) ** 2)
            if self.use_cosine_loss:
                # cosine along channels at each location, then the mean over H, W (docs/reference_behaviour.md §2.3)
                terms["cos_loss"] = mean_flat(1 - F.cosine_similarity(pred, ut, dim=1))
        else:
            _, drift_var = self.path_sampler.compute_drift(xt, t)
            sigma_t, _ = self.path_sampler.compute_sigma_t(expand_t_like_x(t, xt))
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
        return terms

    # ------------------------------------------------------------------ model output conversions

    def velocity_and_score(self, out: Tensor, x: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
        """Convert one network output into (velocity, score) at (x (B, ...), t (B,))."""
        ps = self.path_sampler
        if self.model_type == ModelType.VELOCITY:
            return out, ps.get_score_from_velocity(out, x, t)
        if self.model_type == ModelType.SCORE:
            score = out
        else:
            sigma_t, _ = ps.compute_sigma_t(expand_t_like_x(t, x))
            score = out / -sigma_t
        return ps.get_velocity_from_score(score, x, t), score

    def get_drift(self) -> Callable[..., Tensor]:
        """drift(x, t, model, **kw) -> the probability-flow velocity, (B, ...)."""
        if self.model_type == ModelType.VELOCITY:
            return lambda x, t, model, **kw: model(x, t, **kw)
        return lambda x, t, model, **kw: self.velocity_and_score(model(x, t, **kw), x, t)[0]

    def get_score(self) -> Callable[..., Tensor]:
        """score(x, t, model, **kw) -> grad log p_t(x), (B, ...)."""
        return lambda x, t, model, **kw: self.velocity_and_score(model(x, t, **kw), x, t)[1]


class Sampler:
    """Sampling functions for a `Transport`. Each `sample_*` returns fn(x, model, **model_kwargs);
    `model` is any callable model(x (B, ...), t (B,), **model_kwargs) -> (B, ...)."""

    def __init__(self, transport: Transport):
        self.transport = transport
        self.drift = transport.get_drift()
        self.score = transport.get_score()

    def ode_grid(self, num_steps: int, timestep_shift: float = 0.0, reverse: bool = False) -> Tensor:
        """The ODE time grid (num_steps,) float32 on the CPU (docs/reference_behaviour.md §2.5); flipped if reverse."""
        tr = self.transport
        t0, t1 = tr.check_interval(tr.train_eps, tr.sample_eps, sde=False, eval=True)
        grid = time_grid(t0, t1, num_steps, timestep_shift)
        return grid.flip(0) if reverse else grid

    def sample_ode(self, sampling_method: str = "dopri5", num_steps: int = 50, atol: float = 1e-6,
                   rtol: float = 1e-3, reverse: bool = False,
                   timestep_shift: float = 0.0) -> Callable[..., Tensor]:
        """Probability-flow ODE sampler.

        Returns fn(x, model, **model_kwargs) -> trajectory (num_steps, B, ...), [-1] the final
        state. Forward: x ~ N(0, I) at t0 to data at t1. reverse=True: data at t1 to noise at t0
        on the same (flipped) grid, with the model evaluated at the true t (upstream asserts).
        With a fixed-grid method, N grid points give N - 1 steps (euler: N - 1 model calls, never
        at the last grid point).
        """
        grid = self.ode_grid(num_steps, timestep_shift, reverse)

        def sample(x: Tensor, model: Callable[..., Tensor], **model_kwargs) -> Tensor:
            velocity = lambda x_, t_: self.drift(x_, t_, model, **model_kwargs)
            return ode_solve(velocity, x, grid, method=sampling_method, atol=atol, rtol=rtol)

        return sample

    def sample_sde(self, sampling_method: str = "Euler", diffusion_form: str = "SBDM",
                   diffusion_norm: float = 1.0, last_step: Optional[str] = "Mean",
                   last_step_size: float = 0.04, num_steps: int = 250, *,
                   generator: Optional[torch.Generator] = None) -> Callable[..., Tensor]:
        """Reverse-diffusion SDE sampler dx = (v + g s) dt + sqrt(2 g) dW (docs/reference_behaviour.md §2.6).

        The grid is linspace(t0, t1, num_steps) with t1 = 1 - last_step_size; the last step
        ('Mean': x + (v + g s) * last_step_size, 'Tweedie': E[x1 | x], 'Euler': x + v *
        last_step_size, None: identity) then reaches t = 1. For Linear/GVP velocity models t0 is
        `transport.sde_eps` (default 1e-3) instead of the upstream 0 (1/t singularity -> NaN).
        Returns fn(x, model, **model_kwargs) -> states (num_steps, B, ...), [-1] the sample.
        """
        if last_step not in LAST_STEPS:
            raise ValueError(f"unknown last_step {last_step!r}; expected one of {LAST_STEPS}")
        if last_step is None:
            last_step_size = 0.0
        tr, ps = self.transport, self.transport.path_sampler
        t0, t1 = tr.check_interval(tr.train_eps, tr.sample_eps, diffusion_form=diffusion_form,
                                   sde=True, eval=True, last_step_size=last_step_size)
        grid = torch.linspace(t0, t1, num_steps, dtype=torch.float32)

        def diffusion(x, t):
            return ps.compute_diffusion(x, t, form=diffusion_form, norm=diffusion_norm)

        def sample(x: Tensor, model: Callable[..., Tensor], **model_kwargs) -> Tensor:
            def v_and_s(x_, t_):
                return tr.velocity_and_score(model(x_, t_, **model_kwargs), x_, t_)

            def sde_drift(x_, t_):
                v, s = v_and_s(x_, t_)
                return v + diffusion(x_, t_) * s

            def final(x_, t_):
                if last_step == "Mean":
                    return x_ + sde_drift(x_, t_) * last_step_size
                if last_step == "Euler":
                    return x_ + v_and_s(x_, t_)[0] * last_step_size
                # Tweedie: E[x1 | x_t] = (x + sigma^2 score) / alpha
                te = expand_t_like_x(t_, x_)
                alpha_t, _ = ps.compute_alpha_t(te)
                sigma_t, _ = ps.compute_sigma_t(te)
                return (x_ + sigma_t ** 2 * v_and_s(x_, t_)[1]) / alpha_t

            return sde_solve(sde_drift, diffusion, x, grid, method=sampling_method,
                             last_step=final if last_step is not None else None, generator=generator)

        return sample

    def sample_ode_likelihood(self, sampling_method: str = "dopri5", num_steps: int = 50,
                              atol: float = 1e-6, rtol: float = 1e-3, *,
                              divergence: str = "hutchinson",
                              generator: Optional[torch.Generator] = None) -> Callable[..., Tuple[Tensor, Tensor]]:
        """Log-likelihood of data under the probability-flow ODE (docs/reference_behaviour.md §2.7, fixed).

        Integrates from the data end t1 to the noise end t0 (num_steps grid points, unshifted).
        divergence='exact' takes the Jacobian trace with one autograd pass per dimension (small
        dims); 'hutchinson' uses one Rademacher probe per solve (seed it with `generator`).
        Returns fn(x, model, **model_kwargs) -> (logp (B,) in nats, z (B, ...) prior-space points).
        """
        grid = self.ode_grid(num_steps, 0.0, reverse=True)

        def sample(x: Tensor, model: Callable[..., Tensor], **model_kwargs) -> Tuple[Tensor, Tensor]:
            velocity = lambda x_, t_: self.drift(x_, t_, model, **model_kwargs)
            return likelihood_solve(velocity, x, grid, method=sampling_method, atol=atol, rtol=rtol,
                                    divergence=divergence, generator=generator)

        return sample

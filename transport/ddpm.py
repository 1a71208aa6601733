"""DiT's DDPM objective: the "DiT-XL/2 baseline" row of the paper's Table 1 (FID-50K 19.50).

The discrete Gaussian diffusion of facebookresearch/DiT (`diffusion/gaussian_diffusion.py`, an
improved-DDPM descendant) as it trains DiT-XL/2:

- linear betas, linspace(1e-4, 0.02, T) scaled by 1000 / T, in float64; T = 1000;
- x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with t uniform in {0, ..., T-1} (t = 0 is one step
  of noise); the network sees the integer index t as its time input (no rescaling);
- the network predicts eps and, with `model.learn_sigma`, a second block of C channels v that
  interpolates the log-variance between log beta_t (v = 1) and the clipped log posterior variance
  (v = -1), never clamped;
- loss = MSE(eps, eps_hat) + L_vb (the "hybrid" loss). L_vb, in bits per dimension, is
  KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0 and the discretized Gaussian decoder NLL
  at t = 0, evaluated with the predicted mean stopped (its gradient reaches only v);
- every per-t coefficient is gathered from the float64 table and applied in float32.

`GaussianDiffusion` offers the same training interface as `transport.Transport` (`sample_t`,
`training_losses`, `lognorm_active`), so `training/dit.py` runs it unchanged. Sampling (respacing,
the ancestral loop, guidance) lives in `transport/ddpm_sampler.py`.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import Tensor

from .integrators import randn_like
from .utils import mean_flat


# ---------------------------------------------------------------------------------- schedules

def linear_betas(num_steps: int) -> Tensor:
    """DiT's `linear` schedule: (T,) float64, linspace(s * 1e-4, s * 0.02, T) with s = 1000 / T."""
    if num_steps < 2:
        raise ValueError(f"a DDPM needs at least 2 diffusion steps, got {num_steps}")
    scale = 1000.0 / num_steps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)


# ---------------------------------------------------------------------------------- Gaussian helpers

def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats (broadcasting)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """The tanh approximation of the standard normal CDF that DiT uses (not erf)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-probability (nats, elementwise) of 8-bit data rescaled to [-1, 1] under a Gaussian
    discretized into bins of width 2/255; the outermost bins (x < -0.999, x > 0.999) extend to
    infinity. Applied as is to continuous latents at t = 0, as DiT does."""
    if not x.shape == means.shape == log_scales.shape:
        raise ValueError(f"shapes differ: x {tuple(x.shape)}, means {tuple(means.shape)}, "
                         f"log_scales {tuple(log_scales.shape)}")
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_bin = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_bin))


# ---------------------------------------------------------------------------------- the diffusion

class GaussianDiffusion:
    """Discrete DDPM with the tables of DiT; also a respaced chain (`timestep_map` != identity).

    betas: (T,) float64. learn_sigma: the model outputs 2C channels [eps, v] (variance "learned
    range"); otherwise C channels with DiT's fixed-large variance [sigma~^2_1, beta_1, ...] and
    the loss is the MSE alone. timestep_map: (T,) int64, the index the network sees for each step
    of this chain (identity for training; the kept original steps for a respaced sampler).
    """

    def __init__(self, betas: Tensor, *, learn_sigma: bool = True, timestep_map: Optional[Sequence[int]] = None):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() < 2 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D table of at least 2 values in (0, 1]")
        self.num_timesteps = T = betas.numel()
        self.learn_sigma = learn_sigma
        self.timestep_map = torch.arange(T) if timestep_map is None else torch.as_tensor(timestep_map, dtype=torch.long)
        if self.timestep_map.shape != (T,):
            raise ValueError(f"timestep_map has {self.timestep_map.numel()} entries for {T} steps")
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)   # exactly 0 at t = 0
        # log sigma~^2 with the t = 0 entry (log 0) replaced by the t = 1 value.
        post_logvar_clipped = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        fixed_large = torch.cat([post_var[1:2], betas[1:]])
        self.tables: Dict[str, Tensor] = {
            "betas": betas, "alphas_cumprod": abar, "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": abar.sqrt(), "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
            "log_one_minus_alphas_cumprod": torch.log(1.0 - abar),
            "sqrt_recip_alphas_cumprod": (1.0 / abar).sqrt(), "sqrt_recipm1_alphas_cumprod": (1.0 / abar - 1.0).sqrt(),
            "posterior_variance": post_var, "posterior_log_variance_clipped": post_logvar_clipped,
            "posterior_mean_coef1": betas * abar_prev.sqrt() / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
            "log_betas": torch.log(betas),
            "fixed_large_variance": fixed_large, "fixed_large_log_variance": torch.log(fixed_large),
            "timestep_map": self.timestep_map,
        }
        self._on_device: Dict[torch.device, Dict[str, Tensor]] = {torch.device("cpu"): self.tables}

    # ------------------------------------------------------------------ table access

    def _table(self, name: str, device: torch.device) -> Tensor:
        if device not in self._on_device:
            self._on_device[device] = {k: v.to(device) for k, v in self.tables.items()}
        return self._on_device[device][name]

    def model_timesteps(self, t: Tensor) -> Tensor:
        """The network's time input for steps t of this chain: the original index (int64)."""
        return self._table("timestep_map", t.device)[t]

    def coef(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        """Table `name` at timesteps t (B,) as (B, 1, ..., 1) in float32 (float64 if `like` is):
        DiT gathers from float64 and applies every coefficient in float32."""
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        out = self._table(name, t.device)[t].to(dtype)
        return out.reshape(t.shape[0], *([1] * (like.ndim - 1)))

    # ------------------------------------------------------------------ closed forms

    def q_mean_variance(self, x_start: Tensor, t: Tensor):
        """Mean, variance, log-variance of q(x_t | x_0)."""
        mean = self.coef("sqrt_alphas_cumprod", t, x_start) * x_start
        var = 1.0 - self.coef("alphas_cumprod", t, x_start)
        return mean, var, self.coef("log_one_minus_alphas_cumprod", t, x_start)

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        return (self.coef("sqrt_alphas_cumprod", t, x_start) * x_start
                + self.coef("sqrt_one_minus_alphas_cumprod", t, x_start) * noise)

    def q_posterior_mean_variance(self, x_start: Tensor, x_t: Tensor, t: Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = self.coef("posterior_mean_coef1", t, x_t) * x_start + self.coef("posterior_mean_coef2", t, x_t) * x_t
        return mean, self.coef("posterior_variance", t, x_t), self.coef("posterior_log_variance_clipped", t, x_t)

    def predict_xstart_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return self.coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - self.coef("sqrt_recipm1_alphas_cumprod", t, x_t) * eps

    def split_output(self, out: Tensor, x: Tensor):
        """(eps_hat, v or None) from a model output with C (fixed variance) or 2C channels."""
        c = x.shape[1]
        expected = 2 * c if self.learn_sigma else c
        if out.shape[1] != expected or out.shape[2:] != x.shape[2:]:
            raise ValueError(f"model output shape {tuple(out.shape)}: expected {expected} channels for "
                             f"input {tuple(x.shape)} ({'model.learn_sigma' if self.learn_sigma else 'no learned sigma'})")
        return (out[:, :c], out[:, c:]) if self.learn_sigma else (out, None)

    def model_log_variance(self, v: Optional[Tensor], t: Tensor, x: Tensor) -> Tensor:
        """log Sigma_t: frac log beta_t + (1 - frac) log sigma~^2_t (clipped), frac = (v + 1) / 2;
        fixed-large without v."""
        if v is None:
            return self.coef("fixed_large_log_variance", t, x).expand_as(x)
        frac = (v + 1.0) / 2.0
        return frac * self.coef("log_betas", t, x) + (1.0 - frac) * self.coef("posterior_log_variance_clipped", t, x)

    def p_mean_variance(self, out: Tensor, x: Tensor, t: Tensor) -> Dict[str, Tensor]:
        """Mean and log-variance of p(x_{t-1} | x_t) from a model output (no x_0 clipping, as DiT)."""
        eps, v = self.split_output(out, x)
        log_variance = self.model_log_variance(v, t, x)
        pred_xstart = self.predict_xstart_from_eps(x, t, eps)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "log_variance": log_variance, "pred_xstart": pred_xstart, "eps": eps}

    def vb_terms_bpd(self, out: Tensor, x_start: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """(B,) L_vb in bits/dim: the posterior KL for t > 0, the decoder NLL for t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        p = self.p_mean_variance(out, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, p["mean"], p["log_variance"])) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(
            x_start, p["mean"], 0.5 * p["log_variance"])) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    # ------------------------------------------------------------------ the trainer's interface

    def lognorm_active(self, step: Optional[int] = None) -> bool:
        """The DDPM draws t uniformly: never logit-normal."""
        return False

    def sample_t(self, batch_size: int, *, generator: Optional[torch.Generator] = None,
                 step: Optional[int] = None) -> Tensor:
        """Training timesteps (B,) int64, uniform on {0, ..., T-1}, on the generator's device."""
        device = generator.device if generator is not None else torch.device("cpu")
        return torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=device)

    def timesteps(self, t: Tensor) -> Tensor:
        """Integer timesteps from `t`: int64 as is; a float t in [0, 1) (the trainer's fixed
        validation times) is taken as a fraction of the chain, floor(t * T)."""
        if t.is_floating_point():
            return (t.double() * self.num_timesteps).long().clamp_(0, self.num_timesteps - 1)
        return t.long()

    def training_losses(self, model: Callable[..., Tensor], x1: Tensor, model_kwargs: Optional[dict] = None,
                        t: Optional[Tensor] = None, x0: Optional[Tensor] = None, *,
                        generator: Optional[torch.Generator] = None, step: Optional[int] = None,
                        repa_target: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Per-sample hybrid loss for the data batch x1 (B, C, H, W) (argument names as
        `Transport.training_losses`: x1 is the data x_0 of DDPM, x0 the noise eps).

        Returns {'loss': mse + vb (the optimised term), 'mse', 'vb' (log-only: their names do not
        end in 'loss'), 'pred'}, each term (B,) float32. With learned sigma the network is called
        with `return_sigma=True` to get its 2C channels. REPA is not part of this objective.
        """
        if repa_target is not None:
            raise ValueError("transport.objective ddpm has no REPA term: set model.use_repa to false")
        model_kwargs = {} if model_kwargs is None else dict(model_kwargs)
        if t is None:
            t = self.sample_t(x1.shape[0], generator=generator, step=step)
        t = self.timesteps(t.to(x1.device))
        x_start = x1.float() if x1.dtype != torch.float64 else x1
        noise = (randn_like(x_start, generator) if x0 is None else x0).to(x_start.dtype)
        x_t = self.q_sample(x_start, t, noise)
        if self.learn_sigma:
            model_kwargs["return_sigma"] = True
        out = model(x_t, self.model_timesteps(t), **model_kwargs).to(x_start.dtype)
        eps, v = self.split_output(out, x_t)
        mse = mean_flat((noise - eps) ** 2)
        terms = {"pred": out, "mse": mse}
        if v is None:
            terms["vb"] = torch.zeros_like(mse)
            terms["loss"] = mse
            return terms
        # L_vb trains only the variance: the mean's gradient comes from the MSE alone.
        frozen = torch.cat([eps.detach(), v], dim=1)
        terms["vb"] = self.vb_terms_bpd(frozen, x_start, x_t, t)
        terms["loss"] = mse + terms["vb"]
        return terms


def create_ddpm(num_steps: int = 1000, learn_sigma: bool = True) -> GaussianDiffusion:
    """DiT's training diffusion: linear betas over `num_steps`, all steps kept."""
    return GaussianDiffusion(linear_betas(num_steps), learn_sigma=learn_sigma)

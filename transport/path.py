"""Interpolation paths x_t = alpha_t x1 + sigma_t x0 of the flow-matching objective.

Follows SiT's `transport/path.py` as used by LightningDiT (docs/reference_behaviour.md §2.2). Convention: x0 ~ N(0, I)
is noise, x1 is data, and t runs 0 -> 1 from noise to data. The training target is
u_t = d_alpha_t x1 + d_sigma_t x0.

- ICPlan (`Linear`): alpha = t, sigma = 1 - t (the released LightningDiT path).
- GVPCPlan (`GVP`): alpha = sin(pi t / 2), sigma = cos(pi t / 2).
- VPCPlan (`VP`): the variance-preserving schedule with sigma_min = 0.1, sigma_max = 20.

Every method takes the time already broadcast against x: (B, 1, ..., 1) for one time per sample,
or (B, C, 1, ..., 1) when channel groups run at their own times (transport/schedule.py); callers
broadcast once. Coefficient methods return (value, time derivative).
"""
import math
from typing import Tuple

import torch
from torch import Tensor

# Diffusion coefficient forms of `compute_diffusion`. The reference spells the last one
# "inccreasing-decreasing" (docs/reference_behaviour.md §2.2); both spellings are accepted.
DIFFUSION_FORMS = ("constant", "SBDM", "sigma", "linear", "decreasing",
                   "increasing-decreasing", "inccreasing-decreasing")


class ICPlan:
    """Linear interpolant: alpha_t = t, sigma_t = 1 - t, so u_t = x1 - x0."""

    def compute_alpha_t(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        return t, torch.ones_like(t)

    def compute_sigma_t(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        return 1 - t, -torch.ones_like(t)

    def compute_d_alpha_alpha_ratio_t(self, t: Tensor) -> Tensor:
        """d_alpha_t / alpha_t; singular at t = 0 for the Linear and GVP paths."""
        return 1 / t

    def compute_drift(self, x: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
        """The probability-flow drift split as velocity = -drift_mean + drift_var * score.

        Returns (drift_mean, drift_var) = (-(d_alpha/alpha) x, (d_alpha/alpha) sigma^2 - sigma d_sigma).
        """
        ratio = self.compute_d_alpha_alpha_ratio_t(t)
        sigma_t, d_sigma_t = self.compute_sigma_t(t)
        return -ratio * x, ratio * sigma_t ** 2 - sigma_t * d_sigma_t

    def compute_diffusion(self, x: Tensor, t: Tensor, form: str = "constant", norm: float = 1.0) -> Tensor:
        """Diffusion coefficient g(t) of the sampling SDE dx = (v + g s) dt + sqrt(2 g) dW.

        "SBDM" uses the probability-flow variance (singular at t = 0 for the Linear/GVP paths,
        which is why SDE sampling starts at t0 > 0; see Transport.check_interval).
        """
        if form == "SBDM":
            return norm * self.compute_drift(x, t)[1]
        if form == "constant":
            return torch.full_like(t, norm)
        if form == "sigma":
            return norm * self.compute_sigma_t(t)[0]
        if form == "linear":
            return norm * (1 - t)
        if form == "decreasing":
            return 0.25 * (norm * torch.cos(math.pi * t) + 1) ** 2
        if form in ("increasing-decreasing", "inccreasing-decreasing"):
            return norm * torch.sin(math.pi * t) ** 2
        raise ValueError(f"unknown diffusion form {form!r}; expected one of {DIFFUSION_FORMS}")

    def get_score_from_velocity(self, velocity: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """score = -E[x0 | x_t] / sigma_t, from a velocity prediction."""
        alpha_t, d_alpha_t = self.compute_alpha_t(t)
        sigma_t, d_sigma_t = self.compute_sigma_t(t)
        reverse_ratio = alpha_t / d_alpha_t
        var = sigma_t ** 2 - reverse_ratio * d_sigma_t * sigma_t
        return (reverse_ratio * velocity - x) / var

    def get_velocity_from_score(self, score: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Velocity = drift_var * score - drift_mean."""
        drift_mean, drift_var = self.compute_drift(x, t)
        return drift_var * score - drift_mean

    def compute_xt(self, t: Tensor, x0: Tensor, x1: Tensor) -> Tensor:
        """x_t = alpha_t x1 + sigma_t x0 (the interpolant is deterministic given x0, x1)."""
        alpha_t, _ = self.compute_alpha_t(t)
        sigma_t, _ = self.compute_sigma_t(t)
        return alpha_t * x1 + sigma_t * x0

    def compute_ut(self, t: Tensor, x0: Tensor, x1: Tensor) -> Tensor:
        """Target velocity u_t = d_alpha_t x1 + d_sigma_t x0."""
        _, d_alpha_t = self.compute_alpha_t(t)
        _, d_sigma_t = self.compute_sigma_t(t)
        return d_alpha_t * x1 + d_sigma_t * x0

    def plan(self, t: Tensor, x0: Tensor, x1: Tensor) -> Tuple[Tensor, Tensor]:
        """(x_t, u_t), both (B, C, ...), for noise x0 and data x1 at the broadcast times t."""
        return self.compute_xt(t, x0, x1), self.compute_ut(t, x0, x1)


class VPCPlan(ICPlan):
    """Variance-preserving path: alpha_t = exp(lmc(t)), sigma_t = sqrt(1 - alpha_t^2) with
    lmc(t) = -1/4 (1 - t)^2 (sigma_max - sigma_min) - 1/2 (1 - t) sigma_min."""

    def __init__(self, sigma_min: float = 0.1, sigma_max: float = 20.0):
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def _log_mean_coeff(self, t: Tensor) -> Tensor:
        return (-0.25 * (1 - t) ** 2 * (self.sigma_max - self.sigma_min)
                - 0.5 * (1 - t) * self.sigma_min)

    def _d_log_mean_coeff(self, t: Tensor) -> Tensor:
        return 0.5 * (1 - t) * (self.sigma_max - self.sigma_min) + 0.5 * self.sigma_min

    def compute_alpha_t(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        alpha_t = torch.exp(self._log_mean_coeff(t))
        return alpha_t, alpha_t * self._d_log_mean_coeff(t)

    def compute_sigma_t(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        p = torch.exp(2 * self._log_mean_coeff(t))
        sigma_t = torch.sqrt(1 - p)
        return sigma_t, p * (2 * self._d_log_mean_coeff(t)) / (-2 * sigma_t)

    def compute_d_alpha_alpha_ratio_t(self, t: Tensor) -> Tensor:
        return self._d_log_mean_coeff(t)

    def compute_drift(self, x: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
        """(-beta_t x / 2, beta_t / 2) with beta_t = sigma_min + (1 - t)(sigma_max - sigma_min)."""
        beta_t = self.sigma_min + (1 - t) * (self.sigma_max - self.sigma_min)
        return -0.5 * beta_t * x, beta_t / 2


class GVPCPlan(ICPlan):
    """Generalised variance-preserving (trigonometric) path: alpha = sin(pi t/2), sigma = cos(pi t/2)."""

    def compute_alpha_t(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        return torch.sin(t * math.pi / 2), math.pi / 2 * torch.cos(t * math.pi / 2)

    def compute_sigma_t(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        return torch.cos(t * math.pi / 2), -math.pi / 2 * torch.sin(t * math.pi / 2)

    def compute_d_alpha_alpha_ratio_t(self, t: Tensor) -> Tensor:
        return math.pi / (2 * torch.tan(t * math.pi / 2))

"""ODE and SDE integrators behind `Sampler` (SiT's `transport/integrators.py`, docs/reference_behaviour.md §2.5-2.7).

- `ode_solve`: torchdiffeq.odeint over a given time grid. Fixed-grid methods ('euler', 'midpoint',
  'heun2', 'rk4', ...) step exactly between consecutive grid points; adaptive ones ('dopri5', ...)
  honour atol/rtol and use the grid only as output times. A decreasing grid integrates backwards
  in time (data -> noise), which torchdiffeq supports natively.
- `sde_solve`: Euler-Maruyama or Heun for dx = f(x, t) dt + sqrt(2 g(t)) dW on a uniform grid,
  followed by an optional deterministic last step (the reference's scheme, docs/reference_behaviour.md §2.6).
- `likelihood_solve`: the instantaneous change-of-variables ODE, integrating (x, delta log p) from
  data to noise with an exact (autograd, small dims) or Hutchinson divergence.
"""
import logging
import math
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor
from torchdiffeq import odeint
from torchdiffeq._impl.odeint import SOLVERS as _TORCHDIFFEQ_SOLVERS

logger = logging.getLogger(__name__)

# Velocity field signature used throughout: v(x (B, ...), t (B,)) -> (B, ...).
VelocityFn = Callable[[Tensor, Tensor], Tensor]

# `sample.sampling_method` values: torchdiffeq's own method table for the ODE (its module is
# private, but every torchdiffeq 0.2.x of requirements.txt has it), ours for the SDE.
ODE_METHODS = _TORCHDIFFEQ_SOLVERS
SDE_METHODS = ("Euler", "Heun")
LAST_STEPS = (None, "Mean", "Tweedie", "Euler")
DIVERGENCES = ("exact", "hutchinson")


def _batch_time(t_scalar: Tensor, x: Tensor) -> Tensor:
    """The reference's `ones(B) * t` (docs/reference_behaviour.md §2.5): a (B,) float32 time on x's device."""
    return torch.ones(x.shape[0], device=x.device) * t_scalar


def randn_like(x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """N(0, I) noise shaped like x, from `generator` (on its own device) when given."""
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def ode_solve(velocity: VelocityFn, x: Tensor, t_grid: Tensor, *, method: str = "dopri5",
              atol: float = 1e-6, rtol: float = 1e-3) -> Tensor:
    """Integrate dx/dt = velocity(x, t) from t_grid[0] to t_grid[-1].

    x: (B, ...) state at t_grid[0]; t_grid: (N,) monotone (float32, any device).
    Returns the trajectory at the grid times, (N, B, ...); [-1] is the final state.
    """
    def fn(t, x):
        return velocity(x, _batch_time(t, x))

    return odeint(fn, x, t_grid.to(x.device), method=method, atol=atol, rtol=rtol)


def sde_solve(drift: VelocityFn, diffusion: VelocityFn, x: Tensor, t_grid: Tensor, *,
              method: str = "Euler", last_step: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
              generator: Optional[torch.Generator] = None) -> Tensor:
    """Integrate dx = drift(x, t) dt + sqrt(2 diffusion(x, t)) dW over the uniform grid t_grid.

    x: (B, ...) at t_grid[0]; t_grid: (N,) uniform, float32. The loop runs over t_grid[:-1]
    (N - 1 steps with dt = t_grid[1] - t_grid[0]); `last_step(x, t)` then maps the state at
    t_grid[-1] to the final sample. Returns the N states after each step and the last step,
    stacked: (N, B, ...), [-1] is the sample (the reference returns the same N states as a list).
    """
    if method not in SDE_METHODS:
        raise ValueError(f"unknown SDE sampling_method {method!r}; expected one of {SDE_METHODS}")
    t_grid = t_grid.to(x.device)
    dt = t_grid[1] - t_grid[0]
    sqrt_dt = torch.sqrt(dt)
    states = []
    for t_i in t_grid[:-1]:
        t = _batch_time(t_i, x)
        dw = randn_like(x, generator) * sqrt_dt
        if method == "Euler":
            g = diffusion(x, t)
            x = x + drift(x, t) * dt + torch.sqrt(2 * g) * dw
        else:  # Heun: noise first, then a trapezoidal drift step (docs/reference_behaviour.md §2.6)
            g = diffusion(x, t)
            x_hat = x + torch.sqrt(2 * g) * dw
            k1 = drift(x_hat, t)
            k2 = drift(x_hat + dt * k1, t + dt)
            x = x_hat + 0.5 * dt * (k1 + k2)
        states.append(x)
    if last_step is not None:
        x = last_step(x, _batch_time(t_grid[-1], x))
    states.append(x)
    return torch.stack(states)


def standard_normal_logp(z: Tensor) -> Tensor:
    """log N(z; 0, I) per sample: (B, ...) -> (B,)."""
    d = z[0].numel()
    return -0.5 * d * math.log(2 * math.pi) - 0.5 * z.flatten(1).pow(2).sum(dim=1)


def _divergence_exact(v: Tensor, x: Tensor) -> Tensor:
    """Trace of dv/dx per sample with one vector-Jacobian product per dimension (small dims only).
    Assumes samples do not interact (true for the models here). v, x: (B, ...) -> (B,)."""
    v_flat = v.flatten(1)
    div = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    for i in range(v_flat.shape[1]):
        (g,) = torch.autograd.grad(v_flat[:, i].sum(), x, retain_graph=True)
        div = div + g.flatten(1)[:, i]
    return div


def _divergence_hutchinson(v: Tensor, x: Tensor, eps: Tensor) -> Tensor:
    """Unbiased estimate E[eps^T (dv/dx) eps] of the divergence with a fixed probe eps."""
    (g,) = torch.autograd.grad((v * eps).sum(), x)
    return (g * eps).flatten(1).sum(dim=1)


def likelihood_solve(velocity: VelocityFn, x: Tensor, t_grid: Tensor, *, method: str = "dopri5",
                     atol: float = 1e-6, rtol: float = 1e-3, divergence: str = "hutchinson",
                     generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """log p(x) under the flow, integrating from data (t_grid[0]) to the N(0, I) prior (t_grid[-1]).

    d(delta)/dt = div v(x_t, t) with delta = 0 at the data end, so
    log p_data(x) = log N(z; 0, I) + delta(prior end). The Hutchinson probe is Rademacher, drawn
    once per solve (docs/reference_behaviour.md §2.7). x: (B, ...). Returns (logp (B,), z (B, ...)).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; expected one of {DIVERGENCES}")
    probe = None
    if divergence == "hutchinson":
        probe = (randn_like(x, generator) > 0).to(x.dtype) * 2 - 1

    def fn(t, state):
        x_t, _ = state
        with torch.enable_grad():
            x_t = x_t.detach().requires_grad_(True)
            v = velocity(x_t, _batch_time(t, x_t))
            if probe is None:
                div = _divergence_exact(v, x_t)
            else:
                div = _divergence_hutchinson(v, x_t, probe)
        return v.detach(), div.detach()

    delta0 = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    xs, deltas = odeint(fn, (x, delta0), t_grid.to(x.device), method=method, atol=atol, rtol=rtol)
    z = xs[-1]
    return standard_normal_logp(z) + deltas[-1], z

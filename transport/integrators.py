"""ODE and SDE integrators behind `Sampler` (SiT's `transport/integrators.py`, docs/reference_behaviour.md §2.5-2.7).

Every integrator calls a drift with the time as a host Python float (and the state x), never as a
device tensor, so decisions that depend on the time (the phase mask, guidance) cost no device sync.

- `fixed_grid_solve`: Euler and Heun (torchdiffeq's 'euler' and 'heun2') stepping over a CPU time
  grid with torchdiffeq's arithmetic, bit for bit: the step dt = t_{k+1} - t_k in float32 multiplies
  as a 0-d tensor on x's device, Heun's second evaluation is at t_k + dt in float32.
- `ode_solve`: every other torchdiffeq method ('dopri5', 'rk4', 'midpoint', ...) through
  torchdiffeq.odeint, reading each evaluation time on the host (adaptive solvers sync anyway).
  A decreasing grid integrates backwards in time (data -> noise).
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

# Drift signature used throughout: f(x (B, ...), s host float) -> (B, ...).
Drift = Callable[[Tensor, float], Tensor]
# The fixed-grid solver also passes the step index k (the step from grid[k] to grid[k + 1]).
StepDrift = Callable[[Tensor, float, int], Tensor]

# Our fixed-grid steppers (torchdiffeq's names and arithmetic) and the phase-aligned variants
# (`Sampler.sample_ode`: grid nodes on the schedule's breakpoints, one phase mask per step).
FIXED_GRID_METHODS = ("euler", "heun2")
PHASE_METHODS = {"euler_phase": "euler", "heun2_phase": "heun2"}
# `sample.sampling_method` values: the ODE's registry is torchdiffeq's own method table (its module
# is private, but every torchdiffeq 0.2.x of requirements.txt has it) plus the phase methods; ours
# for the SDE.
ODE_METHODS = {**_TORCHDIFFEQ_SOLVERS, **PHASE_METHODS}
SDE_METHODS = ("Euler", "Heun")
LAST_STEPS = (None, "Mean", "Tweedie", "Euler")
DIVERGENCES = ("exact", "hutchinson")


def randn_like(x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """N(0, I) noise shaped like x, from `generator` (on its own device) when given."""
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def fixed_grid_solve(drift: StepDrift, x: Tensor, grid: Tensor, method: str = "euler") -> Tensor:
    """Integrate dx/ds = drift(x, s, k) over the CPU grid (N,) float32, increasing or decreasing.

    Euler: x_{k+1} = x_k + dt_k f(x_k, s_k). Heun (torchdiffeq's heun2):
    x_{k+1} = x_k + dt_k (f0 / 2 + f1 / 2) with f0 = f(x_k, s_k), f1 = f(x_k + dt_k f0, s_k + dt_k).
    The operations, their order and operand dtypes are torchdiffeq's, so the result is the same
    bit for bit (also on the flipped grid: torchdiffeq's negated time cancels exactly).
    Returns the states at the grid nodes (N, B, ...); [0] is x, [-1] the final state.
    """
    if method not in FIXED_GRID_METHODS:
        raise ValueError(f"unknown fixed-grid method {method!r}; expected one of {FIXED_GRID_METHODS}")
    if grid.device.type != "cpu" or grid.ndim != 1 or len(grid) < 2:
        raise ValueError("fixed_grid_solve needs a 1-D CPU time grid of at least 2 points")
    steps = grid[1:] - grid[:-1]
    # torchdiffeq hands the drift its time cast to the state's dtype; Heun's second time is
    # t0 + dt in the grid's float32 (not always t1)
    times = grid.to(x.dtype).tolist()
    ends = (grid[:-1] + steps).to(x.dtype).tolist()
    dts = steps.to(device=x.device)               # one copy; dts[k] multiplies as torchdiffeq's dt
    out = torch.empty(len(grid), *x.shape, dtype=x.dtype, device=x.device)
    out[0] = x
    for k in range(len(grid) - 1):
        dt = dts[k]
        f0 = drift(x, times[k], k)
        if method == "euler":
            dx = dt * f0
        else:
            f1 = drift(x + dt * f0, ends[k], k)
            dx = dt * (f0 * 0.5 + f1 * 0.5)
        x = x + dx
        out[k + 1] = x
    return out


def ode_solve(drift: Drift, x: Tensor, t_grid: Tensor, *, method: str = "dopri5",
              atol: float = 1e-6, rtol: float = 1e-3) -> Tensor:
    """Integrate dx/dt = drift(x, t) from t_grid[0] to t_grid[-1] with torchdiffeq.odeint.

    x: (B, ...) state at t_grid[0]; t_grid: (N,) monotone float32. Each evaluation time is read on
    the host (torchdiffeq has already cast it to x's dtype). Returns the trajectory at the grid
    times, (N, B, ...); [-1] is the final state.
    """
    def fn(t, x):
        return drift(x, float(t.detach()))  # the step control may carry autograd history

    # One-element lists, as the reference and SFD pass them (docs/reference_behaviour.md §2.5):
    # torchdiffeq then forms its error ratio from tolerance tensors, which moves adaptive steps
    # (final samples differ by ~1e-6 from plain floats); the lists give the authors' numbers.
    return odeint(fn, x, t_grid.to(x.device), method=method, atol=[atol], rtol=[rtol])


def sde_solve(drift: Drift, diffusion: Drift, x: Tensor, t_grid: Tensor, *,
              method: str = "Euler", last_step: Optional[Drift] = None,
              generator: Optional[torch.Generator] = None) -> Tensor:
    """Integrate dx = drift(x, t) dt + sqrt(2 diffusion(x, t)) dW over the uniform CPU grid t_grid.

    x: (B, ...) at t_grid[0]; t_grid: (N,) uniform, float32. The loop runs over t_grid[:-1]
    (N - 1 steps with dt = t_grid[1] - t_grid[0]); `last_step(x, t)` then maps the state at
    t_grid[-1] to the final sample. Returns the N states after each step and the last step,
    stacked: (N, B, ...), [-1] is the sample (the reference returns the same N states as a list).
    """
    if method not in SDE_METHODS:
        raise ValueError(f"unknown SDE sampling_method {method!r}; expected one of {SDE_METHODS}")
    step = t_grid[1] - t_grid[0]
    times, heun_times = t_grid.tolist(), (t_grid + step).tolist()
    dt = step.to(x.device)
    sqrt_dt = torch.sqrt(dt)
    states = []
    for i in range(len(t_grid) - 1):
        t = times[i]
        dw = randn_like(x, generator) * sqrt_dt
        if method == "Euler":
            g = diffusion(x, t)
            x = x + drift(x, t) * dt + torch.sqrt(2 * g) * dw
        else:  # Heun: noise first, then a trapezoidal drift step (docs/reference_behaviour.md §2.6)
            g = diffusion(x, t)
            x_hat = x + torch.sqrt(2 * g) * dw
            k1 = drift(x_hat, t)
            k2 = drift(x_hat + dt * k1, heun_times[i])
            x = x_hat + 0.5 * dt * (k1 + k2)
        states.append(x)
    if last_step is not None:
        x = last_step(x, times[-1])
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


def likelihood_solve(velocity: Drift, x: Tensor, t_grid: Tensor, *, method: str = "dopri5",
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
            v = velocity(x_t, float(t.detach()))
            if probe is None:
                div = _divergence_exact(v, x_t)
            else:
                div = _divergence_hutchinson(v, x_t, probe)
        return v.detach(), div.detach()

    delta0 = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    xs, deltas = odeint(fn, (x, delta0), t_grid.to(x.device), method=method, atol=[atol] * 2, rtol=[rtol] * 2)
    z = xs[-1]
    return standard_normal_logp(z) + deltas[-1], z

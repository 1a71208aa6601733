"""Small tensor helpers shared by the transport package (SiT's `transport/utils.py`, trimmed).

`time_grid` builds the sampling grid exactly as the reference does (docs/reference_behaviour.md §2.5): a float32
`linspace` followed, when `timestep_shift > 0`, by the shift t' = s t / (1 + (s - 1) t).
"""
import torch
from torch import Tensor


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all non-batch dimensions: (B, ...) -> (B,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def expand_t_like_x(t: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample time (B,) to (B, 1, ..., 1) so it broadcasts against x (B, ...)."""
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


def shift_timesteps(t: Tensor, shift: float) -> Tensor:
    """Timestep shift of docs/reference_behaviour.md §2.5: t' = s t / (1 + (s - 1) t); s < 1 moves points towards
    t = 0 (noise). Endpoints 0 and 1 are fixed. Computed in t's dtype (float32 for the grid)."""
    return shift * t / (1 + (shift - 1) * t)


def time_grid(t0: float, t1: float, num_steps: int, timestep_shift: float = 0.0) -> Tensor:
    """The reference's ODE time grid (docs/reference_behaviour.md §2.5) on the CPU: (num_steps,) float32.

    `linspace(t0, t1, num_steps)` in float32, then `shift_timesteps` when timestep_shift > 0.
    With t0=0, t1=1, 250 points and shift 0.3 it starts 0, 0.001208.. and ends 0.98674.., 1.0.
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2 (got {num_steps})")
    t = torch.linspace(t0, t1, num_steps, dtype=torch.float32)
    if timestep_shift > 0:
        t = shift_timesteps(t, timestep_shift)
    return t

"""Small tensor helpers shared by the transport package (SiT's `transport/utils.py`, trimmed), and
the sampling time grids.

`time_grid` builds the sampling grid exactly as the reference does (docs/reference_behaviour.md
§2.5): a float32 `linspace` followed, when `timestep_shift > 0`, by the shift
t' = s t / (1 + (s - 1) t); over SFD's longer base-time interval [0, 1 + D] the shift is applied
to the grid divided by (1 + D), then multiplied back (docs/reference_behaviour.md §12.4.1).
`snap_to_breakpoints` moves grid nodes onto the drift's discontinuities (the phase samplers).
"""
from typing import Sequence

import torch
from torch import Tensor


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all non-batch dimensions: (B, ...) -> (B,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def shift_timesteps(t: Tensor, shift: float) -> Tensor:
    """Timestep shift of docs/reference_behaviour.md §2.5: t' = s t / (1 + (s - 1) t); s < 1 moves points towards
    t = 0 (noise). Endpoints 0 and 1 are fixed. Computed in t's dtype (float32 for the grid)."""
    return shift * t / (1 + (shift - 1) * t)


def time_grid(t0: float, t1: float, num_steps: int, timestep_shift: float = 0.0, scale: float = 1.0) -> Tensor:
    """The reference's ODE time grid (docs/reference_behaviour.md §2.5) on the CPU: (num_steps,) float32.

    `linspace(t0, t1, num_steps)` in float32, then `shift_timesteps` when timestep_shift > 0,
    applied to grid / scale and multiplied back by scale when scale != 1 (SFD: scale = 1 + D).
    With t0=0, t1=1, 250 points and shift 0.3 it starts 0, 0.001208.. and ends 0.98674.., 1.0.
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2 (got {num_steps})")
    t = torch.linspace(t0, t1, num_steps, dtype=torch.float32)
    if timestep_shift > 0:
        if scale != 1.0:
            t = t / scale
        t = shift_timesteps(t, timestep_shift)
        if scale != 1.0:
            t = t * scale
    return t


def snap_to_breakpoints(grid: Tensor, points: Sequence[float]) -> Tensor:
    """A copy of the increasing grid (N,) with, for each breakpoint p, the interior node nearest
    to p moved onto p (float32). The step count and the grid's density (shift) stay; each
    breakpoint becomes a node, so no step straddles a discontinuity of the drift.

    Raises ValueError when two breakpoints would share a node (too few steps).
    """
    out = grid.clone()
    taken = set()
    for p in points:
        if not grid[0] < p < grid[-1]:
            continue
        interior = (grid[1:-1] - p).abs()
        if interior.numel() == 0:
            raise ValueError(f"{len(grid) - 1} step(s) cannot put a grid node on the breakpoint {p}")
        k = int(interior.argmin()) + 1
        if k in taken:
            raise ValueError(f"{len(grid) - 1} steps are too few to put a grid node on each of the "
                             f"breakpoints {tuple(points)}; use more sampling steps")
        taken.add(k)
        out[k] = p  # the nearest node lies between p's neighbours, so the grid stays increasing
    return out

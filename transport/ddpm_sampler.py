"""DiT's DDPM sampler: the respaced ancestral chain (250 of 1000 steps).

- `space_timesteps(1000, "250")` keeps 250 original steps (0, 4, 8, ..., 999: stride 999/249 with
  Python's rounding, three gaps of 5); `respace` builds the chain on them with
  beta'_i = 1 - abar_{tau_i} / abar_{tau_{i-1}}, so abar'_i = abar_{tau_i}. The network sees the
  original index tau_i (`DDPMSampler.timestep_map[i]`), and its variance output v interpolates
  the *respaced* beta'_i and posterior variance (DiT's `SpacedDiffusion`).
- `DDPMSampler` runs x <- mean + 1[i > 0] exp(log Sigma / 2) noise from i = T'-1 down to 0,
  drawing fresh noise at every step (also i = 0) from the generator passed in, without clipping
  x_0. The result at i = 0 is the last step's predicted x_0.
- The network is reached through one `denoiser(x, i)` with i the respaced step index (a host
  int): it returns the raw output [eps, v] with guidance already applied (sampling/guidance.py;
  DiT guides the first 3 eps channels of one pass on [x; x] with labels [y; null] and keeps the
  variance channels conditional).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Set, Union

import torch
from torch import Tensor

from .ddpm import GaussianDiffusion
from .integrators import randn_like

__all__ = ["space_timesteps", "respace", "DDPMSampler"]

# denoiser(x (n, C, H, W), i) -> raw network output (n, 2C or C, H, W) at respaced step i.
StepDenoiser = Callable[[Tensor, int], Tensor]


def space_timesteps(num_timesteps: int, section_counts: Union[str, Sequence[int]]) -> Set[int]:
    """The original steps kept by DiT's respacing (a set).

    section_counts: "250" or "10,15,20" (the chain split into equal sections, the first
    T mod k sections one step longer, each section strided evenly with `round`), a list of
    ints, or "ddimN" (range(0, T, i) for the first stride i giving N steps).
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            wanted = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == wanted:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot take exactly {wanted} steps of {num_timesteps} with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    counts = list(section_counts)
    base, extra = divmod(num_timesteps, len(counts))
    kept: List[int] = []
    start = 0
    for k, count in enumerate(counts):
        size = base + (1 if k < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps from a section of {size} steps")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride  # repeated addition, as DiT (the rounding of the sum matters)
        start += size
    return set(kept)


def respace(diffusion: GaussianDiffusion, kept: Set[int]) -> GaussianDiffusion:
    """The chain on the kept steps: beta'_i = 1 - abar_{tau_i} / abar_{tau_{i-1}}, network index tau_i."""
    if not kept or min(kept) < 0 or max(kept) >= diffusion.num_timesteps:
        raise ValueError(f"kept steps must lie in [0, {diffusion.num_timesteps})")
    steps = sorted(kept)
    abar = diffusion.tables["alphas_cumprod"][steps]
    previous = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    original = diffusion.timestep_map[steps]
    return GaussianDiffusion(1.0 - abar / previous, learn_sigma=diffusion.learn_sigma, timestep_map=original)


class DDPMSampler:
    """Ancestral sampling of the respaced chain: sampler(z, denoiser, generator) -> x_0 samples.

    `timestep_map[i]` is the original step the network sees at respaced step i; `learn_sigma`
    whether it returns the 2C channels [eps, v] (called with return_sigma=True) or eps alone.
    `num_calls` counts denoiser calls over the sampler's lifetime.
    """

    def __init__(self, diffusion: GaussianDiffusion, num_sampling_steps: Union[int, str] = 250):
        self.diffusion = respace(diffusion, space_timesteps(diffusion.num_timesteps, str(num_sampling_steps)))
        self.timestep_map: List[int] = self.diffusion.timestep_map.tolist()
        self.learn_sigma = self.diffusion.learn_sigma
        self.num_calls = 0

    @torch.no_grad()
    def __call__(self, z: Tensor, denoiser: StepDenoiser, generator: Optional[torch.Generator] = None) -> Tensor:
        """z (n, C, H, W) the start noise; the per-step noise comes from `generator` (on its own
        device), so a seeded generator reproduces the samples."""
        diffusion, x = self.diffusion, z
        for i in reversed(range(diffusion.num_timesteps)):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            out = denoiser(x, i).to(x.dtype)
            self.num_calls += 1
            p = diffusion.p_mean_variance(out, x, t)
            noise = randn_like(x, generator)  # drawn at i = 0 too, as DiT
            x = p["mean"] + torch.exp(0.5 * p["log_variance"]) * noise if i > 0 else p["mean"]
        return x

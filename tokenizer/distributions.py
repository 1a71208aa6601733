"""Diagonal Gaussian posterior of the KL autoencoder (LDM `DiagonalGaussianDistribution`).

Follows docs/reference_behaviour.md §5.2 / §6.7: the encoder's moments are split along channels into mean and
log-variance, the log-variance is clamped to [-30, 20], and the KL / NLL are summed over
(C, H, W) per sample.

Noise for `sample()`: the reference draws eps with `torch.randn(mean.shape)` on the CPU default
generator and moves it to the mean's device, so on a GPU its latents depend only on the CPU seed.
`sample(generator=None)` keeps exactly that (same numbers as the reference for the same
`torch.manual_seed`); `sample(generator=g)` draws on `g.device` with `g` and moves the noise to the
mean's device, so a CPU generator gives the same sample on every device.
"""
from __future__ import annotations

import math

import torch

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class DiagonalGaussianDistribution:
    """N(mean, diag(exp(logvar))) over latents of shape (B, C, H, W).

    `parameters`: (B, 2C, H, W) moments, mean = first C channels, logvar = last C channels.
    `deterministic=True` makes std/var zero, `sample()` return the mean and `kl()` zero.
    """

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        if parameters.dim() < 2 or parameters.shape[1] % 2:
            raise ValueError(f"moments need an even channel dim 1, got shape {tuple(parameters.shape)}")
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX)
        self.deterministic = deterministic
        if deterministic:
            self.std = torch.zeros_like(self.mean)
            self.var = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std * eps, eps ~ N(0, I) in float32 (see the module docstring for the device)."""
        device = generator.device if generator is not None else torch.device("cpu")
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=torch.float32)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> torch.Tensor:
        """KL(self || other) summed over (C, H, W); other=None means N(0, I). Shape (B,)."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        dims = tuple(range(1, self.mean.dim()))
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0
            - self.logvar + other.logvar,
            dim=dims,
        )

    def nll(self, sample: torch.Tensor, dims: tuple[int, ...] = (1, 2, 3)) -> torch.Tensor:
        """Negative log-likelihood of `sample` summed over `dims`. Shape (B,) for the default."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        return 0.5 * torch.sum(
            math.log(2.0 * math.pi) + self.logvar + (sample - self.mean).pow(2) / self.var, dim=dims
        )

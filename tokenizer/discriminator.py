"""PatchGAN discriminator of the VA-VAE GAN loss (taming-transformers `NLayerDiscriminator`).

Follows docs/reference_behaviour.md §6.6: Conv(k4, s2) + LeakyReLU(0.2), then `n_layers - 1` stride-2 blocks and
one stride-1 block of Conv(no bias) + BatchNorm + LeakyReLU (channels double up to 8 * ndf), then a
stride-1 Conv to one logit per patch. A 256 px input gives 30 x 30 logits for n_layers = 3.
Initialisation is taming's `weights_init`: conv weights ~ N(0, 0.02), BatchNorm weight ~ N(1, 0.02)
and bias 0. The `main.{i}` indices equal taming's, so `loss.discriminator.main.*` of the authors'
training checkpoints load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def weights_init(module: nn.Module) -> None:
    """taming's init: conv weight ~ N(0, 0.02); BatchNorm weight ~ N(1, 0.02), bias 0."""
    name = type(module).__name__
    if "Conv" in name:
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: images (B, input_nc, H, W) -> logits (B, 1, H', W') (30 x 30 for 256 px, n_layers 3).

    Only `use_actnorm=False` (the reference setting) is supported.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, use_actnorm: bool = False):
        super().__init__()
        if use_actnorm:
            raise ValueError("NLayerDiscriminator: use_actnorm=true is not supported (the reference uses false)")
        if n_layers < 1:
            raise ValueError(f"NLayerDiscriminator: n_layers must be >= 1, got {n_layers}")
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):  # n_layers - 1 stride-2 blocks, then one stride-1 block
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)

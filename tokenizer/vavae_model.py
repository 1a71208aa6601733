"""The VA-VAE training-time model: KL autoencoder + latent/feature projection + frozen foundation model.

Follows docs/reference_behaviour.md §6.4 (hustvl/LightningDiT `vavae/ldm/models/autoencoder.py::AutoencoderKL`,
the Lightning module) minus the optimisation code, which lives in `train_tokenizer.py`:
- `linear_proj`: with `reverse_proj` (released setting) Conv2d(embed_dim -> feature_dim, 1x1,
  bias=False), applied to the sampled latent, so the VF loss compares in the foundation space
  (key `linear_proj.weight`, (1024, 32, 1, 1) for f16d32 + DINOv2); otherwise Conv2d(feature_dim ->
  embed_dim, bias=True) applied to the features. PyTorch default init. `proj_fix` freezes it.
- forward: posterior = encode(x); z = posterior.sample() (also in validation, as the reference);
  dec = decode(z); features from the frozen foundation model without grad.
Parameter names equal the authors' Lightning checkpoints (`encoder.*`, `decoder.*`, `quant_conv.*`,
`post_quant_conv.*`, `linear_proj.weight`, `foundation_model.model.*`), so `tokenizer/vavae.py` and
`tokenizer/checkpoint.py` read what `state_dict()` gives.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from tokenizer.autoencoder import AutoencoderKL
from tokenizer.distributions import DiagonalGaussianDistribution
from tokenizer.foundation import FoundationModel

# Prefixes of the trainable generator's state (what checkpoints store; the foundation model is
# frozen and comes from its own file).
GENERATOR_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "linear_proj.")


class VAVAEModel(AutoencoderKL):
    """Autoencoder with the VF-alignment projection. images (B, 3, R, R) in [-1, 1].

    `use_vf`: None (plain LDM VAE) or a tokenizer.foundation.FOUNDATION_MODELS name; then `foundation_model` must be given.
    """

    def __init__(self, ddconfig: Mapping[str, Any], embed_dim: int, use_vf: Optional[str] = None,
                 reverse_proj: bool = False, proj_fix: bool = False,
                 foundation_model: Optional[FoundationModel] = None):
        super().__init__(ddconfig, embed_dim)
        self.use_vf, self.reverse_proj, self.proj_fix = use_vf, reverse_proj, proj_fix
        if use_vf:
            if foundation_model is None:
                raise ValueError(f"use_vf={use_vf!r} needs a foundation model")
            self.foundation_model = foundation_model
            dim = foundation_model.feature_dim
            if reverse_proj:
                self.linear_proj = nn.Conv2d(self.embed_dim, dim, kernel_size=1, bias=False)
            else:
                self.linear_proj = nn.Conv2d(dim, self.embed_dim, kernel_size=1, bias=True)
            if proj_fix:  # the reference leaves it out of the optimizer: same numbers
                self.linear_proj.requires_grad_(False)

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, DiagonalGaussianDistribution, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Returns (reconstruction (B, 3, R, R), posterior, z_proj, aux).

        With VF and reverse_proj: z_proj = linear_proj(z) and aux the features, both
        (B, feature_dim, R/f, R/f); without reverse_proj: z_proj = z and aux = linear_proj(features),
        both (B, embed_dim, R/f, R/f). Without VF the last two are None.
        """
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        dec = self.decode(z)
        if not self.use_vf:
            return dec, posterior, None, None
        aux = self.foundation_model(x, grid=tuple(z.shape[-2:]))
        if self.reverse_proj:
            z = self.linear_proj(z)
        else:
            aux = self.linear_proj(aux)
        return dec, posterior, z, aux

    def generator_state_dict(self) -> Dict[str, torch.Tensor]:
        """The trainable state (no foundation-model weights): what checkpoints and exports store."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(GENERATOR_PREFIXES)}

    @property
    def decoder_last_layer(self) -> torch.Tensor:
        return self.decoder.conv_out.weight

    @property
    def encoder_last_layer(self) -> torch.Tensor:
        return self.encoder.conv_out.weight

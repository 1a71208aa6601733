"""`MAR_VAE`: MAR's KL-16 VAE behind the `VA_VAE` interface (hustvl/LightningDiT `tokenizer/marvae.py`).

docs/reference_behaviour.md §5.5: the same LDM autoencoder with embed_dim = z_channels = 16 and no attention in the
decoder's up path (the mid attention and the encoder's attention at 16 px stay), weights under the
`model` entry of MAR's checkpoint. The reference hard-codes `ckpt_path=''`; here the config
(configs/tokenizer/marvae_kl16.yaml, with `model.params.decoder_attn_resolutions: []`) names it.
"""
from __future__ import annotations

import os

import torch

from tokenizer.checkpoint import MARVAE_WEIGHTS_HINT
from tokenizer.vavae import VA_VAE

DEFAULT_CONFIG = "configs/tokenizer/marvae_kl16.yaml"


class MAR_VAE(VA_VAE):
    """Same API as `VA_VAE`; latents are (B, 16, H/16, W/16)."""

    weights_hint = MARVAE_WEIGHTS_HINT
    state_key = "model"

    def __init__(self, config_path: str | os.PathLike | None = DEFAULT_CONFIG, img_size: int = 256,
                 horizon_flip: float = 0.5, fp16: bool = True, device: str | torch.device | None = None,
                 *, ckpt_path: str | None = None, random_init: bool = False):
        super().__init__(config_path, img_size=img_size, horizon_flip=horizon_flip, fp16=fp16,
                         device=device, ckpt_path=ckpt_path, random_init=random_init)

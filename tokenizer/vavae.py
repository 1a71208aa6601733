"""`VA_VAE`: the image <-> latent interface LightningDiT uses (hustvl/LightningDiT `tokenizer/vavae.py`).

Behaviour follows docs/reference_behaviour.md §5.1, with these deliberate differences:
- the autoencoder is built from the YAML's `model.params.ddconfig` / `embed_dim` (the reference
  hard-codes everything except embed_dim; the released YAMLs hold the same values);
- weights load strictly (tokenizer/checkpoint.py); a YAML without `ckpt_path` is an error unless
  `random_init=True` (tests and demos only, logged as a warning);
- device-agnostic (default: CUDA if available, else CPU); no `.cuda()` calls;
- `fp16=True` runs encode/decode under fp16 autocast on CUDA only (the reference ignores `fp16` and
  runs fp32, so pass `fp16=False` for reference-identical latents); nothing changes on CPU;
- `encode_images` takes an optional generator for the posterior noise and `sample=False` for the mode.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torchvision import transforms

from datasets.transforms import center_crop_arr
from tokenizer.autoencoder import AutoencoderKL
from tokenizer.checkpoint import VAVAE_WEIGHTS_HINT, load_autoencoder_weights
from utils.safe_yaml import load_yaml

logger = logging.getLogger(__name__)


def load_tokenizer_config(config_path: str | os.PathLike) -> DictConfig:
    """Load an authors'-layout tokenizer YAML and check the keys the autoencoder needs."""
    config_path = os.fspath(config_path)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"tokenizer config not found: {config_path}")
    cfg = load_yaml(config_path)   # resolvers refused, interpolations bounded
    for key in ("model.params.embed_dim", "model.params.ddconfig"):
        if OmegaConf.select(cfg, key) is None:
            raise ValueError(f"{config_path}: missing key '{key}'")
    return cfg


def to_uint8_nhwc(x: torch.Tensor) -> torch.Tensor:
    """Decoder output (B, 3, H, W), ~[-1, 1] -> uint8 tensor (B, H, W, 3) on the same device.

    As the reference (docs/reference_behaviour.md §5.1): clamp(127.5 x + 128, 0, 255), then a truncating cast, so
    +128 rounds 127.5 x + 127.5 to the nearest integer (halves round up). Computed in float32.
    For an input normalised from uint8 u (x = (u/255 - 0.5)/0.5) it returns u exactly.
    """
    x = torch.clamp(127.5 * x.float() + 128.0, 0.0, 255.0)
    return x.permute(0, 2, 3, 1).to(torch.uint8)


def decode_output_to_uint8(x: torch.Tensor) -> np.ndarray:
    """`to_uint8_nhwc` as a numpy array on the CPU (what `decode_to_images` returns)."""
    return to_uint8_nhwc(x).cpu().numpy()


class VA_VAE:
    """Image tokenizer: ImageNet images <-> (B, embed_dim, H/16, W/16) latents.

    `config_path`: tokenizer YAML (configs/tokenizer/vavae_f16d32.yaml layout: `ckpt_path`,
    `model.params.{embed_dim, ddconfig}`). `ckpt_path` overrides the YAML's. `random_init=True`
    keeps random weights (tests/demos; results mean nothing). `.model` is the `AutoencoderKL`.
    """

    weights_hint = VAVAE_WEIGHTS_HINT
    state_key: str | None = None  # entry of the checkpoint holding the state dict (None: auto)

    def __init__(self, config_path: str | os.PathLike | None, img_size: int = 256,
                 horizon_flip: float = 0.5, fp16: bool = True, device: str | torch.device | None = None,
                 *, ckpt_path: str | None = None, random_init: bool = False):
        self.config_path = config_path
        self.config = load_tokenizer_config(config_path) if config_path is not None else None
        self.embed_dim = int(self.config.model.params.embed_dim) if self.config is not None else None
        yaml_ckpt = self.config.get("ckpt_path") if self.config is not None else None
        self.ckpt_path = ckpt_path if ckpt_path is not None else yaml_ckpt
        self.img_size = img_size
        self.horizon_flip = horizon_flip  # stored like the reference; flips come from img_transform
        self.fp16 = fp16
        self.device = torch.device(device if device is not None
                                   else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.random_init = random_init
        self.model: AutoencoderKL | None = None
        if self.config is not None:
            self.load()

    # --------------------------------------------------------------- construction
    def build_model(self) -> AutoencoderKL:
        params = self.config.model.params
        kwargs: dict[str, Any] = {}
        if params.get("decoder_attn_resolutions") is not None:
            kwargs["decoder_attn_resolutions"] = list(params.decoder_attn_resolutions)
        ddconfig = OmegaConf.to_container(params.ddconfig, resolve=True)
        return AutoencoderKL(ddconfig=ddconfig, embed_dim=int(params.embed_dim), **kwargs)

    def load(self) -> "VA_VAE":
        """(Re)build the autoencoder from the config and load its weights; returns self."""
        model = self.build_model()
        if self.random_init:
            logger.warning("tokenizer %s: random_init=True, NOT loading weights; outputs are "
                           "meaningless (tests/demos only)", self.config_path)
        elif not self.ckpt_path:
            raise ValueError(f"{self.config_path}: ckpt_path is not set ({self.weights_hint}); "
                             "random weights need random_init=True")
        else:
            load_autoencoder_weights(model, self.ckpt_path, state_key=self.state_key,
                                     hint=self.weights_hint)
        self.model = model.to(self.device).eval()
        return self

    @classmethod
    def from_model(cls, model: AutoencoderKL, img_size: int = 256, horizon_flip: float = 0.5,
                   fp16: bool = True, device: str | torch.device | None = None) -> "VA_VAE":
        """Wrap an existing autoencoder (already holding the weights you want)."""
        self = cls(None, img_size=img_size, horizon_flip=horizon_flip, fp16=fp16, device=device)
        self.embed_dim = model.embed_dim
        self.model = model.to(self.device).eval()
        return self

    # --------------------------------------------------------------- preprocessing
    def img_transform(self, p_hflip: float = 0.0, img_size: int | None = None) -> transforms.Compose:
        """PIL image -> (3, S, S) float tensor in [-1, 1]: ADM centre crop, flip with prob p_hflip,
        ToTensor, Normalize(0.5, 0.5) (docs/reference_behaviour.md §4.2)."""
        size = img_size or self.img_size
        return transforms.Compose([
            transforms.Lambda(functools.partial(center_crop_arr, image_size=size)),
            transforms.RandomHorizontalFlip(p=p_hflip),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], inplace=True),
        ])

    # --------------------------------------------------------------- encode / decode
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.fp16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None,
                      sample: bool = True) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> float32 latents (B, embed_dim, H/16, W/16): a posterior
        sample (as the reference; see tokenizer/distributions.py for the noise) or the mode."""
        with self._autocast():
            posterior = self.model.encode(images.to(self.device))
        z = posterior.sample(generator) if sample else posterior.mode()
        return z.float()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """latents (B, embed_dim, h, w) -> float32 images (B, 3, 16h, 16w) on self.device, unclamped."""
        with self._autocast():
            x = self.model.decode(z.to(self.device))
        return x.float()

    def decode_to_images(self, z: torch.Tensor) -> np.ndarray:
        """latents (B, embed_dim, h, w) -> uint8 numpy (B, 16h, 16w, 3)."""
        return decode_output_to_uint8(self.decode(z))

    def to(self, device: str | torch.device) -> "VA_VAE":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

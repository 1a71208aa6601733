"""`SD_VAE`: Stable Diffusion's kl-f8 VAE (sd-vae-ft-ema / sd-vae-ft-mse) behind the `VA_VAE` interface.

The Table 1 road map of the paper trains on SD-VAE latents: f8, 4 channels, a posterior sample
scaled by 0.18215 and no channel normalisation (docs/reference_behaviour.md §9.4, the author's
answer in issue #22). The authors' repository has no wrapper (issue #71); this one runs
diffusers' `AutoencoderKL`, as DiT, fast-DiT and the authors' `evaluate_tokenizer.py` do.

Conventions, the same as `VA_VAE`:
- `encode_images` returns the RAW posterior sample (no 0.18215); training multiplies by
  `data.latent_multiplier` (0.18215 in the Table 1 configs, with `data.latent_norm: false`), and
  `sampling.pipeline.Decoder` divides by it before `decode_to_images`;
- the posterior noise is drawn as in `tokenizer.distributions` (a CPU generator gives the same
  latents on every device); the log-variance is clamped to [-30, 20] as diffusers does;
- `decode_to_images` returns uint8 NHWC via clamp(127.5 x + 128) and a truncating cast.

Weights (`ckpt_path` of configs/tokenizer/sdvae_ft_{ema,mse}.yaml) are read from local files only:
- a directory in the Hugging Face layout, `config.json` + `diffusion_pytorch_model.safetensors`
  (or `.bin`), as in stabilityai/sd-vae-ft-ema and stabilityai/sd-vae-ft-mse; or
- one file (`.safetensors`, `.ckpt`, `.pt`, `.bin`) holding a diffusers-named state dict or the
  original CompVis/LDM one (e.g. vae-ft-mse-840000-ema-pruned.safetensors from
  stabilityai/sd-vae-ft-mse-original); the architecture then comes from the YAML's `model.params`
  (diffusers' `AutoencoderKL` arguments), and LDM names are renamed here (`ldm_to_diffusers_key`).
Both decoders share one encoder (only the decoder was fine-tuned), so the latents do not depend on
the ema/mse choice; the decoder does.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Dict, Mapping

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from tokenizer.checkpoint import load_strict, read_state_dict
from tokenizer.distributions import DiagonalGaussianDistribution
from tokenizer.vavae import VA_VAE
from utils.safe_yaml import load_yaml

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/tokenizer/sdvae_ft_ema.yaml"
SDVAE_WEIGHTS_HINT = ("download config.json and diffusion_pytorch_model.safetensors from the Hugging "
                      "Face hub repo stabilityai/sd-vae-ft-ema (or stabilityai/sd-vae-ft-mse) into one "
                      "folder and set ckpt_path in the tokenizer YAML to it")
CONFIG_NAME = "config.json"
WEIGHTS_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
LDM_PREFIXES = ("first_stage_model.", "vae.")


def _diffusers_autoencoder_cls() -> type:
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise ImportError("the SD-VAE tokenizer needs diffusers: pip install 'diffusers>=0.29'") from err
    return AutoencoderKL


def _plain(value: Any) -> Any:
    """Lists and tuples compare equal (YAML lists vs the tuples of a diffusers config)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def load_sdvae_config(config_path: str | os.PathLike) -> DictConfig:
    """Load an SD-VAE tokenizer YAML (configs/tokenizer/sdvae_ft_ema.yaml layout)."""
    config_path = os.fspath(config_path)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"tokenizer config not found: {config_path}")
    cfg = load_yaml(config_path)   # resolvers refused, interpolations bounded
    if OmegaConf.select(cfg, "model.params.latent_channels") is None:
        raise ValueError(f"{config_path}: missing key 'model.params.latent_channels' "
                         "(model.params holds diffusers AutoencoderKL arguments)")
    return cfg


# ------------------------------------------------------------------------------------------------
# Single-file checkpoints: CompVis/LDM (and legacy diffusers) names -> current diffusers names
# ------------------------------------------------------------------------------------------------

_LDM_RULES = (  # applied in order to the part after "encoder." / "decoder."
    (re.compile(r"^mid\.block_(\d)\."), lambda m: f"mid_block.resnets.{int(m.group(1)) - 1}."),
    (re.compile(r"^mid\.attn_1\.norm\."), lambda m: "mid_block.attentions.0.group_norm."),
    (re.compile(r"^mid\.attn_1\.(q|k|v)\."), lambda m: f"mid_block.attentions.0.to_{m.group(1)}."),
    (re.compile(r"^mid\.attn_1\.proj_out\."), lambda m: "mid_block.attentions.0.to_out.0."),
    (re.compile(r"^norm_out\."), lambda m: "conv_norm_out."),
)
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def ldm_to_diffusers_key(key: str, num_levels: int) -> str:
    """One state-dict name in CompVis/LDM (or diffusers <= 0.13 attention) spelling -> diffusers.

    LDM numbers the decoder levels from full resolution up (`decoder.up.0` is the 128-channel one),
    diffusers from the latent down, hence `up_blocks.{num_levels - 1 - i}`. Names already in the
    current diffusers spelling come back unchanged.
    """
    for prefix in LDM_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    legacy = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(query|key|value|proj_attn)\.(.*)$",
                      key)
    if legacy:
        return f"{legacy.group(1)}.mid_block.attentions.0.{_LEGACY_ATTN[legacy.group(2)]}.{legacy.group(3)}"
    part, sep, rest = key.partition(".")
    if part not in ("encoder", "decoder") or not sep:
        return key
    m = re.match(r"^(down|up)\.(\d+)\.(block\.(\d+)|downsample|upsample)\.(.*)$", rest)
    if m:
        level = int(m.group(2)) if m.group(1) == "down" else num_levels - 1 - int(m.group(2))
        where = ("down_blocks" if m.group(1) == "down" else "up_blocks") + f".{level}."
        if m.group(4) is not None:
            tail = m.group(5).replace("nin_shortcut.", "conv_shortcut.")
            return f"{part}.{where}resnets.{m.group(4)}.{tail}"
        sampler = "downsamplers" if m.group(3) == "downsample" else "upsamplers"
        return f"{part}.{where}{sampler}.0.{m.group(5)}"
    for pattern, repl in _LDM_RULES:
        if pattern.match(rest):
            rest = pattern.sub(repl, rest, count=1)
            break
    return f"{part}.{rest.replace('nin_shortcut.', 'conv_shortcut.')}"


def convert_state_dict(sd: Mapping[str, torch.Tensor], num_levels: int) -> Dict[str, torch.Tensor]:
    """`ldm_to_diffusers_key` on every entry; the LDM 1x1-conv attention weights (C, C, 1, 1) become
    the (C, C) linear weights diffusers uses."""
    out = {}
    for key, value in sd.items():
        new = ldm_to_diffusers_key(key, num_levels)
        if ".attentions." in new and new.endswith(".weight") and value.dim() == 4:
            value = value[:, :, 0, 0]
        out[new] = value
    return out


# ------------------------------------------------------------------------------------------------
# The wrapper
# ------------------------------------------------------------------------------------------------

class DiffusersAutoencoder(nn.Module):
    """A diffusers `AutoencoderKL` with the calling convention of `tokenizer.autoencoder.AutoencoderKL`:
    `encode(x)` -> posterior (`tokenizer.distributions.DiagonalGaussianDistribution`), `decode(z)`
    -> image tensor, `embed_dim`, `downsample_factor`. `.vae` is the diffusers module."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    @property
    def embed_dim(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """x (B, 3, H, W) in [-1, 1] -> posterior over (B, 4, H/8, W/8) (moments of `vae.encode`)."""
        return DiagonalGaussianDistribution(self.vae.encode(x).latent_dist.parameters)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (no 0.18215) -> images (B, 3, 8h, 8w), unclamped."""
        return self.vae.decode(z).sample


class SD_VAE(VA_VAE):
    """Same API as `VA_VAE`; latents are raw posterior samples (B, 4, H/8, W/8).

    `config_path`: configs/tokenizer/sdvae_ft_{ema,mse}.yaml (`ckpt_path`, `model.params` = diffusers
    `AutoencoderKL` arguments). `ckpt_path` overrides the YAML's. `random_init=True` builds the
    architecture of `model.params` with random weights (tests/demos only). `.model` is a
    `DiffusersAutoencoder`; `.model.vae` the diffusers module.
    """

    weights_hint = SDVAE_WEIGHTS_HINT

    def __init__(self, config_path: str | os.PathLike | None = DEFAULT_CONFIG, img_size: int = 256,
                 horizon_flip: float = 0.5, fp16: bool = True, device: str | torch.device | None = None,
                 *, ckpt_path: str | None = None, random_init: bool = False):
        # VA_VAE.__init__ with the SD-VAE YAML reader (its YAML has no LDM ddconfig).
        self.config_path = config_path
        self.config = load_sdvae_config(config_path) if config_path is not None else None
        self.embed_dim = (int(self.config.model.params.latent_channels)
                          if self.config is not None else None)
        yaml_ckpt = self.config.get("ckpt_path") if self.config is not None else None
        self.ckpt_path = ckpt_path if ckpt_path is not None else yaml_ckpt
        self.img_size = img_size
        self.horizon_flip = horizon_flip
        self.fp16 = fp16
        self.device = torch.device(device if device is not None
                                   else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.random_init = random_init
        self.model: DiffusersAutoencoder | None = None
        if self.config is not None:
            self.load()

    # --------------------------------------------------------------- construction
    def architecture(self) -> Dict[str, Any]:
        """The YAML's `model.params` as diffusers `AutoencoderKL` keyword arguments."""
        return OmegaConf.to_container(self.config.model.params, resolve=True)

    def build_model(self) -> nn.Module:
        """A randomly initialised diffusers `AutoencoderKL` of the YAML's architecture."""
        return _diffusers_autoencoder_cls()(**self.architecture())

    def load(self) -> "SD_VAE":
        """Build the diffusers autoencoder and load its weights (see the module docstring)."""
        if self.random_init:
            logger.warning("tokenizer %s: random_init=True, NOT loading weights; outputs are "
                           "meaningless (tests/demos only)", self.config_path)
            vae = self.build_model()
        elif not self.ckpt_path:
            raise ValueError(f"{self.config_path}: ckpt_path is not set ({self.weights_hint}); "
                             "random weights need random_init=True")
        elif not os.path.exists(self.ckpt_path):
            raise FileNotFoundError(f"SD-VAE weights not found: {self.ckpt_path} ({self.weights_hint})")
        elif os.path.isdir(self.ckpt_path):
            vae = self._load_directory(os.fspath(self.ckpt_path))
        else:
            vae = self._load_single_file(os.fspath(self.ckpt_path))
        self.embed_dim = int(vae.config.latent_channels)
        self.model = DiffusersAutoencoder(vae).to(self.device).eval()
        return self

    def _load_directory(self, path: str) -> nn.Module:
        """Hugging Face layout: config.json + diffusion_pytorch_model.{safetensors,bin}; no hub access."""
        if not os.path.isfile(os.path.join(path, CONFIG_NAME)):
            raise FileNotFoundError(f"SD-VAE config not found: {os.path.join(path, CONFIG_NAME)} "
                                    f"({self.weights_hint})")
        if not any(os.path.isfile(os.path.join(path, name)) for name in WEIGHTS_NAMES):
            raise FileNotFoundError(f"SD-VAE weights not found: {os.path.join(path, WEIGHTS_NAMES[0])} "
                                    f"({self.weights_hint})")
        vae = _diffusers_autoencoder_cls().from_pretrained(path, local_files_only=True)
        differ = {k: (v, vae.config[k]) for k, v in self.architecture().items()
                  if k in vae.config and _plain(vae.config[k]) != _plain(v)}
        if differ:
            logger.warning("%s/config.json differs from model.params of %s (the folder's wins): %s",
                           path, self.config_path, differ)
        logger.info("loaded the SD-VAE (diffusers layout) from %s", path)
        return vae

    def _load_single_file(self, path: str) -> nn.Module:
        """One state-dict file (diffusers or CompVis/LDM names), architecture from the YAML; strict."""
        sd = read_state_dict(path, hint=self.weights_hint)
        vae = self.build_model()
        sd = convert_state_dict(sd, num_levels=len(vae.config.block_out_channels))
        sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}  # LDM training-only entries
        load_strict(vae, sd, str(path), f"the SD-VAE of {self.config_path}")
        logger.info("loaded %d SD-VAE tensors from %s", len(sd), path)
        return vae

    @classmethod
    def from_model(cls, model: nn.Module, img_size: int = 256, horizon_flip: float = 0.5,
                   fp16: bool = True, device: str | torch.device | None = None) -> "SD_VAE":
        """Wrap an existing diffusers `AutoencoderKL` (already holding the weights you want)."""
        self = cls(None, img_size=img_size, horizon_flip=horizon_flip, fp16=fp16, device=device)
        self.embed_dim = int(model.config.latent_channels)
        self.model = DiffusersAutoencoder(model).to(self.device).eval()
        return self

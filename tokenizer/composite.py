"""SFD's composite tokenizer: the texture tokenizer YAML plus its `semvae:` block.

SFD's extraction YAML (configs/tokenizer/sdvae_f16d32_semvaebasech16.yaml) is an ordinary
tokenizer YAML, which gives the texture latents, with one more block naming the semantic part
(docs/reference_behaviour.md, §12.1-12.2):

    semvae:
      dino_model_name: dinov2_vitb14_reg          # (SFD also reads `model_name`)
      semvae_config: tokenizer/configs/semvae_train/ch16.yaml
      semvae_ckpt_path: outputs/semantic_vae/.../semantic_ae_final.pt
      dino_weights: /path/dinov2_vitb14_reg4_pretrain.pth   # ours, optional (SFD: torch.hub)

The semantic latent of an image is one Semantic VAE posterior sample of the encoder's final patch
tokens, computed on SFD's extraction view (`semantic_latent_view`: the ADM-cropped [-1, 1] image,
ImageNet-normalised, bicubic-resized whole to 224 px for a 256 px image). The same tokens, in fp16,
are SFD's REPA targets (`feats_dino`) when the REPA encoder is the semantic one. Tokens are laid out
on the latent grid row-major (SFD's einops 'b (h w) d -> b d h w'). Images larger than SFD's
256 px at f16 are cut into tiles of a 16 x 16 token grid each, encoded separately and put back in
place, which is SFD's 512 px rule (2 x 2 tiles of 256 px); a grid of at most 16 is one tile.

Besides SFD's DINOv2-with-registers encoders, `dino_model_name: toy_classifier` names the demo's
download-free semantic encoder (`ToyFeatureEncoder`: the toy classifier's feature map on the
latent grid, its checkpoint as `dino_weights`), which tools/sfd_study.py uses.

Paths: SFD's YAML names files in SFD's layout (`tokenizer/configs/...`); a path that does not
exist as given is looked up at this repository's place for the same file (`configs/tokenizer/...`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from tokenizer.foundation import FOUNDATION_MODELS, FoundationModel, semantic_latent_view
from tokenizer.semvae import SemanticVAE, load_semantic_vae
from utils.safe_yaml import load_yaml

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SFD_CONFIG_DIR, OUR_CONFIG_DIR = "tokenizer/configs/", "configs/tokenizer/"
TILE_GRID = 16          # tokens per side that SFD's encoder sees at once (224 px at patch 14)
TOY_ENCODER = "toy_classifier"
SEMANTIC_ENCODERS = tuple(k for k in FOUNDATION_MODELS if k.startswith("dinov2_") and k.endswith("_reg")) \
    + (TOY_ENCODER,)


class ToyFeatureEncoder(nn.Module):
    """The demo's semantic encoder: a toy classifier (evaluation/toy_classifier.py) trained on the
    same images, read after its second stride-2 stage (stride 4: the demo tokenizer's f4 grid).

    Input: the ADM-cropped [-1, 1] image itself (the classifier's own input); tokens: the stage's
    channels at each grid position, row-major. Frozen, eval mode (its BatchNorm uses running stats).
    """

    STAGES = 2

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.stem = classifier.features[: 3 * self.STAGES]      # (conv, BatchNorm, ReLU) per stage
        self.feature_dim = int(self.stem[-3].out_channels)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "ToyFeatureEncoder":
        return super().train(False)

    @torch.no_grad()
    def grid_tokens(self, images: torch.Tensor, grid: int) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, grid * grid, D); the map's grid must be the latent grid."""
        x = self.stem(images)
        if x.shape[-2:] != (grid, grid):
            raise ValueError(f"{TOY_ENCODER}: a {images.shape[-2]}x{images.shape[-1]} image gives a "
                             f"{x.shape[-2]}x{x.shape[-1]} feature map (stride {2 ** self.STAGES}), the latent "
                             f"grid is {grid}x{grid}")
        return x.flatten(2).transpose(1, 2)


@dataclass(frozen=True)
class SemVAEBlock:
    """The `semvae:` block of a tokenizer YAML, paths resolved (`resolve_path`)."""
    dino_model_name: str
    semvae_ckpt_path: str
    semvae_config: Optional[str] = None   # None: the architecture stored in the checkpoint
    dino_weights: Optional[str] = None    # ours: a local weights file (None: pass one on the command line)


_ALIASES = {"model_name": "dino_model_name"}   # SFD's backward-compatible key
_KEYS = tuple(f.name for f in fields(SemVAEBlock))


def resolve_path(path: str, where: str) -> str:
    """`path` as given (relative to the working directory), else, for SFD's
    `tokenizer/configs/...`, this repository's `configs/tokenizer/...`; FileNotFoundError naming
    `where` (file and key) when neither exists."""
    candidates = [Path(path)]
    if path.startswith(SFD_CONFIG_DIR):
        ours = OUR_CONFIG_DIR + path[len(SFD_CONFIG_DIR):]
        candidates += [Path(ours), REPO_ROOT / ours]
    for candidate in candidates:
        if candidate.is_file():
            if candidate != candidates[0]:
                logger.info("%s: %s is at %s in this repository", where, path, candidate)
            return str(candidate)
    raise FileNotFoundError(f"{where}: file not found: {path}")


def read_semvae_block(config_path: str | os.PathLike) -> Optional[SemVAEBlock]:
    """The `semvae:` block of the tokenizer YAML `config_path` (None when it has none); one-line
    ValueError / FileNotFoundError naming the file and the key on a bad block."""
    source = os.fspath(config_path)
    block = load_yaml(source).get("semvae", None)
    if block is None:
        return None
    if not OmegaConf.is_dict(block):
        raise ValueError(f"{source}: 'semvae' must be a mapping with {', '.join(_KEYS)}")
    values: dict = {}
    for key, value in OmegaConf.to_container(block, resolve=True).items():
        name = _ALIASES.get(key, key)
        if name not in _KEYS:
            raise ValueError(f"{source}: unknown key 'semvae.{key}' (expected {', '.join(_KEYS)})")
        if name in values:
            raise ValueError(f"{source}: 'semvae.{key}' repeats semvae.{name}")
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{source}: 'semvae.{key}' must be a string, got {value!r}")
        values[name] = value
    for key in ("dino_model_name", "semvae_ckpt_path"):
        if not values.get(key):
            raise ValueError(f"{source}: 'semvae.{key}' is not set")
    if values["dino_model_name"] not in SEMANTIC_ENCODERS:
        raise ValueError(f"{source}: bad value for 'semvae.dino_model_name': {values['dino_model_name']!r} "
                         f"(expected one of {SEMANTIC_ENCODERS})")
    for key in ("semvae_ckpt_path", "semvae_config", "dino_weights"):
        if values.get(key):
            values[key] = resolve_path(values[key], f"{source}: semvae.{key}")
    return SemVAEBlock(**values)


def load_encoder(name: str, weights: Optional[str], device: torch.device | str, *, random_init: bool = False,
                 model_kwargs: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """A frozen semantic / REPA encoder, eval mode, on `device`: SFD's DINOv2-with-registers
    (`dinov2_vit*14_reg`, timm weights file) or the demo's `toy_classifier` (its checkpoint)."""
    if name not in SEMANTIC_ENCODERS:
        raise ValueError(f"unknown semantic / REPA encoder {name!r} (expected one of {SEMANTIC_ENCODERS})")
    if name == TOY_ENCODER:
        from evaluation.toy_classifier import ToyClassifier, load_classifier

        if weights:
            return ToyFeatureEncoder(load_classifier(weights)).to(device)
        if not random_init:
            raise FileNotFoundError(f"{TOY_ENCODER}: no weights (the checkpoint of `python -m "
                                    "evaluation.toy_classifier train`)")
        return ToyFeatureEncoder(ToyClassifier(**dict(model_kwargs or {}))).to(device)
    return FoundationModel(name, weights=weights, model_kwargs=model_kwargs,
                           random_init=random_init and not weights).to(device)


def encoder_tokens(encoder: nn.Module, images: torch.Tensor, grid: int) -> torch.Tensor:
    """An encoder's tokens on the latent grid, (B * tiles^2, L, D) (`tokens_to_grid` lays them out)."""
    if isinstance(encoder, ToyFeatureEncoder):
        return encoder.grid_tokens(images, grid)
    return grid_tokens(encoder, images, grid)


def load_block_semvae(block: SemVAEBlock, feature_dim: int, device: torch.device | str) -> SemanticVAE:
    """The block's Semantic VAE, checked against the encoder's token width."""
    semvae = load_semantic_vae(block.semvae_ckpt_path, block.semvae_config)
    if semvae.input_dim != feature_dim:
        raise ValueError(f"{block.semvae_ckpt_path}: the Semantic VAE reads {semvae.input_dim}-wide tokens, "
                         f"{block.dino_model_name} gives {feature_dim}")
    if not semvae.variational:
        logger.info("%s: a plain (non-variational) autoencoder: its code is stored", block.semvae_ckpt_path)
    return semvae.to(device)


# ------------------------------------------------------------------------------------------------
# Tokens on the latent grid
# ------------------------------------------------------------------------------------------------

def tiles_per_side(grid: int) -> int:
    """How many tiles per side SFD's rule cuts a latent grid of `grid` x `grid` into."""
    tiles = max(1, grid // TILE_GRID)
    if grid % tiles:
        raise ValueError(f"a {grid} x {grid} latent grid does not split into {tiles} x {tiles} tiles")
    return tiles


def grid_tokens(encoder: FoundationModel, images: torch.Tensor, grid: int) -> torch.Tensor:
    """ADM-cropped images (B, 3, H, W) in [-1, 1] -> the encoder's final patch tokens on the latent
    grid, (B * tiles^2, L, D) in tile order (`tokens_to_grid` puts them in place): each tile
    through `semantic_latent_view` at (grid / tiles) x patch pixels."""
    tiles = tiles_per_side(grid)
    b, c, h, w = images.shape
    if tiles > 1:   # 'b c (p1 h) (p2 w) -> (b p1 p2) c h w'
        images = images.reshape(b, c, tiles, h // tiles, tiles, w // tiles).permute(0, 2, 4, 1, 3, 5)
        images = images.reshape(b * tiles * tiles, c, h // tiles, w // tiles)
    view = semantic_latent_view(images, size=(grid // tiles) * encoder.patch_size)
    return encoder.tokens(view)[1]


def tokens_to_grid(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """(B * tiles^2, L, D) tile tokens -> (B, D, grid, grid): 'b (h w) d -> b d h w' per tile, then
    '(b p1 p2) d h w -> b d (p1 h) (p2 w)'."""
    tiles = tiles_per_side(grid)
    n, _, d = tokens.shape
    g = grid // tiles
    x = tokens.transpose(1, 2).reshape(n // tiles ** 2, tiles, tiles, d, g, g)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(n // tiles ** 2, d, grid, grid)


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `tokens_to_grid`: (B, D, grid, grid) -> (B * tiles^2, L, D)."""
    b, d, grid, _ = x.shape
    tiles = tiles_per_side(grid)
    g = grid // tiles
    x = x.reshape(b, d, tiles, g, tiles, g).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b * tiles * tiles, g * g, d)


def semantic_latents(semvae: SemanticVAE, tokens: torch.Tensor, grid: int,
                     noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Semantic VAE latents (B, b, grid, grid) of tile tokens (B * tiles^2, L, D): a posterior
    sample with `noise` (B, b, grid, grid) on the same grid, or the posterior mode when None."""
    if noise is None:
        z = semvae.mode(tokens)
    else:
        z = semvae.encode(tokens, noise=grid_to_tokens(noise.to(tokens)))[0]
    return tokens_to_grid(z, grid)

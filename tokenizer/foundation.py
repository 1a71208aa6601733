"""Frozen vision foundation models whose patch features VA-VAE aligns its latent to.

Follows REFERENCE.md §6.5 (hustvl/LightningDiT `vavae/ldm/models/foundation_models.py`), built
through timm:
- `dinov2`: ViT-L/14 `vit_large_patch14_dinov2.lvd142m`; the image is resized (bilinear,
  align_corners=False) so the patch grid equals the latent grid: 256 px -> 224 px -> 16 x 16.
- `mae`: ViT-L/16 `vit_large_patch16_224.mae`; a 256 px image goes in unresized (16 x 16 patches,
  positions interpolated by `dynamic_img_size`).
The last layer's tokens after the final LayerNorm (`forward_features`) are taken, the class token
is dropped, and the rest reshaped to (B, 1024, H/16, W/16). The reference hard-codes the 224 resize
and reshapes with the original H/16, W/16, so only 256 px is consistent there; here the grid is
(H/16, W/16) by default (identical at 256 px) or the latent's grid when given.

Input convention (faithful quirk, REFERENCE.md §6.5 / issue #78): the model receives the VAE's
[-1, 1] tensor without ImageNet normalisation. `normalize_input=True` applies the ImageNet
mean / std to [0, 1] images instead.

Weights: never downloaded. A local file (timm layout, e.g. the hub's `model.safetensors`, or the
original DINOv2 / MAE release) is loaded strictly after timm's own key mapping.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FoundationSpec:
    arch: str            # timm architecture, built with pretrained=False
    hub_id: str          # where users get the weights
    original: str        # the original release, also accepted
    resize_to_grid: bool  # resize the input so the patch grid equals the target grid


FOUNDATION_MODELS = {
    "dinov2": FoundationSpec(
        "vit_large_patch14_dinov2", "timm/vit_large_patch14_dinov2.lvd142m",
        "dinov2_vitl14_pretrain.pth from github.com/facebookresearch/dinov2", True),
    "mae": FoundationSpec(
        "vit_large_patch16_224", "timm/vit_large_patch16_224.mae",
        "mae_pretrain_vit_large.pth from github.com/facebookresearch/mae", False),
}


def weights_hint(name: str) -> str:
    spec = FOUNDATION_MODELS[name]
    return (f"download model.safetensors from the Hugging Face hub repo {spec.hub_id} "
            f"(or {spec.original}) and set model.params.foundation.weights")


def _read_weights(path: str) -> Mapping[str, Any]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_foundation_weights(model: nn.Module, path: str, name: str) -> None:
    """Load a timm-layout or original DINOv2 / MAE file into the timm ViT `model`, strictly."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name} foundation-model weights not found: {path} ({weights_hint(name)})")
    sd = dict(_read_weights(path))
    sd = dict(sd.get("model", sd))            # original MAE release: {'model': {...}}
    # Extra pieces of some releases that the encoder does not have (MAE decoder, DINOv2 mask
    # token is handled by timm's filter); each dropped key is logged.
    for key in [k for k in sd if k.startswith(("decoder", "mask_token")) and name == "mae"]:
        logger.info("%s: skipping '%s' (not part of the ViT encoder)", path, key)
        del sd[key]
    sd = checkpoint_filter_fn(sd, model)     # DINOv2 mask_token, pos-embed resampling, 'model' key
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path} does not match {FOUNDATION_MODELS[name].arch}: missing keys "
                         f"{missing[:8]}, unexpected keys {unexpected[:8]}")
    bad = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
           if sd[k].shape != v.shape]
    if bad:
        raise ValueError(f"{path}: shape mismatch {bad[:8]}")
    model.load_state_dict(sd, strict=True)
    logger.info("loaded %s weights (%d tensors) from %s", name, len(sd), path)


class FoundationModel(nn.Module):
    """Frozen ViT feature extractor: images (B, 3, H, W) in [-1, 1] -> (B, D, gh, gw) patch features.

    `name`: 'dinov2' or 'mae'. `weights`: local file; None needs `random_init=True` (tests and
    demos only: random features). `model_kwargs` override timm's architecture arguments (tests
    build tiny ViTs of the same family through this path, e.g. embed_dim=32, depth=2, num_heads=2).
    The timm model is the submodule `model`, so checkpoint keys read `foundation_model.model.*`.
    """

    def __init__(self, name: str, weights: Optional[str] = None, normalize_input: bool = False,
                 model_kwargs: Optional[Mapping[str, Any]] = None, random_init: bool = False):
        super().__init__()
        import timm

        if name not in FOUNDATION_MODELS:
            raise ValueError(f"unknown foundation model '{name}' (expected one of {sorted(FOUNDATION_MODELS)})")
        self.name, self.spec = name, FOUNDATION_MODELS[name]
        self.normalize_input = normalize_input
        kwargs = dict(num_classes=0, dynamic_img_size=True)
        kwargs.update(model_kwargs or {})
        self.model = timm.create_model(self.spec.arch, pretrained=False, **kwargs)
        if weights:
            load_foundation_weights(self.model, os.fspath(weights), name)
        elif random_init:
            logger.warning("foundation model %s: random weights (random_init=True); features are "
                           "meaningless (tests and demos only)", name)
        else:
            raise FileNotFoundError(f"{name} foundation-model weights not given ({weights_hint(name)})")
        self.feature_dim = int(self.model.embed_dim)
        self.patch_size = int(self.model.patch_embed.patch_size[0])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FoundationModel":
        """Always eval: the model is frozen (it has no dropout, so this changes no number)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """x: (B, 3, H, W) in [-1, 1]; grid: output (gh, gw), default (H // 16, W // 16).

        Returns (B, D, gh, gw): last-layer patch tokens (class token dropped).
        """
        B, _, H, W = x.shape
        gh, gw = grid if grid is not None else (H // 16, W // 16)
        if self.normalize_input:
            x = ((x + 1.0) / 2.0 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if self.spec.resize_to_grid:
            size = (gh * self.patch_size, gw * self.patch_size)
            if (H, W) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        elif (H // self.patch_size, W // self.patch_size) != (gh, gw):
            raise ValueError(f"{self.name}: a {H}x{W} input gives a "
                             f"{H // self.patch_size}x{W // self.patch_size} patch grid, expected {gh}x{gw}")
        tokens = self.model.forward_features(x)[:, self.model.num_prefix_tokens:]  # (B, gh*gw, D)
        return tokens.transpose(1, 2).reshape(B, -1, gh, gw)

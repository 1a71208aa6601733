"""Frozen vision foundation models whose patch features VA-VAE aligns its latent to.

Follows docs/reference_behaviour.md §6.5 (hustvl/LightningDiT `vavae/ldm/models/foundation_models.py`), built
through timm:
- `dinov2`: ViT-L/14 `vit_large_patch14_dinov2.lvd142m`; the image is resized (bilinear,
  align_corners=False) so the patch grid equals the latent grid: 256 px -> 224 px -> 16 x 16.
- `mae`: ViT-L/16 `vit_large_patch16_224.mae`; a 256 px image goes in unresized (16 x 16 patches,
  positions interpolated by `dynamic_img_size`).
The last layer's tokens after the final LayerNorm (`forward_features`) are taken, the class token
is dropped, and the rest reshaped to (B, 1024, H/16, W/16). The reference hard-codes the 224 resize
and reshapes with the original H/16, W/16, so only 256 px is consistent there; here the grid is
(H/16, W/16) by default (identical at 256 px) or the latent's grid when given.

The paper's Table 4 also aligns to SAM and CLIP, whose code the authors did not release; the
author's description (patch tokens aligned spatially; CLIP's 512-d projected features, issue #70)
gives these two [inferred choices]:
- `clip`: OpenAI CLIP ViT-B/16 image tower (`vit_base_patch16_clip_quickgelu_224.openai`, the
  only OpenAI CLIP whose projection is 512-d); resized like DINOv2 so its 16-px patch grid equals
  the latent grid (256 px in, unresized, at f16); patch tokens after `ln_post` go through the
  image projection (768 -> 512), as the class token does in CLIP.
- `sam`: SAM ViT-L image encoder (`samvit_large_patch16.sa1b`); the image is resized to SAM's own
  1024 px input (its absolute and relative position tables are trained at that size) and the
  neck's (256, 64, 64) image embedding is area-averaged to the latent grid (64 -> 16: 4 x 4 means).

SFD's semantic encoders (`dinov2_vit{s,b,l,g}14_reg`, docs/reference_behaviour.md, §12.1.1):
DINOv2 with 4 registers (`vit_*_patch14_reg4_dinov2`). SFD reads the final normalised patch tokens
(class and register tokens dropped: 256 x 768 for a 224 px input to the B/14) through `tokens`,
after one of its two views: `semvae_training_view` (raw image: resize 256 bicubic, crop 224; the
Semantic VAE's training features) or `semantic_latent_view` ([-1, 1] 256 px image: ImageNet
normalisation, bicubic resize of the whole image to 224; the diffusion latents). The official
`dinov2_vitb14_reg4_pretrain.pth` loads through timm's DINOv2 key mapping (registers -> `reg_token`,
the class position folded into `cls_token`), and so does timm's `model.safetensors`.

Input convention (faithful quirk, docs/reference_behaviour.md §6.5 / issue #78): the model receives the VAE's
[-1, 1] tensor without normalisation. `normalize_input=True` maps to [0, 1] and applies the
model's own mean / std (ImageNet for DINOv2, MAE and SAM; CLIP's for CLIP).

Weights: never downloaded. A local file (timm layout, e.g. the hub's `model.safetensors`, or the
original DINOv2 / MAE / SAM / open_clip release) is loaded strictly after timm's own key mapping.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.safe_load import load_weights_file
from utils.state_dict import load_strict

logger = logging.getLogger(__name__)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# How the image reaches the model and the features reach the latent grid (gh, gw):
GRID = "grid"        # resize to (gh, gw) x patch, so the patch grid is the latent grid (DINOv2, CLIP)
AS_IS = "as_is"      # no resize; the patch grid must already be the latent grid (MAE)
NATIVE = "native"    # resize to the model's own input size, area-average its grid to (gh, gw) (SAM)


@dataclass(frozen=True)
class FoundationSpec:
    arch: str            # timm architecture, built with pretrained=False
    hub_id: str          # where users get the weights
    original: str        # the original release, also accepted
    input_mode: str      # GRID | AS_IS | NATIVE
    mean: Tuple[float, float, float] = IMAGENET_MEAN   # used with normalize_input=True
    std: Tuple[float, float, float] = IMAGENET_STD
    project_tokens: bool = False   # apply the model's head (CLIP's image projection) to patch tokens
    timm_kwargs: Tuple[Tuple[str, Any], ...] = ()      # fixed architecture arguments


FOUNDATION_MODELS = {
    "dinov2": FoundationSpec(
        "vit_large_patch14_dinov2", "timm/vit_large_patch14_dinov2.lvd142m",
        "dinov2_vitl14_pretrain.pth from github.com/facebookresearch/dinov2", GRID),
    "mae": FoundationSpec(
        "vit_large_patch16_224", "timm/vit_large_patch16_224.mae",
        "mae_pretrain_vit_large.pth from github.com/facebookresearch/mae", AS_IS),
    "clip": FoundationSpec(
        "vit_base_patch16_clip_quickgelu_224", "timm/vit_base_patch16_clip_224.openai",
        "open_clip_pytorch_model.bin from the same hub repo", GRID, CLIP_MEAN, CLIP_STD,
        project_tokens=True, timm_kwargs=(("num_classes", 512),)),
    "sam": FoundationSpec(
        "samvit_large_patch16", "timm/samvit_large_patch16.sa1b",
        "sam_vit_l_0b3195.pth from github.com/facebookresearch/segment-anything", NATIVE),
    # SFD's semantic encoders (torch.hub `dinov2_vit*14_reg`, named as SFD names them): DINOv2 with
    # 4 register tokens; the B/14 one feeds the Semantic VAE and REPA. See `tokens` and the views.
    "dinov2_vits14_reg": FoundationSpec(
        "vit_small_patch14_reg4_dinov2", "timm/vit_small_patch14_reg4_dinov2.lvd142m",
        "dinov2_vits14_reg4_pretrain.pth from github.com/facebookresearch/dinov2", GRID),
    "dinov2_vitb14_reg": FoundationSpec(
        "vit_base_patch14_reg4_dinov2", "timm/vit_base_patch14_reg4_dinov2.lvd142m",
        "dinov2_vitb14_reg4_pretrain.pth from github.com/facebookresearch/dinov2", GRID),
    "dinov2_vitl14_reg": FoundationSpec(
        "vit_large_patch14_reg4_dinov2", "timm/vit_large_patch14_reg4_dinov2.lvd142m",
        "dinov2_vitl14_reg4_pretrain.pth from github.com/facebookresearch/dinov2", GRID),
    "dinov2_vitg14_reg": FoundationSpec(
        "vit_giant_patch14_reg4_dinov2", "timm/vit_giant_patch14_reg4_dinov2.lvd142m",
        "dinov2_vitg14_reg4_pretrain.pth from github.com/facebookresearch/dinov2", GRID),
}


# `model_kwargs` a config may pass to timm.create_model: the architecture sizes that tests and tiny
# demos shrink, each with an upper bound. Anything else (`checkpoint_path`, `pretrained_cfg`,
# `pretrained_cfg_overlay`, ...) could make timm read or download files, so it is refused.
MODEL_KWARGS_BOUNDS = {"img_size": 8192, "patch_size": 1024, "embed_dim": 1 << 15, "depth": 1024,
                       "num_heads": 1024, "mlp_ratio": 64, "window_size": 8192, "neck_chans": 1 << 15,
                       "global_attn_indexes": 1024}


def check_model_kwargs(model_kwargs: Mapping[str, Any]) -> None:
    """ValueError unless every entry is a known architecture size within its bound (a positive
    number, or for `global_attn_indexes` a list of block indices)."""
    for key, value in model_kwargs.items():
        if value is None or not str(key).isidentifier():   # timm drops None-valued kwargs silently
            raise ValueError(f"foundation model_kwargs: bad entry {key!r}: {value!r} (a YAML / "
                             "override mapping needs a space after each colon: {embed_dim: 32})")
        if key not in MODEL_KWARGS_BOUNDS:
            raise ValueError(f"foundation model_kwargs: unknown key {key!r} (allowed: "
                             f"{', '.join(sorted(MODEL_KWARGS_BOUNDS))})")
        high = MODEL_KWARGS_BOUNDS[key]
        values = list(value) if isinstance(value, (list, tuple)) and key == "global_attn_indexes" else [value]
        lowest = 0 if key == "global_attn_indexes" else 1
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and lowest <= v <= high
                   for v in values) or len(values) > high:
            raise ValueError(f"foundation model_kwargs: bad value for {key!r}: {value!r} "
                             f"(expected {'block indices' if lowest == 0 else 'a number'} in [{lowest}, {high}])")


def weights_hint(name: str) -> str:
    spec = FOUNDATION_MODELS[name]
    return (f"download model.safetensors from the Hugging Face hub repo {spec.hub_id} "
            f"(or {spec.original}) and set model.params.foundation.weights")


def _read_weights(path: str) -> Mapping[str, Any]:
    return load_weights_file(path, "foundation-model weights file")


def _checkpoint_filter(name: str) -> Callable:
    """timm's key mapping for this family (original releases -> timm layout)."""
    if name == "sam":
        from timm.models.vision_transformer_sam import checkpoint_filter_fn
    else:  # DINOv2 mask_token, MAE 'model' key, open_clip / OpenAI 'visual.*', pos-embed resampling
        from timm.models.vision_transformer import checkpoint_filter_fn
    return checkpoint_filter_fn


def load_foundation_weights(model: nn.Module, path: str, name: str) -> None:
    """Load a timm-layout or original release file into the timm ViT `model`, strictly."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name} foundation-model weights not found: {path} ({weights_hint(name)})")
    sd = dict(_read_weights(path))
    sd = dict(sd.get("model", sd))            # original MAE release: {'model': {...}}
    # Extra pieces of some releases that the encoder does not have (MAE decoder, DINOv2 mask
    # token is handled by timm's filter); each dropped key is logged.
    for key in [k for k in sd if k.startswith(("decoder", "mask_token")) and name == "mae"]:
        logger.info("%s: skipping '%s' (not part of the ViT encoder)", path, key)
        del sd[key]
    sd = _checkpoint_filter(name)(sd, model)
    load_strict(model, sd, str(path), FOUNDATION_MODELS[name].arch)
    logger.info("loaded %s weights (%d tensors) from %s", name, len(sd), path)


class FoundationModel(nn.Module):
    """Frozen ViT feature extractor: images (B, 3, H, W) in [-1, 1] -> (B, D, gh, gw) patch features.

    `name`: one of FOUNDATION_MODELS. `weights`: local file; None needs `random_init=True` (tests
    and demos only: random features). `model_kwargs` override timm's architecture arguments (tests
    build tiny ViTs of the same family through this path, e.g. embed_dim=32, depth=2, num_heads=2).
    The timm model is the submodule `model`, so checkpoint keys read `foundation_model.model.*`.
    `feature_dim` is D: the token width (DINOv2, MAE), CLIP's projection width, SAM's neck width.
    """

    def __init__(self, name: str, weights: Optional[str] = None, normalize_input: bool = False,
                 model_kwargs: Optional[Mapping[str, Any]] = None, random_init: bool = False):
        super().__init__()
        import timm

        if name not in FOUNDATION_MODELS:
            raise ValueError(f"unknown foundation model '{name}' (expected one of {sorted(FOUNDATION_MODELS)})")
        self.name, self.spec = name, FOUNDATION_MODELS[name]
        self.normalize_input = normalize_input
        kwargs: dict = dict(num_classes=0)
        if self.spec.input_mode != NATIVE:   # plain ViTs: positions follow the input size
            kwargs["dynamic_img_size"] = True
        kwargs.update(dict(self.spec.timm_kwargs))
        check_model_kwargs(model_kwargs or {})
        kwargs.update(model_kwargs or {})
        self.model = timm.create_model(self.spec.arch, pretrained=False, **kwargs)
        if weights:
            load_foundation_weights(self.model, os.fspath(weights), name)
        elif random_init:
            logger.warning("foundation model %s: random weights (random_init=True); features are "
                           "meaningless (tests and demos only)", name)
        else:
            raise FileNotFoundError(f"{name} foundation-model weights not given ({weights_hint(name)})")
        self.patch_size = int(self.model.patch_embed.patch_size[0])
        self.native_size = tuple(int(s) for s in self.model.patch_embed.img_size)
        if self.spec.project_tokens:
            self.feature_dim = int(self.model.head.out_features)
        else:
            self.feature_dim = int(self.model.num_features)
        self.register_buffer("mean", torch.tensor(self.spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.spec.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FoundationModel":
        """Always eval: the model is frozen (it has no dropout, so this changes no number)."""
        return super().train(False)

    def _input(self, x: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        """Resize the image as this family needs (see the module docstring)."""
        H, W = x.shape[-2:]
        mode = self.spec.input_mode
        if mode == AS_IS:
            if (H // self.patch_size, W // self.patch_size) != (gh, gw):
                raise ValueError(f"{self.name}: a {H}x{W} input gives a {H // self.patch_size}x"
                                 f"{W // self.patch_size} patch grid, expected {gh}x{gw}")
            return x
        size = (gh * self.patch_size, gw * self.patch_size) if mode == GRID else self.native_size
        if (H, W) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x

    @torch.no_grad()
    def tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W), already in the model's input space (one of the views below) ->
        (class token (B, D), patch tokens (B, H/p * W/p, D)), both after the final LayerNorm
        (DINOv2's `x_norm_clstoken`, `x_norm_patchtokens`: register tokens dropped). Plain ViTs only."""
        if self.spec.input_mode == NATIVE or self.spec.project_tokens:
            raise ValueError(f"{self.name}: tokens() is for the plain ViT families (DINOv2, MAE)")
        out = self.model.forward_features(x)           # (B, prefix + L, D)
        return out[:, 0], out[:, self.model.num_prefix_tokens:]

    @torch.no_grad()
    def forward(self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """x: (B, 3, H, W) in [-1, 1]; grid: output (gh, gw), default (H // 16, W // 16).

        Returns (B, D, gh, gw): last-layer patch features (class token dropped).
        """
        B, _, H, W = x.shape
        gh, gw = grid if grid is not None else (H // 16, W // 16)
        if self.normalize_input:
            x = ((x + 1.0) / 2.0 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        x = self._input(x, gh, gw)
        if self.spec.input_mode == NATIVE:   # SAM: the neck gives (B, D, h, w) directly
            feats = self.model.forward_features(x)
            return F.adaptive_avg_pool2d(feats, (gh, gw)) if feats.shape[-2:] != (gh, gw) else feats
        tokens = self.model.forward_features(x)[:, self.model.num_prefix_tokens:]  # (B, gh*gw, D)
        if self.spec.project_tokens:
            tokens = self.model.head(tokens)
        return tokens.transpose(1, 2).reshape(B, -1, gh, gw)


# ------------------------------------------------------------------------------------------------
# SFD's two input views of the semantic encoder (docs/reference_behaviour.md, §12.1.1)
# ------------------------------------------------------------------------------------------------

def semvae_training_view(resize: int = 256, crop: int = 224) -> Callable:
    """PIL image -> (3, crop, crop) ImageNet-normalised tensor: the view of the Semantic VAE's
    pre-extracted training features (SFD `extract_dinov2_feature.py`): bicubic resize of the short
    side to 256, center crop 224, ToTensor, ImageNet mean / std."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(crop),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def semantic_latent_view(x: torch.Tensor, size: int = 224) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] (the texture VAE's ADM-cropped input) -> (B, 3, size, size): the
    view SFD's latent extraction feeds the semantic encoder: (x + 1) / 2, ImageNet mean / std,
    then a bicubic resize of the whole image (no crop; align_corners=False, no antialias)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = ((x + 1) / 2 - mean) / std
    return F.interpolate(x, size=(size, size), mode="bicubic")

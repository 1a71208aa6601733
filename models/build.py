"""LightningDiT from the config: the registry entry named by `model.model_type`, the latent grid
implied by `data.image_size` and `vae.downsample_ratio`, optional size overrides for tiny models,
SFD's parts when its keys ask for them.

Used by training, sampling and the benchmarks so that every script builds the same network from
the same keys (the reference copied the constructor call into each script with different kwargs).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.kernels import select_kernels
from models.lightningdit import LightningDiT, LightningDiT_sizes

SIZE_KEYS = ("hidden_size", "depth", "num_heads", "patch_size")


def latent_size(cfg) -> int:
    """Latent side = data.image_size // vae.downsample_ratio (must divide)."""
    size, ratio = cfg.data.image_size, cfg.vae.downsample_ratio
    if size % ratio:
        raise ValueError(f"data.image_size {size} is not divisible by vae.downsample_ratio {ratio}")
    return size // ratio


def should_compile(cfg, device) -> bool:
    """`model.compile`: true / false as given; "auto" (the default) compiles on CUDA, as the
    reference does on every run, and stays eager on CPU (little gain there, ~20 s of compilation
    per process)."""
    setting = cfg.model.compile
    if setting == "auto":
        return torch.device(device).type == "cuda"
    if setting in (True, False):
        return bool(setting)
    raise ValueError(f"bad value for 'model.compile': {setting!r} (expected true, false or auto)")


def build_model(cfg, training: bool = True) -> nn.Module:
    """LightningDiT from `cfg.model` (registry `model_type`, optional size overrides), with the
    kernels of the CPU it is built on (models/kernels.py; call `select_kernels` again after
    moving or compiling it).

    As the reference: in_channels = model.in_chans, input_size = latent_size(cfg). Gradient
    checkpointing (`model.use_checkpoint`) only when training. `model.hidden_size/depth/
    num_heads/patch_size`, when set, replace the registry entry's values (tiny CPU models).
    SFD's keys: model.semantic_chans, semfirst_delta_t, use_repa, repa_dino_version,
    repa_feat_depth (the constructor's repa_depth) and repa_projector_dim; a bad combination is a
    ValueError naming them.
    """
    m = cfg.model
    if m.model_type not in LightningDiT_sizes:
        raise ValueError(f"unknown model.model_type {m.model_type!r}; expected one of "
                         f"{sorted(LightningDiT_sizes)}")
    sizes = dict(LightningDiT_sizes[m.model_type])
    sizes.update({k: getattr(m, k) for k in SIZE_KEYS if getattr(m, k) is not None})
    model = LightningDiT(
        input_size=latent_size(cfg), in_channels=m.in_chans, num_classes=cfg.data.num_classes,
        class_dropout_prob=m.class_dropout_prob, learn_sigma=m.learn_sigma, use_qknorm=m.use_qknorm,
        use_swiglu=m.use_swiglu, use_rope=m.use_rope, use_rmsnorm=m.use_rmsnorm, wo_shift=m.wo_shift,
        use_checkpoint=bool(m.use_checkpoint and training), semantic_chans=m.semantic_chans,
        semfirst_delta_t=m.semfirst_delta_t, use_repa=m.use_repa, repa_dino_version=m.repa_dino_version,
        repa_depth=m.repa_feat_depth, repa_projector_dim=m.repa_projector_dim, **sizes)
    return select_kernels(model)

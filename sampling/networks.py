"""The networks a sampling run uses: the LightningDiT of `ckpt_path`, and with AutoGuidance the
guide network of `sample.autoguidance_config`.

The guide's YAML is a LightningDiT config like any other (SFD's `configs/sfd/autoguidance_b/
inference.yaml`): its `model` section builds the network and its `ckpt_path` holds the weights
(strict load, EMA preferred, as the main network); `sample.autoguidance_ckpt_iter` K picks the
checkpoint of iteration K thousand beside it (SFD's --autoguidance_ckpt_iter). The guide is built
on the main config's latent grid (`data.image_size`, `vae.downsample_ratio`, as SFD builds it), and
the main config's size overrides (`model.hidden_size`, `depth`, `num_heads`, `patch_size`: the keys
that shrink a registry model for tiny CPU runs) are applied to the guide's config too, so a tiny
run of an AutoGuidance YAML builds a tiny guide. Everything else that defines the latent space and
the labels must agree with the main config (one-line error naming the guide's YAML and the key
otherwise). SFD's YAMLs name the guide's YAML relative to SFD's repository root; the same path is
looked up from this repository's root when it is not found from the working directory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import re

import torch
from omegaconf import OmegaConf

from configs.schema import load_config
from models.build import build_model, should_compile
from models.kernels import select_kernels

SIZE_KEYS = ("model.hidden_size", "model.depth", "model.num_heads", "model.patch_size",
             "data.image_size", "vae.downsample_ratio")
SHARED_KEYS = ("model.in_chans", "model.semantic_chans", "model.semfirst_delta_t", "model.learn_sigma",
               "data.num_classes", "transport.objective", "transport.path_type", "transport.prediction")
REPO_ROOT = Path(__file__).resolve().parents[1]
# SFD's checkpoint names, {step:07d}.pt: the step that sample.autoguidance_ckpt_iter replaces.
_CKPT_STEP = re.compile(r"(?<=/)\d+(?=\.pt$)")


def load_network(cfg, device: torch.device) -> torch.nn.Module:
    """The LightningDiT of `cfg` with the weights of `cfg.ckpt_path` (strict, EMA preferred), on
    `device` in eval mode, compiled where `model.compile` says so."""
    from models.checkpoint import load_lightningdit_checkpoint

    model = build_model(cfg, training=False)
    load_lightningdit_checkpoint(cfg.ckpt_path, model, prefer_ema=True)
    model = model.to(device).eval()
    if should_compile(cfg, device):  # model.compile: auto compiles on CUDA (as the reference)
        model.compile_blocks()
    return select_kernels(model)  # CPU kernels on the CPU in eager mode, plain modules otherwise


def load_model(cfg, device: torch.device) -> torch.nn.Module:
    """The main network (`ckpt_path` was checked by sampling.inputs.check_sampling_inputs)."""
    return load_network(cfg, device)


def autoguidance_active(cfg, cfg_scale: Optional[float] = None) -> bool:
    """AutoGuidance applies when `sample.autoguidance` is on and the scale is above 1 (SFD)."""
    scale = cfg.sample.cfg_scale if cfg_scale is None else cfg_scale
    return bool(cfg.sample.autoguidance) and scale > 1.0


def guide_config_path(path: str) -> Path:
    """`sample.autoguidance_config` as a file: as given (relative to the working directory), else
    relative to this repository's root (SFD's YAMLs name `configs/sfd/autoguidance_b/...`)."""
    given = Path(path)
    if given.is_file() or given.is_absolute() or not (REPO_ROOT / given).is_file():
        return given
    return REPO_ROOT / given


def guide_ckpt_at(ckpt_path: str, iteration: int, source: str) -> str:
    """SFD's rule for --autoguidance_ckpt_iter K: the trailing `/{digits}.pt` of the guide's
    checkpoint becomes `/{K*1000:07d}.pt` (0070000.pt -> 0120000.pt for K = 120)."""
    if not _CKPT_STEP.search(ckpt_path):
        raise ValueError(f"{source}: sample.autoguidance_ckpt_iter={iteration} needs a ckpt_path ending in "
                         f"/<step>.pt, got {ckpt_path!r}")
    return _CKPT_STEP.sub(f"{iteration * 1000:07d}", ckpt_path)


def guide_config(cfg):
    """The guide network's config: `sample.autoguidance_config` with the main config's size
    overrides and latent grid applied (and `sample.autoguidance_ckpt_iter`'s checkpoint), checked
    against the main config."""
    name = cfg.sample.autoguidance_config
    if not name:
        raise ValueError("sample.autoguidance needs sample.autoguidance_config (the guide network's YAML: "
                         "its model section and ckpt_path)")
    path = guide_config_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"sample.autoguidance_config not found: {name}")
    sizes = [f"{key}={OmegaConf.select(cfg, key)}" for key in SIZE_KEYS if OmegaConf.select(cfg, key) is not None]
    guide = load_config(str(path), sizes)
    for key in SHARED_KEYS:
        mine, theirs = OmegaConf.select(cfg, key), OmegaConf.select(guide, key)
        if mine != theirs:
            raise ValueError(f"{path}: '{key}' is {theirs!r}, the sampled model's is {mine!r} (the guide must "
                             "share the latent space and labels)")
    if not guide.ckpt_path:
        raise ValueError(f"{path}: ckpt_path is not set (the guide network's checkpoint)")
    iteration = cfg.sample.autoguidance_ckpt_iter
    if iteration is not None:
        guide = load_config(str(path), sizes + [f"ckpt_path={guide_ckpt_at(guide.ckpt_path, iteration, str(path))}"])
    return guide


def load_guide(cfg, device: torch.device) -> torch.nn.Module:
    """AutoGuidance's guide network (`guide_config`), loaded as the main network is."""
    return load_network(guide_config(cfg), device)

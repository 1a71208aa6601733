"""Strict loader for released KL-autoencoder weights (VA-VAE, MAR KL-16).

Replaces the reference's `AutoencoderKL.init_from_ckpt` (docs/reference_behaviour.md §5.2, §9.2). The reference
filters with `'foundation_model.model' and 'loss' not in k` (only "loss" keys are dropped) and
loads with strict=False, so a wrong path or prefix silently leaves a random VAE. Here:
- `.pt` / `.ckpt` (a bare state dict, `{'state_dict': ...}` as in Lightning checkpoints, or
  `{state_key: ...}`, e.g. MAR's `{'model': ...}`) and `.safetensors` are read, through
  utils/safe_load.py: sizes checked before loading, `weights_only=True`, and a file whose pickle
  needs other Python objects (a full Lightning checkpoint of old pytorch-lightning versions) is
  refused unless the user lists it in $LIGHTNINGDIT_TRUSTED_PICKLES (the reference loads every
  file with weights_only=False, running whatever code it holds);
- the training-only entries of the released file (`loss.*`, `foundation_model.*`, `linear_proj.*`)
  are dropped and counted in a log line;
- any other unexpected key, any missing autoencoder key or any shape mismatch raises ValueError
  naming the keys; a missing file raises FileNotFoundError saying where the weights come from.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import torch
import torch.nn as nn

from utils.safe_load import load_weights_file
from utils.state_dict import load_strict

logger = logging.getLogger(__name__)

TRAINING_ONLY_PREFIXES = ("loss.", "foundation_model.", "linear_proj.")
VAVAE_WEIGHTS_HINT = ("download vavae-imagenet256-f16d32-dinov2.pt from the Hugging Face hub repo "
                      "hustvl/vavae-imagenet256-f16d32-dinov2 and set ckpt_path in the tokenizer YAML")
MARVAE_WEIGHTS_HINT = ("download MAR's KL-16 VAE (kl16.ckpt, Hugging Face hub repo jadechoghari/mar, "
                       "see github.com/LTH14/mar) and set ckpt_path in the tokenizer YAML")


def read_state_dict(path: str | os.PathLike, state_key: str | None = None,
                    hint: str = VAVAE_WEIGHTS_HINT) -> dict[str, torch.Tensor]:
    """Read a flat {name: tensor} dict from `path` (.safetensors, .pt, .ckpt, .pth).

    `state_key`: the entry holding the state dict (e.g. 'model' for MAR); when None, a top-level
    'state_dict' entry is used if present, else the file must itself be the state dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"autoencoder checkpoint not found: {path} ({hint})")
    obj: Any = load_weights_file(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    if state_key is not None:
        if state_key not in obj:
            raise ValueError(f"{path}: no '{state_key}' entry (top-level keys: {sorted(obj)[:10]})")
        obj = obj[state_key]
    elif "state_dict" in obj:
        obj = obj["state_dict"]
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: not a state dict, non-tensor entries {bad[:10]}")
    return dict(obj)


def load_autoencoder_weights(model: nn.Module, path: str | os.PathLike, *,
                             state_key: str | None = None, hint: str = VAVAE_WEIGHTS_HINT
                             ) -> dict[str, int]:
    """Load released weights into an `AutoencoderKL` strictly; returns {'loaded', 'ignored'} counts.

    Keys under `TRAINING_ONLY_PREFIXES` are ignored (logged with their count). Raises
    FileNotFoundError for a missing file and ValueError for missing / unexpected / mis-shaped keys.
    """
    sd = read_state_dict(path, state_key, hint)
    ignored = [k for k in sd if k.startswith(TRAINING_ONLY_PREFIXES)]
    sd = {k: v for k, v in sd.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    load_strict(model, sd, os.fspath(path), "the autoencoder")
    if ignored:
        logger.info("%s: ignored %d training-only entries (%s)", os.fspath(path), len(ignored),
                    ", ".join(sorted({k.split('.')[0] + '.*' for k in ignored})))
    logger.info("loaded %d autoencoder tensors from %s", len(sd), os.fspath(path))
    return {"loaded": len(sd), "ignored": len(ignored)}

"""Loading and saving LightningDiT weights, strictly.

Accepted files (REFERENCE.md 3.7 and 11.1):
- `.pt` training checkpoints {"model", "ema", "opt", "config"}; `model` keys may carry a
  `module.` prefix (the reference double-wraps DDP), `ema` keys are clean.
- `.pt` released inference files holding {"ema": ...} or a bare state dict.
- `.safetensors` files holding a flat state dict.

EMA weights are preferred for inference. Unlike the reference (which prints and skips), a key
that is missing, unexpected or of the wrong shape is reported by name and raises.
"""
import logging
import os
import pickle
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from tools.fileio import atomic_write

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

RELEASED_CHECKPOINTS_HINT = (
    "released LightningDiT checkpoints are linked from the LightningDiT README "
    "(Hugging Face hub: hustvl/lightningdit-xl-imagenet256-800ep or "
    "hustvl/lightningdit-xl-imagenet256-64ep); download one and pass its local path"
)

# Wrapper prefixes added by DistributedDataParallel ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Strip DDP `module.` and torch.compile `_orig_mod.` prefixes (leading, possibly nested, and
    `_orig_mod.` inside a key for per-submodule compiles); keys otherwise unchanged."""
    cleaned: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = key
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if new_key.startswith(prefix):
                    new_key = new_key[len(prefix):]
                    stripped = True
        new_key = new_key.replace("._orig_mod.", ".")
        if new_key in cleaned:
            raise ValueError(f"state dict keys {key!r} and another key both map to {new_key!r}")
        cleaned[new_key] = value
    return cleaned


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_lightningdit_state_dict(path: PathLike, prefer_ema: bool = True,
                                 weights_only: bool = True) -> Tuple[Dict[str, torch.Tensor], str]:
    """Read a checkpoint file and return (clean state dict on CPU, source), where source is
    "ema", "model" or "state_dict" (a bare dict / safetensors file).

    prefer_ema picks `ema` over `model` when both exist; a file with only one of them uses it.
    weights_only=True refuses pickled Python objects other than tensors and containers; pass
    False only for files you trust (e.g. a training checkpoint whose `config` is an object)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LightningDiT checkpoint not found: {path} ({RELEASED_CHECKPOINTS_HINT})")

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return clean_state_dict(load_file(str(path), device="cpu")), "state_dict"

    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: cannot be read with weights_only=True ({str(e).splitlines()[0]}); "
            "pass weights_only=False if you trust this file") from e

    if _is_state_dict(obj):
        return clean_state_dict(obj), "state_dict"
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    order = ("ema", "model") if prefer_ema else ("model", "ema")
    for source in order:
        if source in obj:
            if not _is_state_dict(obj[source]):
                raise ValueError(f"{path}: entry {source!r} is not a state dict of tensors")
            if source != order[0]:
                logger.info("%s: no %r entry, using %r weights", path, order[0], source)
            return clean_state_dict(obj[source]), source
    if "state_dict" in obj and _is_state_dict(obj["state_dict"]):
        return clean_state_dict(obj["state_dict"]), "state_dict"
    raise ValueError(f"{path}: no 'ema', 'model' or 'state_dict' entry and not a bare state dict "
                     f"(top-level keys: {sorted(map(str, obj))})")


def check_state_dict_compatible(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                                name: str = "state dict") -> None:
    """Raise ValueError naming every missing, unexpected or wrongly shaped key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched}")
    if problems:
        raise ValueError(f"{name} does not match the model: " + "; ".join(problems))


def load_lightningdit_checkpoint(path: PathLike, model: Optional[nn.Module] = None, prefer_ema: bool = True,
                                 weights_only: bool = True) -> Union[nn.Module, Dict[str, torch.Tensor]]:
    """Load LightningDiT weights from `path` (.pt or .safetensors), strictly.

    With `model`, its weights are replaced in place (strict: any missing / unexpected /
    mis-shaped key raises ValueError naming it) and the model is returned. Without `model`, the
    clean state dict (prefixes stripped, EMA preferred) is returned for the caller to use."""
    state_dict, source = read_lightningdit_state_dict(path, prefer_ema=prefer_ema, weights_only=weights_only)
    if model is None:
        return state_dict
    check_state_dict_compatible(model, state_dict, name=f"{path} [{source}]")
    model.load_state_dict(state_dict, strict=True)
    logger.info("loaded %s weights from %s (%d tensors)", source, path, len(state_dict))
    return model


def save_lightningdit_safetensors(model_or_state_dict: Union[nn.Module, Mapping[str, torch.Tensor]],
                                  path: PathLike) -> None:
    """Write a clean state dict as .safetensors, atomically (tools/fileio.py)."""
    from safetensors.torch import save_file
    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    sd = {k: v.detach().cpu().contiguous() for k, v in clean_state_dict(sd).items()}
    atomic_write(path, lambda tmp: save_file(sd, tmp))

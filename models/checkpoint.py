"""Loading and saving LightningDiT weights, strictly.

Accepted files (docs/reference_behaviour.md §3.7 and 11.1):
- `.pt` training checkpoints {"model", "ema", "opt", "config"} (LightningDiT's and SFD's; `config`
  may be an OmegaConf object); `model` keys may carry a `module.` prefix (the reference
  double-wraps DDP), `ema` keys are clean.
- `.pt` released inference files holding {"ema": ...} or a bare state dict.
- `.safetensors` files holding a flat state dict.

EMA weights are preferred for inference. Unlike the reference (which prints and skips), a key
that is missing, unexpected or of the wrong shape is reported by name and raises.
"""
import logging
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from utils.safe_load import load_weights_file
from utils.state_dict import load_strict

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


def omegaconf_globals() -> list:
    """The classes of a pickled OmegaConf config. The authors' train.py (LightningDiT's and SFD's)
    saves `config` as a DictConfig; these classes hold plain data, so allowing them keeps such
    files loadable with weights_only=True."""
    import typing
    from collections import defaultdict

    from omegaconf import DictConfig, ListConfig, base, nodes
    return [DictConfig, ListConfig, base.ContainerMetadata, base.Metadata, nodes.AnyNode, nodes.StringNode,
            nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode, typing.Any, dict, list, int, defaultdict]


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_lightningdit_state_dict(path: PathLike, prefer_ema: bool = True) -> Tuple[Dict[str, torch.Tensor], str]:
    """Read a checkpoint file and return (clean state dict on CPU, source), where source is
    "ema", "model" or "state_dict" (a bare dict / safetensors file).

    prefer_ema picks `ema` over `model` when both exist; a file with only one of them uses it.
    The file is read by utils/safe_load.py (sizes checked first, weights_only=True; pickled
    Python objects other than tensors, containers and OmegaConf configs need
    $LIGHTNINGDIT_TRUSTED_PICKLES)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LightningDiT checkpoint not found: {path} ({RELEASED_CHECKPOINTS_HINT})")

    with torch.serialization.safe_globals(omegaconf_globals()):  # the authors' `config` entry
        obj = load_weights_file(path)
    if path.suffix == ".safetensors":
        return clean_state_dict(obj), "state_dict"

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


def load_lightningdit_checkpoint(path: PathLike, model: Optional[nn.Module] = None,
                                 prefer_ema: bool = True) -> Union[nn.Module, Dict[str, torch.Tensor]]:
    """Load LightningDiT weights from `path` (.pt or .safetensors), strictly.

    With `model`, its weights are replaced in place (strict: any missing / unexpected /
    mis-shaped key raises ValueError naming it) and the model is returned. Without `model`, the
    clean state dict (prefixes stripped, EMA preferred) is returned for the caller to use."""
    state_dict, source = read_lightningdit_state_dict(path, prefer_ema=prefer_ema)
    if model is None:
        return state_dict
    load_strict(model, state_dict, f"{path} [{source}]")
    logger.info("loaded %s weights from %s (%d tensors)", source, path, len(state_dict))
    return model


def warm_start(model: nn.Module, path: str) -> Tuple[List[str], List[str]]:
    """Load `train.weight_init` weights with the reference's shape-mismatch rule (docs/reference_behaviour.md §3.7).

    Tensors whose name and shape match are copied. A mismatched `x_embedder.proj.weight` becomes
    zeros of the new shape with input channels [:, :16] copied from the file (the reference's
    rule; its comment says 3 channels, the code copies 16). Every other mismatch or missing name
    is skipped and logged by name. The final load is strict (the state dict is complete).
    Returns (loaded names, skipped names).
    """
    # The reference warm-starts from ckpt['model'] (not the EMA).
    src, _ = read_lightningdit_state_dict(path, prefer_ema=False)
    target = model.state_dict()
    new_state, loaded, skipped = {}, [], []
    for name, value in target.items():
        if name in src and src[name].shape == value.shape:
            new_state[name] = src[name].to(value.dtype)
            loaded.append(name)
        elif name == "x_embedder.proj.weight" and name in src and _patch_copy_ok(src[name], value):
            w = torch.zeros_like(value)
            w[:, :16] = src[name][:, :16].to(value.dtype)
            new_state[name] = w
            loaded.append(name)
            logger.warning("weight_init: %s %s -> %s: zeros with input channels [:, :16] copied "
                           "(reference rule)", name, tuple(src[name].shape), tuple(value.shape))
        else:
            new_state[name] = value
            why = "missing in file" if name not in src else \
                f"shape {tuple(src[name].shape)} in file vs {tuple(value.shape)} in model"
            skipped.append(name)
            logger.warning("weight_init: skipped %s (%s)", name, why)
    unused = sorted(set(src) - set(target))
    for name in unused:
        logger.warning("weight_init: unused tensor in file: %s", name)
    model.load_state_dict(new_state, strict=True)
    logger.info("weight_init: loaded %d / %d tensors from %s (%d skipped)",
                len(loaded), len(target), path, len(skipped))
    return loaded, skipped


def _patch_copy_ok(src: torch.Tensor, dst: torch.Tensor) -> bool:
    return (src.dim() == dst.dim() == 4 and src.shape[0] == dst.shape[0]
            and src.shape[2:] == dst.shape[2:] and min(src.shape[1], dst.shape[1]) >= 16)

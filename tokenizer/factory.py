"""`build_tokenizer(name, config)`: the one place that maps a tokenizer name to its wrapper class.

Every wrapper has the `VA_VAE` interface (encode images, decode to uint8 images, the ADM crop
transform), so extraction, sampling and evaluation take any of them.

Which wrapper a tokenizer YAML needs is written in the YAML itself, as a top-level `tokenizer:` key
(`sdvae` in configs/tokenizer/sdvae_ft_*.yaml, `marvae` in marvae_kl16.yaml); a YAML without it is
a VA-VAE one (the authors' files have no such key). `load_tokenizer(config_path)` reads the key, so
`vae.model_name` / `vae.config_path` of a training config and `--tokenizer-config` of extraction
select VA-VAE, MAR-VAE or SD-VAE by the YAML they name.

Which YAML a diffusion config names is decided here too (`tokenizer_config_path`): `vae.config_path`,
else `configs/tokenizer/{vae.model_name}.yaml`. SFD's `vae.model_name: sdvae_f16d32` is therefore
configs/tokenizer/sdvae_f16d32.yaml: the LDM-architecture f16d32 KL autoencoder trained 50 epochs
without VF alignment (`ldm-imagenet256-f16d32-50ep.ckpt` of hustvl/va-vae-imagenet256-experimental-
variants), read by the `VA_VAE` wrapper (the YAML has no `tokenizer:` key). Despite its name it is
NOT the diffusers SD-VAE kl-f8 of the paper's Table 1 (`sdvae_ft_ema.yaml`, `tokenizer: sdvae`);
docs/sfd.md. Paths in the authors' YAMLs are relative to their repository root, where tokenizer
YAMLs live in `tokenizer/configs/`; they are found here in configs/tokenizer/.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

from tokenizer.marvae import MAR_VAE
from tokenizer.sdvae import SD_VAE, WEIGHTS_NAMES
from tokenizer.vavae import VA_VAE
from utils.safe_load import check_torch_file
from utils.safe_yaml import load_yaml

TOKENIZERS: Dict[str, type] = {"vavae": VA_VAE, "marvae": MAR_VAE, "sdvae": SD_VAE}
DEFAULT_TOKENIZER = "vavae"

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs" / "tokenizer"
AUTHORS_CONFIG_DIR = "tokenizer/configs/"        # the same files in the authors' repositories
# Where the released weights that tokenizer YAMLs name come from (file name -> source), for the
# error when the file is missing; other files get their wrapper's `weights_hint`.
RELEASED_WEIGHTS: Dict[str, str] = {
    "ldm-imagenet256-f16d32-50ep.ckpt": (
        "SFD's texture autoencoder (vae.model_name sdvae_f16d32): ldm-imagenet256-f16d32-50ep.ckpt of the "
        "Hugging Face hub repo hustvl/va-vae-imagenet256-experimental-variants"),
    "vavae-imagenet256-f16d32-dinov2.pt": (
        "vavae-imagenet256-f16d32-dinov2.pt of the Hugging Face hub repo hustvl/vavae-imagenet256-f16d32-dinov2"),
}


def tokenizer_config_path(model_name: str, config_path: Optional[str] = None) -> Path:
    """The tokenizer YAML of a diffusion config: `vae.config_path` when set, else
    configs/tokenizer/{vae.model_name}.yaml of this repository (module docstring: sdvae_f16d32).

    A `config_path` that does not exist as given is looked up as the authors' repositories lay it
    out (`tokenizer/configs/X` -> configs/tokenizer/X; other relative paths from this repository's
    root). Returns the path as given when no candidate exists (the caller names it)."""
    if not config_path:
        return CONFIG_DIR / f"{model_name}.yaml"
    path = Path(config_path)
    if path.exists() or path.is_absolute():
        return path
    rel = path.as_posix()
    candidates = [REPO_ROOT / path]
    if rel.startswith(AUTHORS_CONFIG_DIR):
        candidates.insert(0, CONFIG_DIR / rel[len(AUTHORS_CONFIG_DIR):])
    return next((c for c in candidates if c.exists()), path)


def build_tokenizer(model_type: str, config_path: str | os.PathLike, **kwargs: Any) -> VA_VAE:
    """'vavae' -> VA_VAE, 'marvae' -> MAR_VAE, 'sdvae' -> SD_VAE (same interface)."""
    if model_type not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer model_type '{model_type}' (choose one of {', '.join(TOKENIZERS)})")
    return TOKENIZERS[model_type](config_path, **kwargs)


def tokenizer_type(config_path: str | os.PathLike) -> str:
    """The wrapper a tokenizer YAML asks for: its top-level `tokenizer:` key, 'vavae' when absent."""
    path = os.fspath(config_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer config not found: {path}")
    name = load_yaml(path).get("tokenizer", None) or DEFAULT_TOKENIZER
    if name not in TOKENIZERS:
        raise ValueError(f"{path}: unknown tokenizer '{name}' (choose one of {', '.join(TOKENIZERS)})")
    return name


class WeightsNotSetError(FileNotFoundError, ValueError):
    """A tokenizer YAML without `ckpt_path`: a missing weights file (reported with the other missing
    files of a command) that is also a config error (callers that catch ValueError keep working)."""


def check_tokenizer_weights(config_path: str | os.PathLike, random_init: bool = False) -> None:
    """The weights a tokenizer YAML names, checked without loading them, so that a command can
    refuse before it creates anything: `ckpt_path` set and present (a file, or for SD-VAE a
    diffusers folder), and a PyTorch file checked by `utils.safe_load.check_torch_file` (sizes,
    pickled code). Nothing to check with `random_init`."""
    if random_init:
        return
    path = os.fspath(config_path)
    wrapper = TOKENIZERS[tokenizer_type(path)]
    ckpt = load_yaml(path).get("ckpt_path")
    if not ckpt:
        raise WeightsNotSetError(f"{path}: ckpt_path is not set ({wrapper.weights_hint}); "
                                 "random weights need random_init=True")
    ckpt = os.fspath(ckpt)
    if not os.path.exists(ckpt):
        where = RELEASED_WEIGHTS.get(os.path.basename(ckpt), wrapper.weights_hint)
        raise FileNotFoundError(f"tokenizer weights not found: {ckpt} (ckpt_path of {path}; {where})")
    if os.path.isdir(ckpt):   # SD-VAE diffusers folder: safetensors first, as diffusers loads
        names = [os.path.join(ckpt, n) for n in WEIGHTS_NAMES if os.path.isfile(os.path.join(ckpt, n))]
        ckpt = names[0] if names else ckpt
    if os.path.isfile(ckpt) and not ckpt.endswith(".safetensors"):
        check_torch_file(ckpt)


def load_tokenizer(config_path: str | os.PathLike, **kwargs: Any) -> VA_VAE:
    """`build_tokenizer` with the wrapper named by the YAML (`tokenizer_type`)."""
    return build_tokenizer(tokenizer_type(config_path), config_path, **kwargs)


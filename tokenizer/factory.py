"""`build_tokenizer(name, config)`: the one place that maps a tokenizer name to its wrapper class.

Every wrapper has the `VA_VAE` interface (encode images, decode to uint8 images, the ADM crop
transform), so extraction, sampling and evaluation take any of them.

Which wrapper a tokenizer YAML needs is written in the YAML itself, as a top-level `tokenizer:` key
(`sdvae` in configs/tokenizer/sdvae_ft_*.yaml, `marvae` in marvae_kl16.yaml); a YAML without it is
a VA-VAE one (the authors' files have no such key). `load_tokenizer(config_path)` reads the key, so
`vae.model_name` / `vae.config_path` of a training config and `--tokenizer-config` of extraction
select VA-VAE, MAR-VAE or SD-VAE by the YAML they name.
"""
from __future__ import annotations

import os
from typing import Any, Dict

from omegaconf import OmegaConf

from tokenizer.marvae import MAR_VAE
from tokenizer.sdvae import SD_VAE
from tokenizer.vavae import VA_VAE

TOKENIZERS: Dict[str, type] = {"vavae": VA_VAE, "marvae": MAR_VAE, "sdvae": SD_VAE}
DEFAULT_TOKENIZER = "vavae"


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
    name = OmegaConf.load(path).get("tokenizer", None) or DEFAULT_TOKENIZER
    if name not in TOKENIZERS:
        raise ValueError(f"{path}: unknown tokenizer '{name}' (choose one of {', '.join(TOKENIZERS)})")
    return name


def load_tokenizer(config_path: str | os.PathLike, **kwargs: Any) -> VA_VAE:
    """`build_tokenizer` with the wrapper named by the YAML (`tokenizer_type`)."""
    return build_tokenizer(tokenizer_type(config_path), config_path, **kwargs)

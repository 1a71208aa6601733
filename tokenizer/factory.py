"""`build_tokenizer(name, config)`: the one place that maps a tokenizer name to its wrapper class.

Every wrapper has the `VA_VAE` interface (encode images, decode to uint8 images, the ADM crop
transform), so extraction, sampling and evaluation take any of them.
"""
from __future__ import annotations

import os
from typing import Any, Dict

from tokenizer.marvae import MAR_VAE
from tokenizer.vavae import VA_VAE

TOKENIZERS: Dict[str, type] = {"vavae": VA_VAE, "marvae": MAR_VAE}


def build_tokenizer(model_type: str, config_path: str | os.PathLike, **kwargs: Any) -> VA_VAE:
    """'vavae' -> VA_VAE, 'marvae' -> MAR_VAE (same interface)."""
    if model_type not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer model_type '{model_type}' (choose one of {', '.join(TOKENIZERS)})")
    return TOKENIZERS[model_type](config_path, **kwargs)

"""VA-VAE tokenizer: KL autoencoder, strict weight loading, the `VA_VAE` / `MAR_VAE` image<->latent
wrappers and LPIPS (inference side, docs/reference_behaviour.md §5); training parts live in sibling modules.

Public names are imported lazily so `import tokenizer.<module>` stays cheap:
`AutoencoderKL`, `DiagonalGaussianDistribution`, `load_autoencoder_weights`, `VA_VAE`, `MAR_VAE`,
`SD_VAE`, `LPIPSLoss`, `build_tokenizer`, `load_tokenizer`.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AutoencoderKL": "tokenizer.autoencoder",
    "DiagonalGaussianDistribution": "tokenizer.distributions",
    "load_autoencoder_weights": "tokenizer.checkpoint",
    "VA_VAE": "tokenizer.vavae",
    "MAR_VAE": "tokenizer.marvae",
    "SD_VAE": "tokenizer.sdvae",
    "LPIPSLoss": "tokenizer.lpips",
    "build_tokenizer": "tokenizer.factory",
    "load_tokenizer": "tokenizer.factory",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tokenizer' has no attribute '{name}'")

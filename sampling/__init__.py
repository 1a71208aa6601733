"""Sampling: guidance (`guidance`), noise -> latents -> images (`pipeline`), the networks a run
uses (`networks`), the FID sampling protocol (`protocol`) and the one batch loop (`loop`).

The package imports its modules lazily: `sampling.guidance` is imported by the model and the
config schema, which the pipeline itself imports, so an eager import here would be a cycle.
"""
import importlib

_EXPORTS = {"Decoder": "sampling.pipeline", "LatentSampler": "sampling.pipeline",
            "tokenizer_config_path": "sampling.pipeline"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sampling' has no attribute {name!r}")

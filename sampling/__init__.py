"""Sampling pipeline: noise -> latents (`LatentSampler`) -> images (`Decoder`)."""
from sampling.pipeline import Decoder, LatentSampler, tokenizer_config_path

__all__ = ["Decoder", "LatentSampler", "tokenizer_config_path"]

"""Validation at the door for inference.py: the checkpoint, tokenizer config and latent stats the
config names are checked before any process group, network or output folder exists (one-line
ValueError / FileNotFoundError naming the file and what is wrong)."""
from __future__ import annotations

from pathlib import Path

from datasets.img_latent_dataset import load_latent_stats
from models.build import latent_size
from models.checkpoint import RELEASED_CHECKPOINTS_HINT
from sampling.networks import autoguidance_active, guide_config
from sampling.pipeline import check_sampling_settings, tokenizer_config_path
from utils.fileio import require_intact_torch_file
from utils.safe_load import check_torch_file


def check_sampling_inputs(cfg) -> None:
    """`ckpt_path` (set, a file, a PyTorch/safetensors file), the tokenizer YAML, with
    `data.latent_norm` the stats (finite, positive std, `model.in_chans` channels), the sampler
    and guidance settings, and with AutoGuidance the guide's YAML and checkpoint."""
    latent_size(cfg)
    if not cfg.ckpt_path:
        raise ValueError("ckpt_path is not set (top-level config key; e.g. "
                         "ckpt_path=output/EXP/checkpoints/0080000.pt)")
    ckpt = Path(cfg.ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"LightningDiT checkpoint not found: {ckpt} ({RELEASED_CHECKPOINTS_HINT})")
    if ckpt.suffix != ".safetensors":
        require_intact_torch_file(ckpt)
        check_torch_file(ckpt)    # sizes and pickled code, before anything is created
    tok = tokenizer_config_path(cfg)
    if not tok.is_file():
        raise FileNotFoundError(f"tokenizer config not found: {tok} (vae.config_path or "
                                f"configs/tokenizer/{{vae.model_name}}.yaml)")
    if cfg.data.latent_norm:
        load_latent_stats(cfg.data.data_path, cfg.model.in_chans, "model.in_chans")
    check_sampling_settings(cfg)
    if autoguidance_active(cfg):
        guide = Path(guide_config(cfg).ckpt_path)
        if not guide.is_file():
            raise FileNotFoundError(f"guide checkpoint not found: {guide} (ckpt_path of "
                                    f"sample.autoguidance_config {cfg.sample.autoguidance_config})")
        if guide.suffix != ".safetensors":
            require_intact_torch_file(guide)

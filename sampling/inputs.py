"""Validation at the door for inference.py: every file a sampling run reads is checked before any
process group, network or output folder exists (one-line ValueError / FileNotFoundError naming
the file, what is wrong, and for a released file where users get it).

The files: the network checkpoint, the tokenizer YAML and its weights, the latent stats the
normalisation needs (texture `latents_stats.pt`, with SFD's `data.latent_sv_norm` the semantic
`latents_sv_stats.pt`, each against its channel count), and with AutoGuidance the guide's YAML and
checkpoint. SFD's released files come from the Hugging Face repo SFD-Project/SFD (docs/sfd.md).
"""
from __future__ import annotations

from pathlib import Path

import torch

from datasets.img_latent_dataset import normalizer_from_config
from models.build import latent_size
from models.checkpoint import RELEASED_CHECKPOINTS_HINT, omegaconf_globals
from sampling.networks import autoguidance_active, guide_config
from sampling.pipeline import check_sampling_settings, tokenizer_config_path
from tokenizer.factory import check_tokenizer_weights
from utils.fileio import require_intact_torch_file
from utils.safe_load import check_torch_file

# Where SFD's released files come from (its README): `huggingface-cli download SFD-Project/SFD
# --include PATTERN`, then moved to the folder its YAMLs name.
SFD_HUB = "Hugging Face repo SFD-Project/SFD"
SFD_CHECKPOINTS_HINT = (f"SFD's released checkpoints: model_weights/sfd_xl/*, model_weights/sfd_1p0/* and "
                        f"model_weights/sfd_autoguidance_b/* of the {SFD_HUB}, moved to outputs/train/ "
                        "(or pass ckpt_path=)")
SFD_STATS_HINT = (f"SFD's released stats: imagenet1k-latents/* of the {SFD_HUB}, moved to "
                  "outputs/dataset/imagenet1k-latents/ (or pass data.data_path= the folder holding "
                  "latents_stats.pt and latents_sv_stats.pt)")


def is_sfd(cfg) -> bool:
    """A config of SFD's composite latent (semantic channels after the texture ones)."""
    return cfg.model.semantic_chans > 0


def check_checkpoint(path: str, what: str, hint: str) -> None:
    """A network checkpoint exists and is an intact PyTorch (or safetensors) file."""
    ckpt = Path(path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"{what} not found: {ckpt} ({hint})")
    if ckpt.suffix != ".safetensors":
        require_intact_torch_file(ckpt)
        with torch.serialization.safe_globals(omegaconf_globals()):  # the authors' `config` entry
            check_torch_file(ckpt, what)  # sizes and pickled code, before anything is created


def check_sampling_inputs(cfg, *, tokenizer_weights: bool = True) -> None:
    """`ckpt_path` (set, a file, a PyTorch/safetensors file), the tokenizer YAML and (unless
    `tokenizer_weights` is False: a random-init tokenizer in tests) its weights, the latent stats
    (finite, positive std, the texture and semantic channel counts), the sampler and guidance
    settings, and with AutoGuidance the guide's YAML and checkpoint. Missing files are reported
    together, in one FileNotFoundError (a fresh checkout learns every download at once)."""
    latent_size(cfg)
    sfd = is_sfd(cfg)
    if not cfg.ckpt_path:
        raise ValueError("ckpt_path is not set (top-level config key; e.g. "
                         "ckpt_path=output/EXP/checkpoints/0080000.pt)")
    check_sampling_settings(cfg)
    guide = guide_config(cfg) if autoguidance_active(cfg) else None
    tok = tokenizer_config_path(cfg)
    if not tok.is_file():
        raise FileNotFoundError(f"tokenizer config not found: {tok} (vae.config_path or "
                                f"configs/tokenizer/{{vae.model_name}}.yaml)")
    missing = []

    def need(check, *args) -> None:
        try:
            check(*args)
        except FileNotFoundError as err:
            missing.append(str(err))

    need(check_checkpoint, cfg.ckpt_path, "SFD checkpoint" if sfd else "LightningDiT checkpoint",
         SFD_CHECKPOINTS_HINT if sfd else RELEASED_CHECKPOINTS_HINT)
    if guide is not None:
        need(check_checkpoint, guide.ckpt_path, "guide checkpoint",
             f"ckpt_path of sample.autoguidance_config {cfg.sample.autoguidance_config}"
             + (f"; {SFD_CHECKPOINTS_HINT}" if sfd else ""))
    need(check_tokenizer_weights, tok, not tokenizer_weights)
    try:
        normalizer_from_config(cfg)
    except FileNotFoundError as err:
        missing.append(f"{err}; {SFD_STATS_HINT}" if sfd else str(err))
    if missing:
        raise FileNotFoundError(" | ".join(missing) if len(missing) == 1 else
                                f"{len(missing)} files missing: " + " | ".join(missing))

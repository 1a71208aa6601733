"""Validation at the door for train.py: every file the config names is checked before any
output directory is created or any network is built (one-line ValueError / FileNotFoundError
naming the file and what is wrong)."""
from __future__ import annotations

from pathlib import Path

from datasets.img_latent_dataset import LatentShards, require_repa_target, validate_latents
from models.build import build_model, latent_size
from tokenizer.data import IMG_EXTENSIONS
from utils.fileio import require_intact_torch_file, require_torch_file
from utils.safe_load import check_torch_file


def check_training_inputs(cfg) -> None:
    """Latent shards (keys, dtypes, non-empty, shape vs the model, labels vs data.num_classes),
    SFD's parts the config asks for (semantic latents adding up to model.semantic_chans, REPA
    targets with model.use_repa, one per model token), their stats (finite, positive std), the
    validation latents, the guide of evaluation with AutoGuidance and the warm-start file."""
    grid = latent_size(cfg)
    m = cfg.model
    parts = dict(semantic_chans=m.semantic_chans, repa=m.use_repa)
    shards = validate_latents(cfg.data.data_path, m.in_chans, grid, cfg.data.num_classes,
                              cfg.data.latent_norm, latent_sv_norm=cfg.data.latent_sv_norm, **parts)
    if cfg.data.valid_path and cfg.train.valid_every:
        validate_latents(cfg.data.valid_path, m.in_chans, grid, cfg.data.num_classes,
                         latent_norm=False, **parts)
    if m.use_repa:
        check_repa_grid(cfg, shards)
    if len(shards) < cfg.train.global_batch_size:
        raise ValueError(f"{cfg.data.data_path}: {len(shards)} latents, fewer than one global batch "
                         f"(train.global_batch_size = {cfg.train.global_batch_size})")
    if cfg.train.eval_every:
        check_eval_guide(cfg)
    if cfg.train.weight_init:
        path = Path(cfg.train.weight_init)
        if not path.is_file():
            raise FileNotFoundError(f"train.weight_init checkpoint not found: {path}")
        if path.suffix != ".safetensors":
            require_intact_torch_file(path)
            check_torch_file(path)    # sizes and pickled code, before anything is created


def check_repa_grid(cfg, shards: LatentShards) -> None:
    """REPA compares the model's tokens one to one with the target's h x w feature vectors, each
    as wide as the projector's output (the width of model.repa_dino_version's features)."""
    import torch

    with torch.device("meta"):  # the token count without allocating weights
        model = build_model(cfg)
    tokens, width = model.pos_embed.shape[1], model.repa_projector[-1].out_features
    dim, h, w = require_repa_target(shards)
    if dim != width:
        raise ValueError(f"{shards.files[0]}: REPA targets feats_dino are {dim} wide, model.repa_dino_version "
                         f"{cfg.model.repa_dino_version!r} projects to {width}")
    if h * w != tokens:
        raise ValueError(f"{shards.files[0]}: REPA targets feats_dino of {h}x{w} = {h * w} positions, "
                         f"the model has {tokens} tokens (model.model_type / model.patch_size, "
                         f"data.image_size // vae.downsample_ratio)")


def check_eval_guide(cfg) -> None:
    """Evaluation during training with AutoGuidance (`sample.autoguidance`, train.eval_cfg_scale > 1)
    needs the guide's YAML and checkpoint (sampling/networks.py: guide_config)."""
    from sampling.networks import autoguidance_active, guide_config

    if autoguidance_active(cfg, cfg.train.eval_cfg_scale):
        guide = guide_config(cfg)
        if not Path(guide.ckpt_path).is_file():
            raise FileNotFoundError(f"{cfg.sample.autoguidance_config}: the guide checkpoint ckpt_path "
                                    f"{guide.ckpt_path} is not a file (evaluation during training uses it)")


def check_tokenizer_training_inputs(cfg) -> None:
    """train_tokenizer.py: the image folders hold images, and `init_weight` / `train.resume_from`
    are PyTorch files, before the run directory is created."""
    splits = [("data.params.train.data_root", cfg.data.params.train.data_root),
              ("data.params.validation.data_root", cfg.data.params.validation.data_root)]
    for key, root in splits:
        if root is None:
            if key.endswith("train.data_root"):
                raise ValueError(f"'{key}' is not set (an image folder)")
            continue
        path = Path(root)
        if not path.is_dir():
            raise FileNotFoundError(f"image folder not found: {root} ({key})")
        if next((p for p in path.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS), None) is None:
            raise ValueError(f"{root}: no images ({', '.join(IMG_EXTENSIONS)}) in this folder ({key})")
    for key, value in (("init_weight", cfg.init_weight), ("train.resume_from", cfg.train.resume_from)):
        if value:
            if not Path(value).is_file():
                raise FileNotFoundError(f"{key} checkpoint not found: {value}")
            if Path(value).suffix != ".safetensors":
                require_torch_file(value)
                check_torch_file(value)

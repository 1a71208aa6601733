"""Train SFD's Semantic VAE on pre-extracted DINOv2 features, one GPU or many.

    bash run_train_semvae.sh configs/tokenizer/semvae_train/ch16.yaml [key=value ...]
    python train_semvae.py CONFIG [key=value ...]          # one process

SFD's YAML layout loads unchanged (tokenizer/semvae_config.py); the recipe and what differs from
SFD's trainer are described in `training/semvae.py`. The features come from
tools/extract_semantic_features.py (SFD's format). The run directory `training.log.log_dir`
(`variables.output_root` in SFD's YAMLs) holds `config.yaml`, `checkpoints/{step:07d}.pt`
(+ `last.pt`), `checkpoints/semantic_ae_final.pt` at the end, `log.txt`, `metrics.jsonl`,
`tensorboard/` and `loss_curve.png`. Re-running resumes from the newest checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from configs.schema import attribute_to_override, parse_cli
from tokenizer.semvae_config import SemVAETrainConfig, resolve_semvae_config
from training.checkpoints import CheckpointError
from training.metrics import trackers
from training.rundir import RunDirError
from training.semvae import open_features, train
from utils.fileio import WriteError


def main(argv: Optional[List[str]] = None) -> None:
    cfg, args = parse_cli(argv, description=__doc__.splitlines()[0], schema=SemVAETrainConfig)
    config_path = args.config_opt or args.config_pos
    try:
        cfg = resolve_semvae_config(cfg, config_path or "config")
    except ValueError as err:
        raise SystemExit(f"error: {attribute_to_override(err, config_path, args.overrides)}") from None
    try:  # the feature files and the trackers' packages, before the run directory exists
        open_features(cfg)
        trackers(cfg.training.log.report_to)
        if cfg.training.checkpoint_path and not Path(cfg.training.checkpoint_path).is_file():
            raise FileNotFoundError(f"training.checkpoint_path not found: {cfg.training.checkpoint_path}")
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    try:
        train(cfg)
    except (FileNotFoundError, RunDirError, CheckpointError, WriteError, FloatingPointError) as err:
        # a run directory owned by another run, no readable checkpoint, a full disk, a diverged
        # run: the message names the file and what to do
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()

"""Train the VA-VAE tokenizer (KL autoencoder + VF alignment loss + LPIPS/PatchGAN), one GPU or many.

    bash run_train_tokenizer.sh configs/tokenizer/f16d32_vfdinov2.yaml [key=value ...]
    python train_tokenizer.py CONFIG [key=value ...]          # one process

The recipe (hustvl/LightningDiT `vavae/`, without Lightning) and what differs from the
reference are described in `training/vavae.py`. The run directory
`{train.output_dir}/{train.exp_name or config stem}` holds `config.yaml`, `checkpoints/{step:07d}.pt`
(+ `last.pt`), `export/vavae.{pt,yaml}` for inference, `images/`, `log.txt`, `metrics.jsonl`,
`tensorboard/` and `loss_curve.png`. Re-running resumes from the newest checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from configs.schema import attribute_to_override, parse_cli
from tokenizer.train_config import TokenizerTrainConfig, resolve_train_config
from training.checkpoints import CheckpointError
from training.rundir import RunDirError
from training.inputs import check_tokenizer_training_inputs
from training.metrics import trackers
from training.vavae import train
from utils.fileio import WriteError


def main(argv: Optional[List[str]] = None) -> None:
    cfg, args = parse_cli(argv, description=__doc__.splitlines()[0], schema=TokenizerTrainConfig)
    config_path = args.config_opt or args.config_pos
    try:
        cfg = resolve_train_config(cfg, config_path or "config")
    except ValueError as err:
        raise SystemExit(f"error: {attribute_to_override(err, config_path, args.overrides)}") from None
    try:  # the named files and the trackers' packages, before the run directory exists
        check_tokenizer_training_inputs(cfg)
        trackers(cfg.train.report_to)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    exp_name = cfg.train.exp_name or (Path(config_path).stem if config_path else "vavae")
    try:
        train(cfg, Path(cfg.train.output_dir) / exp_name)
    except (FileNotFoundError, RunDirError, CheckpointError, WriteError) as err:
        # missing weights / data, a run directory owned by another run, no readable checkpoint,
        # a full disk: the message names the file and what to do
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()

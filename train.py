"""Train LightningDiT on pre-extracted latents (hustvl/LightningDiT `train.py`, DiT layout).

    bash run_train.sh configs/lightningdit_xl_vavae_f16d32.yaml [key=value ...]

The recipe, and what this does differently from the reference (seeded step-keyed draws, exact
resume, one DDP wrapper, exact gradient accumulation, NaN guard, validation loss), is described
in `training/dit.py`, evaluation during training in `training/online_eval.py`; the run directory
`{train.output_dir}/{train.exp_name}` holds `checkpoints/{step:07d}.pt`, `log.txt`,
`metrics.jsonl`, `tensorboard/` (or wandb, `train.report_to`), `loss_curve.png` and, with
`train.eval_every`, `eval/{step:07d}.png` and `fid_curve.png`.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

from configs.schema import parse_cli, to_container
from training.dit import (NonFiniteLossError, CURVES, TENSORBOARD_TAGS, build_data, build_networks,
                          experiment_dir, prepare, resume, train_loop)
from training.checkpoints import CheckpointError
from training.inputs import check_training_inputs
from training.metrics import MetricsSink, trackers
from training.online_eval import EVAL_TAGS, OnlineEvaluator
from training.rundir import RunDirError, release_run_dir
from utils.fileio import WriteError
from utils.runtime import configure_logging, setup_runtime

logger = logging.getLogger("train")


def main(argv: Optional[List[str]] = None) -> Path:
    cfg, _ = parse_cli(argv, description="Train LightningDiT on pre-extracted latents.")
    tc = cfg.train
    trackers(tc.report_to)  # wandb missing: stop before anything is created
    try:  # every named input, before any directory, process group or network exists
        check_training_inputs(cfg)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None

    # Processes, seeds, experiment dir, logging.
    rt = setup_runtime(run_dir=None, seed=tc.global_seed, name="train")
    exp_dir = experiment_dir(cfg, rt.accelerator)
    ckpt_dir = exp_dir / "checkpoints"
    configure_logging(rt.is_main, exp_dir / "log.txt")
    logger.info("experiment directory: %s", exp_dir)
    logger.info("processes: %d, device: %s, mixed precision: %s", rt.world_size, rt.device,
                rt.accelerator.mixed_precision)
    logger.info("config: %s", to_container(cfg))

    # Model + EMA + optimizer, resumed from the newest checkpoint if asked, then wrapped once.
    nets = build_networks(cfg)
    start_step, history, resumed_from = resume(nets, ckpt_dir, cfg, rt)
    prepare(nets, cfg, rt)

    # Data in the step-keyed global order; metrics to JSONL, the trackers and the curves.
    data = build_data(cfg, rt, start_step)
    sink = MetricsSink(exp_dir, rt.is_main, start_step, to_container(cfg), CURVES,
                       {**TENSORBOARD_TAGS, **EVAL_TAGS}, history, report_to=tc.report_to)
    evaluator = OnlineEvaluator(cfg, rt, nets.ema, sink, exp_dir) if tc.eval_every else None
    logger.info("training for %d steps from step %d (lognorm t: %s, until step %s)", tc.max_steps,
                start_step, cfg.transport.use_lognorm, cfg.transport.lognorm_until_step)
    try:
        step = train_loop(cfg, rt, nets, data, sink, ckpt_dir, start_step, resumed_from, evaluator)
    finally:
        sink.close()
    logger.info("Done! (step %d)", step)
    release_run_dir(exp_dir)
    return exp_dir


if __name__ == "__main__":
    try:
        main()
    except NonFiniteLossError:
        sys.exit(1)
    except ValueError as err:  # bad config values (accumulation split, report_to without wandb)
        raise SystemExit(f"error: {err}") from None
    except (RunDirError, CheckpointError, WriteError) as err:  # one line naming the directory / file
        raise SystemExit(f"error: {err}") from None

"""Train LightningDiT on pre-extracted latents (hustvl/LightningDiT `train.py`, DiT layout).

    bash run_train.sh configs/lightningdit_xl_vavae_f16d32.yaml [key=value ...]

The reference recipe (REFERENCE.md 3): LightningDiT from the registry, rectified-flow velocity
loss (MSE + cosine, 1:1), AdamW(lr, betas (0.9, beta2), weight decay 0), constant LR, bf16
autocast with fp32 weights (`PRECISION=bf16`, the launcher's default for training), EMA 0.9999
every step initialised as an exact copy, per-process batch = global batch / processes,
optional gradient clipping, `train.weight_init` warm start (3.7's shape-mismatch rule).

What the reference gets wrong and this script does instead (REFERENCE 9.2):
- seeded: all randomness of step s (data order, flips, t, noise, label dropout) is a function of
  (train.global_seed, s) drawn for the *global* batch and sliced per rank, so a run does not
  depend on the number of processes and a resumed run reads exactly the same numbers;
- one DDP wrapper (`accelerator.prepare` once); `model` and `ema` are saved with clean keys;
- checkpoints `{step:07d}.pt` hold model, ema, opt, config, step, data position, per-rank RNG
  states and the t-sampling state, written atomically; `train.resume` takes the newest step;
- a non-finite loss stops the run (the poisoned weights are never saved);
- TensorBoard, log.txt and a loss-curve PNG live in the experiment directory;
- `data.valid_path` gives a validation loss at fixed t (the reference's hook crashes).

Label dropout for CFG is drawn here (same probability, `model.class_dropout_prob`) instead of
inside the model, so that it comes from the step-keyed stream.

Testing hook: env `LIGHTNINGDIT_FAULT=sigkill@N` kills the process (SIGKILL) after N steps;
`nan@N` makes the loss of step N+1 NaN.
"""
from __future__ import annotations

import logging
import os
import random
import signal
import sys
import time
from copy import deepcopy
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from configs.schema import parse_cli, to_container
from tools.fileio import atomic_torch_save, atomic_write
from tools.runtime import configure_logging, setup_runtime
from tools.train_utils import (GlobalBatchSampler, SeededItems, STREAM_VALID, build_model,
                               build_transport, checkpoint_path, derive_seed, latest_checkpoint,
                               prune_checkpoints, step_noise, update_ema, warm_start)

logger = logging.getLogger("train")


class NonFiniteLossError(RuntimeError):
    """Raised on every rank when a training loss is NaN or inf."""


#################################################################################
#                               Small helpers                                   #
#################################################################################

def experiment_dir(cfg, accelerator) -> Path:
    """`{output_dir}/{exp_name}`; exp_name None -> `{index:03d}-{model type}` (chosen on the main
    process and broadcast, fixing the reference's `output/None/checkpoints`)."""
    from accelerate.utils import broadcast_object_list

    root = Path(cfg.train.output_dir)
    name = cfg.train.exp_name
    if name is None:
        if cfg.train.resume:
            raise ValueError("train.resume needs train.exp_name (an unnamed run gets a new index)")
        holder = [None]
        if accelerator.is_main_process:
            index = len(list(root.glob("*"))) if root.is_dir() else 0
            holder[0] = f"{index:03d}-{cfg.model.model_type.replace('/', '-')}"
        if accelerator.num_processes > 1:
            broadcast_object_list(holder)
        name = holder[0]
    path = root / name
    if accelerator.is_main_process:
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    return path


def rng_state() -> dict:
    """This process's python / numpy / torch RNG states, as tensors and plain types (loadable
    with torch.load(weights_only=True))."""
    np_state = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def parse_fault() -> tuple:
    """(kind, step) from env LIGHTNINGDIT_FAULT ('sigkill@N' or 'nan@N'), or (None, -1)."""
    spec = os.environ.get("LIGHTNINGDIT_FAULT", "")
    if not spec:
        return None, -1
    kind, _, step = spec.partition("@")
    if kind not in ("sigkill", "nan") or not step.isdigit():
        raise ValueError(f"LIGHTNINGDIT_FAULT={spec!r}: expected 'sigkill@N' or 'nan@N'")
    return kind, int(step)


def plot_loss_curve(history: List[dict], path: Path) -> None:
    """Write the training (and validation) loss curve as a PNG, atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    valid = [(h["step"], h["valid_loss"]) for h in history if "valid_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train MSE")
    if valid:
        ax.plot(*zip(*valid), "o-", label="valid MSE (fixed t)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if train or valid:
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def make_tensorboard(exp_dir: Path, cfg, start_step: int):
    """SummaryWriter under the experiment dir (the reference wrote to ./tensorboard_logs)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard not installed: no TensorBoard logs")
        return None
    import json
    writer = SummaryWriter(str(exp_dir / "tensorboard"), purge_step=start_step or None)
    if start_step == 0:
        writer.add_text("training configs", json.dumps(to_container(cfg), indent=2), 0)
    return writer


@torch.no_grad()
def validation_loss(models: dict, cfg, transport, rt, stats) -> dict:
    """Mean MSE on the held-out latents at fixed t (REFERENCE 9.2: the reference's hook crashes).

    Items 0..V-1 (V = min(len, num_valid_batches * global batch)), unflipped-or-flipped with a
    fixed per-item seed, t_i = (i + 0.5) / V and noise seeded by (seed, i): the same numbers at
    every evaluation and for any number of processes. Labels are kept (no dropout).
    """
    from datasets.img_latent_dataset import ImgLatentDataset

    data = SeededItems(ImgLatentDataset(cfg.data.valid_path, latent_norm=False, latent_multiplier=1.0))
    total = min(len(data), cfg.train.num_valid_batches * cfg.train.global_batch_size)
    mine = list(range(rt.rank, total, rt.world_size))
    b = cfg.train.global_batch_size // rt.world_size
    mean, std = stats
    sums = torch.zeros(len(models) + 1, device=rt.device, dtype=torch.float64)
    for lo in range(0, len(mine), b):
        ids = mine[lo: lo + b]
        items = [data[(i, derive_seed(cfg.train.global_seed, STREAM_VALID, i))] for i in ids]
        x = torch.stack([it[0] for it in items]).to(rt.device)
        y = torch.stack([it[1] for it in items]).to(rt.device)
        if cfg.data.latent_norm:
            x = (x - mean) / std
        x = x * cfg.data.latent_multiplier
        t = (torch.tensor(ids, dtype=torch.float32) + 0.5) / total
        x0 = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(
            derive_seed(cfg.train.global_seed, STREAM_VALID, 1, i))) for i in ids]).to(rt.device)
        for k, model in enumerate(models.values()):
            with rt.accelerator.autocast():
                out = transport.training_losses(model, x, dict(y=y), t=t.to(rt.device), x0=x0)
            sums[k] += out["loss"].double().sum()
        sums[-1] += len(ids)
    sums = rt.accelerator.reduce(sums, reduction="sum")
    return {name: float(sums[k] / sums[-1]) for k, name in enumerate(models)}


#################################################################################
#                                  Training                                     #
#################################################################################

def main(argv: Optional[List[str]] = None) -> Path:
    cfg, _ = parse_cli(argv, description="Train LightningDiT on pre-extracted latents.")
    tc = cfg.train

    # Processes, seeds, experiment dir, logging.
    rt = setup_runtime(run_dir=None, seed=tc.global_seed, name="train")
    accelerator, device = rt.accelerator, rt.device
    exp_dir = experiment_dir(cfg, accelerator)
    ckpt_dir = exp_dir / "checkpoints"
    configure_logging(rt.is_main, exp_dir / "log.txt")
    logger.info("experiment directory: %s", exp_dir)
    logger.info("processes: %d, device: %s, mixed precision: %s", rt.world_size, device,
                accelerator.mixed_precision)
    logger.info("config: %s", to_container(cfg))
    fault_kind, fault_step = parse_fault()

    # Model (identical on every rank and for every world size: seeded by global_seed only) + EMA.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.global_seed)
        model = build_model(cfg, training=True)
    if tc.weight_init:
        warm_start(model, tc.weight_init)
    ema = deepcopy(model).requires_grad_(False).eval()
    update_ema(ema, model, decay=0.0)  # exact copy (the reference overwrites the warm-started EMA too)
    drop_prob = model.y_embedder.dropout_prob
    model.y_embedder.dropout_prob = 0.0  # label dropout is drawn in the loop (step-keyed stream)
    logger.info("LightningDiT parameters: %s", f"{sum(p.numel() for p in model.parameters()):,}")

    transport = build_transport(cfg)
    # Fused AdamW: the same update rule in one kernel over all tensors (the per-tensor loop cost
    # ~20% of a small model's CPU step); CPU support arrived in torch 2.4.
    fused = rt.device.type == "cuda" or tuple(map(int, torch.__version__.split(".")[:2])) >= (2, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr, weight_decay=0,
                            betas=(0.9, cfg.optimizer.beta2), fused=fused)

    # Resume: newest step; model, EMA, optimizer, RNG, loss history.
    start_step, history = 0, []
    resume_from = latest_checkpoint(ckpt_dir) if tc.resume else None
    if tc.resume and resume_from is None:
        logger.info("train.resume: no checkpoint in %s, starting from scratch", ckpt_dir)
    if resume_from is not None:
        ckpt = torch.load(resume_from, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"], strict=True)
        ema.load_state_dict(ckpt["ema"], strict=True)
        opt.load_state_dict(ckpt["opt"])
        start_step, history = int(ckpt["step"]), list(ckpt.get("log_history", []))
        if len(ckpt.get("rng", [])) == rt.world_size:
            set_rng_state(ckpt["rng"][rt.rank])
        else:
            logger.warning("resume: checkpoint from %d processes, now %d: per-rank RNG states not "
                           "restored (training draws are step-keyed and unaffected)",
                           len(ckpt.get("rng", [])), rt.world_size)
        logger.info("resumed from %s at step %d", resume_from, start_step)
        del ckpt
    model.to(device)
    ema.to(device)
    if cfg.model.compile:
        model.compile_blocks()
    unwrapped = model
    model, opt = accelerator.prepare(model, opt)  # the one and only DDP wrapper

    # Data: the step-keyed global batch order.
    from datasets.img_latent_dataset import ImgLatentDataset, load_latent_stats
    dataset = ImgLatentDataset(cfg.data.data_path, cfg.data.latent_norm, cfg.data.latent_multiplier)
    sampler = GlobalBatchSampler(len(dataset), tc.global_batch_size, rt.rank, rt.world_size,
                                 tc.global_seed, start_step=start_step)
    loader = DataLoader(SeededItems(dataset), batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    logger.info("dataset %s: %s latents, %d steps per epoch, per-process batch %d",
                cfg.data.data_path, f"{len(dataset):,}", sampler.steps_per_epoch, sampler.local_batch)
    valid_stats = None
    if cfg.data.valid_path and tc.valid_every:
        mean, std = load_latent_stats(cfg.data.data_path) if cfg.data.latent_norm else (
            torch.zeros(()), torch.ones(()))
        valid_stats = (mean.squeeze(0).to(device), std.squeeze(0).to(device))

    writer = make_tensorboard(exp_dir, cfg, start_step) if rt.is_main else None
    null_class = cfg.data.num_classes
    use_cos = cfg.transport.use_cosine_loss
    logger.info("training for %d steps from step %d (lognorm t: %s, until step %s)", tc.max_steps,
                start_step, cfg.transport.use_lognorm, cfg.transport.lognorm_until_step)

    # Loop state: running sums stay on the device; host syncs only at log / checkpoint steps.
    step = start_step
    running = torch.zeros(2, device=device)          # MSE sum, cosine sum
    nonfinite = torch.zeros((), device=device)
    log_steps, last_check, last_good = 0, start_step, resume_from
    tic = time.time()

    def check_finite() -> None:
        nonlocal last_check
        bad = accelerator.reduce(nonfinite.clone(), reduction="sum")
        if float(bad) > 0:
            msg = (f"non-finite loss between steps {last_check + 1} and {step}; stopping. "
                   f"Last good checkpoint: {last_good or 'none'}. Try optimizer.max_grad_norm=1.0, "
                   f"model.use_qknorm=true or PRECISION=no (REFERENCE 9.2).")
            logger.error(msg)
            raise NonFiniteLossError(msg)
        last_check = step

    def save_checkpoint() -> None:
        from accelerate.utils import gather_object
        nonlocal last_good
        rngs = gather_object([rng_state()]) if rt.world_size > 1 else [rng_state()]
        epoch, batch_in_epoch = sampler.position(step)
        if rt.is_main:
            path = checkpoint_path(ckpt_dir, step)
            atomic_torch_save({
                "model": unwrapped.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                "config": to_container(cfg), "step": step,
                "data": {"epoch": epoch, "batch_in_epoch": batch_in_epoch,
                         "steps_per_epoch": sampler.steps_per_epoch, "num_items": len(dataset),
                         "global_batch_size": tc.global_batch_size, "seed": tc.global_seed},
                "t_sampling": {"use_lognorm": cfg.transport.use_lognorm,
                               "lognorm_until_step": cfg.transport.lognorm_until_step,
                               "lognorm_active": transport.lognorm_active(step)},
                "rng": rngs, "world_size": rt.world_size, "log_history": history,
            }, path)
            for old in prune_checkpoints(ckpt_dir, tc.keep_last_n):
                logger.info("removed old checkpoint %s", old)
            logger.info("saved checkpoint to %s", path)
            plot_loss_curve(history, exp_dir / "loss_curve.png")
        last_good = checkpoint_path(ckpt_dir, step)
        accelerator.wait_for_everyone()

    from tqdm import tqdm
    bar = tqdm(total=tc.max_steps, initial=start_step, disable=not rt.is_main, dynamic_ncols=True,
               desc="train")
    model.train()
    for x, y in loader:
        if step >= tc.max_steps:
            break
        if fault_kind == "sigkill" and step == fault_step:
            os.kill(os.getpid(), signal.SIGKILL)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        noise = step_noise(transport, tc.global_seed, step, x.shape, rt.rank, rt.world_size,
                           device, drop_prob)
        y = torch.where(noise["drop"], null_class, y)
        loss_dict = transport.training_losses(model, x, dict(y=y), t=noise["t"], x0=noise["x0"])
        mse = loss_dict["loss"].mean()
        cos = loss_dict["cos_loss"].mean() if use_cos else torch.zeros_like(mse)
        loss = mse + cos if use_cos else mse
        if fault_kind == "nan" and step == fault_step:
            loss = loss * float("nan")
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if cfg.optimizer.max_grad_norm is not None and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), cfg.optimizer.max_grad_norm)
        opt.step()
        update_ema(ema, unwrapped, tc.ema_decay)

        running += torch.stack([mse.detach(), cos.detach()])
        nonfinite += (~torch.isfinite(loss.detach())).float()
        step += 1
        log_steps += 1
        bar.update(1)

        is_ckpt = step % tc.ckpt_every == 0 or step == tc.max_steps
        if step % tc.log_every == 0 or is_ckpt:
            check_finite()
        if step % tc.log_every == 0:
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.time() - tic
            avg = accelerator.reduce(running.clone(), reduction="mean") / log_steps
            steps_per_sec = log_steps / elapsed
            images_per_sec = steps_per_sec * tc.global_batch_size
            mse_avg, cos_avg = float(avg[0]), float(avg[1])
            line = (f"(step={step:07d}) Train Loss: {mse_avg:.4f}, Train Steps/Sec: {steps_per_sec:.2f}, "
                    f"Images/Sec: {images_per_sec:.1f}")
            if use_cos:
                line += f", Cos Loss: {cos_avg:.4f}"
            logger.info(line)
            record = {"step": step, "loss": mse_avg, "cos_loss": cos_avg, "steps_per_sec": steps_per_sec}
            if valid_stats is not None and step % tc.valid_every == 0:
                model.eval()
                vl = validation_loss({"model": unwrapped, "ema": ema}, cfg, transport, rt, valid_stats)
                model.train()
                logger.info(f"(step={step:07d}) Valid Loss: {vl['model']:.4f}, EMA Valid Loss: {vl['ema']:.4f}")
                record.update(valid_loss=vl["model"], valid_loss_ema=vl["ema"])
            history.append(record)
            if writer is not None:
                writer.add_scalar("Loss/train", mse_avg, step)
                if use_cos:
                    writer.add_scalar("Loss/cos", cos_avg, step)
                writer.add_scalar("Perf/steps_per_sec", steps_per_sec, step)
                writer.add_scalar("Perf/images_per_sec", images_per_sec, step)
                if "valid_loss" in record:
                    writer.add_scalar("Loss/valid", record["valid_loss"], step)
                    writer.add_scalar("Loss/valid_ema", record["valid_loss_ema"], step)
                writer.flush()
            if rt.is_main:
                plot_loss_curve(history, exp_dir / "loss_curve.png")
                bar.set_postfix(loss=f"{mse_avg:.4f}")
            running.zero_()
            log_steps = 0
            tic = time.time()
        if is_ckpt:
            save_checkpoint()
        if step >= tc.max_steps:
            break
    bar.close()
    if writer is not None:
        writer.close()
    logger.info("Done! (step %d)", step)
    return exp_dir


if __name__ == "__main__":
    try:
        main()
    except NonFiniteLossError:
        sys.exit(1)

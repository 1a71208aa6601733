"""Train the VA-VAE tokenizer (KL autoencoder + VF alignment loss + LPIPS/PatchGAN), one GPU or many.

Replaces hustvl/LightningDiT `vavae/main.py` + Lightning (REFERENCE.md §6.1-6.6) with plain
PyTorch and `accelerate`:
- per batch one generator step then one discriminator step, both Adam(lr=base_learning_rate,
  betas=(0.5, 0.9)), no schedule, no weight decay (reference `configure_optimizers`);
- the discriminator step sees the same (pre-update) reconstructions, detached;
- `disc_start` counts batches; `disc_start_counts_optimizer_steps: true` reproduces Lightning's
  two-steps-per-batch count (REFERENCE.md §6.4, §9.3);
- fp32 by default (`lightning.trainer.precision: 32`), `bf16` as an option;
- auto-resume from `{run_dir}/checkpoints/` (largest step, by number), exactly: model,
  discriminator, both optimizers, step, every rank's RNG states and the data position (seeded
  per-epoch order, consumed batches skipped). Unlike the reference, a failing resume raises
  instead of silently restarting from scratch;
- warm start from `init_weight` (the reference's key) for the three-stage recipe;
- the resolved config is saved (the reference's SetupCallback never ran under PL 2.4);
- validation reconstruction loss (`val/rec_loss`), PNG grids (inputs / reconstructions / decoded
  random latents), checkpoints written atomically. Every training checkpoint's `state_dict` has the
  authors' key layout (`encoder.*`, ..., `linear_proj.weight`, `loss.*`), so `tokenizer/vavae.py`
  loads it directly; `export/vavae.pt` + `export/vavae.yaml` hold the latest inference weights.

Usage: `bash run_train_tokenizer.sh configs/tokenizer/f16d32_vfdinov2.yaml [key=value ...]`
(or `python train_tokenizer.py CONFIG [key=value ...]` for one process).
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from math import nan
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from configs.schema import parse_cli, to_container
from tokenizer.checkpoint import read_state_dict
from tokenizer.data import ImageFolderDataset, ResumableSampler
from tokenizer.foundation import FoundationModel
from tokenizer.losses import LPIPSWithDiscriminator
from tokenizer.train_config import (TokenizerTrainConfig, loss_kwargs, mixed_precision,
                                    validate_train_config)
from tokenizer.vavae_model import GENERATOR_PREFIXES, VAVAEModel
from tools.fileio import atomic_torch_save, atomic_write, atomic_write_text
from tools.runtime import setup_runtime

logger = logging.getLogger("train_tokenizer")

FIXED_PREFIXES = ("foundation_model.", "loss.perceptual_loss.")  # frozen, loaded from their own files
VAL_NOISE_SEED = 0        # posterior noise in validation: same draws at every evaluation
SAMPLE_NOISE_SEED = 1     # random latents decoded in the sample grids


#################################################################################
#                                  Construction                                 #
#################################################################################

def build_model(cfg: DictConfig) -> VAVAEModel:
    p = cfg.model.params
    foundation = None
    if p.use_vf:
        f = p.foundation
        foundation = FoundationModel(p.use_vf, weights=f.weights, normalize_input=f.normalize_input,
                                     model_kwargs=OmegaConf.to_container(f.model_kwargs),
                                     random_init=f.random_init)
    return VAVAEModel(OmegaConf.to_container(p.ddconfig), p.embed_dim, use_vf=p.use_vf,
                      reverse_proj=p.reverse_proj, proj_fix=p.proj_fix, foundation_model=foundation)


def build_loss(cfg: DictConfig) -> LPIPSWithDiscriminator:
    return LPIPSWithDiscriminator(**loss_kwargs(cfg))


def build_optimizers(cfg: DictConfig, model: VAVAEModel, loss: LPIPSWithDiscriminator
                     ) -> Tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for encoder + decoder + quant convs (+ linear_proj unless proj_fix), Adam for D."""
    lr = cfg.model.base_learning_rate
    ae_params = [p for n, p in model.named_parameters()
                 if n.startswith(GENERATOR_PREFIXES) and p.requires_grad]
    opt_ae = torch.optim.Adam(ae_params, lr=lr, betas=(0.5, 0.9))
    opt_disc = torch.optim.Adam(loss.discriminator.parameters(), lr=lr, betas=(0.5, 0.9))
    return opt_ae, opt_disc


def trainable_state_dict(model: VAVAEModel, loss: LPIPSWithDiscriminator) -> Dict[str, torch.Tensor]:
    """Everything trained or stateful, under the authors' checkpoint key names."""
    sd = model.generator_state_dict()
    sd.update({f"loss.{k}": v for k, v in loss.state_dict().items() if not k.startswith("perceptual_loss.")})
    return sd


#################################################################################
#                         Checkpoints, warm start, RNG                          #
#################################################################################

def capture_rng_state() -> Dict[str, Any]:
    """This process's python / numpy / torch (+ CUDA) RNG states, in weights_only-loadable types."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    key, keys, *rest = state["numpy"]
    np.random.set_state((key, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(world_size: int) -> List[Dict[str, Any]]:
    """Every rank's RNG state, in rank order (a collective when world_size > 1)."""
    state = capture_rng_state()
    if world_size == 1:
        return [state]
    out: List[Any] = [None] * world_size
    torch.distributed.all_gather_object(out, state)
    return out


def latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    """The training checkpoint with the largest step number (not the lexicographically last)."""
    found = [(int(m.group(1)), p) for p in ckpt_dir.glob("step_*.pt")
             if (m := re.fullmatch(r"step_(\d+)\.pt", p.name))]
    return max(found)[1] if found else None


def save_training_checkpoint(path: Path, model: VAVAEModel, loss: LPIPSWithDiscriminator,
                             opt_ae: torch.optim.Optimizer, opt_disc: torch.optim.Optimizer, step: int,
                             cfg: DictConfig, rng_states: List[Dict[str, Any]]) -> None:
    atomic_torch_save({
        "state_dict": trainable_state_dict(model, loss),
        "optimizer_ae": opt_ae.state_dict(),
        "optimizer_disc": opt_disc.state_dict(),
        "step": step,
        "rng_states": rng_states,
        "config": to_container(cfg),
    }, path)


def link_last(path: Path) -> None:
    """Point `checkpoints/last.pt` at `path` (a relative symlink, replaced atomically)."""
    tmp = path.parent / ".last.pt.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(path.name)
    os.replace(tmp, path.parent / "last.pt")


def _check_keys(source: str, own: Dict[str, torch.Tensor], sd: Dict[str, torch.Tensor]) -> None:
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(f"{source} does not match the model: missing keys {missing[:8]}, "
                         f"unexpected keys {unexpected[:8]}")
    bad = [k for k in own if own[k].shape != sd[k].shape]
    if bad:
        raise ValueError(f"{source}: shape mismatch for {bad[:8]}")


def _copy_into(own: Dict[str, torch.Tensor], sd: Dict[str, torch.Tensor], keys) -> None:
    with torch.no_grad():
        for k in keys:
            own[k].copy_(sd[k])


def load_training_checkpoint(path: Path, model: VAVAEModel, loss: LPIPSWithDiscriminator,
                             opt_ae: torch.optim.Optimizer, opt_disc: torch.optim.Optimizer
                             ) -> Tuple[int, List[Dict[str, Any]]]:
    """Restore model, discriminator and optimizers in place (strict); returns (step, rng_states)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    own = trainable_state_dict(model, loss)
    _check_keys(str(path), own, ckpt["state_dict"])
    _copy_into(own, ckpt["state_dict"], own)
    opt_ae.load_state_dict(ckpt["optimizer_ae"])
    opt_disc.load_state_dict(ckpt["optimizer_disc"])
    return int(ckpt["step"]), ckpt["rng_states"]


def warm_start(path: str, model: VAVAEModel, loss: LPIPSWithDiscriminator) -> None:
    """Load `init_weight` (ours or an authors' Lightning checkpoint) into the trainable modules.

    As the reference's warm start, keys absent from the file keep their init (e.g. `linear_proj`
    when starting from an LDM VAE); unlike it, each such key and each unused key is logged, and
    shape mismatches raise. Frozen modules (foundation model, LPIPS) are never read from it.
    """
    sd = read_state_dict(path, hint="a VA-VAE training checkpoint (init_weight)")
    own = trainable_state_dict(model, loss)
    fixed = [k for k in sd if k.startswith(FIXED_PREFIXES)]
    for k in sorted(k for k in sd if k not in own and not k.startswith(FIXED_PREFIXES)):
        logger.warning("init_weight %s: unused key %s", path, k)
    for k in sorted(k for k in own if k not in sd):
        logger.warning("init_weight %s: %s not in the file, keeps its initialisation", path, k)
    common = [k for k in own if k in sd]
    bad = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in common
           if sd[k].shape != own[k].shape]
    if bad:
        raise ValueError(f"init_weight {path}: shape mismatch {bad[:8]}")
    _copy_into(own, sd, common)
    logger.info("warm start from %s: %d tensors loaded, %d frozen-module tensors skipped",
                path, len(common), len(fixed))


def export_inference(run_dir: Path, model: VAVAEModel, cfg: DictConfig) -> Path:
    """Write export/vavae.pt ({'state_dict': encoder/decoder/quant convs/linear_proj}) and a YAML
    whose ckpt_path points at it, usable as `VA_VAE('export/vavae.yaml')`."""
    out = run_dir / "export"
    weights = out / "vavae.pt"
    atomic_torch_save({"state_dict": model.generator_state_dict()}, weights)
    container = to_container(cfg)
    container["ckpt_path"] = str(weights.resolve())
    atomic_write_text(OmegaConf.to_yaml(OmegaConf.create(container)), out / "vavae.yaml")
    return weights


#################################################################################
#                              Steps and evaluation                             #
#################################################################################

def train_step(model: torch.nn.Module, discriminator: torch.nn.Module, loss: LPIPSWithDiscriminator,
               opt_ae: torch.optim.Optimizer, opt_disc: torch.optim.Optimizer, x: torch.Tensor,
               step: int, accelerator, dec_last_layer: torch.Tensor, enc_last_layer: torch.Tensor
               ) -> Dict[str, torch.Tensor]:
    """One generator step and one discriminator step on batch x (B, 3, R, R). Returns the logs."""
    with accelerator.autocast():
        dec, posterior, z, aux = model(x)
        ae_loss, log = loss.generator_loss(x, dec, posterior, step, dec_last_layer, enc_last_layer, z, aux)
    opt_ae.zero_grad(set_to_none=True)
    accelerator.backward(ae_loss)
    opt_ae.step()
    with accelerator.autocast():
        d_loss, log_d = loss.discriminator_loss(x, dec, step, discriminator=discriminator)
    opt_disc.zero_grad(set_to_none=True)
    accelerator.backward(d_loss)
    opt_disc.step()
    log.update(log_d)
    return log


@torch.no_grad()
def validate(model: VAVAEModel, loss: LPIPSWithDiscriminator, loader: DataLoader, accelerator,
             step: int, max_batches: Optional[int] = None) -> Dict[str, float]:
    """Image-weighted means over the validation set (all ranks) of val/{rec,nll,kl,vf}_loss, vf_cos."""
    model.eval()
    loss.eval()
    gen = torch.Generator().manual_seed(VAL_NOISE_SEED)
    sums: Dict[str, torch.Tensor] = {}
    count = torch.zeros((), device=accelerator.device)
    for i, x in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x = x.to(accelerator.device)
        with accelerator.autocast():
            dec, posterior, z, aux = model(x, generator=gen)
            _, log = loss.generator_loss(x, dec, posterior, step, z=z, aux_feature=aux, split="val")
        for key in ("val/rec_loss", "val/nll_loss", "val/kl_loss", "val/vf_loss", "val/vf_cos"):
            if key in log:
                sums[key] = sums.get(key, 0.0) + log[key].float() * x.shape[0]
        count += x.shape[0]
    model.train()
    loss.train()
    keys = sorted(sums)
    totals = accelerator.reduce(torch.stack([sums[k] for k in keys] + [count]), reduction="sum")
    values = totals.tolist()
    return {k: v / max(values[-1], 1.0) for k, v in zip(keys, values[:-1])}


@torch.no_grad()
def save_sample_grid(model: VAVAEModel, x: torch.Tensor, path: Path, accelerator) -> None:
    """PNG with rows: inputs, reconstructions (posterior mode), decoded N(0, I) latents."""
    from torchvision.utils import make_grid, save_image

    was_training = model.training
    model.eval()
    with accelerator.autocast():
        posterior = model.encode(x)
        rec = model.decode(posterior.mode())
        noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(SAMPLE_NOISE_SEED))
        samples = model.decode(noise.to(x.device, posterior.mean.dtype))
    model.train(was_training)
    rows = torch.cat([x, rec.float(), samples.float()]).clamp(-1, 1) * 0.5 + 0.5
    grid = make_grid(rows.cpu(), nrow=x.shape[0], padding=2)
    atomic_write(path, lambda tmp: save_image(grid, tmp, format="PNG"))


#################################################################################
#                                   Training                                    #
#################################################################################

def _num_workers(cfg: DictConfig) -> int:
    nw = cfg.data.params.num_workers
    return 2 * cfg.data.params.batch_size if nw is None else nw  # reference default


def train(cfg: DictConfig, run_dir: str | Path) -> Dict[str, float]:
    """Run (or resume) training as configured; returns the last logged train / val numbers."""
    run_dir = Path(run_dir)
    rt = setup_runtime(str(run_dir), seed=cfg.train.seed, mixed_precision=mixed_precision(cfg),
                       name="train_tokenizer")
    acc, device, tc = rt.accelerator, rt.device, cfg.train
    ckpt_dir = run_dir / "checkpoints"
    if rt.is_main:
        atomic_write_text(OmegaConf.to_yaml(cfg), run_dir / "config.yaml")

    # model, loss, optimizers
    model = build_model(cfg).to(device)
    loss = build_loss(cfg).to(device)
    opt_ae, opt_disc = build_optimizers(cfg, model, loss)
    n_params = sum(p.numel() for p in opt_ae.param_groups[0]["params"])
    logger.info("generator: %.2fM trainable parameters; discriminator: %.2fM", n_params / 1e6,
                sum(p.numel() for p in loss.discriminator.parameters()) / 1e6)

    # data
    dp = cfg.data.params
    if not dp.train.data_root:
        raise ValueError("'data.params.train.data_root' must be set")
    train_set = ImageFolderDataset(dp.train.data_root, dp.train.size, random_crop=True,
                                   seed=tc.seed, max_images=dp.train.max_images)
    sampler = ResumableSampler(len(train_set), seed=tc.seed, rank=rt.rank, world_size=rt.world_size)
    batch_size = dp.batch_size
    batches_per_epoch = sampler.per_rank() // batch_size
    if batches_per_epoch == 0:
        raise ValueError(f"{dp.train.data_root}: {len(train_set)} images give no full batch of "
                         f"{batch_size} per process")
    total_steps = tc.max_steps if tc.max_steps is not None else cfg.lightning.trainer.max_epochs * batches_per_epoch
    val_loader = None
    if dp.validation.data_root:
        val_set = ImageFolderDataset(dp.validation.data_root, dp.validation.size, random_crop=False,
                                     max_images=dp.validation.max_images)
        val_loader = DataLoader(val_set, batch_size=batch_size, num_workers=_num_workers(cfg),
                                sampler=ResumableSampler(len(val_set), rank=rt.rank,
                                                         world_size=rt.world_size, shuffle=False, pad=False),
                                generator=torch.Generator())  # keeps the global RNG untouched
    sample_source = val_set if val_loader is not None else ImageFolderDataset(
        dp.train.data_root, dp.train.size, random_crop=False, max_images=tc.num_sample_images)
    sample_x = torch.stack([sample_source[i] for i in range(min(tc.num_sample_images, len(sample_source)))])
    logger.info("train images: %d (%d batches of %d per process per epoch), total steps: %d",
                len(train_set), batches_per_epoch, batch_size, total_steps)

    # resume, or warm start
    step, rng_states = 0, None
    resume_path = Path(tc.resume_from) if tc.resume_from else (latest_checkpoint(ckpt_dir) if tc.resume else None)
    if resume_path is not None:
        step, rng_states = load_training_checkpoint(resume_path, model, loss, opt_ae, opt_disc)
        logger.info("resumed from %s at step %d", resume_path, step)
    elif cfg.init_weight:
        warm_start(cfg.init_weight, model, loss)

    model_ddp, disc_ddp, opt_ae, opt_disc = acc.prepare(model, loss.discriminator, opt_ae, opt_disc)
    if rng_states is not None:
        if len(rng_states) == rt.world_size:
            restore_rng_state(rng_states[rt.rank])
        else:
            logger.warning("checkpoint has RNG states of %d processes, running %d: RNG not restored "
                           "(the continuation is not bit-identical)", len(rng_states), rt.world_size)
    dec_last, enc_last = model.decoder_last_layer, model.encoder_last_layer
    # Lightning's model.train() reaches the loss module, so LPIPS dropout is active in training
    # (REFERENCE.md §9.3; lpips_train_mode: false keeps LPIPS in eval).
    model.train()
    loss.train()

    metrics_path = run_dir / "metrics.jsonl"
    running: Dict[str, torch.Tensor] = {}
    n_running, last = 0, {}
    t_last = time.time()
    pbar = tqdm(total=total_steps, initial=step, disable=not rt.is_main, desc="train", dynamic_ncols=True)

    def write_metrics(row: Dict[str, Any]) -> None:
        if rt.is_main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    while step < total_steps:
        epoch, position = divmod(step, batches_per_epoch)
        sampler.set_epoch(epoch, start=position * batch_size)
        train_set.set_epoch(epoch)
        # A private generator keeps DataLoader from drawing on the global RNG (exact resume).
        loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=True,
                            num_workers=_num_workers(cfg), pin_memory=device.type == "cuda",
                            generator=torch.Generator())
        for x in loader:
            x = x.to(device, non_blocking=True)
            log = train_step(model_ddp, disc_ddp, loss, opt_ae, opt_disc, x, step, acc, dec_last, enc_last)
            step += 1
            pbar.update(1)
            for k, v in log.items():
                running[k] = running.get(k, 0.0) + v.float()
            n_running += 1
            end_of_epoch = step % batches_per_epoch == 0
            done = step >= total_steps

            if step % tc.log_every == 0 or done:
                keys = sorted(running)
                means = acc.reduce(torch.stack([running[k] for k in keys]) / n_running, reduction="mean")
                last = dict(zip(keys, means.tolist()))
                elapsed = time.time() - t_last
                row = {"step": step, "epoch": epoch, **last, "steps_per_sec": n_running / max(elapsed, 1e-9)}
                vf = ("vf %.4f (w %.3g, cos %.3f)" % (last["train/vf_loss"], last.get("train/vf_weight", nan),
                                                      last.get("train/vf_cos", nan))
                      if "train/vf_loss" in last else "vf off")
                logger.info("step %d | total %.4g | nll %.4g | rec %.4f | kl %.4g | g %.4g (d_weight %.3g) | "
                            "%s | disc %.4f | %.2f steps/s", step,
                            last["train/total_loss"], last["train/nll_loss"], last["train/rec_loss"],
                            last["train/kl_loss"], last["train/g_loss"], last["train/d_weight"],
                            vf, last["train/disc_loss"], row["steps_per_sec"])
                write_metrics(row)
                running, n_running, t_last = {}, 0, time.time()
            if tc.sample_every and step % tc.sample_every == 0 and rt.is_main:
                save_sample_grid(model, sample_x.to(device), run_dir / "images" / f"step_{step:07d}.png", acc)
            if val_loader is not None and ((tc.val_every and step % tc.val_every == 0)
                                           or (tc.val_every is None and end_of_epoch) or done):
                val = validate(model, loss, val_loader, acc, step, tc.val_max_batches)
                logger.info("step %d | validation: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in val.items()))
                write_metrics({"step": step, "epoch": epoch, **val})
                last.update(val)
            if (tc.ckpt_every and step % tc.ckpt_every == 0) or (tc.ckpt_every is None and end_of_epoch) or done:
                rng = gather_rng_states(rt.world_size)
                if rt.is_main:
                    path = ckpt_dir / f"step_{step:07d}.pt"
                    save_training_checkpoint(path, model, loss, opt_ae, opt_disc, step, cfg, rng)
                    link_last(path)
                    export_inference(run_dir, model, cfg)
                    logger.info("saved %s", path)
                    if tc.keep_last_n:
                        old = sorted(ckpt_dir.glob("step_*.pt"))[:-tc.keep_last_n]
                        for p in old:
                            p.unlink()
                acc.wait_for_everyone()
            if done:
                break
    pbar.close()
    logger.info("done: %d steps", step)
    return last


def main(argv: Optional[List[str]] = None) -> None:
    cfg, args = parse_cli(argv, description=__doc__.splitlines()[0], schema=TokenizerTrainConfig)
    config_path = args.config_opt or args.config_pos
    try:
        validate_train_config(cfg, config_path or "config")
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    exp_name = cfg.train.exp_name or (Path(config_path).stem if config_path else "vavae")
    try:
        train(cfg, Path(cfg.train.output_dir) / exp_name)
    except FileNotFoundError as err:  # missing weights / data: the message says what to get
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()

"""The VA-VAE trainer's building blocks (KL autoencoder + VF alignment loss + LPIPS/PatchGAN),
used by the thin `train_tokenizer.py`.

Replaces hustvl/LightningDiT `vavae/main.py` + Lightning (docs/reference_behaviour.md §6.1-6.6)
with plain PyTorch and `accelerate`:
- per batch one generator step then one discriminator step, both Adam(lr=base_learning_rate,
  betas=(0.5, 0.9)), no weight decay (reference `configure_optimizers`); constant LR as the
  reference unless `train.lr_schedule` sets a warm-up / decay (ours: both optimizers get
  base_learning_rate x the schedule's factor of the step, so a resume continues it exactly);
- the discriminator step sees the same (pre-update) reconstructions, detached;
- `disc_start` counts batches; `disc_start_counts_optimizer_steps: true` reproduces Lightning's
  two-steps-per-batch count (§6.4, §9.3);
- fp32 by default (`lightning.trainer.precision: 32`), `bf16` as an option;
- auto-resume from `{run_dir}/checkpoints/` (newest step), exactly: model, discriminator, both
  optimizers, step, every rank's RNG states and the data position (the step-keyed order of
  `datasets.order.GlobalBatchSampler` with the per-epoch seed `train.seed + epoch`). Unlike the
  reference, a failing resume raises instead of silently restarting from scratch; a corrupt
  newest checkpoint is named and the previous one used; a resume under a config that changes the
  run stops (`train.allow_config_change`); the run directory is owned and locked
  (training/rundir.py: `train.resume: false` refuses an existing run, `train.overwrite` moves it aside);
- warm start from `init_weight` (the reference's key) for the three-stage recipe;
- the resolved config is saved (the reference's SetupCallback never ran under PL 2.4);
- validation reconstruction loss (`val/rec_loss`), PNG grids (inputs / reconstructions / decoded
  random latents), checkpoints written atomically. Every training checkpoint's `state_dict` has the
  authors' key layout (`encoder.*`, ..., `linear_proj.weight`, `loss.*`), so `tokenizer/vavae.py`
  loads it directly; `export/vavae.pt` + `export/vavae.yaml` hold the latest inference weights.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from math import nan
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from configs.schema import to_container
from datasets.order import GlobalBatchSampler
from tokenizer.checkpoint import read_state_dict
from tokenizer.data import ImageFolderDataset
from tokenizer.foundation import FoundationModel
from tokenizer.losses import LPIPSWithDiscriminator
from tokenizer.train_config import loss_kwargs, lr_schedule, mixed_precision
from tokenizer.vavae_model import GENERATOR_PREFIXES, VAVAEModel
from training.checkpoints import load_latest, read_checkpoint, save_checkpoint
from training.faults import inject_fault
from training.lr_schedule import set_lr
from training.metrics import MetricsSink
from training.rundir import (TOKENIZER_FREE_KEYS, check_resume_config, claim_training_dir, decide_on_main,
                             release_run_dir)
from utils.fileio import atomic_torch_save, atomic_write, atomic_write_text
from utils.runtime import setup_runtime
from utils.seeding import gather_rng_states, restore_rng_state
from utils.state_dict import check_state_dict

logger = logging.getLogger("train_tokenizer")

CURVES = (("train/rec_loss", "train L1 reconstruction"), ("val/rec_loss", "validation L1 reconstruction"))
FIXED_PREFIXES = ("foundation_model.", "loss.perceptual_loss.")  # frozen, loaded from their own files
VAL_NOISE_SEED = 0        # posterior noise in validation: same draws at every evaluation
SAMPLE_NOISE_SEED = 1     # random latents decoded in the sample grids
CHECKPOINT_KEYS = ("state_dict", "optimizer_ae", "optimizer_disc", "step", "rng_states")
# Moved aside by train.overwrite (log.txt stays: runs append to it).
RUN_OUTPUTS = ("checkpoints", "export", "images", "config.yaml", "metrics.jsonl", "tensorboard", "loss_curve.png")


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
#                         Checkpoints, warm start, export                       #
#################################################################################

def training_state(model: VAVAEModel, loss: LPIPSWithDiscriminator, opt_ae: torch.optim.Optimizer,
                   opt_disc: torch.optim.Optimizer, step: int, cfg: DictConfig,
                   rng_states: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The checkpoint dict: trainable weights under the authors' keys, both optimizers, step,
    every rank's RNG state, the resolved config."""
    return {
        "state_dict": trainable_state_dict(model, loss),
        "optimizer_ae": opt_ae.state_dict(),
        "optimizer_disc": opt_disc.state_dict(),
        "step": step,
        "rng_states": rng_states,
        "config": to_container(cfg),
    }


def _copy_into(own: Dict[str, torch.Tensor], sd: Dict[str, torch.Tensor], keys) -> None:
    with torch.no_grad():
        for k in keys:
            own[k].copy_(sd[k])


def load_training_checkpoint(path: Path, model: VAVAEModel, loss: LPIPSWithDiscriminator,
                             opt_ae: torch.optim.Optimizer, opt_disc: torch.optim.Optimizer,
                             ckpt: Optional[Dict[str, Any]] = None) -> Tuple[int, List[Dict[str, Any]]]:
    """Restore model, discriminator and optimizers in place (strict); returns (step, rng_states).
    `ckpt`: the file's contents when already read."""
    ckpt = ckpt if ckpt is not None else read_checkpoint(path, CHECKPOINT_KEYS)
    own = trainable_state_dict(model, loss)
    check_state_dict(own, ckpt["state_dict"], str(path))
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
    check_state_dict(own, sd, f"init_weight {path}", same_keys=False)
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
    ae_loss = inject_fault(step, ae_loss)
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
#                                 Data and loop                                 #
#################################################################################

@dataclass
class TokenizerData:
    train_set: ImageFolderDataset
    order: GlobalBatchSampler          # step-keyed order; epoch e is randperm(seed + e)
    batches_per_epoch: int
    total_steps: int
    val_loader: Optional[DataLoader]
    sample_x: torch.Tensor             # the images shown in every sample grid


def _num_workers(cfg: DictConfig) -> int:
    nw = cfg.data.params.num_workers
    return 2 * cfg.data.params.batch_size if nw is None else nw  # reference default


def build_data(cfg: DictConfig, rt) -> TokenizerData:
    """Training images in the step-keyed order, the validation loader (each image once over all
    ranks) and the fixed images of the sample grids."""
    dp, tc = cfg.data.params, cfg.train
    if not dp.train.data_root:
        raise ValueError("'data.params.train.data_root' must be set")
    train_set = ImageFolderDataset(dp.train.data_root, dp.train.size, random_crop=True,
                                   seed=tc.seed, max_images=dp.train.max_images)
    if len(train_set) < dp.batch_size * rt.world_size:
        raise ValueError(f"{dp.train.data_root}: {len(train_set)} images give no full batch of "
                         f"{dp.batch_size} per process")
    order = GlobalBatchSampler(len(train_set), dp.batch_size * rt.world_size, rt.rank, rt.world_size,
                               tc.seed, epoch_seed=lambda epoch: tc.seed + epoch)
    batches_per_epoch = order.steps_per_epoch
    total_steps = tc.max_steps if tc.max_steps is not None else cfg.lightning.trainer.max_epochs * batches_per_epoch
    val_loader, sample_source = None, None
    if dp.validation.data_root:
        val_set = ImageFolderDataset(dp.validation.data_root, dp.validation.size, random_crop=False,
                                     max_images=dp.validation.max_images)
        val_loader = DataLoader(val_set, batch_size=dp.batch_size, num_workers=_num_workers(cfg),
                                sampler=list(range(rt.rank, len(val_set), rt.world_size)),
                                generator=torch.Generator())  # keeps the global RNG untouched
        sample_source = val_set
    else:
        sample_source = ImageFolderDataset(dp.train.data_root, dp.train.size, random_crop=False,
                                           max_images=tc.num_sample_images)
    sample_x = torch.stack([sample_source[i] for i in range(min(tc.num_sample_images, len(sample_source)))])
    logger.info("train images: %d (%d batches of %d per process per epoch), total steps: %d",
                len(train_set), batches_per_epoch, dp.batch_size, total_steps)
    return TokenizerData(train_set, order, batches_per_epoch, total_steps, val_loader, sample_x)


def epoch_loader(cfg: DictConfig, data: TokenizerData, step: int, device: torch.device) -> DataLoader:
    """This rank's batches from global step `step` to the end of its epoch. A private generator
    keeps the DataLoader from drawing on the global RNG (exact resume)."""
    epoch, _ = data.order.position(step)
    data.train_set.set_epoch(epoch)  # the random crops are keyed by (seed, epoch, index)
    perm = data.order.permutation(epoch)
    batches = [[i for i, _ in data.order.batch(s, perm)]
               for s in range(step, (epoch + 1) * data.batches_per_epoch)]
    return DataLoader(data.train_set, batch_sampler=batches, num_workers=_num_workers(cfg),
                      pin_memory=device.type == "cuda", generator=torch.Generator())


def resume_or_warm_start(cfg: DictConfig, ckpt_dir: Path, model: VAVAEModel, loss: LPIPSWithDiscriminator,
                         opt_ae, opt_disc) -> Tuple[int, Optional[List[Dict[str, Any]]]]:
    """`train.resume_from`, else the newest checkpoint with `train.resume`, else `init_weight`.
    Returns (start step, the checkpoint's per-rank RNG states or None)."""
    tc = cfg.train
    read = lambda p: read_checkpoint(p, CHECKPOINT_KEYS)  # noqa: E731
    found = (Path(tc.resume_from), read(Path(tc.resume_from))) if tc.resume_from else (
        load_latest(ckpt_dir, read) if tc.resume and not tc.overwrite else None)
    if found is not None:
        path, ckpt = found
        check_resume_config(path, ckpt.get("config"), to_container(cfg), TOKENIZER_FREE_KEYS, tc.allow_config_change)
        step, rng_states = load_training_checkpoint(path, model, loss, opt_ae, opt_disc, ckpt)
        logger.info("resumed from %s at step %d", path, step)
        return step, rng_states
    if cfg.init_weight:
        warm_start(cfg.init_weight, model, loss)
    return 0, None


def claim_run(cfg: DictConfig, rt, run_dir: Path) -> None:
    """Lock and claim the run directory on the main process (training/rundir.py); every rank
    raises the same RunDirError when it is refused. `train.overwrite` wins over the default
    `train.resume: true`."""
    tc = cfg.train
    decide_on_main(rt.accelerator, lambda: claim_training_dir(
        run_dir, resume=tc.resume and not tc.overwrite, overwrite=tc.overwrite, outputs=RUN_OUTPUTS,
        resume_from=tc.resume_from))


def log_window(rt, sink: MetricsSink, running: Dict[str, torch.Tensor], count: int, step: int, epoch: int,
               elapsed: float, lr: float) -> Dict[str, float]:
    """Average the window's logs over steps and ranks, print one line, write one metrics row
    (`lr`: the rate of the window's last step)."""
    keys = sorted(running)
    means = rt.accelerator.reduce(torch.stack([running[k] for k in keys]) / count, reduction="mean")
    last = dict(zip(keys, means.tolist()))
    row = {"step": step, "epoch": epoch, **last, "lr": lr, "steps_per_sec": count / max(elapsed, 1e-9)}
    vf = ("vf %.4f (w %.3g, cos %.3f)" % (last["train/vf_loss"], last.get("train/vf_weight", nan),
                                          last.get("train/vf_cos", nan))
          if "train/vf_loss" in last else "vf off")
    logger.info("step %d | total %.4g | nll %.4g | rec %.4f | kl %.4g | g %.4g (d_weight %.3g) | "
                "%s | disc %.4f | lr %.3g | %.2f steps/s", step, last["train/total_loss"], last["train/nll_loss"],
                last["train/rec_loss"], last["train/kl_loss"], last["train/g_loss"], last["train/d_weight"],
                vf, last["train/disc_loss"], lr, row["steps_per_sec"])
    sink.log(row)
    return last


def train(cfg: DictConfig, run_dir: str | Path) -> Dict[str, float]:
    """Run (or resume) training as configured; returns the last logged train / val numbers.
    The run directory's lock (training/rundir.py) is released however the run ends."""
    try:
        return _train(cfg, Path(run_dir))
    finally:
        release_run_dir(run_dir)


def _train(cfg: DictConfig, run_dir: Path) -> Dict[str, float]:
    tc = cfg.train
    rt = setup_runtime(str(run_dir), seed=tc.seed, mixed_precision=mixed_precision(cfg), name="train_tokenizer")
    acc, device, ckpt_dir = rt.accelerator, rt.device, run_dir / "checkpoints"
    claim_run(cfg, rt, run_dir)
    model, loss = build_model(cfg).to(device), build_loss(cfg).to(device)
    opt_ae, opt_disc = build_optimizers(cfg, model, loss)
    base_lr, schedule = cfg.model.base_learning_rate, lr_schedule(cfg)
    logger.info("generator: %.2fM trainable parameters; discriminator: %.2fM",
                sum(p.numel() for p in opt_ae.param_groups[0]["params"]) / 1e6,
                sum(p.numel() for p in loss.discriminator.parameters()) / 1e6)
    data = build_data(cfg, rt)
    step, rng_states = resume_or_warm_start(cfg, ckpt_dir, model, loss, opt_ae, opt_disc)
    if rt.is_main:  # after the resume checks: a refused run leaves the run's config.yaml alone
        atomic_write_text(OmegaConf.to_yaml(cfg), run_dir / "config.yaml")
    model_ddp, disc_ddp, opt_ae, opt_disc = acc.prepare(model, loss.discriminator, opt_ae, opt_disc)
    if rng_states is not None and len(rng_states) == rt.world_size:
        restore_rng_state(rng_states[rt.rank])
    elif rng_states is not None:
        logger.warning("checkpoint has RNG states of %d processes, running %d: RNG not restored "
                       "(the continuation is not bit-identical)", len(rng_states), rt.world_size)
    # Lightning's model.train() reaches the loss module, so LPIPS dropout is active in training
    # (§9.3; lpips_train_mode: false keeps LPIPS in eval).
    model.train()
    loss.train()
    sink = MetricsSink(run_dir, rt.is_main, step, to_container(cfg), CURVES, log_scale=False,
                       report_to=tc.report_to)
    running: Dict[str, torch.Tensor] = {}
    count, last, t_last = 0, {}, time.time()
    pbar = tqdm(total=data.total_steps, initial=step, disable=not rt.is_main, desc="train", dynamic_ncols=True)
    while step < data.total_steps:
        epoch = step // data.batches_per_epoch
        for x in epoch_loader(cfg, data, step, device):
            lr = set_lr(opt_ae, base_lr, schedule, step)
            set_lr(opt_disc, base_lr, schedule, step)
            log = train_step(model_ddp, disc_ddp, loss, opt_ae, opt_disc, x.to(device, non_blocking=True), step,
                             acc, model.decoder_last_layer, model.encoder_last_layer)
            step, count = step + 1, count + 1
            pbar.update(1)
            for k, v in log.items():
                running[k] = running.get(k, 0.0) + v.float()
            end_of_epoch, done = step % data.batches_per_epoch == 0, step >= data.total_steps
            if step % tc.log_every == 0 or done:
                last = log_window(rt, sink, running, count, step, epoch, time.time() - t_last, lr)
                running, count, t_last = {}, 0, time.time()
            if tc.sample_every and step % tc.sample_every == 0 and rt.is_main:
                save_sample_grid(model, data.sample_x.to(device), run_dir / "images" / f"step_{step:07d}.png", acc)
            if data.val_loader is not None and ((tc.val_every and step % tc.val_every == 0)
                                                or (tc.val_every is None and end_of_epoch) or done):
                val = validate(model, loss, data.val_loader, acc, step, tc.val_max_batches)
                logger.info("step %d | validation: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in val.items()))
                sink.log({"step": step, "epoch": epoch, **val})
                last.update(val)
            if (tc.ckpt_every and step % tc.ckpt_every == 0) or (tc.ckpt_every is None and end_of_epoch) or done:
                save_tokenizer_checkpoint(cfg, rt, run_dir, sink, model, loss, opt_ae, opt_disc, step)
            if done:
                break
    pbar.close()
    sink.close()
    logger.info("done: %d steps", step)
    return last


def save_tokenizer_checkpoint(cfg: DictConfig, rt, run_dir: Path, sink: MetricsSink, model: VAVAEModel,
                              loss: LPIPSWithDiscriminator, opt_ae, opt_disc, step: int) -> None:
    """Checkpoint (all ranks' RNG states), `last.pt` link, inference export, loss curve."""
    rng = gather_rng_states(rt.world_size)
    if rt.is_main:
        save_checkpoint(training_state(model, loss, opt_ae, opt_disc, step, cfg, rng), run_dir / "checkpoints",
                        step, cfg.train.keep_last_n, link_last=True)
        export_inference(run_dir, model, cfg)
        sink.plot()
    rt.accelerator.wait_for_everyone()

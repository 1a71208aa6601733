"""The Semantic VAE trainer's building blocks (SFD `tokenizer/semvae/train.py`), used by the thin
`train_semvae.py`.

SFD's recipe (docs/reference_behaviour.md, §12.1.3): pre-extracted DINOv2 patch tokens
(datasets/semantic_features.py), loss MSE + cos + 1e-7 KL (+ the weighted L1 and classification
terms; tokenizer/semvae.py), AdamW(lr) with torch's other defaults, warm-up 500 steps from
0.01 x lr, constant for `constant_steps`, cosine to 0.1 x lr at `total_iterations`, bf16 autocast,
batch 64 per process, evaluation on held-out features, `semantic_ae_final.pt` at the end with SFD's
dict keys (SFD_CHECKPOINT_KEYS).

What differs from SFD, and why:
- step s (0-based) is the s-th update and uses lr x factor(s): SFD's schedule exactly (its
  scheduler steps once per update), as a function of the step (training/lr_schedule.py);
- all randomness is keyed: the data order is `datasets.order.GlobalBatchSampler`'s (a seeded
  permutation per epoch, last partial batch dropped) and the posterior noise of step s on rank r
  comes from a generator seeded by (seed, s, r). So a resumed run continues bit for bit (weights,
  optimizer, LR, data order, the loss averages SFD saves), where SFD's reshuffles and draws anew;
- checkpoints are `{log_dir}/checkpoints/{step:07d}.pt` every `save_every` steps (after that many
  updates; SFD saves after update index `save_every`, one update later) in SFD's dict layout plus
  `step` (SFD's files resume at `iteration + 1`, its own rule); the run directory is owned and
  locked (training/rundir.py), writes are atomic, a corrupt newest checkpoint is named and the
  previous one used, `training.resume` continues the newest, a changed config stops the resume;
- evaluation means are over items (SFD averages per-batch means, which weighs a short last batch
  more), with fixed posterior noise; rows go to metrics.jsonl;
- `semantic_ae_final.pt` is also written when `training.max_epochs` ends the run first (SFD then
  stops without it); a non-finite loss stops the run before anything is saved.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from configs.schema import to_container
from datasets.order import GlobalBatchSampler
from datasets.semantic_features import FeatureBatches, FeatureFile, feature_files
from tokenizer.semvae import (LossWeights, SemanticVAE, build_semantic_vae,
                              semvae_loss, token_cosine)
from training.checkpoints import load_latest, read_checkpoint, save_checkpoint
from training.faults import inject_fault
from training.lr_schedule import LRSchedule, set_lr
from training.metrics import MetricsSink
from training.rundir import check_resume_config, claim_training_dir, decide_on_main, release_run_dir
from utils.fileio import atomic_torch_save, atomic_write_text
from utils.runtime import setup_runtime
from utils.seeding import derive_seed
from utils.state_dict import load_strict

logger = logging.getLogger("train_semvae")

FINAL_NAME = "semantic_ae_final.pt"
NUM_CLASSES = 1000                     # SFD's classification head (ImageNet)
WARMUP_START = 0.01                    # SFD's LinearLR start_factor
LOSS_MOMENTUM = 0.99                   # SFD's LossTracker
STREAM_INIT, STREAM_NOISE, STREAM_EVAL = 31, 32, 33
TERMS = ("mse", "l1", "cos_loss", "kl_loss", "classification_loss", "total",
         "bottleneck_std", "bottleneck_mean", "bottleneck_min", "bottleneck_max")   # SFD's logged names
CURVES = (("train/total", "train loss"), ("train/mse", "train MSE"), ("eval/mse", "eval MSE"))
RUN_OUTPUTS = ("checkpoints", "config.yaml", "metrics.jsonl", "tensorboard", "loss_curve.png", "wandb_id.txt")
# Keys a resume may change without changing what is trained.
FREE_KEYS = ("variables.*", "training.checkpoint_path", "training.max_epochs", "training.max_steps",
             "training.resume", "training.overwrite", "training.allow_config_change",
             "training.checkpointing.*", "training.evaluation.*", "training.log.*", "data.num_workers")


#################################################################################
#                                  Construction                                 #
#################################################################################

def lr_schedule(cfg: DictConfig) -> LRSchedule:
    """SFD's three phases: warm-up (0 counts as 1, as SFD), constant, cosine to min_lr_factor x lr
    at total_iterations (no decay when the constant phase reaches the end)."""
    sc, total = cfg.training.scheduler, cfg.training.total_iterations
    warmup = max(sc.warmup_steps, 1)
    decay_start = warmup + sc.constant_steps
    if decay_start >= total:
        return LRSchedule(warmup_steps=warmup, warmup_start=WARMUP_START)
    return LRSchedule(warmup_steps=warmup, warmup_start=WARMUP_START, decay_start=decay_start,
                      total_steps=total, final=sc.min_lr_factor)


def build_model(cfg: DictConfig, input_dim: int) -> Tuple[SemanticVAE, Optional[nn.Linear]]:
    """The Semantic VAE and, when the classification loss is on, its head; initialised from
    (seed, STREAM_INIT), the same on every rank and for every number of processes."""
    torch.manual_seed(derive_seed(cfg.training.seed, STREAM_INIT))
    model = build_semantic_vae(to_container(cfg.model), input_dim)
    head = nn.Linear(cfg.model.bottleneck_dim, NUM_CLASSES) if cfg.training.loss.classification_weight > 0 else None
    return model, head


def build_optimizer(cfg: DictConfig, model: nn.Module, head: Optional[nn.Module]) -> torch.optim.Optimizer:
    """AdamW (or Adam) over the VAE's then the head's parameters, torch's defaults but lr (SFD)."""
    oc = cfg.training.optimizer
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    kwargs = {} if oc.weight_decay is None else {"weight_decay": oc.weight_decay}
    cls = torch.optim.AdamW if oc.type == "AdamW" else torch.optim.Adam
    return cls(params, lr=oc.lr, **kwargs)


def loss_weights(cfg: DictConfig) -> LossWeights:
    lc = cfg.training.loss
    return LossWeights(lc.mse_weight, lc.cos_weight, lc.l1_weight, lc.kl_weight, lc.classification_weight, lc.cos_axis)


#################################################################################
#                                      Data                                     #
#################################################################################

@dataclass
class SemVAEData:
    train: FeatureFile
    order: GlobalBatchSampler          # step-keyed order; epoch e is a seeded permutation
    total_steps: int                   # where the run ends: total_iterations or max_epochs
    eval: Optional[FeatureFile]

    @property
    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch


def open_features(cfg: DictConfig) -> Tuple[FeatureFile, Optional[FeatureFile]]:
    """The training and (if configured) evaluation feature files; missing or mismatched files raise
    naming the file."""
    dc, ec = cfg.data, cfg.training.evaluation
    train = FeatureFile(*feature_files(dc.feature_dir, dc.model_name, dc.max_samples))
    evaluation = None
    if ec.feature_dir:
        evaluation = FeatureFile(*feature_files(ec.feature_dir, ec.model_name, ec.max_samples))
        if evaluation.feature_dim != train.feature_dim:
            raise ValueError(f"{evaluation.path}: feature width {evaluation.feature_dim} != the training "
                             f"features' {train.feature_dim} ({train.path})")
    return train, evaluation


def build_data(cfg: DictConfig, rank: int, world_size: int) -> SemVAEData:
    train, evaluation = open_features(cfg)
    batch = cfg.data.batch_size * world_size
    if train.num_samples < batch:
        raise ValueError(f"{train.path}: {train.num_samples} items give no full batch of data.batch_size "
                         f"{cfg.data.batch_size} x {world_size} processes")
    order = GlobalBatchSampler(train.num_samples, batch, rank, world_size, cfg.training.seed)
    tc = cfg.training
    total = tc.total_iterations
    if tc.max_epochs is not None:
        total = min(total, tc.max_epochs * order.steps_per_epoch)
    logger.info("training features: %s (%d items, %d x %d tokens; %d steps per epoch); evaluation: %s",
                train.path, train.num_samples, train.num_patches, train.feature_dim, order.steps_per_epoch,
                f"{evaluation.path} ({evaluation.num_samples} items)" if evaluation else "off")
    return SemVAEData(train, order, total, evaluation)


def epoch_loader(cfg: DictConfig, data: SemVAEData, step: int, device: torch.device) -> DataLoader:
    """This rank's batches from global step `step` to the end of its epoch (shuffle: the epoch's
    seeded permutation; else the file order). A private generator leaves the global RNG alone."""
    epoch, _ = data.order.position(step)
    perm = data.order.permutation(epoch) if cfg.data.shuffle else torch.arange(data.train.num_samples)
    batches = [[i for i, _ in data.order.batch(s, perm)] for s in range(step, (epoch + 1) * data.steps_per_epoch)]
    return DataLoader(FeatureBatches(data.train), batch_size=None, sampler=batches, num_workers=cfg.data.num_workers,
                      pin_memory=device.type == "cuda", generator=torch.Generator())


#################################################################################
#                                Steps and evaluation                           #
#################################################################################

class LossAverages:
    """SFD's LossTracker (exponential averages, momentum 0.99, the first value taken as is) over
    TERMS, kept on the device in float64 (no host sync per step; same numbers as SFD's floats)."""

    def __init__(self, device: torch.device, state: Optional[Dict[str, float]] = None):
        self.device = device
        self.avg: Optional[torch.Tensor] = None
        if state:
            self.load(state)

    def update(self, values: torch.Tensor) -> None:
        """values: (len(TERMS),) this step's terms."""
        values = values.detach().double()
        self.avg = values if self.avg is None else LOSS_MOMENTUM * self.avg + (1 - LOSS_MOMENTUM) * values

    def state(self) -> Dict[str, float]:
        return {} if self.avg is None else dict(zip(TERMS, self.avg.tolist()))

    def load(self, state: Dict[str, float]) -> None:
        if all(k in state for k in TERMS):
            self.avg = torch.tensor([float(state[k]) for k in TERMS], dtype=torch.float64, device=self.device)


def train_step(model: nn.Module, head: Optional[nn.Module], optimizer: torch.optim.Optimizer,
               batch: Dict[str, torch.Tensor], weights: LossWeights, step: int, generator: torch.Generator,
               accelerator) -> torch.Tensor:
    """One update on batch {'patch_tokens' (B, L, D), 'class_idx' (B,)}; returns TERMS as a
    (len(TERMS),) float32 tensor on the device (no host sync)."""
    features = batch["patch_tokens"]
    with accelerator.autocast():
        recon, z, kl = model(features, generator=generator)
        logits = head(z.mean(dim=1)) if head is not None else None
        terms = semvae_loss(recon, features, kl, weights, logits, batch["class_idx"] if head is not None else None)
    total = inject_fault(step, terms["total"])
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(total)
    optimizer.step()
    zd = z.detach().float()
    stats = torch.stack([zd.std(), zd.mean(), zd.min(), zd.max()])
    return torch.cat([torch.stack([terms[k].detach().float() for k in TERMS[:5]] + [total.detach().float()]), stats])


def eval_noise(seed: int, indices, num_patches: int, bottleneck_dim: int) -> torch.Tensor:
    """Posterior noise (len(indices), L, b) of held-out items, item i from (seed, i) alone: the
    evaluation does not depend on the batch size or the number of processes."""
    return torch.stack([torch.randn((num_patches, bottleneck_dim), generator=torch.Generator().manual_seed(
        derive_seed(seed, STREAM_EVAL, i))) for i in indices])


@torch.no_grad()
def evaluate(model: SemanticVAE, head: Optional[nn.Module], file: FeatureFile, cfg: DictConfig, accelerator,
             rank: int, world_size: int) -> Dict[str, float]:
    """Means over the held-out items (each once, split over ranks) of eval/{mse, l1, cos_sim (per
    token over features, SFD's metric), kl_loss, classification_loss}, with fixed posterior noise."""
    was_training = model.training
    model.eval()
    device = accelerator.device
    chunk = cfg.training.evaluation.batch_size * world_size          # one batch per rank per chunk
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    for lo in range(0, file.num_samples, chunk):
        indices = list(range(lo, min(lo + chunk, file.num_samples)))[rank::world_size]
        if not indices:
            continue
        f = file.tokens(indices).to(device)
        noise = eval_noise(cfg.training.seed, indices, file.num_patches, model.bottleneck_dim).to(device)
        with accelerator.autocast():
            recon, z, kl = model(f, noise=noise)
            recon, z, kl = recon.float(), z.float(), kl.float()
            ce = (nn.functional.cross_entropy(head(z.mean(dim=1)).float(), file.labels(indices).to(device),
                                              reduction="sum") if head is not None else torch.zeros((), device=device))
        sums += torch.stack([(recon - f).pow(2).mean(dim=(1, 2)).sum(), (recon - f).abs().mean(dim=(1, 2)).sum(),
                             token_cosine(recon, f).sum(), kl.sum(), ce,
                             torch.tensor(float(len(indices)), device=device)]).double()
    model.train(was_training)
    totals = accelerator.reduce(sums, reduction="sum").tolist()
    n = max(totals[-1], 1.0)
    out = dict(zip(("eval/mse", "eval/l1", "eval/cos_sim", "eval/kl_loss"), (v / n for v in totals[:4])))
    if head is not None:
        out["eval/classification_loss"] = totals[4] / n
    return out


#################################################################################
#                                   Checkpoints                                 #
#################################################################################

def checkpoint_state(model: SemanticVAE, head: Optional[nn.Module], optimizer: torch.optim.Optimizer, step: int,
                     iteration: int, averages: Dict[str, float], cfg: DictConfig, schedule: LRSchedule
                     ) -> Dict[str, Any]:
    """SFD's checkpoint dict (`iteration` as SFD counts it, see `save_semvae_checkpoint`) plus
    `step` (updates done) and, with the classification loss, the head's weights (SFD does not
    save them)."""
    lr = cfg.training.optimizer.lr
    state = {
        "iteration": iteration,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        # the LR is a function of the step: this records the schedule (SFD: a SequentialLR state)
        "scheduler_state_dict": {"last_epoch": step, "base_lr": lr, "last_lr": lr * schedule.factor(step),
                                 **asdict(schedule)},
        "loss": averages.get("total", 0.0),
        "loss_averages": averages,
        "config": OmegaConf.to_yaml(cfg),
        "input_dim": model.input_dim,
        "bottleneck_dim": model.bottleneck_dim,
        "step": step,
    }
    if head is not None:
        state["classification_head_state_dict"] = head.state_dict()
    return state


def stored_config(ckpt: Dict[str, Any]) -> Optional[dict]:
    """A checkpoint's config (SFD stores a YAML string) as a resolved dict, or None."""
    text = ckpt.get("config")
    if not isinstance(text, str):
        return None
    try:
        return OmegaConf.to_container(OmegaConf.create(text), resolve=True)
    except Exception:  # an unresolvable reference in a foreign file: compare nothing
        logger.warning("the checkpoint's stored config cannot be read: the resume is not checked against it")
        return None


def read_semvae_checkpoint(path: Path) -> Dict[str, Any]:
    return read_checkpoint(path, ("model_state_dict", "optimizer_state_dict", "iteration"))


def resume(cfg: DictConfig, ckpt_dir: Path, model: SemanticVAE, head: Optional[nn.Module],
           optimizer: torch.optim.Optimizer) -> Tuple[int, Dict[str, float]]:
    """`training.checkpoint_path` (ours or SFD's), else the newest checkpoint of the run with
    `training.resume`; restores weights (strict), optimizer and head in place. Returns (start step,
    loss averages); (0, {}) for a new run."""
    tc = cfg.training
    if tc.checkpoint_path:
        found = (Path(tc.checkpoint_path), read_semvae_checkpoint(Path(tc.checkpoint_path)))
    else:
        found = load_latest(ckpt_dir, read_semvae_checkpoint) if tc.resume and not tc.overwrite else None
    if found is None:
        return 0, {}
    path, ckpt = found
    check_resume_config(path, stored_config(ckpt), to_container(cfg), FREE_KEYS, tc.allow_config_change,
                        flag="training.allow_config_change=true")
    load_strict(model, ckpt["model_state_dict"], str(path), "the Semantic VAE")
    if head is not None:
        if "classification_head_state_dict" in ckpt:
            head.load_state_dict(ckpt["classification_head_state_dict"])
        else:
            logger.warning("%s holds no classification head (SFD does not save it): the head starts afresh", path)
    optimizer.load_state_dict(ckpt["optimizer_state_dict"])
    # ours record `step`; SFD's periodic files resume at iteration + 1 (SFD's rule)
    step = int(ckpt["step"]) if "step" in ckpt else int(ckpt["iteration"]) + 1
    logger.info("resumed from %s at step %d", path, step)
    return step, dict(ckpt.get("loss_averages") or {})


def save_semvae_checkpoint(cfg: DictConfig, rt, run_dir: Path, sink: MetricsSink, model: SemanticVAE,
                           head: Optional[nn.Module], optimizer, step: int, averages: Dict[str, float],
                           schedule: LRSchedule, final: bool) -> None:
    """`{step:07d}.pt` (`iteration` = step - 1, the index of the last update, as SFD's periodic
    files), and with `final` also semantic_ae_final.pt (`iteration` = step, as SFD's)."""
    if rt.is_main:
        ckpt_dir = Path(cfg.training.checkpointing.checkpoint_dir)
        save_checkpoint(checkpoint_state(model, head, optimizer, step, step - 1, averages, cfg, schedule), ckpt_dir,
                        step, cfg.training.checkpointing.keep_last_n, link_last=True)
        if final:
            atomic_torch_save(checkpoint_state(model, head, optimizer, step, step, averages, cfg, schedule),
                              ckpt_dir / FINAL_NAME)
            logger.info("saved %s", ckpt_dir / FINAL_NAME)
        sink.plot()
    rt.accelerator.wait_for_everyone()


#################################################################################
#                                      Loop                                     #
#################################################################################

def log_window(rt, sink: MetricsSink, running: torch.Tensor, count: int, step: int, epoch: int, lr: float,
               elapsed: float) -> Dict[str, float]:
    """Average the window's TERMS over steps and ranks; one log line, one metrics row. A
    non-finite loss stops the run here (before the next checkpoint could save it)."""
    means = rt.accelerator.reduce(running / count, reduction="mean").tolist()
    last = {f"train/{k}": v for k, v in zip(TERMS, means)}
    if not math.isfinite(last["train/total"]):
        raise FloatingPointError(f"non-finite training loss at step {step} ({last['train/total']}); nothing saved "
                                 "after the last checkpoint: lower training.optimizer.lr or check the features")
    row = {"step": step, "epoch": epoch, **last, "lr": lr, "steps_per_sec": count / max(elapsed, 1e-9)}
    logger.info("step %d | lr %.3g | total %.5f | mse %.5f | cos %.5f | kl %.4g | z std %.3f | %.2f steps/s",
                step, lr, last["train/total"], last["train/mse"], last["train/cos_loss"], last["train/kl_loss"],
                last["train/bottleneck_std"], row["steps_per_sec"])
    sink.log(row)
    return last


def train(cfg: DictConfig) -> Dict[str, float]:
    """Run (or resume) training as configured; returns the last logged train / eval numbers.
    The run directory's lock is released however the run ends."""
    run_dir = Path(cfg.training.log.log_dir)
    try:
        return _train(cfg, run_dir)
    finally:
        release_run_dir(run_dir)


def _train(cfg: DictConfig, run_dir: Path) -> Dict[str, float]:
    tc = cfg.training
    rt = setup_runtime(str(run_dir), seed=tc.seed, mixed_precision=tc.mixed_precision, name="train_semvae")
    acc, device, ckpt_dir = rt.accelerator, rt.device, Path(tc.checkpointing.checkpoint_dir)
    if tc.mixed_precision == "bf16" and device.type == "cpu":
        logger.info("bf16 autocast on the CPU (honoured, as configured; slower than fp32 on most CPUs)")
    decide_on_main(acc, lambda: claim_training_dir(
        run_dir, resume=tc.resume and not tc.overwrite, overwrite=tc.overwrite, outputs=RUN_OUTPUTS,
        resume_from=tc.checkpoint_path or None))
    data = build_data(cfg, rt.rank, rt.world_size)
    model, head = build_model(cfg, data.train.feature_dim)
    model, head = model.to(device), (head.to(device) if head is not None else None)
    optimizer = build_optimizer(cfg, model, head)
    logger.info("Semantic VAE (%s, %s): %.2fM parameters, %d -> %d per token", cfg.model.arch,
                "variational" if cfg.model.variational else "plain", sum(p.numel() for p in model.parameters()) / 1e6,
                model.input_dim, model.bottleneck_dim)
    step, averages = resume(cfg, ckpt_dir, model, head, optimizer)
    if rt.is_main:  # after the resume checks: a refused run leaves the run's config.yaml alone
        atomic_write_text(OmegaConf.to_yaml(cfg), run_dir / "config.yaml")
    model_ddp, optimizer = acc.prepare(model, optimizer)
    head_ddp = acc.prepare(head) if head is not None else None
    model.train()
    schedule, weights, base_lr = lr_schedule(cfg), loss_weights(cfg), tc.optimizer.lr
    tracker = LossAverages(device, averages)
    stop = data.total_steps if tc.max_steps is None else min(data.total_steps, tc.max_steps)
    sink = MetricsSink(run_dir, rt.is_main, step, to_container(cfg), CURVES, log_scale=True, report_to=tc.log.report_to)
    last: Dict[str, float] = {}

    def run_eval() -> None:
        if data.eval is not None:
            values = evaluate(model, head, data.eval, cfg, acc, rt.rank, rt.world_size)
            logger.info("step %d | evaluation: %s", step, ", ".join(f"{k} {v:.6f}" for k, v in values.items()))
            sink.log({"step": step, "epoch": step // data.steps_per_epoch, **values})
            last.update(values)

    if step == 0:
        run_eval()   # SFD evaluates before training
    if step >= data.total_steps:
        if not (ckpt_dir / FINAL_NAME).is_file():   # stopped between the last checkpoint and the final file
            save_semvae_checkpoint(cfg, rt, run_dir, sink, model, head, optimizer, step, tracker.state(),
                                   schedule, final=True)
        logger.info("the run is complete at step %d (%s)", step, ckpt_dir / FINAL_NAME)
    generator = torch.Generator(device=device)
    running, count, t_last, lr = None, 0, time.time(), base_lr
    pbar = tqdm(total=stop, initial=step, disable=not rt.is_main, desc="train", dynamic_ncols=True)
    while step < stop:
        epoch = step // data.steps_per_epoch
        for batch in epoch_loader(cfg, data, step, device):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            lr = set_lr(optimizer, base_lr, schedule, step)
            generator.manual_seed(derive_seed(tc.seed, STREAM_NOISE, step, rt.rank))
            values = train_step(model_ddp, head_ddp, optimizer, batch, weights, step, generator, acc)
            tracker.update(values)
            step, count = step + 1, count + 1
            running = values if running is None else running + values
            pbar.update(1)
            done, end = step >= stop, step >= data.total_steps
            if step % tc.log.log_every == 0 or done:
                last.update(log_window(rt, sink, running, count, step, epoch, lr, time.time() - t_last))
                running, count, t_last = None, 0, time.time()
            if step % tc.evaluation.eval_every == 0 or end:
                run_eval()
            if step % tc.checkpointing.save_every == 0 or done:
                finite = torch.isfinite(running).all().float() if running is not None else torch.ones((), device=device)
                if acc.reduce(finite.reshape(1), reduction="mean").item() < 1:   # the same answer on every rank
                    raise FloatingPointError(f"non-finite training loss before step {step}; not saved")
                save_semvae_checkpoint(cfg, rt, run_dir, sink, model, head, optimizer, step, tracker.state(),
                                       schedule, final=end)
            if done:
                break
    pbar.close()
    sink.close()
    logger.info("done: %d steps%s", step,
                f"; final weights {ckpt_dir / FINAL_NAME}" if step >= data.total_steps else "")
    return last

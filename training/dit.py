"""The LightningDiT trainer's building blocks (hustvl/LightningDiT `train.py`, DiT layout), used
by the thin `train.py`: networks and optimizer, resume, data, one step, validation, checkpoint.

The reference recipe (docs/reference_behaviour.md §3): rectified-flow velocity loss (MSE +
cosine, 1:1), AdamW(lr, betas (0.9, beta2), weight decay 0), constant LR, bf16 autocast with
fp32 weights, EMA every step initialised as an exact copy, per-process batch = global batch /
processes, optional clipping, `train.weight_init` warm start (§3.7's shape-mismatch rule).

What this does instead of the reference (§9.2):
- all randomness of step s (data order, flips, t, noise, label dropout) is a function of
  (train.global_seed, s) drawn for the *global* batch and sliced per rank, so a run does not
  depend on the number of processes and a resumed run reads exactly the same numbers;
- exact gradient accumulation (`train.micro_batch_size`): rank r's slice of the global batch is
  cut into micro-batches, each keeps the draws of its global sample indices, the loss is scaled
  so the gradient is the mean over the global batch, and only the last micro-step all-reduces;
  so 1 process x 4 micro-steps == 2 processes x 2 == 1 x 1 up to float summation order.
  Checkpoints fall on optimizer steps only (no resume inside an accumulation cycle);
- the objective returns named per-sample terms; the optimised loss is the sum of those whose
  name ends in `loss` (rectified flow: loss + cos_loss, DDPM: loss, SFD: + repa_loss) and every
  term is logged under its name (DDPM's log-only `mse` and `vb` too);
- items carry extra targets (`extras`, e.g. SFD's `repa_target`) that follow their latents
  through the micro-batch split into `training_losses(..., **extras)`;
- every log window reports the gradient norm before clipping, the fraction of clipped steps
  and images seen, and warns when the optimised loss jumps above `train.spike_factor` x its
  running median;
- one DDP wrapper (`accelerator.prepare` once); `model` and `ema` are saved with clean keys;
- checkpoints hold model, ema, opt, config, step, data position, per-rank RNG states and the
  t-sampling state, written atomically; `train.resume` takes the newest readable step (a
  corrupt file is named and skipped) after checking the stored config; the run directory is
  owned and locked (training/rundir.py: `train.overwrite`, `train.allow_config_change`);
- a non-finite loss stops the run (the poisoned weights are never saved);
- `data.valid_path` gives a validation loss at fixed t (the reference's hook crashes).
Label dropout for CFG is drawn here (same probability, `model.class_dropout_prob`) instead of
inside the model, so that it comes from the step-keyed stream.
"""
from __future__ import annotations

import contextlib
import logging
import statistics
import time
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from configs.schema import to_container
from datasets.img_latent_dataset import ImgLatentDataset
from datasets.latent_norm import LatentNormalizer
from datasets.order import STREAM_VALID, GlobalBatchSampler, SeededItems, step_noise
from models.build import build_model, should_compile
from models.checkpoint import warm_start
from models.ema import update_ema
from models.kernels import select_kernels
from training.checkpoints import checkpoint_path, load_latest, read_checkpoint, save_checkpoint
from training.faults import inject_fault
from training.metrics import MetricsSink
from training.rundir import DIT_FREE_KEYS, check_resume_config, claim_training_dir, decide_on_main
from transport import build_transport
from utils.seeding import derive_seed, gather_rng_states, restore_rng_state

logger = logging.getLogger("train")

CURVES = (("loss", "train MSE"), ("valid_loss", "valid MSE (fixed t)"))
TENSORBOARD_TAGS = {"loss": "Loss/train", "cos_loss": "Loss/cos", "repa_loss": "Loss/repa", "mse": "Loss/mse",
                    "vb": "Loss/vb", "total_loss": "Loss/total", "steps_per_sec": "Perf/steps_per_sec",
                    "images_per_sec": "Perf/images_per_sec", "valid_loss": "Loss/valid",
                    "valid_loss_ema": "Loss/valid_ema", "grad_norm": "Grad/norm_before_clip",
                    "clipped_frac": "Grad/clipped_fraction", "images_seen": "Progress/images_seen"}
# How the log line names a term (after "Train Loss", the `loss` term); other names as they are.
TERM_LABELS = {"cos_loss": "Cos Loss", "repa_loss": "REPA Loss", "mse": "MSE", "vb": "VB"}
# Window entries beside the objective's terms: optimised loss, gradient norm, clipped (0/1).
STEP_STATS = ("total", "grad_norm", "clipped")
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard", "loss_curve.png")  # moved aside by train.overwrite
SPIKE_WINDOWS = 20  # the running median of the loss spans this many log windows


class NonFiniteLossError(RuntimeError):
    """Raised on every rank when a training loss is NaN or inf."""


@dataclass
class Networks:
    """What a step updates. `model` is the DDP-wrapped module after `prepare`, `unwrapped` the
    module itself (clean state-dict keys; the EMA follows it)."""
    model: torch.nn.Module
    unwrapped: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    transport: object
    drop_prob: float


@dataclass
class Data:
    sampler: GlobalBatchSampler
    loader: DataLoader
    num_items: int
    valid_normalizer: Optional[LatentNormalizer]  # the training set's, on the device (validation on)
    accum_steps: int = 1          # micro-steps per optimizer step on each process


def accumulation_steps(cfg, world_size: int) -> Tuple[int, int]:
    """(micro batch per process, micro-steps per optimizer step) from `train.micro_batch_size`."""
    local = cfg.train.global_batch_size // world_size
    micro = cfg.train.micro_batch_size or local
    if cfg.train.global_batch_size % world_size or local % micro:
        raise ValueError(f"train.global_batch_size {cfg.train.global_batch_size} is not divisible by "
                         f"processes ({world_size}) x train.micro_batch_size ({micro})")
    return micro, local // micro


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
    # Ownership and lock (training/rundir.py): the main process decides for all.
    decide_on_main(accelerator, lambda: claim_training_dir(
        path, resume=cfg.train.resume, overwrite=cfg.train.overwrite, outputs=RUN_OUTPUTS))
    accelerator.wait_for_everyone()
    return path


def build_networks(cfg) -> Networks:
    """Model (identical on every rank and world size: seeded by global_seed only), EMA, AdamW."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.global_seed)
        model = build_model(cfg, training=True)
    if cfg.train.weight_init:
        warm_start(model, cfg.train.weight_init)
    ema = deepcopy(model).requires_grad_(False).eval()
    update_ema(ema, model, decay=0.0)  # exact copy (the reference overwrites the warm-started EMA too)
    drop_prob = model.y_embedder.dropout_prob
    model.y_embedder.dropout_prob = 0.0  # label dropout is drawn in the loop (step-keyed stream)
    logger.info("LightningDiT parameters: %s", f"{sum(p.numel() for p in model.parameters()):,}")
    # Fused AdamW: the same update rule in one kernel over all tensors (CUDA and, from torch 2.4, CPU).
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr, weight_decay=0,
                            betas=(0.9, cfg.optimizer.beta2), fused=True)
    return Networks(model=model, unwrapped=model, ema=ema, opt=opt, transport=build_transport(cfg),
                    drop_prob=drop_prob)


def resume(nets: Networks, ckpt_dir: Path, cfg, rt) -> Tuple[int, List[dict], Optional[Path]]:
    """With `train.resume`, load the newest checkpoint into `nets` and this rank's RNG state.
    Returns (start step, log history, checkpoint path or None)."""
    found = load_latest(ckpt_dir, lambda p: read_checkpoint(p, ("model", "ema", "opt", "step"))) \
        if cfg.train.resume else None
    if cfg.train.resume and found is None:
        logger.info("train.resume: no checkpoint in %s, starting from scratch", ckpt_dir)
    if found is None:
        return 0, [], None
    path, ckpt = found
    check_resume_config(path, ckpt.get("config"), to_container(cfg), DIT_FREE_KEYS, cfg.train.allow_config_change)
    nets.model.load_state_dict(ckpt["model"], strict=True)
    nets.ema.load_state_dict(ckpt["ema"], strict=True)
    nets.opt.load_state_dict(ckpt["opt"])
    if len(ckpt.get("rng", [])) == rt.world_size:
        restore_rng_state(ckpt["rng"][rt.rank])
    else:
        logger.warning("resume: checkpoint from %d processes, now %d: per-rank RNG states not "
                       "restored (training draws are step-keyed and unaffected)",
                       len(ckpt.get("rng", [])), rt.world_size)
    logger.info("resumed from %s at step %d", path, int(ckpt["step"]))
    return int(ckpt["step"]), list(ckpt.get("log_history", [])), path


def prepare(nets: Networks, cfg, rt) -> None:
    """Move to the device, compile the blocks if asked, pick the kernels for the device (models/
    kernels.py), wrap in DDP (the one and only wrapper)."""
    nets.model.to(rt.device)
    nets.ema.to(rt.device)
    if should_compile(cfg, rt.device):
        nets.model.compile_blocks()
    select_kernels(nets.model)
    select_kernels(nets.ema)
    nets.model, nets.opt = rt.accelerator.prepare(nets.model, nets.opt)


def latent_dataset(cfg, data_dir, normalized: bool = True) -> ImgLatentDataset:
    """The shards of `data_dir` with the parts the config uses (model.semantic_chans,
    model.use_repa); `normalized` false gives the raw composite (validation normalises it with
    the training set's stats)."""
    return ImgLatentDataset(data_dir, latent_norm=cfg.data.latent_norm and normalized,
                            latent_multiplier=cfg.data.latent_multiplier if normalized else 1.0,
                            latent_sv_norm=cfg.data.latent_sv_norm and normalized,
                            semantic_chans=cfg.model.semantic_chans, repa=cfg.model.use_repa)


def build_data(cfg, rt, start_step: int) -> Data:
    """The latent shards in the step-keyed global batch order, and the validation normaliser."""
    dataset = latent_dataset(cfg, cfg.data.data_path)
    sampler = GlobalBatchSampler(len(dataset), cfg.train.global_batch_size, rt.rank, rt.world_size,
                                 cfg.train.global_seed, start_step=start_step)
    loader = DataLoader(SeededItems(dataset), batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        pin_memory=rt.device.type == "cuda", persistent_workers=False)
    micro, accum = accumulation_steps(cfg, rt.world_size)
    logger.info("dataset %s: %s latents, %d steps per epoch, per-process batch %d "
                "(%d micro-step(s) of %d)", cfg.data.data_path, f"{len(dataset):,}",
                sampler.steps_per_epoch, sampler.local_batch, accum, micro)
    valid_normalizer = None
    if cfg.data.valid_path and cfg.train.valid_every:
        valid_normalizer = dataset.normalizer.to(rt.device)
    return Data(sampler=sampler, loader=loader, num_items=len(dataset), valid_normalizer=valid_normalizer,
                accum_steps=accum)


def loss_terms(out: Dict[str, torch.Tensor], batch: int) -> Dict[str, torch.Tensor]:
    """The objective's named terms, each averaged over the batch: every per-sample (batch,)
    tensor of `training_losses`' output (not `pred`, the model output), in its order."""
    terms = {name: v.mean() for name, v in out.items() if v.dim() == 1 and v.shape[0] == batch}
    clash = [name for name in terms if name in STEP_STATS]
    if clash or "loss" not in terms:
        raise ValueError(f"training_losses returned terms {sorted(terms)}: expected a 'loss' term and "
                         f"none named {STEP_STATS}")
    return terms


def optimised_loss(terms: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum, in the objective's order, of the terms whose name ends in `loss`; the others
    (DDPM's `mse`, `vb`) are only logged."""
    total = None
    for name, value in terms.items():
        if name.endswith("loss"):
            total = value if total is None else total + value
    return total


def micro_batches(accum: int, *tensors: torch.Tensor, extras: Dict[str, torch.Tensor]):
    """`accum` equal slices along the batch of each tensor and of each extra target, together."""
    batch = tensors[0].shape[0]
    for name, value in extras.items():
        if value.shape[0] != batch:
            raise ValueError(f"extra target {name!r} has {value.shape[0]} rows for a batch of {batch}")
    chunks = [t.chunk(accum) for t in tensors]
    extra_chunks = {name: value.chunk(accum) for name, value in extras.items()}
    for k in range(accum):
        yield (*(c[k] for c in chunks), {name: c[k] for name, c in extra_chunks.items()})


def train_step(nets: Networks, cfg, rt, x: torch.Tensor, y: torch.Tensor, step: int,
               accum: int = 1, extras: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """One optimizer step on this rank's slice of global batch `step`, in `accum` micro-steps.

    `extras` (name -> (b, ...) tensors, e.g. `repa_target`) are sliced with the batch and passed
    to `training_losses` by name. Returns {term name: batch mean, 'total': optimised loss,
    'grad_norm': before clipping, 'clipped': 0/1}, float32 0-d tensors on the device (no sync).
    """
    noise = step_noise(nets.transport, cfg.train.global_seed, step, x.shape, rt.rank, rt.world_size,
                       rt.device, nets.drop_prob)
    y = torch.where(noise["drop"], cfg.data.num_classes, y)  # the null class
    nets.opt.zero_grad(set_to_none=True)
    sums: Dict[str, torch.Tensor] = {}
    micro = micro_batches(accum, x, y, noise["t"], noise["x0"], extras=extras or {})
    for k, (xm, ym, tm, x0m, em) in enumerate(micro):
        # Only the last micro-step all-reduces the accumulated gradients.
        sync = contextlib.nullcontext() if k == accum - 1 else rt.accelerator.no_sync(nets.model)
        with sync:
            for name, value in micro_step(nets, rt, xm, ym, tm, x0m, em, step, accum).items():
                if name not in sums:
                    sums[name] = torch.zeros((), device=x.device)
                sums[name] += value
    grad_norm, clipped = clip_gradients(nets, cfg, rt)
    nets.opt.step()
    update_ema(nets.ema, nets.unwrapped, cfg.train.ema_decay)
    return {**sums, "grad_norm": grad_norm.reshape(()).float(), "clipped": clipped.reshape(()).float()}


def micro_step(nets: Networks, rt, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, x0: torch.Tensor,
               extras: Dict[str, torch.Tensor], step: int, accum: int) -> Dict[str, torch.Tensor]:
    """Forward + backward of one micro-batch; the loss is divided by `accum` so the accumulated
    gradient is the mean over the process's batch (micro-batches are equal-sized). Returns
    {term: mean / accum, 'total': optimised loss / accum}, detached."""
    terms = loss_terms(nets.transport.training_losses(nets.model, x, dict(y=y), t=t, x0=x0, **extras),
                       x.shape[0])
    loss = inject_fault(step, optimised_loss(terms))
    rt.accelerator.backward(loss / accum if accum > 1 else loss)
    return {**{name: value.detach() / accum for name, value in terms.items()}, "total": loss.detach() / accum}


def clip_gradients(nets: Networks, cfg, rt) -> Tuple[torch.Tensor, torch.Tensor]:
    """Clip to `optimizer.max_grad_norm` when set; returns (norm before clipping, clipped 0/1)."""
    max_norm = cfg.optimizer.max_grad_norm
    params = [p for p in nets.model.parameters() if p.grad is not None]
    if max_norm is None:
        rt.accelerator.unscale_gradients()  # a no-op unless fp16 loss scaling is on
        grads = [p.grad for p in params]
        if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
            norm = torch.nn.utils.get_total_norm(grads)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        return norm, torch.zeros_like(norm)
    norm = rt.accelerator.clip_grad_norm_(params, max_norm)
    return norm, (norm > max_norm).float()


def check_finite(nonfinite: torch.Tensor, rt, first: int, last: int, last_good: Optional[Path]) -> None:
    """Stop every rank when any rank saw a non-finite loss in steps (first, last]."""
    if float(rt.accelerator.reduce(nonfinite.clone(), reduction="sum")) > 0:
        msg = (f"non-finite loss between steps {first + 1} and {last}; stopping. "
               f"Last good checkpoint: {last_good or 'none'}. Try optimizer.max_grad_norm=1.0, "
               f"model.use_qknorm=true or PRECISION=no (docs/reference_behaviour.md §9.2).")
        logger.error(msg)
        raise NonFiniteLossError(msg)


def log_window(cfg, rt, nets: Networks, data: Data, sink: MetricsSink, step: int,
               window: Dict[str, torch.Tensor], num_steps: int, elapsed: float) -> dict:
    """Average the window's sums over ranks (one all-reduce), run validation when due, write one
    metrics row: every term by name (`cos_loss` is 0 when the objective has none, as before),
    `total_loss` (the optimised loss), throughput, gradient norm, clipped fraction."""
    names = list(window)
    avg = rt.accelerator.reduce(torch.stack([window[n] for n in names]), reduction="mean") / num_steps
    means = dict(zip(names, avg.tolist()))
    total, grad_norm, clipped = (means.pop(n) for n in STEP_STATS)
    terms = {"cos_loss": 0.0, **means}
    steps_per_sec = num_steps / elapsed
    seen = step * cfg.train.global_batch_size
    line = (f"(step={step:07d}) Train Loss: {terms['loss']:.4f}, Train Steps/Sec: {steps_per_sec:.2f}, "
            f"Images/Sec: {steps_per_sec * cfg.train.global_batch_size:.1f}")
    line += "".join(f", {TERM_LABELS.get(n, n)}: {v:.4f}" for n, v in means.items() if n != "loss")
    logger.info(line + f", Grad Norm: {grad_norm:.4f}, Clipped: {100 * clipped:.0f}%, Images Seen: {seen}")
    row = {"step": step, **terms, "total_loss": total, "steps_per_sec": steps_per_sec,
           "images_per_sec": steps_per_sec * cfg.train.global_batch_size, "grad_norm": grad_norm,
           "clipped_frac": clipped, "images_seen": seen}
    median = loss_spike(sink.history, total, cfg.train.spike_factor)
    if median is not None:
        logger.warning(f"(step={step:07d}) loss spike: {total:.4f} > {cfg.train.spike_factor} x the "
                       f"running median {median:.4f} of the last {SPIKE_WINDOWS} log windows")
    if data.valid_normalizer is not None and step % cfg.train.valid_every == 0:
        nets.model.eval()
        vl = validation_loss({"model": nets.unwrapped, "ema": nets.ema}, cfg, nets.transport, rt,
                             data.valid_normalizer)
        nets.model.train()
        logger.info(f"(step={step:07d}) Valid Loss: {vl['model']:.4f}, EMA Valid Loss: {vl['ema']:.4f}")
        row.update(valid_loss=vl["model"], valid_loss_ema=vl["ema"])
    sink.log(row)
    sink.plot()
    return row


def loss_spike(history: List[dict], value: float, factor: Optional[float]) -> Optional[float]:
    """The running median of the logged optimised loss (`total_loss`; rows from before it was
    logged: MSE + cosine) when `value` exceeds `factor` x it, else None (also with fewer than 3
    windows logged or `factor` None)."""
    past = [r.get("total_loss", r["loss"] + r.get("cos_loss", 0.0))
            for r in history if "loss" in r][-SPIKE_WINDOWS:]
    if factor is None or len(past) < 3:
        return None
    median = statistics.median(past)
    return median if value > factor * median else None


def save_training_state(cfg, rt, nets: Networks, data: Data, sink: MetricsSink, ckpt_dir: Path,
                        step: int) -> Path:
    """Checkpoint every rank's RNG state and the main process's weights/optimizer (atomic)."""
    rngs = gather_rng_states(rt.world_size)
    path = checkpoint_path(ckpt_dir, step)
    if rt.is_main:
        epoch, batch_in_epoch = data.sampler.position(step)
        save_checkpoint({
            "model": nets.unwrapped.state_dict(), "ema": nets.ema.state_dict(), "opt": nets.opt.state_dict(),
            "config": to_container(cfg), "step": step,
            "data": {"epoch": epoch, "batch_in_epoch": batch_in_epoch,
                     "steps_per_epoch": data.sampler.steps_per_epoch, "num_items": data.num_items,
                     "global_batch_size": cfg.train.global_batch_size, "seed": cfg.train.global_seed,
                     "accum_steps": data.accum_steps},
            "t_sampling": {"use_lognorm": cfg.transport.use_lognorm,
                           "lognorm_until_step": cfg.transport.lognorm_until_step,
                           "lognorm_active": nets.transport.lognorm_active(step)},
            "rng": rngs, "world_size": rt.world_size, "log_history": sink.history,
        }, ckpt_dir, step, cfg.train.keep_last_n)
        sink.plot()
    rt.accelerator.wait_for_everyone()
    return path


def train_loop(cfg, rt, nets: Networks, data: Data, sink: MetricsSink, ckpt_dir: Path, start_step: int,
               last_good: Optional[Path], evaluator=None) -> int:
    """Steps start_step .. train.max_steps; host syncs only at log, evaluation and checkpoint
    steps. `evaluator(step)` (evaluation during training) runs every `train.eval_every` steps."""
    from tqdm import tqdm

    tc, step = cfg.train, start_step
    window: Dict[str, torch.Tensor] = {}             # name -> sum over the log window (train_step's keys)
    nonfinite = torch.zeros((), device=rt.device)
    window_steps, last_check, tic = 0, start_step, time.time()
    bar = tqdm(total=tc.max_steps, initial=start_step, disable=not rt.is_main, dynamic_ncols=True, desc="train")
    nets.model.train()
    for x, y, extras in data.loader:
        if step >= tc.max_steps:
            break
        extras = {name: value.to(rt.device, non_blocking=True) for name, value in extras.items()}
        stats = train_step(nets, cfg, rt, x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True),
                           step, data.accum_steps, extras)
        for name, value in stats.items():
            if name not in window:
                window[name] = torch.zeros((), device=rt.device)
            window[name] += value
        nonfinite += (~torch.isfinite(stats["total"])).float()
        step, window_steps = step + 1, window_steps + 1
        bar.update(1)
        is_ckpt = step % tc.ckpt_every == 0 or step == tc.max_steps
        if step % tc.log_every == 0 or is_ckpt:
            check_finite(nonfinite, rt, last_check, step, last_good)
            last_check = step
        if step % tc.log_every == 0:
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            row = log_window(cfg, rt, nets, data, sink, step, window, window_steps, time.time() - tic)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            window.clear()
            window_steps, tic = 0, time.time()
        if evaluator is not None and tc.eval_every and step % tc.eval_every == 0:
            began = time.time()
            evaluator(step)
            tic += time.time() - began  # throughput counts training time only
        if is_ckpt:
            last_good = save_training_state(cfg, rt, nets, data, sink, ckpt_dir, step)
    bar.close()
    return step


@torch.no_grad()
def validation_loss(models: Dict[str, torch.nn.Module], cfg, transport, rt,
                    normalizer: LatentNormalizer) -> Dict[str, float]:
    """Mean MSE (the `loss` term) on the held-out latents at fixed t (§9.2: the reference's hook
    crashes), normalised with the training set's stats (`normalizer`, on the device).

    Items 0..V-1 (V = min(len, num_valid_batches * global batch)), unflipped-or-flipped with a
    fixed per-item seed, t_i = (i + 0.5) / V and noise seeded by (seed, i): the same numbers at
    every evaluation and for any number of processes. Labels are kept (no dropout); extra
    targets are passed as in training.
    """
    data = SeededItems(latent_dataset(cfg, cfg.data.valid_path, normalized=False))
    total = min(len(data), cfg.train.num_valid_batches * cfg.train.global_batch_size)
    mine = list(range(rt.rank, total, rt.world_size))
    b, _ = accumulation_steps(cfg, rt.world_size)  # the micro-batch: what fits in memory
    sums = torch.zeros(len(models) + 1, device=rt.device, dtype=torch.float64)
    for lo in range(0, len(mine), b):
        ids = mine[lo: lo + b]
        items = [data[(i, derive_seed(cfg.train.global_seed, STREAM_VALID, i))] for i in ids]
        x = normalizer.normalize(torch.stack([it[0] for it in items]).to(rt.device))
        y = torch.stack([it[1] for it in items]).to(rt.device)
        extras = {name: torch.stack([it[2][name] for it in items]).to(rt.device) for name in items[0][2]}
        t = (torch.tensor(ids, dtype=torch.float32) + 0.5) / total
        x0 = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(
            derive_seed(cfg.train.global_seed, STREAM_VALID, 1, i))) for i in ids]).to(rt.device)
        for k, model in enumerate(models.values()):
            with rt.accelerator.autocast():
                out = transport.training_losses(model, x, dict(y=y), t=t.to(rt.device), x0=x0, **extras)
            sums[k] += out["loss"].double().sum()
        sums[-1] += len(ids)
    sums = rt.accelerator.reduce(sums, reduction="sum")
    return {name: float(sums[k] / sums[-1]) for k, name in enumerate(models)}

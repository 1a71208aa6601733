"""Helpers shared by train.py and inference.py: model/transport construction from the config,
EMA, the reference's warm-start rule, checkpoint discovery, and a data order that is a pure
function of (seed, step).

Follows hustvl/LightningDiT `train.py` (REFERENCE.md 3.3-3.7) where the published recipe depends
on it (EMA rule, weight_init shape-mismatch rule, AdamW settings); the rest is ours and exists
for exact resume:

- `derive_seed(*keys)` hashes integers into a 63-bit seed (numpy SeedSequence).
- `GlobalBatchSampler` gives every step the same *global* batch whatever the number of
  processes: epoch e is a seeded permutation, step s takes its slice [k*B, (k+1)*B), and rank r
  takes [r*b, (r+1)*b) of that (b = B / world). Each item carries its own seed for the
  dataset's random flip, so a resumed run reads exactly the latents an uninterrupted run reads.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"^(\d{7,})\.pt$")
SIZE_KEYS = ("hidden_size", "depth", "num_heads", "patch_size")


# ------------------------------------------------------------------------------------------------
# Construction from the config
# ------------------------------------------------------------------------------------------------

def latent_size(cfg) -> int:
    """Latent side = data.image_size // vae.downsample_ratio (must divide)."""
    size, ratio = cfg.data.image_size, cfg.vae.downsample_ratio
    if size % ratio:
        raise ValueError(f"data.image_size {size} is not divisible by vae.downsample_ratio {ratio}")
    return size // ratio


def build_model(cfg, training: bool = True) -> nn.Module:
    """LightningDiT from `cfg.model` (registry `model_type`, optional size overrides).

    As the reference: in_channels = model.in_chans, input_size = latent_size(cfg). Gradient
    checkpointing (`model.use_checkpoint`) only when training. `model.hidden_size/depth/
    num_heads/patch_size`, when set, replace the registry entry's values (tiny CPU models).
    """
    from models.lightningdit import LightningDiT, LightningDiT_models

    m = cfg.model
    if m.model_type not in LightningDiT_models:
        raise ValueError(f"unknown model.model_type {m.model_type!r}; expected one of "
                         f"{sorted(LightningDiT_models)}")
    kwargs = dict(input_size=latent_size(cfg), in_channels=m.in_chans, num_classes=cfg.data.num_classes,
                  class_dropout_prob=m.class_dropout_prob, learn_sigma=m.learn_sigma,
                  use_qknorm=m.use_qknorm, use_swiglu=m.use_swiglu, use_rope=m.use_rope,
                  use_rmsnorm=m.use_rmsnorm, wo_shift=m.wo_shift,
                  use_checkpoint=bool(m.use_checkpoint and training))
    overrides = {k: getattr(m, k) for k in SIZE_KEYS if getattr(m, k) is not None}
    if not overrides:
        return LightningDiT_models[m.model_type](**kwargs)
    with torch.device("meta"):  # read the registry sizes without allocating weights
        ref = LightningDiT_models[m.model_type](**{**kwargs, "input_size": 16 * 4})
    sizes = dict(hidden_size=ref.pos_embed.shape[-1], depth=len(ref.blocks),
                 num_heads=ref.num_heads, patch_size=ref.patch_size)
    sizes.update(overrides)
    return LightningDiT(**kwargs, **sizes)


def build_transport(cfg):
    """`create_transport` with the config's transport section (REFERENCE 2.1)."""
    from transport import create_transport

    tr = cfg.transport
    return create_transport(tr.path_type, tr.prediction, tr.loss_weight, tr.train_eps, tr.sample_eps,
                            use_cosine_loss=tr.use_cosine_loss, use_lognorm=tr.use_lognorm,
                            lognorm_until_step=tr.lognorm_until_step)


# ------------------------------------------------------------------------------------------------
# EMA and warm start
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float = 0.9999) -> None:
    """ema_p <- decay * ema_p + (1 - decay) * p for every named parameter (REFERENCE 3.4).

    Includes frozen ones (pos_embed) as the reference; buffers are not averaged. decay=0 makes
    an exact copy. `model` must be the unwrapped module (same parameter names as `ema`).
    """
    ema_params = dict(ema.named_parameters())
    model_params = dict(model.named_parameters())
    if ema_params.keys() != model_params.keys():
        raise ValueError("EMA and model parameter names differ: "
                         f"{sorted(set(ema_params) ^ set(model_params))[:5]}")
    names = list(ema_params)
    dst = [ema_params[n] for n in names]
    src = [model_params[n].detach() for n in names]
    if decay == 0.0:
        torch._foreach_copy_(dst, src)
        return
    torch._foreach_mul_(dst, decay)
    torch._foreach_add_(dst, src, alpha=1.0 - decay)


def warm_start(model: nn.Module, path: str) -> Tuple[List[str], List[str]]:
    """Load `train.weight_init` weights with the reference's shape-mismatch rule (REFERENCE 3.7).

    Tensors whose name and shape match are copied. A mismatched `x_embedder.proj.weight` becomes
    zeros of the new shape with input channels [:, :16] copied from the file (the reference's
    rule; its comment says 3 channels, the code copies 16). Every other mismatch or missing name
    is skipped and logged by name. The final load is strict (the state dict is complete).
    Returns (loaded names, skipped names).
    """
    from models.checkpoint import read_lightningdit_state_dict

    # The reference warm-starts from ckpt['model'] (not the EMA).
    src, _ = read_lightningdit_state_dict(path, prefer_ema=False)
    target = model.state_dict()
    new_state, loaded, skipped = {}, [], []
    for name, value in target.items():
        if name in src and src[name].shape == value.shape:
            new_state[name] = src[name].to(value.dtype)
            loaded.append(name)
        elif name == "x_embedder.proj.weight" and name in src and _patch_copy_ok(src[name], value):
            w = torch.zeros_like(value)
            w[:, :16] = src[name][:, :16].to(value.dtype)
            new_state[name] = w
            loaded.append(name)
            logger.warning("weight_init: %s %s -> %s: zeros with input channels [:, :16] copied "
                           "(reference rule)", name, tuple(src[name].shape), tuple(value.shape))
        else:
            new_state[name] = value
            why = "missing in file" if name not in src else \
                f"shape {tuple(src[name].shape)} in file vs {tuple(value.shape)} in model"
            skipped.append(name)
            logger.warning("weight_init: skipped %s (%s)", name, why)
    unused = sorted(set(src) - set(target))
    for name in unused:
        logger.warning("weight_init: unused tensor in file: %s", name)
    model.load_state_dict(new_state, strict=True)
    logger.info("weight_init: loaded %d / %d tensors from %s (%d skipped)",
                len(loaded), len(target), path, len(skipped))
    return loaded, skipped


def _patch_copy_ok(src: torch.Tensor, dst: torch.Tensor) -> bool:
    return (src.dim() == dst.dim() == 4 and src.shape[0] == dst.shape[0]
            and src.shape[2:] == dst.shape[2:] and min(src.shape[1], dst.shape[1]) >= 16)


# ------------------------------------------------------------------------------------------------
# Checkpoint files
# ------------------------------------------------------------------------------------------------

def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    """`{ckpt_dir}/{step:07d}.pt` (the reference's name)."""
    return Path(ckpt_dir) / f"{step:07d}.pt"


def list_checkpoints(ckpt_dir: Path) -> List[Tuple[int, Path]]:
    """(step, path) of every `NNNNNNN.pt` in ckpt_dir, sorted by step (temp files ignored)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = []
    for path in ckpt_dir.iterdir():
        match = CHECKPOINT_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    """The checkpoint with the highest step (the reference picked the largest file)."""
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def prune_checkpoints(ckpt_dir: Path, keep_last_n: Optional[int]) -> List[Path]:
    """Delete all but the newest `keep_last_n` checkpoints; returns the deleted paths."""
    if keep_last_n is None or keep_last_n <= 0:
        return []
    doomed = [path for _, path in list_checkpoints(ckpt_dir)[:-keep_last_n]]
    for path in doomed:
        path.unlink()
    return doomed


# ------------------------------------------------------------------------------------------------
# Deterministic randomness and data order
# ------------------------------------------------------------------------------------------------

def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a hash of the non-negative integers `keys` (numpy SeedSequence)."""
    lo, hi = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(hi) << 32 | int(lo)) & (2**63 - 1)


# Stream ids: one independent random stream per purpose.
STREAM_EPOCH, STREAM_FLIP, STREAM_STEP, STREAM_VALID = 11, 12, 13, 14


class GlobalBatchSampler:
    """Batch sampler of (index, item_seed) pairs, infinite, starting at `start_step`.

    Global batch s = permutation(epoch)[k*B:(k+1)*B] with epoch, k = divmod(s, N // B)
    (drop_last as the reference); this rank gets items [rank*b, (rank+1)*b) of it.
    """

    def __init__(self, num_items: int, global_batch: int, rank: int, world_size: int, seed: int,
                 start_step: int = 0):
        if global_batch % world_size:
            raise ValueError(f"train.global_batch_size {global_batch} is not divisible by the "
                             f"number of processes {world_size}")
        if num_items < global_batch:
            raise ValueError(f"the dataset has {num_items} items, fewer than train.global_batch_size "
                             f"{global_batch}")
        self.num_items, self.global_batch = num_items, global_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.local_batch = global_batch // world_size
        self.steps_per_epoch = num_items // global_batch
        self.start_step = start_step

    def position(self, step: int) -> Tuple[int, int]:
        """(epoch, batch index within the epoch) of global step `step`."""
        return divmod(step, self.steps_per_epoch)

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.seed, STREAM_EPOCH, epoch))
        return torch.randperm(self.num_items, generator=g)

    def batch(self, step: int, perm: Optional[torch.Tensor] = None) -> List[Tuple[int, int]]:
        epoch, k = self.position(step)
        perm = self.permutation(epoch) if perm is None else perm
        lo = k * self.global_batch + self.rank * self.local_batch
        ids = perm[lo: lo + self.local_batch].tolist()
        base = derive_seed(self.seed, STREAM_FLIP, step)
        first = self.rank * self.local_batch
        return [(i, (base + first + j) & (2**63 - 1)) for j, i in enumerate(ids)]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        step, cached = self.start_step, (None, None)
        while True:
            epoch, _ = self.position(step)
            if cached[0] != epoch:
                cached = (epoch, self.permutation(epoch))
            yield self.batch(step, cached[1])
            step += 1


class SeededItems(Dataset):
    """Wraps a dataset whose __getitem__ draws from torch's CPU RNG (the latent flip): item
    (index, seed) is read with the CPU generator set to `seed`, then the RNG state is restored."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        state = torch.get_rng_state()
        try:
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)


def step_noise(transport, seed: int, step: int, shape: Sequence[int], rank: int, world_size: int,
               device: torch.device, drop_prob: float) -> Dict[str, torch.Tensor]:
    """The random draws of one training step for this rank's slice of the global batch.

    Drawn for the whole global batch (B = shape[0] * world_size) from a generator seeded by
    (seed, step), then sliced, so they do not depend on the number of processes. Returns
    t (b,), x0 (b, C, H, W) and drop (b,) bool (class-label dropout for CFG).
    """
    b = shape[0]
    big = b * world_size
    g = torch.Generator(device=device).manual_seed(derive_seed(seed, STREAM_STEP, step))
    t = transport.sample_t(big, generator=g, step=step)
    x0 = torch.randn((big, *shape[1:]), generator=g, device=device)
    drop = torch.rand(big, generator=g, device=device) < drop_prob
    sl = slice(rank * b, (rank + 1) * b)
    return {"t": t[sl], "x0": x0[sl], "drop": drop[sl]}

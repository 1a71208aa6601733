"""Which item, noise and label each step (or image) gets: pure functions of the seed and a position.

- `GlobalBatchSampler` gives every training step the same *global* batch whatever the number of
  processes: epoch e is a seeded permutation, step s takes its slice [k*B, (k+1)*B), and rank r
  takes [r*b, (r+1)*b) of that (b = B / world). Each item carries its own seed for the dataset's
  random flip, so a resumed run reads exactly the latents an uninterrupted run reads.
- `step_noise` draws t, noise and label dropout of one step for the whole global batch, keyed
  by (seed, step).
- `sample_noise` / `sample_labels` / `work_plan`: image i of a sampling run gets its noise and
  label from (seed, i) alone, so an image never depends on the batch size, the number of
  processes or how far an interrupted run got.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from utils.seeding import derive_seed

# Stream ids: one independent random stream per purpose.
STREAM_EPOCH, STREAM_FLIP, STREAM_STEP, STREAM_VALID = 11, 12, 13, 14


class GlobalBatchSampler:
    """Batch sampler of (index, item_seed) pairs, infinite, starting at `start_step`.

    Global batch s = permutation(epoch)[k*B:(k+1)*B] with epoch, k = divmod(s, N // B)
    (drop_last as the reference); this rank gets items [rank*b, (rank+1)*b) of it.
    """

    def __init__(self, num_items: int, global_batch: int, rank: int, world_size: int, seed: int,
                 start_step: int = 0, epoch_seed: Optional[Callable[[int], int]] = None):
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
        # The tokenizer trainer keeps its historical per-epoch seed (seed + epoch).
        self.epoch_seed = epoch_seed or (lambda epoch: derive_seed(seed, STREAM_EPOCH, epoch))

    def position(self, step: int) -> Tuple[int, int]:
        """(epoch, batch index within the epoch) of global step `step`."""
        return divmod(step, self.steps_per_epoch)

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.epoch_seed(epoch))
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
    (index, seed) is read with the CPU generator set to `seed`, then the RNG state is restored.
    The item passes through as the dataset returns it ((x, y, extras) for the latent shards), so
    one flip draw decides every part of it."""

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


# Sampling: image i's noise and label from (seed, i) alone.
STREAM_SAMPLE, STREAM_BALANCED, STREAM_SDE, STREAM_DEMO = 21, 22, 23, 24
LABEL_MODES = ("uniform", "balanced")    # `sample.label_mode` (configs/schema.py validates against it)


def image_label_seed(seed: int, index: int) -> int:
    return derive_seed(seed, STREAM_SAMPLE, index, 0)


def sample_labels(indices: Sequence[int], num_classes: int, seed: int, label_mode: str = "uniform",
                  total: Optional[int] = None) -> torch.Tensor:
    """Labels (len(indices),) int64 of images `indices`.

    uniform: image i's own generator draws randint(num_classes) (the reference draws uniform
    labels, not class-balanced). balanced: entry i of a seeded permutation of
    arange(total) % num_classes, so every class appears total // num_classes or one more times.
    """
    if label_mode == "uniform":
        out = [torch.randint(num_classes, (1,), generator=torch.Generator().manual_seed(
            image_label_seed(seed, i))) for i in indices]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
    if label_mode == "balanced":
        if total is None:
            raise ValueError("balanced labels need the total number of images")
        g = torch.Generator().manual_seed(derive_seed(seed, STREAM_BALANCED, total, num_classes))
        labels = (torch.arange(total) % num_classes)[torch.randperm(total, generator=g)]
        return labels[torch.as_tensor(list(indices), dtype=torch.long)]
    raise ValueError(f"unknown sample.label_mode {label_mode!r} (expected one of {LABEL_MODES})")


def sample_noise(indices: Sequence[int], shape: Sequence[int], seed: int,
                 stream: int = STREAM_SAMPLE) -> torch.Tensor:
    """Initial noise (len(indices), *shape) float32 on the CPU, image i from its own generator."""
    out = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(
        derive_seed(seed, stream, i, 1))) for i in indices]
    return torch.stack(out) if out else torch.zeros((0, *shape))


def work_plan(total: int, per_proc_batch: int, world_size: int, rank: int) -> List[List[int]]:
    """Image indices of this rank per iteration, in the reference's order (docs/reference_behaviour.md §7.1):
    iteration k covers the global slice [k*n*w, (k+1)*n*w) and rank r takes every w-th index
    from r, i.e. index = k*n*w + j*w + r for j < n. Indices >= total are dropped (exactly
    `total` images are written; the reference rounded up to a multiple of n*w)."""
    chunk = per_proc_batch * world_size
    iterations = -(-total // chunk)
    return [list(range(k * chunk + rank, min((k + 1) * chunk, total), world_size))
            for k in range(iterations)]

"""Bookkeeping for inference.py: which image gets which noise and label, output naming, the work
plan across processes, and the demo grid.

Image i's noise and (uniform) label come from a generator seeded by (seed, i) alone, so an
image never depends on how far an earlier, interrupted run got or on the number of processes;
a restarted run regenerates exactly the missing images. Class-balanced labels are a seeded
permutation of `arange(N) % num_classes` (50 per class for 50k), also a function of (seed, i).

Folder naming follows hustvl/LightningDiT inference.py (REFERENCE.md 7.1); settings that the
reference did not have get a suffix only when they differ from the reference's behaviour.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from tools.train_utils import derive_seed

# The reference demo's classes (REFERENCE 7.1): 975 lakeside, 3 tiger shark, 207 golden
# retriever, 387 lesser panda, 388 giant panda, 88 macaw, 979 valley, 279 arctic fox.
DEMO_LABELS = (975, 3, 207, 387, 388, 88, 979, 279)
# Demo overrides of the reference (REFERENCE 7.1): cfg 9.0, no interval, no shift.
DEMO_CFG_SCALE, DEMO_INTERVAL_START, DEMO_SHIFT = 9.0, 0.0, 0.0

STREAM_SAMPLE, STREAM_BALANCED, STREAM_SDE, STREAM_DEMO = 21, 22, 23, 24


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
    raise ValueError(f"unknown sample.label_mode {label_mode!r} (expected 'uniform' or 'balanced')")


def sample_noise(indices: Sequence[int], shape: Sequence[int], seed: int,
                 stream: int = STREAM_SAMPLE) -> torch.Tensor:
    """Initial noise (len(indices), *shape) float32 on the CPU, image i from its own generator."""
    out = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(
        derive_seed(seed, stream, i, 1))) for i in indices]
    return torch.stack(out) if out else torch.zeros((0, *shape))


def work_plan(total: int, per_proc_batch: int, world_size: int, rank: int) -> List[List[int]]:
    """Image indices of this rank per iteration, in the reference's order (REFERENCE 7.1):
    iteration k covers the global slice [k*n*w, (k+1)*n*w) and rank r takes every w-th index
    from r, i.e. index = k*n*w + j*w + r for j < n. Indices >= total are dropped (exactly
    `total` images are written; the reference rounded up to a multiple of n*w)."""
    chunk = per_proc_batch * world_size
    iterations = -(-total // chunk)
    return [list(range(k * chunk + rank, min((k + 1) * chunk, total), world_size))
            for k in range(iterations)]


def sample_folder_name(cfg) -> str:
    """The reference's folder name, plus suffixes for non-reference settings.

    `{model_type /->-}-ckpt-{ckpt stem}-{sampling_method}-{steps}` lower-cased, with
    `-interval{start:.2f}-cfg{scale:.2f}-shift{shift:.2f}` when cfg_scale > 1.
    """
    s = cfg.sample
    ckpt = Path(cfg.ckpt_path).stem if cfg.ckpt_path else "none"
    name = f"{cfg.model.model_type.replace('/', '-')}-ckpt-{ckpt}-{s.sampling_method}-{s.num_sampling_steps}".lower()
    if s.cfg_scale > 1.0:
        name += f"-interval{s.cfg_interval_start:.2f}-cfg{s.cfg_scale:.2f}-shift{s.timestep_shift:.2f}"
    if s.mode != "ODE":
        name += f"-{s.mode.lower()}"
    if s.cfg_channels != "3" and s.cfg_scale > 1.0:
        name += f"-cfgch{s.cfg_channels}"
    if s.label_mode != "uniform":
        name += f"-{s.label_mode}"
    if s.precision != "fp32":
        name += f"-{s.precision}"
    if cfg.train.global_seed != 0:
        name += f"-seed{cfg.train.global_seed}"
    return name


def demo_labels(num_classes: int) -> Tuple[List[int], bool]:
    """The reference's 8 demo classes; with fewer than 1000 classes each is taken modulo
    num_classes. Returns (labels, remapped)."""
    labels = [c % num_classes for c in DEMO_LABELS]
    return labels, labels != list(DEMO_LABELS)


def class_names(num_classes: int, path: Optional[str] = None) -> Optional[List[str]]:
    """Class names: one per line from `path`, else torchvision's ImageNet-1k list (offline
    metadata) when num_classes == 1000, else None."""
    if path is not None:
        names = Path(path).read_text().splitlines()
        if len(names) < num_classes:
            raise ValueError(f"{path}: {len(names)} class names for {num_classes} classes")
        return names
    if num_classes == 1000:
        try:
            from torchvision.models import ResNet50_Weights
            return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
        except (ImportError, AttributeError, KeyError):
            return None
    return None


def image_grid(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows*cols, H, W, 3) uint8 -> (rows*H, cols*W, 3) row-major grid."""
    n, h, w, c = images.shape
    if n != rows * cols:
        raise ValueError(f"{n} images do not fill a {rows}x{cols} grid")
    return images.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)

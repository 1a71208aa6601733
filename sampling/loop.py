"""The one sampling loop: image indices -> noise and labels -> latents -> images.

`generate` is shared by FID sampling (`sample_fid_folder`, inference.py), evaluation during
training (training/online_eval.py) and the GPU benchmark (tools/bench/bench_gpu.py), so they
sample the same images the same way: image i's noise and label depend only on
(train.global_seed, i) (datasets/order.py), whatever the batch, rank or number of processes, and
the network runs under `sample.precision`.

An adaptive ODE solver (dopri5, SFD's sampler) picks one step size for a whole batch, so an image
also depends on its batch mates (within the solver's tolerance). FID sampling with such a solver
therefore draws fixed batches, images [b n, (b + 1) n) for n = sample.per_proc_batch_size, batch b
on rank b mod world_size (`fid_plan`): the same batches, hence the same images, on any number of
processes. Fixed-grid samplers keep the reference's index order (`datasets.order.work_plan`).
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torchdiffeq._impl.solvers import FixedGridODESolver  # the base of torchdiffeq's fixed-grid methods

from datasets.order import STREAM_SDE, sample_labels, sample_noise, work_plan
from models.build import latent_size
from transport.integrators import ODE_METHODS
from utils.fileio import atomic_write
from utils.seeding import derive_seed

logger = logging.getLogger("inference")


def label_mode(cfg) -> str:
    """How labels are drawn: `sample.label_mode`, or 'balanced' with SFD's
    `sample.balanced_sampling` (the same thing under SFD's name)."""
    return "balanced" if cfg.sample.balanced_sampling else cfg.sample.label_mode


def adaptive_method(mode: str, method: str, objective: str = "rectified_flow") -> bool:
    """The ODE's step sizes depend on the whole batch: torchdiffeq's adaptive methods (dopri5,
    dopri8, bosh3, ..., scipy_solver), not its fixed-grid ones nor ours."""
    solver = ODE_METHODS.get(method)
    return (objective != "ddpm" and mode == "ODE" and isinstance(solver, type)
            and not issubclass(solver, FixedGridODESolver))


def adaptive_solver(cfg) -> bool:
    """`adaptive_method` of the config's sampler."""
    return adaptive_method(cfg.sample.mode, cfg.sample.sampling_method, cfg.transport.objective)


def batch_plan(total: int, per_proc_batch: int, world_size: int, rank: int) -> List[List[int]]:
    """Image indices of this rank per iteration as fixed batches: batch b is [b n, (b + 1) n)
    (the last one shorter), batch b runs on rank b mod world_size. Every rank gets the same number
    of iterations (an empty last one where the batches run out), as `work_plan`."""
    batches = [list(range(b, min(b + per_proc_batch, total))) for b in range(0, total, per_proc_batch)]
    iterations = -(-len(batches) // world_size)
    mine = batches[rank::world_size]
    return mine + [[]] * (iterations - len(mine))


def fid_plan(cfg, total: int, world_size: int, rank: int) -> List[List[int]]:
    """This rank's batches of FID sampling: `batch_plan` for an adaptive solver, else `work_plan`."""
    plan = batch_plan if adaptive_solver(cfg) else work_plan
    return plan(total, cfg.sample.per_proc_batch_size, world_size, rank)


def precision_context(cfg, device: torch.device):
    """bf16 autocast of the network with `sample.precision: bf16`; fp32 (TF32 on GPU) otherwise."""
    if cfg.sample.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def generate(cfg, sampler, decoder, batches: Iterable[Sequence[int]], device: torch.device, *,
             total: int, labels: Optional[str] = None) -> Iterator[Tuple[Sequence[int], Union[np.ndarray, torch.Tensor]]]:
    """For each batch of image indices: (indices, uint8 NHWC images), or the latents (n, C, H, W)
    when `decoder` is None. `total`: the size of the whole set (balanced labels are a
    permutation of it); `labels`: the label mode (default: the config's)."""
    seed, mode = cfg.train.global_seed, labels or label_mode(cfg)
    shape = (cfg.model.in_chans, latent_size(cfg), latent_size(cfg))
    for ids in batches:
        z = sample_noise(ids, shape, seed).to(device)
        y = sample_labels(ids, cfg.data.num_classes, seed, mode, total).to(device)
        with precision_context(cfg, device):
            x = sampler(z, y, sde_seed=derive_seed(seed, STREAM_SDE, ids[0]))
        yield ids, decoder(x) if decoder is not None else x


def save_png(image: np.ndarray, path: Path) -> None:
    """uint8 (H, W, 3) -> PNG, atomically (a killed run never leaves a truncated PNG)."""
    atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


class PNGWriter:
    """Writes a batch's PNGs on background threads while the next batch samples (encoding one
    256 px PNG took 124 ms on a loaded 2-core VM: for a GPU that samples tens of images per
    second this is as long as the sampling itself). At most one batch
    is in flight: `submit` first waits for the previous one, so memory stays bounded and a write
    error surfaces at the next batch (or at `close`)."""

    def __init__(self, workers: int = 2):
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="png")
        self.pending: List[Future] = []

    def submit(self, images: Sequence[np.ndarray], paths: Sequence[Path]) -> None:
        self.wait()
        self.pending = [self.pool.submit(save_png, image, path) for image, path in zip(images, paths)]

    def wait(self) -> None:
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.pool.shutdown(wait=True)

    def __enter__(self) -> "PNGWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sample_fid_folder(cfg, rt, sampler, decoder, folder: Path,
                      on_complete: Optional[Callable[[Path], None]] = None) -> Path:
    """Write `sample.fid_num` PNGs `{index:06d}.png` into `folder` (claimed by the caller; a
    resumed run writes only the missing ones), then on the main process `labels.npy` and
    `{folder}.npz` (arr_0 images, arr_1 labels), call `on_complete(npz)` and release the folder."""
    from tqdm import tqdm

    from training.rundir import release_run_dir

    s = cfg.sample
    total = s.fid_num
    plan = fid_plan(cfg, total, rt.world_size, rt.rank)
    todo = [ids for ids in plan if ids and not all((folder / f"{i:06d}.png").is_file() for i in ids)]
    logger.info("writing %d images to %s: %d iterations of %d x %d processes (%d already done on rank %d)",
                total, folder, len(plan), s.per_proc_batch_size, rt.world_size, len(plan) - len(todo), rt.rank)
    tic, written = time.time(), 0
    with PNGWriter() as writer:  # PNGs of batch k are written while batch k + 1 samples
        batches = tqdm(todo, disable=not rt.is_main, desc="sampling", dynamic_ncols=True)
        for ids, images in generate(cfg, sampler, decoder, batches, rt.device, total=total):
            writer.submit(images, [folder / f"{i:06d}.png" for i in ids])
            written += len(ids)
    elapsed = time.time() - tic
    logger.info("rank %d wrote %d images in %.1f s (%.2f images/s)%s", rt.rank, written, elapsed,
                written / max(elapsed, 1e-9),
                f"; {sampler.num_cond_only}/{sampler.num_calls} evaluations skipped the unconditional half"
                if sampler.num_calls else "")
    rt.accelerator.wait_for_everyone()

    if rt.is_main:
        from evaluation.npz import create_npz_from_sample_folder
        npz = Path(f"{folder}.npz")
        labels = sample_labels(range(total), cfg.data.num_classes, cfg.train.global_seed, label_mode(cfg), total)
        atomic_write(folder / "labels.npy", lambda tmp: _save_npy(tmp, labels.numpy()))
        create_npz_from_sample_folder(str(folder), total)
        logger.info("saved %s (arr_0 %d images, arr_1 labels)", npz, total)
        if on_complete is not None:
            on_complete(npz)
        release_run_dir(folder)
    rt.accelerator.wait_for_everyone()
    return folder


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save(str) would append ".npy"
        np.save(f, array)

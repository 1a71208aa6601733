"""One runtime setup for every entry script: processes, device, seeds, logging and run dir.

Multi-process work goes through `accelerate` (launched by `tools/launch.sh`, `torchrun`, or
SLURM-style env variables); on a machine without CUDA it runs on CPU with gloo. Rank 0 logs INFO
to the console and to `{run_dir}/log.txt`; other ranks log warnings only.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from utils.fileio import open_append
from utils.seeding import rank_seed, seed_everything

LOG_FORMAT = "[%(asctime)s] %(message)s"


@dataclass
class Runtime:
    accelerator: "object"          # accelerate.Accelerator
    device: torch.device
    rank: int
    world_size: int
    logger: logging.Logger

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class _AppendFileHandler(logging.FileHandler):
    """`logging.FileHandler` that refuses a symbolic link at its path (`utils.fileio.open_append`)."""

    def _open(self):
        return open_append(self.baseFilename)


def configure_logging(is_main: bool, log_file: Optional[Path] = None) -> None:
    """Root logging for an entry script: INFO on rank 0 (console + file), WARNING elsewhere."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    formatter = logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    root.addHandler(console)
    if is_main and log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = _AppendFileHandler(log_file)
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
_allocator_tuned = False


def tune_cpu_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Keep freed host memory in the process instead of returning it to the OS (glibc only).

    By default glibc serves blocks over a dynamic threshold (128 KiB rising to 32 MiB) with fresh
    mmap pages and unmaps them on free, so activations of a CPU training step are page-faulted in
    anew, a measurable share of a small model's step (see docs/benchmarks.md).
    Fixing the mmap threshold at its maximum and raising the trim threshold makes the allocator
    reuse that memory (the process keeps its peak RSS instead). Returns True when applied; a no-op
    on other C libraries or with LIGHTNINGDIT_KEEP_MALLOC=1."""
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if os.environ.get("LIGHTNINGDIT_KEEP_MALLOC") == "1" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _allocator_tuned = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    return _allocator_tuned


def setup_runtime(run_dir: Optional[str] = None, seed: Optional[int] = None,
                  mixed_precision: Optional[str] = None, log_file: str = "log.txt",
                  name: str = "lightningdit") -> Runtime:
    """Create the Accelerator, seed this rank, configure logging and create `run_dir`.

    `mixed_precision` None keeps what the launcher chose (`accelerate launch --mixed_precision`).
    `seed` is the global seed; rank r is seeded with `rank_seed(seed, r, world_size)`.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    kwargs = {} if mixed_precision is None else {"mixed_precision": mixed_precision}
    if not torch.cuda.is_available():
        kwargs["cpu"] = True
        tune_cpu_allocator()  # CPU only: on a GPU host the activations live in device memory
    # DDP (the trainer's one wrapper): gradients are views into the all-reduce buckets, which
    # saves one copy of every gradient per step and its memory; the numbers are unchanged.
    kwargs["kwargs_handlers"] = [DistributedDataParallelKwargs(gradient_as_bucket_view=True)]
    accelerator = Accelerator(**kwargs)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rank, world = accelerator.process_index, accelerator.num_processes
    path = Path(run_dir) if run_dir is not None else None
    if path is not None and accelerator.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
    configure_logging(accelerator.is_main_process, path / log_file if path is not None else None)
    if seed is not None:
        seed_everything(rank_seed(seed, rank, world))
    logger = logging.getLogger(name)
    logger.info("processes: %d, device: %s, mixed precision: %s", world, accelerator.device,
                accelerator.mixed_precision)
    return Runtime(accelerator=accelerator, device=accelerator.device, rank=rank, world_size=world,
                   logger=logger)

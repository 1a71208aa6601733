"""Which `train.micro_batch_size` fits a GPU, and the `run_train.sh` line for a GPU budget.

    python tools/bench/bench_memory.py [--gpus-gb 24 40 80] [--processes 2] [--global-batch 1024]

The memory model is `tools/bench/gpu_memory_plan.py`'s (computed, not measured on a GPU):
training state 22 bytes per parameter, activations per image counted on the CPU with
saved-tensor hooks on the CUDA kernel path under bf16 autocast (eager: an upper bound for the
compiled blocks), a 3 GB allowance for the CUDA context and workspaces, and with
`model.use_checkpoint` each block's fp32 input plus one block recomputed. This script turns its
largest batch per GPU into the micro-batch for exact gradient accumulation: the largest power of
two that fits and divides the per-process batch (global batch / processes), the number of
micro-steps per optimizer step, and the command line.
"""
from __future__ import annotations

import argparse
import json
from typing import List, Optional

from tools.bench.gpu_memory_plan import GPU_GB, plan

CONFIG = "configs/lightningdit_xl_vavae_f16d32.yaml"


def micro_batch(max_batch: int, local_batch: int) -> int:
    """Largest power of two <= max_batch dividing local_batch (0: not even one image fits)."""
    micro = 0
    m = 1
    while m <= min(max_batch, local_batch):
        if local_batch % m == 0:
            micro = m
        m *= 2
    return micro


def command(model: str, micro: int, checkpoint: bool, processes: int) -> str:
    keys = [f"model.model_type={model}", f"train.micro_batch_size={micro}"]
    keys += ["model.use_checkpoint=true"] if checkpoint else []
    return f"GPUS_PER_NODE={processes} bash run_train.sh {CONFIG} data.data_path=/data/latents " + " ".join(keys)


def main(argv: Optional[List[str]] = None) -> List[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["LightningDiT-B/1", "LightningDiT-XL/1", "LightningDiT-1p6B/1"])
    ap.add_argument("--gpus-gb", nargs="+", type=int, default=[24, 40, 80], choices=GPU_GB)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--global-batch", type=int, default=1024)
    args = ap.parse_args(argv)
    local = args.global_batch // args.processes
    rows = []
    print("| model | state GiB | act MiB/image (ckpt) | " + " | ".join(
        f"micro @ {g} GB: plain / ckpt" for g in args.gpus_gb) + " |")
    print("|" + "---|" * (3 + len(args.gpus_gb)))
    for name in args.models:
        p = plan(name)
        fit = {g: (micro_batch(p["max_batch"][g], local), micro_batch(p["max_batch_checkpointed"][g], local))
               for g in args.gpus_gb}
        rows.append({**p, "local_batch": local, "micro_batch": {g: list(v) for g, v in fit.items()}})
        print(f"| {name} | {p['state_gb']:.1f} | {p['activations_mb_per_image']:.0f} "
              f"({p['activations_mb_per_image_checkpointed']:.1f}) | "
              + " | ".join(f"{a or 'no'} / {b or 'no'}" for a, b in fit.values()) + " |")
    for name, row in zip(args.models, rows):
        for gb in args.gpus_gb:
            plain, ckpt = row["micro_batch"][gb]
            use_ckpt = plain < ckpt // 4  # checkpointing when it allows >= 4x larger micro-batches
            micro = ckpt if use_ckpt else plain
            if micro:
                print(f"# {name}, {args.processes} x {gb} GB, global batch {args.global_batch}: "
                      f"{local // micro} micro-step(s) of {micro}\n"
                      + command(name, micro, use_ckpt, args.processes))
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()

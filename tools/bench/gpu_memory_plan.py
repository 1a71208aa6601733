"""What fits on a 24 / 40 / 80 / 141 GB GPU: training memory of LightningDiT per model and batch.

Computed, not measured on a GPU: parameter counts from the model, 20 bytes per parameter for the
recipe's state (fp32 weights 4 + grads 4 + AdamW moments 8 + EMA 4) plus the bf16 weight copies
autocast makes (2), and the activations autograd saves per image, counted on CPU with saved-tensor
hooks on the plain modules (what CUDA runs, models/kernels.py) under bf16 autocast, eager
(torch.compile fuses elementwise chains and saves less: an upper bound). With
`model.use_checkpoint` only each block's input is kept (fp32, 4 bytes x D per token) plus one
block's activations during its recomputation.
A fixed allowance covers the CUDA context, allocator fragmentation and workspaces. The blocks
are identical, so activations are counted on 1- and 2-block models of the model's width and
extrapolated to its depth (a few seconds and ~1 GB of RAM instead of the full model's).

    python tools/bench/gpu_memory_plan.py                       # B/1, XL/1, 1p6B/1 at 16x16x32
"""
from __future__ import annotations

import argparse
import json
from typing import Dict, List, Optional

import torch

from models.kernels import use_plain_modules
from models.lightningdit import LightningDiT, LightningDiT_models

GPU_GB = (24, 40, 80, 141)
STATE_BYTES_PER_PARAM = 4 + 4 + 8 + 4 + 2  # weights, grads, AdamW m and v, EMA, bf16 autocast copies
OVERHEAD_GB = 3.0  # CUDA context, allocator fragmentation, cuBLAS / attention workspaces (estimate)


def saved_activation_bytes(model: torch.nn.Module, x, t, y) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one forward (bf16 autocast,
    the plain modules as on CUDA: `model` is switched to them), parameters and their casts excluded."""
    use_plain_modules(model)
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: Dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_ptrs and tensor.dim() >= 2 and tensor.shape[0] == x.shape[0]:
            seen[ptr] = storage.nbytes()  # batch-sized: an activation (weights and their casts are not)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x, t, y)
    return sum(seen.values())


def plan(name: str, batch_probe: int = 2) -> dict:
    torch.manual_seed(0)
    flags = dict(input_size=16, in_channels=32, use_swiglu=True, use_rope=True, use_rmsnorm=True)
    with torch.device("meta"):  # sizes only, no weights
        full = LightningDiT_models[name](**flags)
    n_params = sum(p.numel() for p in full.parameters())
    hidden, depth, heads = full.pos_embed.shape[-1], len(full.blocks), full.num_heads
    tokens = full.x_embedder.num_patches
    x = torch.randn(batch_probe, 32, 16, 16)
    t, y = torch.rand(batch_probe), torch.randint(0, 1000, (batch_probe,))
    # Blocks are identical: count a 1-block and a 2-block model of the same width and extrapolate.
    counts = []
    for d in (1, 2):
        small = LightningDiT(hidden_size=hidden, depth=d, num_heads=heads, patch_size=full.patch_size,
                             **flags).train()
        counts.append(saved_activation_bytes(small, x, t, y) / batch_probe)
    one_block = counts[1] - counts[0]
    act = counts[0] + (depth - 1) * one_block
    ckpt_act = depth * tokens * hidden * 4  # block inputs, fp32
    state_gb = n_params * STATE_BYTES_PER_PARAM / 2 ** 30
    row = {"model": name, "params_m": n_params / 1e6, "state_gb": state_gb,
           "activations_mb_per_image": act / 2 ** 20,
           "activations_mb_per_image_checkpointed": ckpt_act / 2 ** 20, "max_batch": {}, "max_batch_checkpointed": {}}
    for gb in GPU_GB:
        free = (gb - OVERHEAD_GB - state_gb) * 2 ** 30
        row["max_batch"][gb] = max(int(free // act), 0)
        # checkpointed: block inputs for the whole batch + one block's activations while it recomputes
        row["max_batch_checkpointed"][gb] = max(int(free // (ckpt_act + one_block)), 0)
    return row


def main(argv: Optional[List[str]] = None) -> List[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["LightningDiT-B/1", "LightningDiT-XL/1", "LightningDiT-1p6B/1"])
    args = p.parse_args(argv)
    rows = [plan(name) for name in args.models]
    for row in rows:
        print(json.dumps(row))
    return rows


if __name__ == "__main__":
    main()

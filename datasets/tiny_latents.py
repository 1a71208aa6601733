"""A synthetic latent directory in the released shard format, for tests, benchmarks and CPU
smoke runs of train.py / inference.py (no images, no tokenizer needed).

Each class c has a fixed random pattern P_c (C, H, W); item i of class c stores
`latents = P_c + 0.5 * noise` and `latents_flip = flip_W(P_c) + 0.5 * noise'`, so a model can
learn something class-dependent within a few hundred steps. Files follow docs/reference_behaviour.md §4.3:
`latents_rank00_shard{SSS}.safetensors` (latents, latents_flip float32, labels int64) plus
`latents_stats.pt` computed by `datasets.img_latent_dataset.compute_latent_stats`.

With `semantic_chans` / `repa_dim` the shards are in SFD's format as well: `latents_sv(_flip)`
float32 (n, semantic_chans, H, W) built the same way from their own class patterns, with
`latents_sv_stats.pt`, and `feats_dino(_flip)` float16 (n, repa_dim, H, W), the REPA targets.
These are drawn after everything else, so the texture part is the same with or without them.

    python -m datasets.tiny_latents OUT_DIR [--num 256] [--channels 4] [--size 4] [--classes 10]
                                            [--semantic-chans 0] [--repa-dim 0]
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Tuple

import torch
from safetensors.torch import save_file


def _class_latents(labels: torch.Tensor, num_classes: int, shape: Tuple[int, ...], g: torch.Generator):
    """(stored, flipped) latents of the items' classes: a class pattern (W-flipped for the flip)
    plus independent noise."""
    patterns = torch.randn((num_classes, *shape), generator=g) * 1.5 + 0.3
    stored = patterns[labels] + 0.5 * torch.randn((len(labels), *shape), generator=g)
    flipped = patterns[labels].flip(-1) + 0.5 * torch.randn((len(labels), *shape), generator=g)
    return stored, flipped


def write_tiny_latents(out_dir: str, num_items: int = 256, shape: Tuple[int, int, int] = (4, 4, 4),
                       num_classes: int = 10, num_shards: int = 2, seed: int = 0, *,
                       semantic_chans: int = 0, repa_dim: int = 0) -> Path:
    """Write `num_items` latents of `shape` (C, H, W) in `num_shards` shards + stats; returns the
    dir. `semantic_chans` > 0 adds SFD's semantic latents (and their stats), `repa_dim` > 0 its
    fp16 REPA features, both on the same H x W grid."""
    from datasets.img_latent_dataset import compute_latent_stats, save_latent_stats, shard_name

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn((num_classes, *shape), generator=g) * 1.5 + 0.3
    labels = torch.arange(num_items) % num_classes
    labels = labels[torch.randperm(num_items, generator=g)]
    latents = patterns[labels] + 0.5 * torch.randn((num_items, *shape), generator=g)
    flips = patterns[labels].flip(-1) + 0.5 * torch.randn((num_items, *shape), generator=g)
    parts = {"latents": (latents, flips)}
    grid = tuple(shape[1:])
    if semantic_chans:
        parts["latents_sv"] = _class_latents(labels, num_classes, (semantic_chans, *grid), g)
    if repa_dim:
        feats = _class_latents(labels, num_classes, (repa_dim, *grid), g)
        parts["feats_dino"] = tuple(f.half() for f in feats)
    bounds = torch.linspace(0, num_items, num_shards + 1).long().tolist()
    for k in range(num_shards):
        lo, hi = bounds[k], bounds[k + 1]
        tensors = {"labels": labels[lo:hi].contiguous().long()}
        for key, (stored, flipped) in parts.items():
            tensors[key], tensors[key + "_flip"] = stored[lo:hi].contiguous(), flipped[lo:hi].contiguous()
        save_file(tensors, str(out / shard_name(0, k)),
                  metadata={"total_size": str(hi - lo), "dtype": "torch.float32", "device": "cpu"})
    save_latent_stats(compute_latent_stats(out, seed=seed), out)
    if semantic_chans:
        save_latent_stats(compute_latent_stats(out, seed=seed, key="latents_sv"), out, key="latents_sv")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--size", type=int, default=4)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--semantic-chans", type=int, default=0, help="SFD semantic latent channels (0: none)")
    parser.add_argument("--repa-dim", type=int, default=0, help="SFD REPA feature width (0: none)")
    args = parser.parse_args()
    write_tiny_latents(args.out_dir, args.num, (args.channels, args.size, args.size), args.classes,
                       seed=args.seed, semantic_chans=args.semantic_chans, repa_dim=args.repa_dim)


if __name__ == "__main__":
    main()

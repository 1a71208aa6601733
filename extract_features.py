"""Encode an ImageFolder into latent shards for LightningDiT training (reference extract_features.py).

Behaviour follows docs/reference_behaviour.md §4.1-4.4: every image goes through the ADM centre crop and [-1, 1]
normalisation, and both the image and its horizontal flip are encoded by the tokenizer (an
independent posterior sample each, `mode` optional, fp32, no scale factor). Shards of 10,000 images
are written in the released format (`latents`, `latents_flip`, `labels`; metadata
{'total_size', 'dtype', 'device'}), then `latents_stats.pt` (10k random unflipped latents,
per-channel mean and unbiased std).

Differences from the reference, made for reliability:
- the work is split into global shards of `--shard-size` consecutive images (ImageFolder order);
  shard k is written by process k mod world_size as
  `latents_rank{k mod W:02d}_shard{k div W:03d}.safetensors`, W being the world size of the first
  launch (kept in `extraction.json`). No DistributedSampler padding, so every image is written
  exactly once; the full shard size is used at any batch size (the reference rounds it down to
  a multiple of the batch size);
- resumable: a restart with the same arguments (any world size) skips the shards already on disk.
  Posterior noise is drawn per image from a CPU generator seeded with (seed, image index), so a
  shard's bytes do not depend on where a run stopped or on the number of processes;
- images that fail to decode are skipped, logged by path and counted;
- all arguments come from the command line; `--image-size` really sets the crop size;
- the output directory is exactly `--output-path` (the reference builds
  `{output_path}/{tokenizer config stem}/{data_split}_{image_size}`; pass that path to get its
  layout, e.g. `--output-path output/vavae_f16d32/imagenet_train_256`);
- the stats are seeded and written atomically; `--stats-only` recomputes them from the shards.

Usage (see run_extraction.sh for multi-process launches):
    bash run_extraction.sh --data-path /data/imagenet/train \
        --output-path output/vavae_f16d32/imagenet_train_256 \
        --tokenizer-config configs/tokenizer/vavae_f16d32.yaml
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from datasets.image_folder import ADMImageFolder, collate_skip_bad
from datasets.img_latent_dataset import (STATS_FILE, _check_shard, compute_latent_stats,
                                         save_latent_stats, shard_name)
from training.rundir import RunLock, decide_on_main, release_run_dir, timestamp
from utils.fileio import WriteError, atomic_write, atomic_write_json

logger = logging.getLogger("extract")

MANIFEST = "extraction.json"
# Manifest fields that determine the shards' contents: a restart must not change them.
CONTENT_KEYS = ("data_path", "num_images", "image_folder_size", "tokenizer_config", "image_size",
                "seed", "mode", "shard_size", "max_images", "random_init_tokenizer")
STOPPED_EXIT_CODE = 3


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Encode an ImageFolder into latent shards.")
    p.add_argument("--data-path", help="ImageFolder root (class sub-folders of images)")
    p.add_argument("--output-path", required=True, help="shard directory (created)")
    p.add_argument("--tokenizer-config", help="tokenizer YAML, e.g. configs/tokenizer/vavae_f16d32.yaml "
                   "or configs/tokenizer/sdvae_ft_ema.yaml (its `tokenizer:` key picks the wrapper)")
    p.add_argument("--image-size", type=int, default=256, help="centre-crop size")
    p.add_argument("--batch-size", type=int, default=20, help="images per process per step")
    p.add_argument("--num-workers", type=int, default=8, help="DataLoader workers per process")
    p.add_argument("--seed", type=int, default=42, help="posterior-noise seed (and random-init weights)")
    p.add_argument("--shard-size", type=int, default=10000, help="images per shard")
    p.add_argument("--mode", action="store_true", help="store the posterior mode instead of a sample")
    p.add_argument("--max-images", type=int, default=None,
                   help="encode only this many images, evenly spaced over the ImageFolder order")
    p.add_argument("--random-init-tokenizer", action="store_true",
                   help="random tokenizer weights (tests/demos only; latents mean nothing)")
    p.add_argument("--stats-samples", type=int, default=10000, help="latents used for the stats")
    p.add_argument("--stats-seed", type=int, default=0, help="seed of the stats sample")
    p.add_argument("--stats-only", action="store_true",
                   help="only (re)compute latents_stats.pt from the shards in --output-path")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an existing --output-path: its shards, manifest and stats are "
                        "moved to OUTPUT_PATH.old-<timestamp>/ (never deleted)")
    # Testing hook: exit with code 3 after this many shards were written by a process.
    p.add_argument("--stop-after-shards", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.stats_only and (args.data_path is None or args.tokenizer_config is None):
        p.error("--data-path and --tokenizer-config are required (unless --stats-only)")
    for name in ("image_size", "batch_size", "shard_size", "stats_samples"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.max_images is not None and args.max_images <= 0:
        p.error(f"--max-images must be positive, got {args.max_images}")
    return args


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------

def select_images(folder_size: int, max_images: Optional[int]) -> torch.Tensor:
    """ImageFolder indices to encode: all, or `max_images` evenly spaced ones. (M,) int64."""
    if max_images is None or max_images >= folder_size:
        return torch.arange(folder_size)
    return torch.arange(max_images) * folder_size // max_images


def noise_seed(seed: int, image_index: int) -> int:
    """32-bit seed of one image's posterior noise (torch CPU generators keep 32 bits).

    Injective in image_index for a fixed seed (below 2**32 images), so no two images share noise.
    """
    return (seed * 1_000_003 + image_index) % 2**32


def posterior_noise(seed: int, image_indices: Sequence[int], shape: Tuple[int, ...]
                    ) -> torch.Tensor:
    """(2, B, *shape) standard normal noise: [0] for each image, [1] for its flip (CPU, float32)."""
    eps = torch.empty(2, len(image_indices), *shape)
    g = torch.Generator()
    for j, idx in enumerate(image_indices):
        g.manual_seed(noise_seed(seed, idx))
        eps[:, j] = torch.randn(2, *shape, generator=g)
    return eps


@torch.no_grad()
def encode_pair(model: torch.nn.Module, images: torch.Tensor, image_indices: Sequence[int],
                seed: int, mode: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """images (B, 3, H, W) in [-1, 1] -> (latents, latents_flip), each float32 (B, C, h, w) on CPU.

    The flip is `images.flip(-1)`, the same pixels as the reference's RandomHorizontalFlip(p=1)
    after the crop. A sample is mean + std * eps with eps from `posterior_noise`.
    """
    b = images.shape[0]
    posterior = model.encode(torch.cat([images, images.flip(-1)]))   # one pass for both views
    if mode:
        z = posterior.mode()
    else:
        eps = posterior_noise(seed, image_indices, tuple(posterior.mean.shape[1:]))
        z = posterior.mean + posterior.std * eps.flatten(0, 1).to(posterior.mean.device)
    z = z.float().cpu()
    return z[:b].contiguous(), z[b:].contiguous()


def write_shard(path: Path, latents: torch.Tensor, latents_flip: torch.Tensor,
                labels: torch.Tensor) -> None:
    """Atomically write one shard in the released format."""
    tensors = {"latents": latents.float().contiguous(),
               "latents_flip": latents_flip.float().contiguous(),
               "labels": labels.to(torch.int64).contiguous()}
    metadata = {"total_size": str(latents.shape[0]), "dtype": "torch.float32", "device": "cpu"}

    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata=metadata)
        canonicalize_header(tmp, metadata)

    atomic_write(path, write)


def canonicalize_header(path: str, metadata: Dict[str, str]) -> None:
    """Rewrite a safetensors header in place with `__metadata__` in the order of `metadata`.

    safetensors serialises the metadata from a Rust HashMap, whose key order changes from one
    process to the next; a fixed order makes a shard's bytes reproducible. Same length, so the
    data offsets are untouched (the header is space-padded as safetensors pads it).
    """
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        assert set(header["__metadata__"]) == set(metadata), header["__metadata__"]
        header["__metadata__"] = dict(metadata)
        header = {"__metadata__": header.pop("__metadata__"), **header}
        text = json.dumps(header, separators=(",", ":")).encode()
        assert len(text) <= n, (len(text), n)
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def shard_done(path: Path) -> bool:
    """A shard counts as done when its file exists and its header is valid."""
    if not path.is_file():
        return False
    try:
        _check_shard(path)
        return True
    except ValueError as e:
        logger.warning("re-extracting invalid shard %s: %s", path, e)
        return False


def check_manifest(out_dir: Path, wanted: Dict) -> Dict:
    """The manifest to use: the existing one (checked against `wanted`) or `wanted` itself."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return wanted
    with open(path) as f:
        found = json.load(f)
    for key in CONTENT_KEYS:
        if found.get(key) != wanted[key]:
            raise ValueError(f"{path}: {key}={found.get(key)!r} but this run has {wanted[key]!r}; "
                             "resume with the same arguments, --overwrite to move the old shards "
                             "aside, or a new --output-path")
    return found


def claim_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Lock the output directory (main process); with --overwrite, move a previous extraction's
    files (shards, manifest, stats) to a new sibling `OUTPUT_PATH.old-<timestamp>/`. The log file
    stays (extraction logs append)."""
    RunLock(out_dir).acquire()
    previous = [p for p in out_dir.iterdir()
                if p.name in (MANIFEST, STATS_FILE) or p.suffix == ".safetensors"]
    if overwrite and previous:
        aside = out_dir.with_name(f"{out_dir.name}.old-{timestamp()}")
        aside.mkdir()
        for path in previous:
            os.replace(path, aside / path.name)
        logger.warning("--overwrite: moved %d file(s) of the previous extraction to %s", len(previous), aside)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------

def stats_only(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    stats = compute_latent_stats(args.output_path, args.stats_samples, args.stats_seed)
    path = save_latent_stats(stats, args.output_path)
    logger.info("wrote %s (mean %s..., std %s...)", path,
                stats["mean"].flatten()[:4].tolist(), stats["std"].flatten()[:4].tolist())


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.stats_only:
        return stats_only(args)
    from tokenizer.factory import check_tokenizer_weights, load_tokenizer
    from utils.runtime import setup_runtime

    out_dir = Path(args.output_path)
    # Inputs first: nothing is created for a wrong --data-path, --tokenizer-config or weights file.
    if not args.tokenizer_config or not Path(args.tokenizer_config).is_file():
        raise FileNotFoundError(f"--tokenizer-config file not found: {args.tokenizer_config} "
                                "(e.g. configs/tokenizer/vavae_f16d32.yaml)")
    if not Path(args.data_path).is_dir():
        raise FileNotFoundError(f"--data-path image folder not found: {args.data_path}")
    check_tokenizer_weights(args.tokenizer_config, args.random_init_tokenizer)
    dataset = ADMImageFolder(args.data_path, image_size=args.image_size)
    rt = setup_runtime(run_dir=str(out_dir), seed=args.seed, log_file="extraction_log.txt",
                       name="extract")
    accelerator, rank, world = rt.accelerator, rt.rank, rt.world_size

    selected = select_images(len(dataset), args.max_images)
    num_images = len(selected)
    num_shards = math.ceil(num_images / args.shard_size)
    wanted = {
        "data_path": str(Path(args.data_path).resolve()), "num_images": num_images,
        "image_folder_size": len(dataset), "num_classes": len(dataset.classes),
        "tokenizer_config": str(Path(args.tokenizer_config).resolve()),
        "image_size": args.image_size, "seed": args.seed, "mode": args.mode,
        "shard_size": args.shard_size, "max_images": args.max_images,
        "random_init_tokenizer": args.random_init_tokenizer,
        "num_shards": num_shards, "shard_name_world_size": world,
    }
    decide_on_main(accelerator, lambda: claim_output_dir(out_dir, args.overwrite))
    accelerator.wait_for_everyone()
    manifest = check_manifest(out_dir, wanted)        # every rank checks: no rank left waiting
    if rt.is_main:
        for stale in out_dir.glob(".latents_*.tmp"):  # leftovers of a killed writer
            stale.unlink()
        if not (out_dir / MANIFEST).is_file():
            atomic_write_json(manifest, out_dir / MANIFEST)
    accelerator.wait_for_everyone()
    name_world = manifest["shard_name_world_size"]
    rt.logger.info("%d images in %d classes -> %d shards of %d in %s (world size %d)", num_images,
                   len(dataset.classes), num_shards, args.shard_size, out_dir, world)

    # Shard k = selected[k*S:(k+1)*S], written by process k % world.
    paths = {k: out_dir / shard_name(k % name_world, k // name_world) for k in range(num_shards)}
    mine = [k for k in range(rank, num_shards, world)]
    todo = [k for k in mine if not shard_done(paths[k])]
    rt.logger.info("rank 0: %d of its %d shards to do", len(todo), len(mine))
    shard_batches: Dict[int, List[List[int]]] = {}
    for k in todo:
        idx = selected[k * args.shard_size: (k + 1) * args.shard_size].tolist()
        shard_batches[k] = [idx[i: i + args.batch_size] for i in range(0, len(idx), args.batch_size)]

    # Identical random weights on every rank when --random-init-tokenizer.
    torch.manual_seed(args.seed)
    # The YAML's `tokenizer:` key picks VA-VAE (absent), MAR-VAE or SD-VAE (tokenizer/factory.py).
    vae = load_tokenizer(args.tokenizer_config, img_size=args.image_size, fp16=False,
                         device=rt.device, random_init=args.random_init_tokenizer)

    skipped, written_images, written_shards = 0, 0, 0
    start = time.time()
    if todo:
        loader = DataLoader(dataset, batch_sampler=[b for k in todo for b in shard_batches[k]],
                            num_workers=args.num_workers, collate_fn=collate_skip_bad,
                            pin_memory=rt.device.type == "cuda")
        from tqdm import tqdm
        bar = tqdm(total=sum(len(b) for k in todo for b in shard_batches[k]), unit="img",
                   desc=f"rank 0/{world}", disable=not rt.is_main, dynamic_ncols=True)
        batches = iter(loader)
        for k in todo:
            parts: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
            for requested in shard_batches[k]:
                batch = next(batches)
                skipped += len(batch.bad_indices)
                if len(batch.indices):
                    images = batch.images.to(rt.device, non_blocking=True)
                    lat, lat_flip = encode_pair(vae.model, images, batch.indices.tolist(),
                                                args.seed, args.mode)
                    parts.append((lat, lat_flip, batch.labels))
                bar.update(len(requested))
            if parts:
                latents, latents_flip, labels = (torch.cat(t) for t in zip(*parts))
            else:                                           # every image of the shard unreadable
                c, f = vae.embed_dim, vae.model.downsample_factor
                latents = latents_flip = torch.empty(0, c, args.image_size // f,
                                                     args.image_size // f)
                labels = torch.empty(0, dtype=torch.int64)
            write_shard(paths[k], latents, latents_flip, labels)
            written_shards += 1
            written_images += latents.shape[0]
            if args.stop_after_shards is not None and written_shards >= args.stop_after_shards:
                logger.warning("rank %d: stopping after %d shard(s) (--stop-after-shards)",
                               rank, written_shards)
                sys.exit(STOPPED_EXIT_CODE)
        bar.close()

    elapsed = time.time() - start
    totals = torch.tensor([written_shards, written_images, skipped], dtype=torch.int64,
                          device=rt.device)
    totals = accelerator.reduce(totals, reduction="sum").tolist()
    rt.logger.info("wrote %d shard(s), %d images (%.1f images/s over all processes); skipped %d "
                   "unreadable image(s)", totals[0], totals[1], totals[1] / max(elapsed, 1e-9),
                   totals[2])
    accelerator.wait_for_everyone()
    if rt.is_main:
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise RuntimeError(f"shards missing after extraction: {missing}")
        stats = compute_latent_stats(out_dir, args.stats_samples, args.stats_seed)
        rt.logger.info("wrote %s", save_latent_stats(stats, out_dir))
        release_run_dir(out_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, WriteError) as err:  # bad input, directory in use or
        raise SystemExit(f"error: {err}") from None               # made with other arguments, disk full

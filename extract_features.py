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

SFD's shards (docs/reference_behaviour.md, §12.2.2; SFD's `extract_features.py`):
`--semantic-feat-type semvae` adds the Semantic VAE latents of the tokenizer YAML's `semvae:` block
(tokenizer/composite.py) as `latents_sv` / `latents_sv_flip` (float32, one posterior sample per
view, noise seeded per image like the texture's) and `latents_sv_stats.pt`; `--repa-model NAME`
adds the encoder's final patch tokens as `feats_dino` / `feats_dino_flip` (float16), SFD's REPA
targets (computed once when the REPA and semantic encoders are the same). Both use SFD's
extraction view of the ADM-cropped image. `--repa-grid G` averages the REPA targets down to the
G x G tokens of a patch-size > 1 model (SFD: patch 1, the latent grid itself). SFD's own command line works too:
    bash run_extraction.sh configs/tokenizer/sdvae_f16d32_semvaebasech16.yaml semvae dinov2_vitb14_reg \
        --dino-weights dinov2_vitb14_reg4_pretrain.pth
reads SFD's default image folder and writes SFD's directory
(outputs/dataset/imagenet1k-latents/sdvae_f16d32_semvaebasech16_repadinov2_vitb14_reg/imagenet_train_256);
flags after the positionals override those paths. `--no-repa` leaves the REPA features out (most of
the disk: ~0.79 MB of the ~0.88 MB per ImageNet image). Before encoding, the disk the remaining
shards need is printed and a run that the free space cannot hold is refused. Encoder weights are
local files (`--dino-weights`, `--repa-weights` or the block's `dino_weights`), never torch.hub.

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
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from datasets.image_folder import ADMImageFolder, collate_skip_bad
from datasets.img_latent_dataset import (FLIP, REPA_KEY, STATS_FILE, SV_KEY, SV_STATS_FILE, LatentShards,
                                         _check_shard, compute_latent_stats, save_latent_stats, shard_name)
from tokenizer.composite import SEMANTIC_ENCODERS
from training.rundir import RunLock, decide_on_main, release_run_dir, timestamp
from utils.fileio import WriteError, atomic_write, atomic_write_json
from utils.seeding import derive_seed

logger = logging.getLogger("extract")

MANIFEST = "extraction.json"
# Manifest fields that determine the shards' contents: a restart must not change them. The SFD
# fields are None for a texture-only extraction (and absent from older manifests: the same).
CONTENT_KEYS = ("data_path", "num_images", "image_folder_size", "tokenizer_config", "image_size",
                "seed", "mode", "shard_size", "max_images", "random_init_tokenizer",
                "semantic_feat_type", "dino_model_name", "dino_weights", "semvae_ckpt_path", "semvae_config",
                "repa_model", "repa_weights", "repa_grid", "encoder_model_kwargs")
STOPPED_EXIT_CODE = 3
SEMANTIC_FEAT_TYPES = ("semvae",)    # SFD's semantic_feat_type values offered here
SEMANTIC_STREAM = 1                  # derive_seed stream of the Semantic VAE's posterior noise
SHARD_HEADER_BYTES = 4096            # safetensors header and padding, per shard (an upper bound)
# SFD's run_extraction.sh defaults (its extract_features.py: --data_path, --output_path, --data_split)
SFD_DATA_PATH = "outputs/dataset/imagenet1k-folder/train"
SFD_OUTPUT_ROOT = "outputs/dataset/imagenet1k-latents"
SFD_DATA_SPLIT = "imagenet_train"


def sfd_command_line(argv: Sequence[str]) -> List[str]:
    """SFD's `run_extraction.sh CONFIG [SEMANTIC_FEAT_TYPE] [REPA_MODEL] [IMAGE_SIZE] [--flags]` as our
    flags, with SFD's image folder and output directory ({root}/{config stem}[_repa{model}]/
    imagenet_train_{size}); flags after the positionals are kept and win. Other command lines
    are returned unchanged."""
    argv = list(argv)
    positional: List[str] = []
    while argv and not argv[0].startswith("-"):
        positional.append(argv.pop(0))
    if not positional:
        return argv
    if len(positional) > 4:
        raise SystemExit(f"error: SFD's form takes CONFIG [SEMANTIC_FEAT_TYPE] [REPA_MODEL] [IMAGE_SIZE], "
                         f"got {len(positional)} positional arguments: {positional}")
    config, feat_type, repa, size = (positional + ["", "", ""])[:4]
    size = size or "256"
    if "--no-repa" in argv:
        repa = ""
    name = Path(config).stem + (f"_repa{repa}" if repa else "")
    out = ["--tokenizer-config", config, "--image-size", size, "--data-path", SFD_DATA_PATH,
           "--output-path", f"{SFD_OUTPUT_ROOT}/{name}/{SFD_DATA_SPLIT}_{size}"]
    if feat_type:
        out += ["--semantic-feat-type", feat_type]
    if repa:
        out += ["--repa-model", repa]
    return out + argv


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
                   help="random tokenizer and encoder weights (tests/demos only; latents mean nothing)")
    p.add_argument("--stats-samples", type=int, default=10000, help="latents used for the stats")
    p.add_argument("--stats-seed", type=int, default=0, help="seed of the stats sample")
    p.add_argument("--stats-only", action="store_true",
                   help="only (re)compute latents_stats.pt from the shards in --output-path")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an existing --output-path: its shards, manifest and stats are "
                        "moved to OUTPUT_PATH.old-<timestamp>/ (never deleted)")
    sfd = p.add_argument_group("SFD's semantic latents and REPA targets")
    sfd.add_argument("--semantic-feat-type", default=None, choices=SEMANTIC_FEAT_TYPES,
                     help="semvae: add the Semantic VAE latents of the tokenizer YAML's semvae: block")
    sfd.add_argument("--repa-model", default=None, choices=SEMANTIC_ENCODERS,
                     help="add this encoder's patch tokens (fp16) as REPA targets, e.g. dinov2_vitb14_reg")
    sfd.add_argument("--no-repa", action="store_true", help="leave the REPA targets out (overrides --repa-model)")
    sfd.add_argument("--repa-grid", type=int, default=None,
                     help="REPA targets on this grid (the model's tokens: latent grid / patch size), averaged "
                          "from the latent grid; default: the latent grid (patch 1, as SFD)")
    sfd.add_argument("--dino-weights", default=None,
                     help="local weights of the semantic encoder (default: the semvae block's dino_weights)")
    sfd.add_argument("--repa-weights", default=None,
                     help="local weights of the REPA encoder (default: the semantic encoder's, same model)")
    sfd.add_argument("--encoder-model-kwargs", default=None,
                     help="JSON of timm architecture overrides of the encoders (tiny test encoders)")
    # Testing hook: exit with code 3 after this many shards were written by a process.
    p.add_argument("--stop-after-shards", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(sfd_command_line(sys.argv[1:] if argv is None else argv))
    if args.no_repa:
        args.repa_model = None
    if not args.stats_only and (args.data_path is None or args.tokenizer_config is None):
        p.error("--data-path and --tokenizer-config are required (unless --stats-only)")
    for name in ("image_size", "batch_size", "shard_size", "stats_samples"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.max_images is not None and args.max_images <= 0:
        p.error(f"--max-images must be positive, got {args.max_images}")
    if args.repa_grid is not None and args.repa_grid <= 0:
        p.error(f"--repa-grid must be positive, got {args.repa_grid}")
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


def semantic_noise(seed: int, image_indices: Sequence[int], shape: Tuple[int, ...]) -> torch.Tensor:
    """(2, B, *shape) standard normal noise of the Semantic VAE's posterior, [0] for each image and
    [1] for its flip: from a CPU generator seeded with a hash of (seed, SEMANTIC_STREAM, image
    index), so it shares no seed with the texture noise and does not depend on the batch."""
    eps = torch.empty(2, len(image_indices), *shape)
    g = torch.Generator()
    for j, idx in enumerate(image_indices):
        g.manual_seed(derive_seed(seed, SEMANTIC_STREAM, idx))
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


@dataclass
class SemanticParts:
    """SFD's encoders of an extraction: the semantic encoder and its Semantic VAE (`latents_sv`),
    the REPA encoder (`feats_dino`; the same object as `encoder` when the models agree). Either
    part may be absent. `grid` is the texture latents' side."""
    grid: int
    encoder: Optional[torch.nn.Module] = None
    semvae: Optional[torch.nn.Module] = None
    repa: Optional[torch.nn.Module] = None
    repa_grid: Optional[int] = None     # None: the latent grid

    def shapes(self) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
        """{shard key: (per-image shape, dtype)} of the parts this extraction writes."""
        out = {}
        if self.semvae is not None:
            out[SV_KEY] = ((self.semvae.bottleneck_dim, self.grid, self.grid), torch.float32)
        if self.repa is not None:
            g = self.repa_grid or self.grid
            out[REPA_KEY] = ((self.repa.feature_dim, g, g), torch.float16)
        return out


@torch.no_grad()
def encode_semantic_parts(parts: SemanticParts, images: torch.Tensor, image_indices: Sequence[int],
                          seed: int, mode: bool) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """images (B, 3, H, W) in [-1, 1] -> {key: (stored, flipped)} on the CPU: `latents_sv` float32
    (B, b, g, g), a posterior sample with `semantic_noise` (or the mode), and `feats_dino` float16
    (B, D, g', g') on the REPA grid (means over g/g' x g/g' cells of the latent grid when smaller);
    each view through the encoder once, tokens shared when REPA's encoder is it."""
    from tokenizer.composite import encoder_tokens, semantic_latents, tokens_to_grid

    b, out = images.shape[0], {}
    both = torch.cat([images, images.flip(-1)])
    tokens = encoder_tokens(parts.encoder, both, parts.grid) if parts.encoder is not None else None
    if parts.semvae is not None:
        noise = None
        if not mode:
            shape = (parts.semvae.bottleneck_dim, parts.grid, parts.grid)
            noise = semantic_noise(seed, image_indices, shape).flatten(0, 1)
        z = semantic_latents(parts.semvae, tokens, parts.grid, noise).float().cpu()
        out[SV_KEY] = (z[:b].contiguous(), z[b:].contiguous())
    if parts.repa is not None:
        repa_tokens = tokens if parts.repa is parts.encoder else encoder_tokens(parts.repa, both, parts.grid)
        f = tokens_to_grid(repa_tokens, parts.grid)
        if parts.repa_grid and parts.repa_grid != parts.grid:
            f = torch.nn.functional.avg_pool2d(f, parts.grid // parts.repa_grid)
        f = f.half().cpu()
        out[REPA_KEY] = (f[:b].contiguous(), f[b:].contiguous())
    return out


def write_shard(path: Path, latents: torch.Tensor, latents_flip: torch.Tensor,
                labels: torch.Tensor, parts: Optional[Dict[str, Tuple[torch.Tensor, torch.Tensor]]] = None) -> None:
    """Atomically write one shard in the released format; `parts` adds SFD's keys
    ({key: (stored, flipped)} -> key, key_flip, in their dtypes)."""
    tensors = {"latents": latents.float().contiguous(),
               "latents_flip": latents_flip.float().contiguous(),
               "labels": labels.to(torch.int64).contiguous()}
    for key, (stored, flipped) in (parts or {}).items():
        tensors[key], tensors[key + FLIP] = stored.contiguous(), flipped.contiguous()
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


def shard_done(path: Path, quiet: bool = False) -> bool:
    """A shard counts as done when its file exists and its header is valid."""
    if not path.is_file():
        return False
    try:
        _check_shard(path)
        return True
    except ValueError as e:
        if not quiet:
            logger.warning("re-extracting invalid shard %s: %s", path, e)
        return False


def bytes_per_image(texture_shape: Tuple[int, ...], parts: Dict[str, Tuple[Tuple[int, ...], torch.dtype]]
                    ) -> Dict[str, int]:
    """Disk bytes one image takes in a shard, per key: both views of every part, and its label."""
    def size(shape, dtype):
        return 2 * math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    out = {"latents": size(texture_shape, torch.float32)}
    out.update({key: size(shape, dtype) for key, (shape, dtype) in parts.items()})
    out["labels"] = 8
    return out


def check_disk(out_dir: Path, num_images: int, num_shards: int, per_image: Dict[str, int]) -> int:
    """Log the disk the remaining `num_images` (in `num_shards` shards) need and the free space of
    `out_dir`; ValueError when it cannot hold them. Returns the bytes needed."""
    need = num_images * sum(per_image.values()) + num_shards * SHARD_HEADER_BYTES
    free = shutil.disk_usage(out_dir).free
    parts = ", ".join(f"{k} {_human(v)}" for k, v in per_image.items())
    logger.info("the %d image(s) left need %s on disk (%s per image: %s); %s free in %s", num_images,
                _human(need), _human(sum(per_image.values())), parts, _human(free), out_dir)
    if need > free:
        hint = " (--no-repa leaves out the REPA features)" if REPA_KEY in per_image else ""
        raise ValueError(f"{out_dir}: the extraction needs {_human(need)} but only {_human(free)} is free{hint}")
    return need


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000


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
                if p.name in (MANIFEST, STATS_FILE, SV_STATS_FILE) or p.suffix == ".safetensors"]
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
    write_stats(Path(args.output_path), args.stats_samples, args.stats_seed)


def write_stats(out_dir: Path, num_samples: int, seed: int) -> None:
    """latents_stats.pt and, when the shards hold SFD's semantic latents, latents_sv_stats.pt (the
    same random rows: SFD computes both from one dataset draw)."""
    keys = ["latents"] + ([SV_KEY] if SV_KEY in LatentShards(out_dir).parts else [])
    for key in keys:
        stats = compute_latent_stats(out_dir, num_samples, seed, key=key)
        path = save_latent_stats(stats, out_dir, key=key)
        logger.info("wrote %s (mean %s..., std %s...)", path,
                    stats["mean"].flatten()[:4].tolist(), stats["std"].flatten()[:4].tolist())


def semantic_settings(args: argparse.Namespace) -> Dict[str, object]:
    """SFD's settings of this run, checked before anything is created (manifest fields; None when
    unused). The semvae block is read from the tokenizer YAML."""
    from tokenizer.composite import read_semvae_block

    block = read_semvae_block(args.tokenizer_config) if args.semantic_feat_type else None
    if args.semantic_feat_type and block is None:
        raise ValueError(f"{args.tokenizer_config}: --semantic-feat-type {args.semantic_feat_type} needs a "
                         "semvae: block (dino_model_name, semvae_config, semvae_ckpt_path; see "
                         "configs/tokenizer/sdvae_f16d32_semvaebasech16.yaml)")
    resolve = lambda path: str(Path(path).resolve()) if path else None  # noqa: E731
    dino_weights = resolve(args.dino_weights or (block.dino_weights if block else None))
    repa_weights = resolve(args.repa_weights)
    if args.repa_model and not repa_weights and (block is None or block.dino_model_name == args.repa_model):
        repa_weights = dino_weights   # one encoder for both (SFD's released setting)
    for flag, path in (("--dino-weights", dino_weights), ("--repa-weights", repa_weights)):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} file not found: {path}")
    kwargs = json.loads(args.encoder_model_kwargs) if args.encoder_model_kwargs else None
    return {"semantic_feat_type": args.semantic_feat_type,
            "dino_model_name": block.dino_model_name if block else None,
            "dino_weights": dino_weights if block else None,
            "semvae_ckpt_path": resolve(block.semvae_ckpt_path) if block else None,
            "semvae_config": resolve(block.semvae_config) if block else None,
            "repa_model": args.repa_model, "repa_weights": repa_weights if args.repa_model else None,
            "repa_grid": args.repa_grid if args.repa_model else None,
            "encoder_model_kwargs": kwargs if (block or args.repa_model) else None}


def load_semantic_parts(settings: Dict[str, object], grid: int, device: torch.device,
                        random_init: bool) -> SemanticParts:
    """The encoders the settings ask for (identical random weights on every rank with random_init:
    the caller seeds torch first)."""
    from tokenizer.composite import SemVAEBlock, load_block_semvae, load_encoder

    parts = SemanticParts(grid, repa_grid=settings["repa_grid"])
    if parts.repa_grid and (parts.repa_grid > grid or grid % parts.repa_grid):
        raise ValueError(f"--repa-grid {parts.repa_grid} must divide the latent grid {grid}")
    kwargs = settings["encoder_model_kwargs"]
    if settings["semantic_feat_type"]:
        parts.encoder = load_encoder(settings["dino_model_name"], settings["dino_weights"], device,
                                     random_init=random_init, model_kwargs=kwargs)
        block = SemVAEBlock(settings["dino_model_name"], settings["semvae_ckpt_path"], settings["semvae_config"])
        parts.semvae = load_block_semvae(block, parts.encoder.feature_dim, device)
    if settings["repa_model"]:
        if parts.encoder is not None and settings["repa_model"] == settings["dino_model_name"] \
                and settings["repa_weights"] == settings["dino_weights"]:
            parts.repa = parts.encoder
        else:
            parts.repa = load_encoder(settings["repa_model"], settings["repa_weights"], device,
                                      random_init=random_init, model_kwargs=kwargs)
    return parts


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.stats_only:
        return stats_only(args)
    from tokenizer.factory import check_tokenizer_weights, load_tokenizer
    from utils.runtime import setup_runtime

    out_dir = Path(args.output_path)
    # Inputs first: nothing is created for a wrong --data-path, --tokenizer-config, weights file or semvae block.
    if not args.tokenizer_config or not Path(args.tokenizer_config).is_file():
        raise FileNotFoundError(f"--tokenizer-config file not found: {args.tokenizer_config} "
                                "(e.g. configs/tokenizer/vavae_f16d32.yaml)")
    if not Path(args.data_path).is_dir():
        raise FileNotFoundError(f"--data-path image folder not found: {args.data_path}")
    check_tokenizer_weights(args.tokenizer_config, args.random_init_tokenizer)
    settings = semantic_settings(args)
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
        **settings,
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
    left = [k for k in range(num_shards) if not shard_done(paths[k], quiet=k % world != rank)]
    todo = [k for k in left if k % world == rank]
    rt.logger.info("rank 0: %d of its %d shards to do", len(todo), len(range(rank, num_shards, world)))
    shard_batches: Dict[int, List[List[int]]] = {}
    for k in todo:
        idx = selected[k * args.shard_size: (k + 1) * args.shard_size].tolist()
        shard_batches[k] = [idx[i: i + args.batch_size] for i in range(0, len(idx), args.batch_size)]

    # Identical random weights on every rank when --random-init-tokenizer.
    torch.manual_seed(args.seed)
    # The YAML's `tokenizer:` key picks VA-VAE (absent), MAR-VAE or SD-VAE (tokenizer/factory.py).
    vae = load_tokenizer(args.tokenizer_config, img_size=args.image_size, fp16=False,
                         device=rt.device, random_init=args.random_init_tokenizer)
    grid = args.image_size // vae.model.downsample_factor
    semantic = load_semantic_parts(settings, grid, rt.device, args.random_init_tokenizer)
    part_shapes = semantic.shapes()
    rt.logger.info("writing latents %s%s per view", (vae.embed_dim, grid, grid),
                   "".join(f", {k} {shape} {str(dtype)[6:]}" for k, (shape, dtype) in part_shapes.items()))
    remaining = sum(min(args.shard_size, num_images - k * args.shard_size) for k in left)
    check_disk(out_dir, remaining, len(left), bytes_per_image((vae.embed_dim, grid, grid), part_shapes))
    accelerator.wait_for_everyone()

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
            chunks: List[Dict[str, Tuple[torch.Tensor, torch.Tensor]]] = []
            labels: List[torch.Tensor] = []
            for requested in shard_batches[k]:
                batch = next(batches)
                skipped += len(batch.bad_indices)
                if len(batch.indices):
                    images = batch.images.to(rt.device, non_blocking=True)
                    indices = batch.indices.tolist()
                    chunk = {"latents": encode_pair(vae.model, images, indices, args.seed, args.mode)}
                    chunk.update(encode_semantic_parts(semantic, images, indices, args.seed, args.mode))
                    chunks.append(chunk)
                    labels.append(batch.labels)
                bar.update(len(requested))
            shapes = {"latents": ((vae.embed_dim, grid, grid), torch.float32), **part_shapes}
            parts = {key: tuple(torch.cat([c[key][v] for c in chunks]) if chunks
                                else torch.empty(0, *shape, dtype=dtype)   # every image unreadable
                                for v in (0, 1))
                     for key, (shape, dtype) in shapes.items()}
            latents, latents_flip = parts.pop("latents")
            write_shard(paths[k], latents, latents_flip,
                        torch.cat(labels) if labels else torch.empty(0, dtype=torch.int64), parts)
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
        write_stats(out_dir, args.stats_samples, args.stats_seed)
        release_run_dir(out_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, WriteError) as err:  # bad input, directory in use or
        raise SystemExit(f"error: {err}") from None               # made with other arguments, disk full

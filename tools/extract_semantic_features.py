"""Pre-extract DINOv2 patch tokens of an image folder for Semantic VAE training (SFD's format).

    python tools/extract_semantic_features.py --data_root /data/imagenet/train \
        --output_root outputs/dataset/imagenet-dinov2/train --weights dinov2_vitb14_reg4_pretrain.pth \
        --shuffle
    python tools/extract_semantic_features.py --data_root /data/imagenet/val \
        --output_root outputs/dataset/imagenet-dinov2/val --weights ... --max_samples 500

Follows SFD `tokenizer/semvae/extract_dinov2_feature.py` (docs/reference_behaviour.md
§12.1.1): torchvision ImageFolder order, the first `--max_samples` images, each through the Semantic
VAE's training view (resize 256 bicubic, center crop 224, ImageNet normalisation), the frozen
encoder in fp32, and `{output_root}/{model_name}/features_{N}samples.safetensors` +
`metadata_{N}samples.json` (datasets/semantic_features.py describes the tensors), which
`train_semvae.py` and SFD's trainer read.

Differences from SFD's script:
- the weights are a local file (`--weights`: the official `dinov2_vitb14_reg4_pretrain.pth` or
  timm's `model.safetensors`), never torch.hub;
- resumable: the file is written in place batch by batch under a `.partial` name, with a progress
  record after each durable chunk; re-running the same command continues where it stopped;
- `--shuffle` stores a seeded permutation (`--seed`), so a continued run stores the same order
  (SFD's is an unseeded DataLoader shuffle); `--max_samples` defaults to all images (SFD: 5000);
- SFD's `--use_vae_compression` (store Semantic VAE reconstructions) is not offered.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from datasets.semantic_features import FeatureFileWriter
from tokenizer.foundation import FOUNDATION_MODELS, FoundationModel, semvae_training_view
from training.rundir import move_aside
from utils.fileio import atomic_write_json
from utils.runtime import configure_logging

logger = logging.getLogger("extract_semantic_features")

CROP = 224                      # the training view's crop (SFD)
SYNC_EVERY = 20                 # batches between durable progress records
SEMANTIC_ENCODERS = tuple(k for k in FOUNDATION_MODELS if k.startswith("dinov2_") and k.endswith("_reg"))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_root", required=True, help="image folder with one sub-folder per class")
    p.add_argument("--output_root", default="outputs/dataset/imagenet-dinov2",
                   help="features go to OUTPUT_ROOT/MODEL_NAME/")
    p.add_argument("--model_name", default="dinov2_vitb14_reg", choices=SEMANTIC_ENCODERS)
    p.add_argument("--weights", help="local encoder weights (official DINOv2 release or timm's model.safetensors)")
    p.add_argument("--max_samples", type=int, default=None, help="the first N images (default: all)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_workers", type=int, default=4)
    p.add_argument("--shuffle", action="store_true", help="store the images in a seeded random order")
    p.add_argument("--seed", type=int, default=0,
                   help="the --shuffle permutation's (and a --random_init encoder's) seed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--overwrite", action="store_true", help="start over (an existing result is moved aside)")
    p.add_argument("--random_init", action="store_true", help="random encoder weights (tests and demos only)")
    p.add_argument("--model_kwargs", default=None, help="JSON of timm architecture overrides (tiny test encoders)")
    args = p.parse_args(argv)
    if not args.weights and not args.random_init:
        p.error(f"--weights is required ({FOUNDATION_MODELS[args.model_name].original}, or "
                f"model.safetensors of the Hugging Face repo {FOUNDATION_MODELS[args.model_name].hub_id})")
    if args.max_samples is not None and args.max_samples <= 0 or args.batch_size <= 0:
        p.error("--max_samples and --batch_size must be positive")
    return args


def image_folder(root: str, max_samples: Optional[int]):
    """torchvision ImageFolder (SFD's reader and order) with the training view, cut to max_samples."""
    from torchvision.datasets import ImageFolder

    if not Path(root).is_dir():
        raise SystemExit(f"error: image folder not found: {root}")
    try:
        dataset = ImageFolder(root, transform=semvae_training_view(crop=CROP))
    except (FileNotFoundError, RuntimeError) as err:   # no class folders / no images
        raise SystemExit(f"error: {root}: {err}") from None
    if max_samples is not None and max_samples < len(dataset.samples):
        dataset.samples, dataset.targets = dataset.samples[:max_samples], dataset.targets[:max_samples]
        dataset.imgs = dataset.samples
    return dataset


def settings(args: argparse.Namespace, num_samples: int) -> dict:
    """What determines the file's bytes: a continued run must not change it."""
    return {"data_root": str(Path(args.data_root).resolve()), "model_name": args.model_name,
            "weights": str(Path(args.weights).resolve()) if args.weights else None, "random_init": args.random_init,
            "model_kwargs": args.model_kwargs, "num_samples": num_samples, "shuffle": args.shuffle,
            "seed": args.seed if args.shuffle or args.random_init else None}


def metadata(args: argparse.Namespace, dataset, order: List[int], num_patches: int, dim: int) -> dict:
    """SFD's metadata JSON fields, in stored order."""
    idx_to_class = {v: k for k, v in dataset.class_to_idx.items()}
    labels = [dataset.targets[i] for i in order]
    n = len(order)
    return {
        "class_names": [idx_to_class[y] for y in labels], "image_paths": [dataset.samples[i][0] for i in order],
        "model_name": args.model_name, "feature_dim": dim, "num_samples": n, "num_patches": num_patches,
        "patch_tokens_shape": [n, num_patches, dim], "cls_tokens_shape": [n, dim], "patch_avg_shape": [n, dim],
        "class_to_idx": dataset.class_to_idx, "idx_to_class": idx_to_class, "num_classes": len(dataset.classes),
        "extraction_config": {"data_root": args.data_root, "model_name": args.model_name,
                              "max_samples": args.max_samples, "batch_size": args.batch_size, "shuffle": args.shuffle,
                              "use_vae_compression": False, "vae_config": None, "vae_checkpoint": None,
                              "seed": args.seed, "weights": args.weights},
    }


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    configure_logging(True)
    dataset = image_folder(args.data_root, args.max_samples)
    n = len(dataset)
    order = (torch.randperm(n, generator=torch.Generator().manual_seed(args.seed)).tolist() if args.shuffle
             else list(range(n)))
    out_dir = Path(args.output_root) / args.model_name
    features = out_dir / f"features_{n}samples.safetensors"
    meta_path = out_dir / f"metadata_{n}samples.json"
    progress_path = out_dir / f"features_{n}samples.progress.json"
    partial = features.with_name(features.name + ".partial")
    if args.overwrite:
        for path in (features, meta_path, partial, progress_path):
            move_aside(path)
    elif features.is_file() and meta_path.is_file():
        logger.info("%s is complete (%d items); --overwrite to extract again", features, n)
        return
    want = settings(args, n)
    done = 0
    if progress_path.is_file() and partial.is_file():
        record = json.loads(progress_path.read_text())
        if record.get("settings") != want:
            changed = sorted(k for k in want if record.get("settings", {}).get(k) != want[k])
            raise SystemExit(f"error: {partial} was started with other settings ({', '.join(changed)}); "
                             "re-run with the same arguments, or --overwrite to start over")
        done = int(record["done"])
        logger.info("continuing %s at item %d of %d", partial, done, n)

    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else None
    torch.manual_seed(args.seed)   # a --random_init encoder is the same in a continued run
    try:
        encoder = FoundationModel(args.model_name, weights=args.weights, model_kwargs=kwargs,
                                  random_init=args.random_init).to(args.device)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    num_patches, dim = (CROP // encoder.patch_size) ** 2, encoder.feature_dim
    try:
        writer = FeatureFileWriter(features, n, num_patches, dim)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    loader = DataLoader(Subset(dataset, order[done:]), batch_size=args.batch_size, shuffle=False,
                        num_workers=args.num_workers, pin_memory=args.device.startswith("cuda"))
    logger.info("extracting %s tokens (%d x %d per image) of %d images from %s to %s", args.model_name,
                num_patches, dim, n, args.data_root, features)
    try:
        for k, (images, labels) in enumerate(tqdm(loader, initial=done // args.batch_size,
                                                  total=-(-n // args.batch_size), desc="extract")):
            cls, patches = encoder.tokens(images.to(args.device))
            if patches.shape[1:] != (num_patches, dim):
                raise RuntimeError(f"encoder gave {tuple(patches.shape[1:])} tokens, expected {(num_patches, dim)}")
            writer.write(done, patches.float(), cls.float(), labels)
            done += len(labels)
            if (k + 1) % SYNC_EVERY == 0:
                writer.sync()
                atomic_write_json({"done": done, "settings": want}, progress_path)
        writer.finish()
    finally:
        writer.close()
    atomic_write_json(metadata(args, dataset, order, num_patches, dim), meta_path)
    progress_path.unlink(missing_ok=True)
    logger.info("wrote %s and %s (%d items)", features, meta_path, n)


if __name__ == "__main__":
    main(sys.argv[1:])

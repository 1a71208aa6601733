"""Throughput of latent extraction and its split into stages (decode + crop, encode, write).

Runs extract_features.py's pipeline in one process on generated JPEGs (ImageNet-like sizes) with
a tiny random f16 tokenizer (ch 32, 1 res block) unless `--tokenizer-config` is given, timing each stage separately:
    decode: ADMImageFolder items (JPEG decode, ADM centre crop, [-1, 1]), collated to a batch;
    encode: `extract_features.encode_pair` (image + flip, per-image posterior noise);
    write:  `extract_features.write_shard` (safetensors + header canonicalisation, atomic).
Prints one JSON line. Example: python tools/bench/bench_extract.py --num-images 128
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TINY_TOKENIZER = """ckpt_path: null
model:
  params:
    embed_dim: 4
    ddconfig: {double_z: true, z_channels: 4, resolution: 256, in_channels: 3, out_ch: 3,
               ch: 32, ch_mult: [1, 1, 2, 2, 4], num_res_blocks: 1, attn_resolutions: [],
               dropout: 0.0}
"""


def make_images(root: Path, n: int, seed: int = 0) -> None:
    """n JPEGs of random sizes around ImageNet's (short side 200-500) in 4 class folders."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / f"class{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        h, w = rng.integers(200, 500, 2)
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((int(w), int(h)), Image.BILINEAR)   # smooth, like photos
        img.save(d / f"{i:05d}.jpg", quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-images", type=int, default=128)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tokenizer-config", default=None, help="default: a tiny random tokenizer")
    p.add_argument("--repeats", type=int, default=2, help="timed passes (median reported)")
    args = p.parse_args()

    import extract_features as ef
    from datasets.image_folder import ADMImageFolder, collate_skip_bad
    from tokenizer.vavae import VA_VAE

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_images(tmp / "images", args.num_images)
        config = args.tokenizer_config
        if config is None:
            config = tmp / "tiny.yaml"
            config.write_text(TINY_TOKENIZER)
        torch.manual_seed(0)
        vae = VA_VAE(str(config), img_size=args.image_size, fp16=False, device="cpu",
                     random_init=args.tokenizer_config is None)
        ds = ADMImageFolder(str(tmp / "images"), image_size=args.image_size)
        batches = [list(range(i, min(i + args.batch_size, len(ds))))
                   for i in range(0, len(ds), args.batch_size)]

        def one_pass() -> dict:
            t = {"decode": 0.0, "encode": 0.0, "write": 0.0}
            parts = []
            for idx in batches:
                t0 = time.perf_counter()
                batch = collate_skip_bad([ds[i] for i in idx])
                t1 = time.perf_counter()
                parts.append(ef.encode_pair(vae.model, batch.images, batch.indices.tolist(), 0,
                                            mode=False) + (batch.labels,))
                t2 = time.perf_counter()
                t["decode"] += t1 - t0
                t["encode"] += t2 - t1
            t0 = time.perf_counter()
            lat, flip, lab = (torch.cat(x) for x in zip(*parts))
            ef.write_shard(tmp / "out" / "latents_rank00_shard000.safetensors", lat, flip, lab)
            t["write"] = time.perf_counter() - t0
            return t

        one_pass()                                                     # warm-up
        runs = [one_pass() for _ in range(args.repeats)]
    total = [sum(r.values()) for r in runs]
    med = runs[int(np.argsort(total)[len(total) // 2])]
    seconds = sum(med.values())
    print(json.dumps({
        "bench": "extract", "device": "cpu", "threads": torch.get_num_threads(),
        "tokenizer": "tiny-random" if args.tokenizer_config is None else str(args.tokenizer_config),
        "num_images": args.num_images, "image_size": args.image_size,
        "batch_size": args.batch_size, "images_per_s": round(args.num_images / seconds, 2),
        "seconds": round(seconds, 3),
        "share": {k: round(v / seconds, 3) for k, v in med.items()},
        "ms_per_image": {k: round(1000 * v / args.num_images, 3) for k, v in med.items()},
    }))


if __name__ == "__main__":
    main()

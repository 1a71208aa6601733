"""Build an ADM-style reference batch for a custom image folder.

ADM's `VIRTUAL_*.npz` reference batches hold `arr_0` (uint8 NHWC images, 10,000 for ImageNet) plus
`mu, sigma` (pool_3, 2048-d) and `mu_s, sigma_s` (spatial, 2023-d) computed over the whole dataset
(docs/adm_evaluation.md §2). This script makes the same for any folder: every image is ADM centre
cropped (`datasets.transforms.center_crop_arr`, the crop the reference applies to ImageNet), the
statistics cover all images, and `arr_0` holds a seeded random subset of `num_ref` of them
(in folder order). The file feeds `tools/adm_evaluator.py` unchanged.

Statistics are accumulated in float64 around the first batch's mean, so memory does not grow with
the dataset; they match `compute_statistics` on all activations to float64 rounding.

    python tools/make_reference_batch.py IMAGE_DIR OUT.npz [--image-size 256] [--num-ref 10000]
        [--inception-weights PATH] [--device cuda]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm


from datasets.transforms import center_crop_arr
from evaluation.inception import InceptionFeatureExtractor
from evaluation.npz import write_npz_atomic

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class RunningStatistics:
    """Mean and unbiased covariance of streamed (n, D) rows, float64, shifted for stability."""

    def __init__(self):
        self.n, self.shift, self.sum, self.outer = 0, None, None, None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        if self.shift is None:
            self.shift = x.mean(0)
            self.sum = np.zeros_like(self.shift)
            self.outer = np.zeros((x.shape[1], x.shape[1]))
        c = x - self.shift
        self.n += x.shape[0]
        self.sum += c.sum(0)
        self.outer += c.T @ c

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        """mu (D,) float32 as ADM's statistics, sigma (D, D) float64."""
        if self.n < 2:
            raise ValueError(f"need at least 2 images for statistics, got {self.n}")
        mean_c = self.sum / self.n
        sigma = (self.outer - self.n * np.outer(mean_c, mean_c)) / (self.n - 1)
        return (self.shift + mean_c).astype(np.float32), sigma


def list_images(image_dir: str) -> list[str]:
    """All image files under image_dir (recursive), sorted by relative path."""
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    paths = [os.path.join(root, name) for root, _, names in os.walk(image_dir)
             for name in names if name.lower().endswith(IMAGE_EXTENSIONS)]
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {image_dir}")
    return sorted(paths)


def _load_crop(path: str, image_size: int) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(center_crop_arr(img.convert("RGB"), image_size), dtype=np.uint8)


def make_reference_batch(image_dir: str, out_path: str, extractor: InceptionFeatureExtractor,
                         image_size: int = 256, num_ref: int = 10000, batch_size: int = 64,
                         seed: int = 0) -> str:
    """Write `out_path` with arr_0 (num_ref, S, S, 3) uint8 and mu/sigma/mu_s/sigma_s over all images."""
    paths = list_images(image_dir)
    num_ref = min(num_ref, len(paths))
    keep = np.zeros(len(paths), dtype=bool)
    keep[np.random.default_rng(seed).choice(len(paths), num_ref, replace=False)] = True
    ref_images = np.empty((num_ref, image_size, image_size, 3), dtype=np.uint8)
    slot = np.cumsum(keep) - 1  # position in arr_0 of each kept image (folder order)
    pool_stats, spatial_stats = RunningStatistics(), RunningStatistics()

    def batches() -> Iterator[np.ndarray]:
        for start in range(0, len(paths), batch_size):
            idx = range(start, min(start + batch_size, len(paths)))
            batch = np.stack([_load_crop(paths[i], image_size) for i in idx])
            sel = keep[idx.start: idx.stop]
            ref_images[slot[idx.start: idx.stop][sel]] = batch[sel]
            yield batch

    for batch in tqdm(batches(), total=-(-len(paths) // batch_size), desc="reference", unit="batch"):
        feats = extractor(batch)  # activations are folded into the statistics batch by batch
        pool_stats.update(feats["pool"].cpu().numpy())
        spatial_stats.update(feats["spatial"].cpu().numpy())
    mu, sigma = pool_stats.finalize()
    mu_s, sigma_s = spatial_stats.finalize()
    write_npz_atomic(out_path, {"arr_0": ref_images, "mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s})
    logger.info("wrote %s: %d reference images, statistics over %d images", out_path, num_ref, len(paths))
    return out_path


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="Build an ADM-style reference batch for an image folder")
    parser.add_argument("image_dir")
    parser.add_argument("out_path", help="output .npz")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--num-ref", type=int, default=10000, help="images kept in arr_0 (ADM: 10000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the arr_0 subset")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--inception-weights", default=None,
                        help="pt_inception-2015-12-05-6726825d.pth (default: $ADM_INCEPTION_WEIGHTS)")
    parser.add_argument("--random-init", action="store_true", help="random Inception weights (tests only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = InceptionFeatureExtractor(args.inception_weights, device=device, random_init=args.random_init)
    return make_reference_batch(args.image_dir, args.out_path, extractor, args.image_size, args.num_ref,
                                args.batch_size, args.seed)


if __name__ == "__main__":
    main()

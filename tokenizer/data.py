"""Image data for VA-VAE training: an image folder and the reference's crops.

Preprocessing follows docs/reference_behaviour.md §6.2 (taming `ImagePaths` with albumentations):
- RGB; the smallest side resized to `size` with bilinear interpolation *without* antialiasing
  (cv2 INTER_LINEAR, albumentations `SmallestMaxSize`; new sides rounded);
- train: a random `size` x `size` crop; validation: the centre crop; no horizontal flip;
- x / 127.5 - 1, float32 (3, size, size) in [-1, 1].
The random crop of item i in epoch e is drawn from a generator seeded with (seed, e, i), and the
trainer's order is a seeded permutation per epoch (`datasets.order.GlobalBatchSampler`), so a
resumed run sees exactly the images and crops an uninterrupted one would, whatever the worker count. Files that fail to decode are
skipped (the next file is used) and reported with a warning naming them.
"""
from __future__ import annotations

import logging

import os
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def list_images(root: str | os.PathLike) -> List[str]:
    """All image files under `root` (recursively: ImageFolder class dirs or a flat dir), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under {root}")
    return files


def resize_smallest_side(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 with min(H, W) = size; bilinear, half-pixel centres, no antialias."""
    h, w = img.shape[:2]
    scale = size / min(h, w)
    if scale == 1.0:
        return img
    new_h, new_w = round(h * scale), round(w * scale)
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)
    return x[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


class ImageFolderDataset(Dataset):
    """Images under `root` -> float32 (3, size, size) in [-1, 1] (random or centre crop)."""

    def __init__(self, root: str | os.PathLike, size: int = 256, random_crop: bool = True,
                 seed: int = 0, max_images: Optional[int] = None):
        self.root, self.size, self.random_crop, self.seed = str(root), size, random_crop, seed
        self.files = list_images(root)
        if max_images is not None:
            self.files = self.files[:max_images]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, idx: int) -> np.ndarray:
        for offset in range(len(self.files)):
            path = self.files[(idx + offset) % len(self.files)]
            try:
                with Image.open(path) as img:
                    return np.array(img.convert("RGB"))
            except (OSError, ValueError, SyntaxError) as err:  # PIL decode errors
                logger.warning("skipping unreadable image %s (%s)", path, str(err).splitlines()[0])
        raise ValueError(f"no readable image under {self.root}")

    def __getitem__(self, idx: int) -> torch.Tensor:
        img = resize_smallest_side(self._load(idx), self.size)
        h, w = img.shape[:2]
        if self.random_crop:
            rng = np.random.default_rng((self.seed, self.epoch, idx))
            top, left = int(rng.integers(0, h - self.size + 1)), int(rng.integers(0, w - self.size + 1))
        else:
            top, left = (h - self.size) // 2, (w - self.size) // 2
        crop = img[top: top + self.size, left: left + self.size]
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float()
        return x / 127.5 - 1.0


def write_toy_images(root: str | os.PathLike, num_images: int, size: tuple = (48, 40),
                     seed: int = 0) -> List[str]:
    """Write `num_images` PNGs of random coloured rectangles and ellipses (demos and tests)."""
    from PIL import ImageDraw

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(num_images):
        img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 5))):
            x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
            x1, y1 = x0 + int(rng.integers(6, w // 2)), y0 + int(rng.integers(6, h // 2))
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([x0, y0, x1, y1], fill=color)
        path = root / f"{i:05d}.png"
        img.save(path)
        paths.append(str(path))
    return paths

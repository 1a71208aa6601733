"""ImageFolder with the ADM preprocessing, tolerant of unreadable images.

Class indices and sample order are torchvision `ImageFolder`'s (sorted class folders, sorted
files), as the reference extraction (docs/reference_behaviour.md §4.2). Images go through `adm_transform`
(centre crop, optional flip, [-1, 1]). A file that cannot be decoded (corrupt, truncated, not an
image) does not stop a 1.28M-image run: the item comes back with `image=None`, a warning names
the path, and `collate_skip_bad` drops it from the batch and reports its index so the caller can
count it.
"""
from __future__ import annotations

import logging
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from datasets.transforms import adm_transform

logger = logging.getLogger(__name__)

# PIL raises OSError (also UnidentifiedImageError, "image file is truncated"), ValueError or
# SyntaxError (some broken PNG/GIF headers) on bad files.
DECODE_ERRORS = (OSError, ValueError, SyntaxError)


class ADMImageFolder(ImageFolder):
    """`ImageFolder(root)` returning `(image, label, index)`.

    image: (3, image_size, image_size) float32 in [-1, 1], or None when the file is unreadable.
    label: int class index. index: the sample's position in `self.samples`.
    """

    def __init__(self, root: str, image_size: int = 256, p_hflip: float = 0.0):
        super().__init__(root, transform=adm_transform(image_size, p_hflip))
        self.image_size = image_size

    def __getitem__(self, index: int) -> Tuple[Optional[torch.Tensor], int, int]:
        path, label = self.samples[index]
        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                img = img.convert("RGB")      # forces the full decode inside the try
            return self.transform(img), label, index
        except DECODE_ERRORS as e:
            logger.warning("skipping unreadable image %s: %s", path, e)
            return None, label, index


class ImageBatch(NamedTuple):
    images: torch.Tensor        # (B, 3, H, W) float32, readable images only
    labels: torch.Tensor        # (B,) int64
    indices: torch.Tensor       # (B,) int64 dataset indices of the images
    bad_indices: List[int]      # dataset indices of the unreadable images of this batch


def collate_skip_bad(items: Sequence[Tuple[Optional[torch.Tensor], int, int]]) -> ImageBatch:
    """Collate `ADMImageFolder` items, dropping unreadable ones (an all-bad batch is empty)."""
    good = [it for it in items if it[0] is not None]
    bad = [it[2] for it in items if it[0] is None]
    if good:
        images = torch.stack([it[0] for it in good])
    else:
        images = torch.empty(0, 3, 0, 0)
    labels = torch.tensor([it[1] for it in good], dtype=torch.int64)
    indices = torch.tensor([it[2] for it in good], dtype=torch.int64)
    return ImageBatch(images, labels, indices, bad)

"""Image preprocessing shared by extraction, tokenizer evaluation and training.

`center_crop_arr` is the ADM (guided-diffusion) centre crop that the reference uses before
encoding ImageNet: halve with BOX while the short side is at least twice the target, resize the
short side to the target with BICUBIC (each side rounded), then crop the centre.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM centre crop of `pil_image` to `image_size` x `image_size` (returns a PIL image)."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top: top + image_size, left: left + image_size])

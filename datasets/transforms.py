"""Image preprocessing shared by extraction, tokenizer evaluation and training.

`center_crop_arr` is the ADM (guided-diffusion) centre crop that the reference uses before
encoding ImageNet: halve with BOX while the short side is at least twice the target, resize the
short side to the target with BICUBIC (each side rounded), then crop the centre.
`adm_transform` adds the flip and the [-1, 1] normalisation of the reference's `img_transform`.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
import torch
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


def adm_transform(image_size: int, p_hflip: float = 0.0) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> (3, image_size, image_size) float32 tensor in [-1, 1] (docs/reference_behaviour.md §4.2).

    ADM centre crop, RandomHorizontalFlip(p_hflip) (torch RNG), ToTensor, Normalize(0.5, 0.5):
    the pipeline of the reference's `VA_VAE.img_transform`.
    """
    from torchvision import transforms

    return transforms.Compose([
        transforms.Lambda(partial(center_crop_arr, image_size=image_size)),  # picklable for workers
        transforms.RandomHorizontalFlip(p=p_hflip),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], inplace=True),
    ])

"""A built-in class-conditional image dataset, written to disk as a real ImageFolder.

The CPU demo and the end-to-end tests need data without downloads. Each of the ten classes is
a shape or texture with its own base hue; every image draws position, scale, rotation, colour
jitter, background and noise from a generator seeded by (seed, split, class, index), so the same
seed always writes the same bytes, and any image can be regenerated alone. The folder layout is
ImageNet's (`root/<class name>/<file>.png`), so the demo goes through exactly the code paths
ImageNet does (ADM crop, extraction shards, stats, latent dataset).

    python -m datasets.toy --root demo_output/toy --num-per-class 300 --image-size 64
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

logger = logging.getLogger(__name__)

# name -> base hue in [0, 1); the shape is drawn by the function of the same name below
CLASSES: Dict[str, float] = {
    "circle": 0.00, "square": 0.10, "triangle": 0.20, "cross": 0.30, "ring": 0.40,
    "diamond": 0.50, "hstripes": 0.60, "vstripes": 0.70, "checker": 0.80, "star": 0.90,
}
CLASS_NAMES: List[str] = sorted(CLASSES)  # ImageFolder's class index order
SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}


def _hsv_to_rgb(h: float, s: float, v: float) -> Tuple[int, int, int]:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def _polygon(cx: float, cy: float, radius: float, angle: float, points: List[Tuple[float, float]]):
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos)) for x, y in points]


def _star_points(n: int = 5, inner: float = 0.45) -> List[Tuple[float, float]]:
    return [((1 if k % 2 == 0 else inner) * math.sin(k * math.pi / n),
             -(1 if k % 2 == 0 else inner) * math.cos(k * math.pi / n)) for k in range(2 * n)]


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, cx: float, cy: float, r: float,
                angle: float, color: Tuple[int, int, int]) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if name == "circle":
        draw.ellipse(box, fill=color)
    elif name == "ring":
        draw.ellipse(box, outline=color, width=max(2, int(r * 0.35)))
    elif name == "square":
        draw.polygon(_polygon(cx, cy, r, angle, [(-.8, -.8), (.8, -.8), (.8, .8), (-.8, .8)]), fill=color)
    elif name == "diamond":
        draw.polygon(_polygon(cx, cy, r, angle, [(0, -1), (.6, 0), (0, 1), (-.6, 0)]), fill=color)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, r, angle, [(0, -1), (.87, .5), (-.87, .5)]), fill=color)
    elif name == "star":
        draw.polygon(_polygon(cx, cy, r, angle, _star_points()), fill=color)
    elif name == "cross":
        w = 0.3
        arm = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w),
               (-1, w), (-1, -w), (-w, -w)]
        draw.polygon(_polygon(cx, cy, r, angle, arm), fill=color)
    elif name in ("hstripes", "vstripes"):
        period = max(4, int(r / 1.5))
        for offset in range(0, int(2 * r), period):
            if name == "hstripes":
                draw.rectangle((box[0], box[1] + offset, box[2], box[1] + offset + period // 2), fill=color)
            else:
                draw.rectangle((box[0] + offset, box[1], box[0] + offset + period // 2, box[3]), fill=color)
    elif name == "checker":
        cells = 4
        step = 2 * r / cells
        for i in range(cells):
            for j in range(cells):
                if (i + j) % 2 == 0:
                    x0, y0 = box[0] + i * step, box[1] + j * step
                    draw.rectangle((x0, y0, x0 + step, y0 + step), fill=color)
    else:
        raise ValueError(f"unknown toy class '{name}'")


def render_image(class_index: int, index: int, image_size: int = 64, seed: int = 0,
                 split: str = "train") -> Image.Image:
    """Render image `index` of class `class_index` (deterministic in all arguments)."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split '{split}' (expected one of {sorted(SPLIT_OFFSETS)})")
    name = CLASS_NAMES[class_index]
    rng = np.random.default_rng([seed, SPLIT_OFFSETS[split], class_index, index])
    size = image_size
    bg_hue = (CLASSES[name] + 0.5 + rng.uniform(-0.15, 0.15)) % 1.0
    bg_top = _hsv_to_rgb(bg_hue, rng.uniform(0.05, 0.35), rng.uniform(0.1, 0.45))
    bg_bottom = _hsv_to_rgb(bg_hue, rng.uniform(0.05, 0.35), rng.uniform(0.1, 0.45))
    ramp = np.linspace(0, 1, size)[:, None, None]
    background = (1 - ramp) * np.array(bg_top) + ramp * np.array(bg_bottom)
    image = Image.fromarray(np.broadcast_to(background, (size, size, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    r = size * rng.uniform(0.18, 0.34)
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    color = _hsv_to_rgb((CLASSES[name] + rng.uniform(-0.04, 0.04)) % 1.0,
                        rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))
    _draw_shape(draw, name, cx, cy, r, rng.uniform(0, 2 * math.pi), color)
    image = image.filter(ImageFilter.GaussianBlur(radius=0.5))
    noise = rng.normal(0, 4.0, size=(size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def generate_toy_imagefolder(root: str, num_per_class: int = 300, image_size: int = 64,
                             seed: int = 0, split: str = "train",
                             progress: Callable = None) -> Path:
    """Write `num_per_class` PNGs per class to `root/<class>/<index:05d>.png`; returns root.

    Existing files are kept (they are identical by construction), so an interrupted run
    continues where it stopped.
    """
    root_path = Path(root)
    jobs = [(c, i) for c in range(len(CLASS_NAMES)) for i in range(num_per_class)]
    iterator = progress(jobs) if progress is not None else jobs
    for class_index, index in iterator:
        path = root_path / CLASS_NAMES[class_index] / f"{index:05d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.png")
        render_image(class_index, index, image_size, seed, split).save(tmp)
        tmp.replace(path)
    logger.info("toy dataset: %d images in %d classes at %s", len(jobs), len(CLASS_NAMES), root_path)
    return root_path


def main() -> None:
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="output ImageFolder root")
    parser.add_argument("--num-per-class", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", choices=sorted(SPLIT_OFFSETS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    generate_toy_imagefolder(args.root, args.num_per_class, args.image_size, args.seed, args.split,
                             progress=lambda jobs: tqdm(jobs, desc=f"toy {args.split}", unit="img"))


if __name__ == "__main__":
    main()

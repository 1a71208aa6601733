"""A small CNN classifier for the built-in toy dataset: a quality metric that needs no downloads.

Trained on real toy images (`datasets/toy.py`), it is applied to class-conditional samples:
the fraction of samples classified as the class they were generated for ("conditional
accuracy") must rise clearly above chance (1/10) for a working generator, and rise further with
classifier-free guidance. It complements FID, which needs the Inception weights file.

    python -m evaluation.toy_classifier train --train-root toy/train --val-root toy/val --out clf.pt
    python -m evaluation.toy_classifier eval --ckpt clf.pt --samples samples.npz
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluation.npz import NpzArrayReader, read_batch_images
from utils.fileio import atomic_torch_save
from utils.safe_load import load_torch_file

logger = logging.getLogger(__name__)


class ToyClassifier(nn.Module):
    """Four stride-2 conv stages, global average pooling, a linear head. Input (B, 3, H, W) in [-1, 1]."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def uint8_to_input(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def load_imagefolder_uint8(root: str, image_size: int) -> tuple:
    """All images of an ImageFolder, ADM centre-cropped to `image_size`, as uint8 NHWC + labels."""
    from torchvision.datasets import ImageFolder

    from datasets.transforms import center_crop_arr

    folder = ImageFolder(root)
    images = np.stack([np.asarray(center_crop_arr(folder.loader(path), image_size)) for path, _ in folder.samples])
    labels = np.asarray(folder.targets, dtype=np.int64)
    return images, labels


@torch.no_grad()
def predict(model: ToyClassifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class predictions for uint8 NHWC images."""
    model.eval()
    preds = [model(uint8_to_input(images[i:i + batch_size])).argmax(dim=1)
             for i in range(0, len(images), batch_size)]
    return torch.cat(preds).numpy()


def train_classifier(train_root: str, val_root: Optional[str], out_path: str, image_size: int = 64,
                     epochs: int = 6, batch_size: int = 64, lr: float = 2e-3, seed: int = 0) -> Dict:
    """Train on `train_root`, report held-out accuracy on `val_root`, save to `out_path`."""
    torch.manual_seed(seed)
    images, labels = load_imagefolder_uint8(train_root, image_size)
    num_classes = int(labels.max()) + 1
    model = ToyClassifier(num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x_all, y_all = uint8_to_input(images), torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_all), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            x = x_all[idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            loss = F.cross_entropy(model(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        logger.info("classifier epoch %d: train loss %.4f", epoch + 1, float(total) / len(order))
    result = {"train_images": int(len(labels)), "num_classes": num_classes,
              "train_accuracy": float((predict(model, images) == labels).mean())}
    if val_root is not None:
        val_images, val_labels = load_imagefolder_uint8(val_root, image_size)
        result["val_accuracy"] = float((predict(model, val_images) == val_labels).mean())
    atomic_torch_save({"model": model.state_dict(), "num_classes": num_classes,
                       "image_size": image_size, "metrics": result}, out_path)
    logger.info("classifier saved to %s: %s", out_path, json.dumps(result))
    return result


def load_classifier(path: str) -> ToyClassifier:
    if not Path(path).is_file():
        raise FileNotFoundError(f"classifier checkpoint not found: {path} (train it with "
                                "`python -m evaluation.toy_classifier train ...`)")
    ckpt = load_torch_file(path, "toy classifier checkpoint")
    if not isinstance(ckpt, dict) or not {"model", "num_classes"} <= set(ckpt):
        raise ValueError(f"{path}: not a toy classifier checkpoint (expected 'model' and 'num_classes' entries)")
    model = ToyClassifier(int(ckpt["num_classes"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def conditional_accuracy(ckpt_path: str, samples_npz: str) -> Dict:
    """Accuracy of the classifier on generated samples against the labels they were sampled for."""
    images = read_batch_images(samples_npz)           # headers checked before reading (npz.py)
    try:
        labels = NpzArrayReader(samples_npz, "arr_1").read().astype(np.int64)
    except ValueError as err:
        if "has no array 'arr_1'" not in str(err):
            raise
        raise ValueError(f"{samples_npz}: no labels (arr_1); sample with inference.py, which stores them") from None
    model = load_classifier(ckpt_path)
    preds = np.concatenate([predict(model, batch) for batch in images.iter_batches(1024)])
    num_classes = int(max(labels.max(), preds.max())) + 1
    return {"samples": int(len(labels)), "accuracy": float((preds == labels).mean()),
            "chance": 1.0 / num_classes,
            "predicted_class_histogram": np.bincount(preds, minlength=num_classes).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train on a toy ImageFolder")
    train.add_argument("--train-root", required=True)
    train.add_argument("--val-root")
    train.add_argument("--out", required=True)
    train.add_argument("--image-size", type=int, default=64)
    train.add_argument("--epochs", type=int, default=6)
    train.add_argument("--seed", type=int, default=0)
    evaluate = sub.add_parser("eval", help="conditional accuracy on an inference.py .npz")
    evaluate.add_argument("--ckpt", required=True)
    evaluate.add_argument("--samples", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    if args.command == "train":
        result = train_classifier(args.train_root, args.val_root, args.out, args.image_size,
                                  args.epochs, seed=args.seed)
    else:
        result = conditional_accuracy(args.ckpt, args.samples)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

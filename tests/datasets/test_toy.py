"""The built-in toy dataset is deterministic and its classes are recoverable by a classifier."""
import hashlib

import numpy as np

from datasets.toy import CLASS_NAMES, generate_toy_imagefolder, render_image
from evaluation.toy_classifier import conditional_accuracy, train_classifier


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_toy_imagefolder(str(tmp_path / "a"), num_per_class=3, image_size=32, seed=7)
    b = generate_toy_imagefolder(str(tmp_path / "b"), num_per_class=3, image_size=32, seed=7)
    c = generate_toy_imagefolder(str(tmp_path / "c"), num_per_class=3, image_size=32, seed=8)
    assert sorted(p.name for p in a.iterdir()) == CLASS_NAMES
    assert len(list(a.rglob("*.png"))) == 30
    assert _digest(a) == _digest(b) != _digest(c)
    # splits are disjoint draws
    assert not np.array_equal(np.asarray(render_image(0, 0, 32, 7, "train")),
                              np.asarray(render_image(0, 0, 32, 7, "val")))


def test_classifier_recovers_classes_and_scores_samples(tmp_path):
    train = generate_toy_imagefolder(str(tmp_path / "train"), num_per_class=40, image_size=32)
    val = generate_toy_imagefolder(str(tmp_path / "val"), num_per_class=10, image_size=32, split="val")
    result = train_classifier(str(train), str(val), str(tmp_path / "clf.pt"), image_size=32, epochs=5)
    assert result["val_accuracy"] >= 0.8, result  # chance is 0.1
    # scoring an npz of "samples": real held-out images with their labels -> high accuracy,
    # the same images with shuffled labels -> near chance
    images = np.stack([np.asarray(render_image(c, i, 32, 0, "test")) for c in range(10) for i in range(8)])
    labels = np.repeat(np.arange(10), 8)
    np.savez(tmp_path / "good.npz", images, labels)
    np.savez(tmp_path / "bad.npz", images, np.roll(labels, 8))
    good = conditional_accuracy(str(tmp_path / "clf.pt"), str(tmp_path / "good.npz"))
    bad = conditional_accuracy(str(tmp_path / "clf.pt"), str(tmp_path / "bad.npz"))
    assert good["accuracy"] >= 0.8 and bad["accuracy"] <= 0.3
    assert good["samples"] == 80 and abs(good["chance"] - 0.1) < 1e-9

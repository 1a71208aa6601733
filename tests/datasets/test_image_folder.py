"""ADMImageFolder: ImageFolder order and labels, unreadable images skipped and reported."""
import logging

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from datasets.image_folder import ADMImageFolder, collate_skip_bad
from datasets.transforms import adm_transform


def _write_folder(root):
    rng = np.random.default_rng(0)
    paths = []
    for c in ("b_class", "a_class"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            p = root / c / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(p)
            paths.append(p)
    # unreadable: not an image, a truncated PNG and a truncated JPEG
    (root / "a_class" / "3_garbage.png").write_bytes(b"not an image at all")
    buf = (root / "b_class" / "0.png").read_bytes()
    (root / "a_class" / "4_truncated.png").write_bytes(buf[: len(buf) // 2])
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "tmp.jpg")
    buf = (root / "tmp.jpg").read_bytes()
    (root / "tmp.jpg").unlink()
    (root / "b_class" / "5_truncated.jpg").write_bytes(buf[: len(buf) // 2])
    return paths


def test_items_labels_and_bad_files(tmp_path, caplog):
    _write_folder(tmp_path)
    ds = ADMImageFolder(str(tmp_path), image_size=16)
    assert ds.classes == ["a_class", "b_class"]
    assert len(ds) == 9
    names = [p.split("/")[-2] + "/" + p.split("/")[-1] for p, _ in ds.samples]
    bad = {i for i, n in enumerate(names) if "garbage" in n or "truncated" in n}
    assert len(bad) == 3
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in range(len(ds))]
    for i, (img, label, index) in enumerate(items):
        assert index == i and label == ds.samples[i][1]
        if i in bad:
            assert img is None
            assert ds.samples[i][0] in caplog.text          # reported by path
        else:
            ref = adm_transform(16)(Image.open(ds.samples[i][0]).convert("RGB"))
            torch.testing.assert_close(img, ref, rtol=0, atol=0)

    batches = list(DataLoader(ds, batch_size=4, collate_fn=collate_skip_bad))
    got = torch.cat([b.indices for b in batches]).tolist()
    assert got == [i for i in range(len(ds)) if i not in bad]
    assert sorted(i for b in batches for i in b.bad_indices) == sorted(bad)
    assert sum(b.images.shape[0] for b in batches) == 6
    assert torch.cat([b.labels for b in batches]).tolist() == [ds.samples[i][1] for i in got]


def test_all_bad_batch_is_empty():
    out = collate_skip_bad([(None, 0, 3), (None, 1, 4)])
    assert out.images.shape[0] == 0 and out.labels.numel() == 0 and out.bad_indices == [3, 4]

"""ImgLatentDataset and the latent statistics on hand-made shards in the released format."""
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

import datasets.img_latent_dataset as ild
from datasets.img_latent_dataset import (ImgLatentDataset, compute_latent_stats, load_latent_stats,
                                         save_latent_stats, shard_name)

C, H, W = 4, 3, 2
META = {"total_size": "0", "dtype": "torch.float32", "device": "cpu"}


def _write(d, sizes, seed=0):
    """Shards of the given sizes; returns the concatenated tensors in global-index order."""
    g = torch.Generator().manual_seed(seed)
    lat, flip, lab = [], [], []
    for i, n in enumerate(sizes):
        z = torch.randn(n, C, H, W, generator=g) * torch.arange(1, C + 1).view(1, C, 1, 1) + 3
        zf = torch.randn(n, C, H, W, generator=g)
        y = torch.randint(0, 1000, (n,), generator=g)
        # rank-major names: sorted order is rank00_shard000, rank00_shard001, rank01_shard000
        save_file({"latents": z, "latents_flip": zf, "labels": y},
                  str(d / shard_name(i % 2, i // 2)), metadata=dict(META, total_size=str(n)))
        lat.append(z), flip.append(zf), lab.append(y)
    order = sorted(range(len(sizes)), key=lambda i: shard_name(i % 2, i // 2))
    return (torch.cat([lat[i] for i in order]), torch.cat([flip[i] for i in order]),
            torch.cat([lab[i] for i in order]))


@pytest.fixture
def latent_dir(tmp_path):
    tensors = _write(tmp_path, [5, 7, 0, 4])      # an empty shard too
    mean = torch.randn(1, C, 1, 1)
    std = torch.rand(1, C, 1, 1) + 0.5
    save_latent_stats({"mean": mean, "std": std}, tmp_path)
    return tmp_path, tensors, mean, std


def test_items_normalised_with_flip_choice(latent_dir):
    d, (lat, flip, lab), mean, std = latent_dir
    ds = ImgLatentDataset(d, latent_norm=True, latent_multiplier=0.5)
    assert len(ds) == 16
    torch.manual_seed(0)
    chose_flip = []
    for _ in range(4):
        for i in range(len(ds)):
            x, y, extras = ds[i]
            assert x.shape == (C, H, W) and x.dtype == torch.float32 and extras == {}
            assert y.dtype == torch.int64 and y.dim() == 0 and int(y) == int(lab[i])
            a = (lat[i] - mean[0]) / std[0] * 0.5
            b = (flip[i] - mean[0]) / std[0] * 0.5
            is_a, is_b = torch.allclose(x, a, atol=1e-6), torch.allclose(x, b, atol=1e-6)
            assert is_a != is_b
            chose_flip.append(is_b)
    assert 0.3 < sum(chose_flip) / len(chose_flip) < 0.7
    # the choice follows torch's RNG: same seed, same choices
    torch.manual_seed(0)
    again = [torch.allclose(ds[i][0], (flip[i] - mean[0]) / std[0] * 0.5, atol=1e-6)
             for i in range(len(ds))]
    assert again == chose_flip[: len(ds)]
    m, s = ds.get_latent_stats()
    assert torch.equal(m, mean) and torch.equal(s, std) and m.shape == (1, C, 1, 1)


def test_no_norm_needs_no_stats(tmp_path):
    lat, flip, lab = _write(tmp_path, [3])
    ds = ImgLatentDataset(tmp_path, latent_norm=False, latent_multiplier=2.0)
    x, _, _ = ds[1]
    assert torch.equal(x, lat[1] * 2) or torch.equal(x, flip[1] * 2)
    with pytest.raises(FileNotFoundError, match="extract_features"):
        ImgLatentDataset(tmp_path, latent_norm=True)


def test_workers_seeded_and_files_opened_once(latent_dir, monkeypatch):
    d, (lat, flip, lab), mean, std = latent_dir

    def epoch():
        torch.manual_seed(123)
        loader = DataLoader(ImgLatentDataset(d), batch_size=4, num_workers=2, shuffle=True)
        return [(x, y) for x, y, _ in loader]

    a, b = epoch(), epoch()
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert sorted(torch.cat([y for _, y in a]).tolist()) == sorted(lab.tolist())

    ds = ImgLatentDataset(d)
    opened = []
    real = ild.safe_open
    monkeypatch.setattr(ild, "safe_open", lambda *a, **k: opened.append(a[0]) or real(*a, **k))
    for _ in range(3):
        for i in range(len(ds)):
            ds[i]
    assert len(opened) == 3 and len(set(opened)) == 3      # the 3 non-empty files, once each
    clone = pickle.loads(pickle.dumps(ds))                   # no open handles in the pickle
    assert torch.equal(clone[0][1], ds[0][1])


def test_bad_directories(tmp_path):
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        ImgLatentDataset(tmp_path, latent_norm=False)
    z = torch.zeros(2, C, H, W)
    bad = tmp_path / shard_name(0, 0)
    save_file({"latents": z, "labels": torch.zeros(2, dtype=torch.int64)}, str(bad))
    with pytest.raises(ValueError, match=f"{bad}.*latents_flip"):
        ImgLatentDataset(tmp_path, latent_norm=False)
    bad.unlink()
    _write(tmp_path, [2])
    other = tmp_path / shard_name(0, 1)
    save_file({"latents": torch.zeros(2, C, H + 1, W), "latents_flip": torch.zeros(2, C, H + 1, W),
               "labels": torch.zeros(2, dtype=torch.int64)}, str(other))
    with pytest.raises(ValueError, match=f"{other}.*differs"):
        ImgLatentDataset(tmp_path, latent_norm=False)
    other.write_bytes(b"\x00" * 3 + b"garbage")                          # corrupt header
    with pytest.raises(ValueError, match=f"{other}.*unreadable"):
        ImgLatentDataset(tmp_path, latent_norm=False)
    good = (tmp_path / shard_name(0, 0)).read_bytes()
    other.write_bytes(good[: len(good) - 10])                            # truncated data
    with pytest.raises(ValueError, match=str(other)):
        ImgLatentDataset(tmp_path, latent_norm=False)


def test_stats_match_direct_computation(tmp_path):
    lat, _, _ = _write(tmp_path, [30, 25, 45])
    n = lat.shape[0]
    # all latents: independent of the draw; torch.std is unbiased
    full = compute_latent_stats(tmp_path, num_samples=10000, seed=0)
    torch.testing.assert_close(full["mean"], lat.double().mean((0, 2, 3), keepdim=True).float())
    torch.testing.assert_close(full["std"], lat.double().std((0, 2, 3), keepdim=True).float())
    assert full["mean"].dtype == torch.float32 and full["std"].shape == (1, C, 1, 1)
    # a seeded subset without replacement: randperm(n)[:k] of a generator seeded with `seed`
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(5))[:40]
    sub = compute_latent_stats(tmp_path, num_samples=40, seed=5)
    torch.testing.assert_close(sub["mean"], lat[idx].mean((0, 2, 3), keepdim=True))
    torch.testing.assert_close(sub["std"], lat[idx].std((0, 2, 3), keepdim=True))
    assert torch.equal(compute_latent_stats(tmp_path, 40, 5)["std"], sub["std"])
    assert not torch.equal(compute_latent_stats(tmp_path, 40, 6)["std"], sub["std"])
    path = save_latent_stats(sub, tmp_path)
    assert path.name == "latents_stats.pt"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temp left
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"mean", "std"} and raw["mean"].dtype == torch.float32
    m, s = load_latent_stats(tmp_path)
    assert torch.equal(m, sub["mean"]) and torch.equal(s, sub["std"])

"""extract_features.py: shard format, correctness of the stored latents, multi-process launch,
resume after an interruption (byte-identical), unreadable images and the stats."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import extract_features as ef
from datasets.img_latent_dataset import ImgLatentDataset, load_latent_stats, shard_name
from datasets.transforms import adm_transform

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "tests" / "datasets" / "tiny_vavae.yaml"
SIZE, SHARD, SEED = 16, 8, 42          # 20 readable images -> shards of 8, 8, 4


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c, n in enumerate([9, 4, 7]):
        (root / f"class{c}").mkdir()
        for i in range(n):
            h, w = rng.integers(12, 40, 2)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / f"class{c}" / f"{i:02d}.png")
    (root / "class1" / "02_broken.png").write_bytes(b"garbage")       # unreadable, index 11
    return root


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def _args(image_dir, out, *more):
    return ["--data-path", str(image_dir), "--output-path", str(out), "--tokenizer-config",
            str(TINY_YAML), "--image-size", str(SIZE), "--batch-size", "3", "--shard-size",
            str(SHARD), "--seed", str(SEED), "--random-init-tokenizer", *more]


def _run(cmd, env, expect=0):
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == expect, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _launch(image_dir, out, nproc, *more):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return _run(["bash", "run_extraction.sh", *_args(image_dir, out, "--num-workers", "0", *more)],
                _env(GPUS_PER_NODE=str(nproc), MASTER_PORT=str(port)))


@pytest.fixture(scope="module")
def single_run(image_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    # one process without the launcher (accelerate runs single-process), workers on
    _run([sys.executable, "extract_features.py", *_args(image_dir, out, "--num-workers", "1")],
         _env())
    return out


def _expected_latents(image_dir):
    """Each readable image and its flip encoded one by one with the script's weights and noise."""
    from datasets.image_folder import ADMImageFolder
    from tokenizer.vavae import VA_VAE

    torch.manual_seed(SEED)
    vae = VA_VAE(str(TINY_YAML), img_size=SIZE, fp16=False, device="cpu", random_init=True)
    ds = ADMImageFolder(str(image_dir), image_size=SIZE)
    rows = {}
    with torch.no_grad():
        for i, (path, label) in enumerate(ds.samples):
            if "broken" in path:
                continue
            x = adm_transform(SIZE)(Image.open(path).convert("RGB"))[None]
            post = vae.model.encode(torch.cat([x, x.flip(-1)]))
            eps = ef.posterior_noise(SEED, [i], tuple(post.mean.shape[1:]))[:, 0]
            z = post.mean + post.std * eps
            rows[i] = (z[0], z[1], label)
    return rows


def _shard_files(out):
    return sorted(p.name for p in Path(out).glob("*.safetensors"))


def test_format_contents_and_dataset(image_dir, single_run):
    out = single_run
    assert _shard_files(out) == [shard_name(0, k) for k in range(3)]
    expected = _expected_latents(image_dir)
    assert len(expected) == 20
    good = sorted(expected)                    # readable ImageFolder indices, in order
    for k, name in enumerate(_shard_files(out)):
        with safe_open(str(out / name), framework="pt") as f:
            assert set(f.keys()) == {"latents", "latents_flip", "labels"}
            n = f.get_slice("labels").get_shape()[0]
            assert f.metadata() == {"total_size": str(n), "dtype": "torch.float32",
                                    "device": "cpu"}
            lat, flip, lab = (f.get_tensor(k_) for k_ in ("latents", "latents_flip", "labels"))
        # shard k = images k*8 .. k*8+7 of the ImageFolder, minus the unreadable one
        idx = [i for i in range(k * SHARD, min((k + 1) * SHARD, 21)) if i in expected]
        assert n == len(idx)
        assert lat.dtype == flip.dtype == torch.float32 and lab.dtype == torch.int64
        assert lat.shape == flip.shape == (n, 4, SIZE // 2, SIZE // 2)
        torch.testing.assert_close(lat, torch.stack([expected[i][0] for i in idx]),
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(flip, torch.stack([expected[i][1] for i in idx]),
                                   atol=1e-4, rtol=1e-4)
        assert lab.tolist() == [expected[i][2] for i in idx]
        assert not torch.allclose(lat, flip, atol=1e-3)       # independent samples of the flip

    log = (out / "extraction_log.txt").read_text()
    assert "processes: 1" in log and "skipped 1 unreadable" in log
    # the dataset sees every readable image once, normalised with the written stats
    mean, std = load_latent_stats(out)
    ds = ImgLatentDataset(out, latent_norm=True)
    assert len(ds) == 20
    got = sorted((int(y), round(float(x.sum()), 2)) for x, y, _ in (ds[i] for i in range(20)))
    torch.manual_seed(0)
    x, y, _ = ds[5]                                                # shard 0 row 5 = image 5
    ref = [(expected[5][j] - mean[0]) / std[0] for j in (0, 1)]
    assert int(y) == expected[5][2]
    assert any(torch.allclose(x, r, atol=1e-4) for r in ref)
    assert [g[0] for g in got] == sorted(expected[i][2] for i in good)


def test_two_processes_same_shards(image_dir, single_run, tmp_path):
    out = tmp_path / "two"
    _launch(image_dir, out, 2)
    assert "processes: 2" in (out / "extraction_log.txt").read_text()
    assert json.loads((out / "extraction.json").read_text())["shard_name_world_size"] == 2
    # global shard k -> rank k % 2, shard k // 2; contents independent of the world size
    assert _shard_files(out) == sorted(shard_name(k % 2, k // 2) for k in range(3))
    for k in range(3):
        assert (out / shard_name(k % 2, k // 2)).read_bytes() == \
            (single_run / shard_name(0, k)).read_bytes()
    for a, b in zip(load_latent_stats(out), load_latent_stats(single_run)):
        assert torch.equal(a, b)


def test_interrupt_and_resume_byte_identical(image_dir, single_run, tmp_path):
    out = tmp_path / "resumed"
    cmd = [sys.executable, "extract_features.py", *_args(image_dir, out, "--num-workers", "0")]
    _run(cmd + ["--stop-after-shards", "1"], _env(), expect=ef.STOPPED_EXIT_CODE)
    assert _shard_files(out) == [shard_name(0, 0)] and not (out / "latents_stats.pt").exists()
    first = (out / shard_name(0, 0)).stat().st_mtime_ns
    res = _run(cmd, _env())
    assert "2 of its 3 shards to do" in res.stdout
    assert (out / shard_name(0, 0)).stat().st_mtime_ns == first       # not rewritten
    for name in _shard_files(single_run):
        assert (out / name).read_bytes() == (single_run / name).read_bytes()
    for a, b in zip(load_latent_stats(out), load_latent_stats(single_run)):
        assert torch.equal(a, b)
    # a restart with different arguments is refused, naming the key
    with pytest.raises(ValueError, match="seed"):
        ef.check_manifest(out, dict(json.loads((out / "extraction.json").read_text()), seed=1))


def test_stats_only_recomputes(single_run, tmp_path):
    import shutil
    d = tmp_path / "copy"
    shutil.copytree(single_run, d)
    (d / "latents_stats.pt").unlink()
    ef.main(["--output-path", str(d), "--stats-only"])
    for a, b in zip(load_latent_stats(d), load_latent_stats(single_run)):
        assert torch.equal(a, b)


def test_noise_per_image_and_selection():
    a = ef.posterior_noise(3, [10, 11, 12], (2, 2, 2))
    b = ef.posterior_noise(3, [12, 10], (2, 2, 2))
    assert a.shape == (2, 3, 2, 2, 2)
    assert torch.equal(a[:, 0], b[:, 1]) and torch.equal(a[:, 2], b[:, 0])   # batch-independent
    assert not torch.equal(a[0, 0], a[1, 0])                                  # image vs flip
    assert not torch.equal(a[:, 0], ef.posterior_noise(4, [10], (2, 2, 2))[:, 0])
    seeds = [ef.noise_seed(42, i) for i in range(100000)]
    assert len(set(seeds)) == len(seeds)
    assert ef.select_images(10, None).tolist() == list(range(10))
    assert ef.select_images(10, 4).tolist() == [0, 2, 5, 7]
    assert ef.select_images(3, 7).tolist() == [0, 1, 2]


def test_write_shard_bytes_reproducible(tmp_path):
    from datasets.img_latent_dataset import LatentShards

    z = torch.randn(3, 2, 2, 2)
    labels = torch.tensor([4, 0, 9])
    blobs = set()
    for i in range(8):       # safetensors' metadata order varies; the written bytes must not
        ef.write_shard(tmp_path / f"{i}" / shard_name(0, 0), z, -z, labels)
        blobs.add((tmp_path / f"{i}" / shard_name(0, 0)).read_bytes())
    assert len(blobs) == 1
    with safe_open(str(tmp_path / "0" / shard_name(0, 0)), framework="pt") as f:
        assert f.metadata() == {"total_size": "3", "dtype": "torch.float32", "device": "cpu"}
        assert torch.equal(f.get_tensor("latents_flip"), -z)
    shards = LatentShards(tmp_path / "0")
    assert torch.equal(shards.read("latents", 2), z[2]) and int(shards.read("labels", 2)) == 9


def test_encode_pair_mode_and_sample():
    from tokenizer.vavae import VA_VAE

    torch.manual_seed(0)
    model = VA_VAE(str(TINY_YAML), fp16=False, device="cpu", random_init=True).model
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        post = model.encode(torch.cat([x, x.flip(-1)]))
    mean, std = post.mean, post.std
    lat, flip = ef.encode_pair(model, x, [5, 6, 7], seed=1, mode=True)
    torch.testing.assert_close(lat, mean[:3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flip, mean[3:], atol=1e-5, rtol=1e-5)
    lat, flip = ef.encode_pair(model, x, [5, 6, 7], seed=1, mode=False)
    eps = ef.posterior_noise(1, [5, 6, 7], tuple(mean.shape[1:]))
    torch.testing.assert_close(lat, mean[:3] + std[:3] * eps[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flip, mean[3:] + std[3:] * eps[1], atol=1e-5, rtol=1e-5)
    assert (lat - mean[:3]).abs().max() > 1e-3                      # really a sample

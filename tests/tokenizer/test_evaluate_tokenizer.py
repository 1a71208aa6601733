"""Reconstruction metrics (tools/evaluate_tokenizer.py): closed forms, a plain SSIM, end to end."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision.models.vgg import cfgs, make_layers

from tokenizer.autoencoder import AutoencoderKL
from tools.evaluate_tokenizer import (check_inputs, evenly_spaced, gaussian_window, parse_args,
                                      psnr_uint8, reference_resize_transform, ssim)

REPO = Path(__file__).resolve().parents[2]
TINY = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32,
            ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[16], dropout=0.0)


# ----------------------------------------------------------------------------- PSNR / SSIM
def test_psnr_closed_forms():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.integers(10, 240, (3, 8, 8, 3), dtype=np.uint8))
    b = a.clone()
    b[1] += 5                                            # MSE 25 exactly
    sign = torch.from_numpy(rng.integers(0, 2, (8, 8, 3)) * 2 - 1)
    b[2] = (a[2].long() + 3 * sign).to(torch.uint8)      # +-3 noise: MSE 9 exactly
    p = psnr_uint8(a, b)
    assert math.isinf(p[0].item()) and p[0] > 0
    assert p[1].item() == pytest.approx(20 * math.log10(255 / 5), abs=1e-9)
    assert p[2].item() == pytest.approx(20 * math.log10(255 / 3), abs=1e-9)


def test_gaussian_window():
    g = gaussian_window(11, 1.5, torch.float64)
    assert g.sum().item() == pytest.approx(1.0, abs=1e-12)
    expect = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
    np.testing.assert_allclose(g.numpy(), expect / expect.sum(), atol=1e-12)


def plain_ssim(x, y, L=1.0):
    """Wang et al. SSIM, one window at a time, float64, valid positions only."""
    g = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    x, y = x.astype(np.float64), y.astype(np.float64)
    out = []
    for b in range(x.shape[0]):
        vals = []
        for c in range(x.shape[1]):
            for i in range(x.shape[2] - 10):
                for j in range(x.shape[3] - 10):
                    px, py = x[b, c, i:i + 11, j:j + 11], y[b, c, i:i + 11, j:j + 11]
                    mx, my = (w * px).sum(), (w * py).sum()
                    vx, vy = (w * px * px).sum() - mx ** 2, (w * py * py).sum() - my ** 2
                    cov = (w * px * py).sum() - mx * my
                    vals.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
        out.append(np.mean(vals))
    return np.array(out)


def test_ssim_against_plain_windows_and_closed_forms():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 14, 13, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    np.testing.assert_allclose(ssim(x, y).numpy(), plain_ssim(x.numpy(), y.numpy()), atol=2e-6)
    assert torch.equal(ssim(x, x), torch.ones(2))
    # Constant images a, b: no variance, SSIM = (2ab + c1) / (a^2 + b^2 + c1). Float32 E[x^2] - mu^2
    # (as torchmetrics) leaves ~1e-8 of variance next to c2 = 9e-4, hence rel 1e-4.
    a, b, c1 = 0.2, 0.7, 0.01 ** 2
    s = ssim(torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b))
    assert s.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-4)
    assert ssim(x, y).lt(1).all() and ssim(x, 1 - x).lt(ssim(x, y)).all()


def test_evenly_spaced_and_args():
    assert evenly_spaced(10, None) == list(range(10))
    assert evenly_spaced(10, 4) == [0, 2, 5, 7]
    assert evenly_spaced(3, 5) == [0, 1, 2]
    # --preprocess reference_resize: short side to 32 (antialiased bilinear), centre crop, [-1, 1].
    img = Image.fromarray(np.full((40, 70, 3), 51, dtype=np.uint8))
    x = reference_resize_transform(32)(img)
    assert x.shape == (3, 32, 32)
    torch.testing.assert_close(x, torch.full((3, 32, 32), 51 / 127.5 - 1), atol=1e-6, rtol=0)
    a = parse_args(["--data-path", "x"])
    assert (a.batch_size, a.posterior, a.preprocess, a.fp16) == (8, "sample", "adm", False)


def test_missing_metric_weights_fail_early(tmp_path, monkeypatch):
    monkeypatch.delenv("ADM_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("LPIPS_VGG_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        check_inputs(parse_args(["--data-path", str(tmp_path / "none")]))
    with pytest.raises(FileNotFoundError, match="inception"):
        check_inputs(parse_args(["--data-path", str(tmp_path), "--inception-weights", str(tmp_path / "inc.pth")]))
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        check_inputs(parse_args(["--data-path", str(tmp_path), "--skip-fid"]))
    check_inputs(parse_args(["--data-path", str(tmp_path), "--skip-fid", "--skip-lpips"]))


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    """Tiny ImageFolder (2 classes, 6 images of mixed sizes), tiny autoencoder checkpoint + YAML and
    a torchvision-format random VGG16 file."""
    root = tmp_path_factory.mktemp("tokeval")
    rng = np.random.default_rng(0)
    for c in ("n01", "n02"):
        (root / "data" / c).mkdir(parents=True)
        for i, (h, w) in enumerate([(40, 52), (70, 64), (33, 90)]):
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / "data" / c / f"img{i}.png")
    torch.manual_seed(0)
    model = AutoencoderKL(TINY, embed_dim=4)
    torch.save({"state_dict": model.state_dict()}, root / "tiny.ckpt")
    OmegaConf.save(OmegaConf.create({"ckpt_path": str(root / "tiny.ckpt"),
                                     "model": {"params": {"embed_dim": 4, "ddconfig": TINY}}}),
                   root / "tiny.yaml")
    features = make_layers(cfgs["D"])
    for m in features.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, root / "vgg16.pth")
    return root


def run_script(args, nproc=1):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    if nproc == 1:
        cmd = [sys.executable, str(REPO / "tools/evaluate_tokenizer.py")]
    else:
        env["ACCELERATE_USE_CPU"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(REPO / "tools/evaluate_tokenizer.py")]
    proc = subprocess.run(cmd + [str(a) for a in args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_end_to_end_matches_direct_computation(eval_setup):
    root = eval_setup
    out = root / "res.json"
    run_script(["--config", root / "tiny.yaml", "--data-path", root / "data", "--output", out,
                "--image-size", 32, "--batch-size", 4, "--num-workers", 0, "--seed", 3, "--skip-fid",
                "--lpips-vgg-weights", root / "vgg16.pth"])
    res = json.loads(out.read_text())
    assert res["num_images"] == 6 and res["world_size"] == 1 and res["random_init"] is False
    assert res["posterior"] == "sample" and "rFID" not in res

    # The same numbers computed directly: ADM crop, posterior sample from the rank-0 generator,
    # batches of 4 then 2, metrics per image, averaged.
    from torchvision.datasets import ImageFolder

    from tokenizer.lpips import LPIPSLoss
    from tokenizer.vavae import VA_VAE, to_uint8_nhwc
    from utils.runtime import rank_seed
    tok = VA_VAE(root / "tiny.yaml", img_size=32, device="cpu")
    ds = ImageFolder(root / "data", transform=tok.img_transform())
    x_all = torch.stack([ds[i][0] for i in range(6)])
    gen = torch.Generator().manual_seed(rank_seed(3, 0, 1))
    lp = LPIPSLoss(root / "vgg16.pth")
    psnr, ss, lps = [], [], []
    for x in (x_all[:4], x_all[4:]):
        rec = tok.decode(tok.encode_images(x, generator=gen))
        psnr.append(psnr_uint8(to_uint8_nhwc(x), to_uint8_nhwc(rec)))
        ss.append(ssim((x + 1) / 2, ((rec + 1) / 2).clamp(0, 1)))
        with torch.no_grad():
            lps.append(lp(rec, x).flatten())
    assert res["PSNR"] == pytest.approx(torch.cat(psnr).double().mean().item(), rel=1e-6)
    assert res["SSIM"] == pytest.approx(torch.cat(ss).double().mean().item(), rel=1e-5)
    assert res["LPIPS"] == pytest.approx(torch.cat(lps).double().mean().item(), rel=1e-5)


@pytest.mark.slow
def test_end_to_end_fid_two_processes(eval_setup):
    """Random Inception (FID is minutes of sqrtm on 2 cores): 2 ranks give the 1-rank numbers."""
    pytest.importorskip("torch_fidelity")
    root = eval_setup
    common = ["--config", root / "tiny.yaml", "--data-path", root / "data", "--image-size", 32,
              "--batch-size", 2, "--num-workers", 0, "--posterior", "mode", "--random-init"]
    run_script(common + ["--output", root / "one.json"], nproc=1)
    run_script(common + ["--output", root / "two.json"], nproc=2)
    one, two = (json.loads((root / f).read_text()) for f in ("one.json", "two.json"))
    assert two["world_size"] == 2 and one["num_images"] == two["num_images"] == 6
    assert one["random_init"] and "NOT real" in one["note"]
    for k in ("PSNR", "SSIM", "LPIPS"):
        assert two[k] == pytest.approx(one[k], rel=1e-4, abs=1e-6), k  # other batch composition
    assert math.isfinite(one["rFID"]) and one["rFID"] > 0
    assert two["rFID"] == pytest.approx(one["rFID"], rel=1e-3)

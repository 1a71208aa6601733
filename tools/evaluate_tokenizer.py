"""Reconstruction metrics of a tokenizer (rFID, PSNR, SSIM, LPIPS) over an ImageFolder.

Follows hustvl/LightningDiT `evaluate_tokenizer.py` (docs/reference_behaviour.md §7.2): each image is encoded,
a posterior **sample** (not the mode) is decoded, and the reconstruction is compared with the input.
Differences, all documented in the JSON it writes:
- preprocessing is the ADM centre crop used for latent extraction (`--preprocess adm`, default);
  the reference's tensor Resize(256) + CenterCrop(256) is `--preprocess reference_resize`;
- no PNG round trip: originals and reconstructions become uint8 in memory exactly as the
  reference's PNGs (clamp(127.5 x + 128) then truncation), Inception activations are gathered
  across ranks and rFID is the Frechet distance between them (evaluation.adm_metrics);
- every image counts once (no DistributedSampler padding), metrics are per-image means;
- SSIM: Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03, on images clamped to [0, 1], mean over the
  valid windows, the same number as the reference's torchmetrics call with data_range=(-1, 1)
  (torchmetrics clamps to that range). LPIPS is taken on the unclamped reconstruction, as there.
- posterior noise comes from a CPU generator seeded per rank (`--seed`).

Launch: `bash run_tokenizer_eval.sh --config configs/tokenizer/vavae_f16d32.yaml --data-path ...`
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import transforms
from torchvision.datasets import ImageFolder
from tqdm import tqdm


from tokenizer.factory import TOKENIZERS, build_tokenizer, tokenizer_type
from tokenizer.vavae import to_uint8_nhwc
from utils.fileio import atomic_write_json

logger = logging.getLogger("evaluate_tokenizer")


#################################################################################
#                                    Metrics                                    #
#################################################################################

def psnr_uint8(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR of uint8 images (B, H, W, C): 20 log10(255 / sqrt(MSE)); inf when identical."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(dim=1)
    return 20.0 * torch.log10(255.0 / torch.sqrt(mse))


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian of length `size` centred on the middle tap."""
    d = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-0.5 * (d / sigma) ** 2)
    return (g / g.sum()).to(dtype)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image SSIM (B,) of (B, C, H, W) images (Wang et al. 2004): Gaussian-weighted local
    statistics over the windows that lie inside the image, averaged over positions and channels."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) tensors of equal shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    B, C, H, W = x.shape
    x, y = x.float(), y.float()
    g = gaussian_window(window, sigma, x.dtype, x.device)
    # Separable blur (valid) of the five moment maps at once: (5B, C, H, W) -> (5B, C, H-w+1, W-w+1).
    maps = torch.cat([x, y, x * x, y * y, x * y]).reshape(5 * B * C, 1, H, W)
    maps = F.conv2d(maps, g.view(1, 1, 1, -1))
    maps = F.conv2d(maps, g.view(1, 1, -1, 1))
    mu_x, mu_y, e_xx, e_yy, e_xy = maps.reshape(5, B, C, *maps.shape[-2:])
    var_x, var_y, cov = e_xx - mu_x ** 2, e_yy - mu_y ** 2, e_xy - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(dim=1)


#################################################################################
#                                     Helpers                                   #
#################################################################################

def reference_resize_transform(img_size: int) -> transforms.Compose:
    """The reference evaluation's preprocessing: ToTensor, tensor Resize (antialiased bilinear),
    CenterCrop, Normalize(0.5, 0.5) (docs/reference_behaviour.md §7.2; differs from extraction)."""
    return transforms.Compose([
        transforms.ToTensor(),
        transforms.Resize(img_size, antialias=True),
        transforms.CenterCrop(img_size),
        transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    ])


def evenly_spaced(n_total: int, n: int | None) -> list[int]:
    """`n` indices spread evenly over range(n_total) (all when n is None or >= n_total)."""
    if n is None or n >= n_total:
        return list(range(n_total))
    return [(i * n_total) // n for i in range(n)]


def gather_rows(accelerator, t: torch.Tensor) -> torch.Tensor:
    """Concatenate (n_r, ...) tensors of all ranks (n_r may differ) in rank order."""
    n = torch.tensor([t.shape[0]], device=t.device)
    counts = accelerator.gather(n).tolist()
    padded = torch.zeros((max(counts),) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    allp = accelerator.gather(padded).reshape(len(counts), max(counts), *t.shape[1:])
    return torch.cat([allp[r, :c] for r, c in enumerate(counts)])


def finite_mean(v: torch.Tensor) -> float:
    return float(v.double().mean().item()) if v.numel() else float("nan")


#################################################################################
#                                      Main                                     #
#################################################################################

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/tokenizer/vavae_f16d32.yaml", help="tokenizer YAML")
    p.add_argument("--model-type", default=None, choices=sorted(TOKENIZERS),
                   help="tokenizer wrapper (default: the YAML's `tokenizer:` key, vavae when absent)")
    p.add_argument("--ckpt-path", default=None, help="override the YAML's ckpt_path")
    p.add_argument("--data-path", required=True, help="ImageFolder root, e.g. ImageNet val")
    p.add_argument("--output", default=None, help="JSON file (default output/tokenizer_eval/<config>.json)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--preprocess", default="adm", choices=["adm", "reference_resize"])
    p.add_argument("--batch-size", type=int, default=8, help="per process (the reference uses 8)")
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-images", type=int, default=None, help="evenly spaced subset of the folder")
    p.add_argument("--posterior", default="sample", choices=["sample", "mode"],
                   help="decode a posterior sample (the reference) or the mean")
    p.add_argument("--fp16", action="store_true", help="fp16 autocast on CUDA (the reference runs fp32)")
    p.add_argument("--inception-weights", default=None, help="pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--lpips-vgg-weights", default=None, help="vgg16-397923af.pth ($LPIPS_VGG_WEIGHTS)")
    p.add_argument("--skip-fid", action="store_true")
    p.add_argument("--skip-lpips", action="store_true")
    p.add_argument("--random-init", action="store_true",
                   help="TESTS ONLY: random tokenizer/Inception/VGG weights; the numbers are not real")
    return p.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> None:
    """Fail before any process group or network exists when a required file is missing."""
    if not os.path.isdir(args.data_path):
        raise FileNotFoundError(f"--data-path is not a directory: {args.data_path}")
    if args.random_init:
        return
    if not args.skip_fid:
        from evaluation.inception import resolve_weights_path
        resolve_weights_path(args.inception_weights)  # raises FileNotFoundError naming the file
    if not args.skip_lpips:
        from tokenizer.lpips import VGG_WEIGHTS_ENV, VGG_WEIGHTS_HINT
        path = args.lpips_vgg_weights or os.environ.get(VGG_WEIGHTS_ENV)
        if not path or not os.path.isfile(path):
            raise FileNotFoundError(f"LPIPS VGG16 weights not found: {path} (needs {VGG_WEIGHTS_HINT}, "
                                    "or pass --skip-lpips)")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    check_inputs(args)
    from utils.runtime import rank_seed, setup_runtime  # imports accelerate

    rt = setup_runtime(seed=args.seed, name="evaluate_tokenizer")
    acc, device = rt.accelerator, rt.device
    output = Path(args.output or f"output/tokenizer_eval/{Path(args.config).stem}.json")
    if args.random_init:
        logger.warning("--random-init: random weights everywhere, the metrics are NOT real numbers")

    # Metric networks first: a missing weights file fails before any image is processed. Random
    # weights (--random-init) come from one seed, so every rank builds the same networks.
    torch.manual_seed(args.seed)
    lpips_fn = extractor = None
    if not args.skip_lpips:
        from tokenizer.lpips import LPIPSLoss
        lpips_fn = LPIPSLoss(args.lpips_vgg_weights, random_init=args.random_init).to(device)
    if not args.skip_fid:
        from evaluation.adm_metrics import compute_statistics, frechet_distance
        from evaluation.inception import InceptionFeatureExtractor
        extractor = InceptionFeatureExtractor(args.inception_weights, device, random_init=args.random_init)
    model_type = args.model_type or tokenizer_type(args.config)
    tokenizer = build_tokenizer(model_type, args.config, img_size=args.image_size, fp16=args.fp16,
                                device=device, ckpt_path=args.ckpt_path, random_init=args.random_init)

    transform = (tokenizer.img_transform(p_hflip=0.0) if args.preprocess == "adm"
                 else reference_resize_transform(args.image_size))
    dataset = ImageFolder(args.data_path, transform=transform)
    indices = evenly_spaced(len(dataset), args.max_images)
    shard = Subset(dataset, indices[rt.rank::rt.world_size])  # every image exactly once
    loader = DataLoader(shard, batch_size=args.batch_size, shuffle=False, drop_last=False,
                        num_workers=args.num_workers, pin_memory=device.type == "cuda")
    logger.info("%d images (%d on this rank), preprocess %s", len(indices), len(shard), args.preprocess)

    generator = torch.Generator().manual_seed(rank_seed(args.seed, rt.rank, rt.world_size))
    psnr, ssim_v, lpips_v, act_ref, act_rec = [], [], [], [], []
    for x, _ in tqdm(loader, desc="reconstruct", disable=not rt.is_main, unit="batch"):
        x = x.to(device, non_blocking=True)
        z = tokenizer.encode_images(x, generator=generator, sample=args.posterior == "sample")
        rec = tokenizer.decode(z)                              # (B, 3, H, W) float32, unclamped
        ref_u8, rec_u8 = to_uint8_nhwc(x), to_uint8_nhwc(rec)
        psnr.append(psnr_uint8(ref_u8, rec_u8))
        ssim_v.append(ssim(((x + 1) / 2).clamp(0, 1), ((rec + 1) / 2).clamp(0, 1)))
        with torch.no_grad():
            if lpips_fn is not None:
                lpips_v.append(lpips_fn(rec, x).flatten())
            if extractor is not None:
                act_ref.append(extractor(ref_u8)["pool"].float())
                act_rec.append(extractor(rec_u8)["pool"].float())

    def collect(chunks: list[torch.Tensor], width: int | None = None,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
        empty = torch.zeros((0,) if width is None else (0, width), dtype=dtype, device=device)
        return gather_rows(acc, torch.cat(chunks).to(dtype) if chunks else empty)

    results = {"num_images": len(indices)}
    psnr_all = collect(psnr)
    results["PSNR"] = finite_mean(psnr_all)
    results["SSIM"] = finite_mean(collect(ssim_v))
    if lpips_fn is not None:
        results["LPIPS"] = finite_mean(collect(lpips_v))
    if extractor is not None:
        ref_all = collect(act_ref, 2048, torch.float32)  # (N, 2048) Inception pool_3, in index order
        rec_all = collect(act_rec, 2048, torch.float32)
        if rt.is_main:  # ADM's order: 1 = samples (reconstructions), 2 = reference (originals)
            mu_rec, sigma_rec = compute_statistics(rec_all.cpu().numpy())
            mu_ref, sigma_ref = compute_statistics(ref_all.cpu().numpy())
            results["rFID"] = float(frechet_distance(mu_rec, sigma_rec, mu_ref, sigma_ref))
    results.update({
        "config": args.config, "model_type": model_type,
        "ckpt_path": None if args.random_init else tokenizer.ckpt_path,
        "preprocess": args.preprocess, "image_size": args.image_size, "seed": args.seed,
        "world_size": rt.world_size, "fp16": args.fp16, "posterior": args.posterior,
        "psnr_identical_images": int(torch.isinf(psnr_all).sum().item()),
        "random_init": args.random_init,
    })
    if args.random_init:
        results["note"] = "random weights (--random-init): these numbers are NOT real metrics"
    if rt.is_main:
        atomic_write_json(results, output)
        shown = ", ".join(f"{k}: {results[k]:.3f}" for k in ("rFID", "PSNR", "LPIPS", "SSIM") if k in results)
        logger.info("%s -> %s", shown, output)
    acc.wait_for_everyone()
    return results


if __name__ == "__main__":
    main()

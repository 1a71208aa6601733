"""GPU benchmark of what LightningDiT users pay for: training throughput / MFU and FID sampling.

Training (bf16 autocast, fp32 master weights, fused AdamW, released flags, 16x16x32 latents):
for each model and per-GPU batch, img/s, achieved TFLOP/s (matmul FLOPs, counted as in
tools/bench/bench_model.py), MFU against the bf16 matmul rate measured in the same run, and peak
memory, for
- "ours": the model as train.py runs it on CUDA (plain kernel path, SDPA, compile_blocks), and
- "authors": the reference's formulation of the block (bench_model.PlainLightningDiT) compiled
  the way the reference compiles it (@torch.compile on the block, embedders, final layer and
  SwiGLU), from the same weights; `speedup` = ours img/s / authors img/s.
Sampling: img/s of the FID loop (noise -> 250 Euler steps with CFG 6.7 in the interval from
0.125 -> VA-VAE decode -> PNG encode) at XL/1, with the reference's settings (per-process batch 4,
fp32/TF32, unconditional half always computed, PNGs written in line) against ours (large batch,
unconditional half skipped outside the interval, PNGs on a writer thread; fp32 and bf16), and the
max pixel difference between the reference's and our fp32 images of the same ids. Weights are
random (no checkpoint is needed); the VA-VAE is randomly initialised too, which costs the same.

One JSON line per result on stdout. Without CUDA it exits with status 2 and a message, unless
`--smoke` (tiny model, a few steps: checks that the script runs, measures nothing of interest).

    python tools/bench/bench_gpu.py                                   # everything (~15 min on an H100)
    python tools/bench/bench_gpu.py --models LightningDiT-XL/1 --batches 64 --sample-images 64
    python tools/bench/bench_gpu.py --smoke                           # CPU: does it run?
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

from models.kernels import select_kernels
from models.lightningdit import LightningDiT, LightningDiT_models
from tools.bench.bench_model import PlainLightningDiT, make_loss_fn, matmul_flops_per_step, matmul_peak
from tools.bench.common import randomize_zero_init, sync

logger = logging.getLogger("bench_gpu")

RELEASED = dict(use_swiglu=True, use_rope=True, use_rmsnorm=True)
REPO = Path(__file__).resolve().parents[2]


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def compile_authors_way(model: PlainLightningDiT) -> PlainLightningDiT:
    """torch.compile where the reference puts @torch.compile: each block, the three embedders,
    the final layer and the SwiGLU module (inlined into its block's graph)."""
    m = model.m
    for block in m.blocks:
        if hasattr(block.mlp, "w12"):
            block.mlp.compile()
        block.compile()
    for module in (m.x_embedder, m.t_embedder, m.y_embedder, m.final_layer):
        module.compile()
    return model


def build(name: str, smoke: bool) -> LightningDiT:
    torch.manual_seed(0)
    if smoke:
        model = LightningDiT(input_size=8, patch_size=1, in_channels=4, hidden_size=64, depth=2, num_heads=4,
                             **RELEASED)
    else:
        model = LightningDiT_models[name](input_size=16, in_channels=32, **RELEASED)
    return randomize_zero_init(model)


def time_training(model: nn.Module, loss_fn, x, y, device, steps: int, warmup: int) -> Dict:
    """Median step time of forward + backward + fused AdamW under bf16 autocast, and peak memory."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, betas=(0.9, 0.95),
                            weight_decay=0, fused=device.type == "cuda" or None)
    model.train()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_fn(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(warmup):  # includes compilation
        step()
    sync(device)
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    out = {"step_s": statistics.median(times), "step_s_min": min(times), "warmup_s": warmup_s}
    if device.type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return out


def bench_training(args, device, peak: float) -> None:
    loss_fn, loss_name = make_loss_fn()
    for name in args.models:
        base = build(name, args.smoke)
        n_tokens = base.x_embedder.num_patches
        side, chans = base.x_embedder.img_size[0], base.in_channels
        for batch in args.batches:
            flops = matmul_flops_per_step(base, batch, n_tokens)
            x = torch.randn(batch, chans, side, side, device=device)
            y = torch.randint(0, 1000 if not args.smoke else 10, (batch,), device=device)
            results = {}
            compiled = device.type == "cuda"  # the smoke mode on CPU runs eager (compilation takes minutes)
            variants = {"ours": lambda: select_kernels(copy.deepcopy(base).to(device).compile_blocks(dynamic=False)
                                                      if compiled else copy.deepcopy(base).to(device))}
            if not args.no_authors:
                variants["authors"] = lambda: (compile_authors_way(PlainLightningDiT(base).to(device))
                                               if compiled else PlainLightningDiT(base).to(device))
            for variant, make in variants.items():
                torch._dynamo.reset()
                try:
                    res = time_training(make(), loss_fn, x, y, device, args.steps, args.warmup)
                except torch.cuda.OutOfMemoryError:
                    res = {"oom": True}
                if "step_s" in res:
                    res.update(images_per_s=batch / res["step_s"], tflops=flops / res["step_s"] / 1e12,
                               mfu=flops / res["step_s"] / peak)
                results[variant] = res
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                emit({"bench": "train", "model": name if not args.smoke else "smoke", "variant": variant,
                      "batch": batch, "precision": "bf16", "loss": loss_name, "flops_per_step": flops,
                      "bf16_matmul_peak_tflops": peak / 1e12, **res})
            if "images_per_s" in results.get("ours", {}) and "images_per_s" in results.get("authors", {}):
                emit({"bench": "train_ratio", "model": name if not args.smoke else "smoke", "batch": batch,
                      "speedup_ours_over_authors": results["ours"]["images_per_s"] / results["authors"]["images_per_s"]})


def sampling_config(args, batch: int, precision: str, skip: bool):
    from configs.schema import load_config

    overrides = [f"sample.per_proc_batch_size={batch}", f"sample.precision={precision}",
                 f"sample.skip_uncond_outside_interval={str(skip).lower()}", "sample.cfg_scale=6.7",
                 "sample.cfg_interval_start=0.125", "sample.timestep_shift=0.3",
                 f"sample.num_sampling_steps={args.sample_steps}", "data.latent_norm=false",
                 "data.latent_multiplier=1.0", "model.in_chans=32", "model.model_type=LightningDiT-XL/1",
                 "model.use_swiglu=true", "model.use_rope=true", "model.use_rmsnorm=true"]
    if args.smoke:
        overrides += ["data.image_size=32", "vae.downsample_ratio=4", "model.in_chans=4", "model.hidden_size=64",
                      "model.depth=2", "model.num_heads=4", "data.num_classes=10",
                      f"vae.config_path={REPO / 'configs/tiny/tiny_vavae_f4d4.yaml'}"]
    return load_config(None, overrides)


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def fid_loop(cfg, model, decoder, n_images: int, device, threaded: bool) -> (float, np.ndarray):
    """Seconds for n_images through the FID loop (sampling/loop.py's `generate`: noise, labels,
    sampler under sample.precision, decode; then PNG encode), and the images."""
    from concurrent.futures import ThreadPoolExecutor

    from sampling.loop import generate
    from sampling.pipeline import LatentSampler

    b = cfg.sample.per_proc_batch_size
    sampler = LatentSampler(cfg, model)
    batches = [list(range(lo, min(lo + b, n_images))) for lo in range(0, n_images, b)]
    images, pending = [], []
    pool = ThreadPoolExecutor(max_workers=2) if threaded else None
    sync(device)
    t0 = time.perf_counter()
    for _, batch in generate(cfg, sampler, decoder, batches, device, total=n_images):
        images.append(batch)
        if pool is None:
            for image in batch:
                encode_png(image)
        else:
            for f in pending:
                f.result()
            pending = [pool.submit(encode_png, image) for image in batch]
    for f in pending:
        f.result()
    sync(device)
    elapsed = time.perf_counter() - t0
    if pool is not None:
        pool.shutdown()
    return elapsed, np.concatenate(images)


def bench_sampling(args, device) -> None:
    from models.build import build_model, should_compile
    from sampling.pipeline import Decoder

    ref_cfg = sampling_config(args, 4, "fp32", skip=False)
    model = randomize_zero_init(build_model(ref_cfg, training=False)).to(device).eval()
    if should_compile(ref_cfg, device):
        model.compile_blocks()
    select_kernels(model)
    decoder = Decoder(ref_cfg, device, random_init=True)
    variants = [("reference", 4, "fp32", False, False, args.ref_images),
                ("ours_fp32", args.sample_batch, "fp32", True, True, args.sample_images),
                ("ours_bf16", args.sample_batch, "bf16", True, True, args.sample_images)]
    images = {}
    with torch.no_grad():
        for name, batch, precision, skip, threaded, n in variants:
            cfg = sampling_config(args, batch, precision, skip)
            fid_loop(cfg, model, decoder, min(n, batch), device, threaded)  # warm-up (compilation)
            elapsed, images[name] = fid_loop(cfg, model, decoder, n, device, threaded)
            emit({"bench": "sample", "model": "smoke" if args.smoke else "LightningDiT-XL/1", "variant": name,
                  "per_proc_batch": batch, "precision": precision, "skip_uncond": skip, "png_thread": threaded,
                  "steps": args.sample_steps, "cfg_scale": 6.7, "cfg_interval_start": 0.125,
                  "images": n, "seconds": elapsed, "images_per_s": n / elapsed})
    k = min(len(images["reference"]), len(images["ours_fp32"]))
    diff = int(np.abs(images["reference"][:k].astype(np.int16) - images["ours_fp32"][:k].astype(np.int16)).max())
    diff_bf16 = int(np.abs(images["reference"][:k].astype(np.int16) - images["ours_bf16"][:k].astype(np.int16)).max())
    emit({"bench": "sample_check", "images_compared": k, "max_pixel_diff_fp32": diff,
          "max_pixel_diff_bf16": diff_bf16, "note": "uint8 levels; fp32 target <= 2"})


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["LightningDiT-XL/1", "LightningDiT-B/1"])
    p.add_argument("--batches", nargs="+", type=int, default=[32, 64, 128], help="per-GPU batch sizes")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed training steps (compilation)")
    p.add_argument("--no-authors", action="store_true", help="skip the authors'-formulation baseline")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--no-sample", action="store_true")
    p.add_argument("--sample-steps", type=int, default=250)
    p.add_argument("--sample-batch", type=int, default=128, help="our per-process sampling batch")
    p.add_argument("--sample-images", type=int, default=256, help="images timed for our settings")
    p.add_argument("--ref-images", type=int, default=16, help="images timed for the reference settings")
    p.add_argument("--smoke", action="store_true", help="tiny model, few steps (runs on CPU)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if not torch.cuda.is_available() and not args.smoke:
        print("bench_gpu: no CUDA device here; this benchmark measures GPUs "
              "(run with --smoke to check that it runs on CPU)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        args.models, args.batches, args.steps, args.warmup = ["smoke"], [2], 2, 1
        args.sample_steps, args.sample_batch, args.sample_images, args.ref_images = 4, 4, 4, 4
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as utils/runtime.setup_runtime
        torch.backends.cudnn.allow_tf32 = True
    n = 8192 if device.type == "cuda" else 256
    peak = max(matmul_peak(torch.bfloat16, device, n=n, iters=5) for _ in range(3))
    emit({"bench": "env", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
          "torch": torch.__version__, "smoke": args.smoke, "bf16_matmul_peak_tflops": peak / 1e12,
          "matmul_n": n})
    if not args.no_train:
        bench_training(args, device, peak)
    if not args.no_sample:
        bench_sampling(args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())

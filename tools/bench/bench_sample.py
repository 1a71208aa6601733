"""FID-sampling throughput of inference.py's sampler with the released settings (Euler, 250
grid points, timestep shift 0.3, CFG 10.0 from t = 0.10, 3 guided channels) on a small random
LightningDiT over 32x16x16 latents, with and without skipping the unconditional half outside the
guidance interval. Network sampling only (no VA-VAE decode, no PNG writing).

    python tools/bench/bench_sample.py [--depth 2] [--hidden 128] [--batch 4] [--repeats 3]

Prints one JSON line: images/s (median of repeats) for both variants and their ratio.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

import torch

from configs.schema import load_config
from sampling import LatentSampler
from datasets.order import sample_labels, sample_noise
from models.build import build_model
from models.kernels import select_kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="per-process batch (released: 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=250)
    args = parser.parse_args()
    cfg = load_config(str(REPO / "configs/reproductions/lightningdit_xl_vavae_f16d32_64ep_cfg.yaml"),
                      [f"model.hidden_size={args.hidden}", f"model.depth={args.depth}",
                       f"model.num_heads={args.heads}", f"sample.num_sampling_steps={args.steps}"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_model(cfg, training=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model = select_kernels(model.to(device).eval())  # CPU kernels on the CPU, plain modules on CUDA
    z = sample_noise(range(args.batch), (32, 16, 16), 0).to(device)
    y = sample_labels(range(args.batch), 1000, 0).to(device)
    result = {}
    for skip in (False, True):
        sampler = LatentSampler(cfg, model, skip_uncond=skip)
        with torch.no_grad():
            sampler(z, y)  # warm-up
        times = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            tic = time.perf_counter()
            with torch.no_grad():
                sampler(z, y)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - tic)
        calls, cond_only = sampler.num_calls // (args.repeats + 1), sampler.num_cond_only // (args.repeats + 1)
        result["skip" if skip else "reference"] = {
            "images_per_sec": round(args.batch / statistics.median(times), 3),
            "evaluations": calls, "cond_only_evaluations": cond_only}
    print(json.dumps({
        "bench": "sample", "model": f"LightningDiT depth {args.depth} hidden {args.hidden} (random)",
        "sampler": f"euler {args.steps}, shift 0.3, cfg 10.0 interval 0.10, 3 channels",
        "per_proc_batch": args.batch, "device": device.type, "threads": torch.get_num_threads(),
        **result, "speedup_skip": round(result["skip"]["images_per_sec"] / result["reference"]["images_per_sec"], 3),
    }))


if __name__ == "__main__":
    main()

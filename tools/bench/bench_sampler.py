"""Benchmark: CFG Euler sampling with and without skipping the unneeded unconditional half.

Times the released sampler setting (Euler, 250 grid points, timestep shift 0.3, CFG interval
start 0.11, cfg scale 10) on a small randomly initialised LightningDiT (released flags: SwiGLU,
RoPE, RMSNorm; default hidden 384, depth 6, heads 6, patch 1, 16x16x32 latents):

- reference: the guided denoiser (sampling/guidance.py) without the skip: the doubled batch
  [z; z] with labels [y; null] at all 249 steps, as the reference's `forward_with_cfg` runs it
  (docs/reference_behaviour.md §7.1);
- skip: the same denoiser with `sample.skip_uncond_outside_interval`, which runs only the n
  conditional rows at the 73 steps outside the interval.

Both use the same z and labels. Prints one JSON line: images/s of each, the speedup, evaluation
counts, the max abs difference of the final samples and the device.

    python tools/bench/bench_sampler.py --batch 4 --repeats 3
"""
import argparse
import json
import logging
import statistics
import time

import torch


from tools.bench.common import randomize_zero_init, sync

logger = logging.getLogger(__name__)


def build_model(args, device):
    try:
        from models.kernels import select_kernels
        from models.lightningdit import LightningDiT
    except ImportError as e:  # pragma: no cover - the bench needs the real network
        raise SystemExit(f"bench_sampler needs models/lightningdit.py importable: {e}")
    torch.manual_seed(args.seed)
    model = LightningDiT(input_size=args.latent_size, patch_size=args.patch_size, in_channels=args.channels,
                         hidden_size=args.hidden, depth=args.depth, num_heads=args.heads,
                         num_classes=args.num_classes, use_swiglu=True, use_rope=True, use_rmsnorm=True)
    return select_kernels(randomize_zero_init(model).eval().to(device))  # CPU kernels on the CPU


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4, help="images per batch (n; the reference runs 2n rows)")
    p.add_argument("--num-steps", type=int, default=250)
    p.add_argument("--shift", type=float, default=0.3)
    p.add_argument("--cfg-scale", type=float, default=10.0)
    p.add_argument("--interval-start", type=float, default=0.11)
    p.add_argument("--cfg-channels", type=int, default=3)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--patch-size", type=int, default=1)
    p.add_argument("--latent-size", type=int, default=16)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per path (median reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_model(args, device)

    g = torch.Generator().manual_seed(args.seed)
    n = args.batch
    z = torch.randn(n, args.channels, args.latent_size, args.latent_size, generator=g).to(device)
    y = torch.randint(0, args.num_classes, (n,), generator=g).to(device)
    from configs.schema import load_config
    from sampling.pipeline import LatentSampler

    cfg = load_config(None, [f"model.in_chans={args.channels}", f"data.num_classes={args.num_classes}",
                             f"sample.num_sampling_steps={args.num_steps}", f"sample.timestep_shift={args.shift}",
                             f"sample.cfg_scale={args.cfg_scale}", f"sample.cfg_interval_start={args.interval_start}",
                             f"sample.cfg_channels={args.cfg_channels}"])
    reference_fn = LatentSampler(cfg, model, skip_uncond=False)
    skip_fn = LatentSampler(cfg, model, skip_uncond=True)

    def run_reference():
        return reference_fn(z, y)

    def run_skip():
        return skip_fn(z, y)

    times = {"reference": [], "skip": []}
    outputs = {}
    with torch.inference_mode():
        for r in range(args.repeats):
            # alternate the order so drifting machine load hits both paths alike
            order = [("reference", run_reference), ("skip", run_skip)]
            for name, fn in (order if r % 2 == 0 else order[::-1]):
                sync(device)
                t0 = time.perf_counter()
                outputs[name] = fn()
                sync(device)
                times[name].append(time.perf_counter() - t0)
                logger.info("%s run %d: %.2f s", name, r, times[name][-1])

    ref_s, skip_s = statistics.median(times["reference"]), statistics.median(times["skip"])
    calls, cond_only = skip_fn.num_calls // args.repeats, skip_fn.num_cond_only // args.repeats  # per run
    result = {
        "bench": "bench_sampler",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "model": f"LightningDiT hidden={args.hidden} depth={args.depth} heads={args.heads} patch={args.patch_size} "
                 f"latent={args.channels}x{args.latent_size}x{args.latent_size} swiglu+rope+rmsnorm",
        "batch": n, "num_steps": args.num_steps, "shift": args.shift, "cfg_scale": args.cfg_scale,
        "interval_start": args.interval_start, "repeats": args.repeats,
        "evaluations": calls, "evaluations_cond_only": cond_only,
        "rows_reference": 2 * n * calls, "rows_skip": 2 * n * calls - n * cond_only,
        "images_per_s_reference": n / ref_s, "images_per_s_skip": n / skip_s,
        "speedup": ref_s / skip_s,
        "max_abs_diff": (outputs["reference"] - outputs["skip"]).abs().max().item(),
        "sample_abs_max": outputs["reference"].abs().max().item(),
    }
    if device.type == "cuda":
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Benchmark: SFD's dopri5 sampler against the fixed-grid samplers, on a trained SFD model (CPU).

Trains a small SFD LightningDiT for a few minutes on SFD-format toy latents
(datasets/tiny_latents.py: 32 texture + 16 semantic channels, class patterns plus noise), built
from SFD's own configs/sfd/autoguidance_b/train.yaml with size overrides and REPA off, and keeps
an early EMA as the AutoGuidance guide (SFD guides with an early checkpoint). Then, for the same
noise and labels, unguided and with AutoGuidance at w 1.5 (SFD's headline setting):

- dopri5 at SFD's tolerances (atol 1e-6, rtol 1e-3), fp32, as configs/sfd/*/inference*.yaml;
- euler and heun2 on SFD's grid (steps straddle the drift's jumps at tau = delta and 1);
- euler_phase and heun2_phase (grid nodes on the jumps, docs/reference_behaviour.md §12.4.2);

each against a float64 dopri5 solution at atol = rtol = 1e-9 (checked against a float64
heun2_phase solve with many steps: their distance is printed as `reference_check`). Reported:
NFE (guided denoiser evaluations; AutoGuidance runs two networks per evaluation) and the RMS over
the batch of the final latents' difference to the reference, on the texture channels (the part
that is decoded) and on all 48. A table, then one JSON line.

    python tools/bench/bench_sfd_sampler.py                 # about 5-10 minutes on 2 CPU cores
    python tools/bench/bench_sfd_sampler.py --train-steps 30 --steps 5 9 --batch 2   # smoke
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from configs.schema import load_config
from datasets.img_latent_dataset import ImgLatentDataset
from datasets.order import sample_labels, sample_noise
from datasets.tiny_latents import write_tiny_latents
from models.build import build_model
from models.ema import update_ema
from models.kernels import select_kernels
from sampling.pipeline import LatentSampler
from transport import build_transport

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "sfd" / "autoguidance_b" / "train.yaml"
SFD_TOLERANCES = (1e-6, 1e-3)
GRID_METHODS = ("euler", "heun2", "euler_phase", "heun2_phase")


def config(args, *extra: str):
    """SFD's guide training YAML at the bench's size, REPA off, 10 classes."""
    return load_config(str(CONFIG), [
        f"model.hidden_size={args.hidden}", f"model.depth={args.depth}", f"model.num_heads={args.heads}",
        f"data.image_size={16 * args.grid}", "data.num_classes=10", "model.use_repa=false",
        "sample.cfg_scale_tex=null", *extra])


def train(args, data: Path):
    """(EMA model, early EMA model as the guide, seconds, final loss) after args.train_steps steps."""
    cfg = config(args)
    dataset = ImgLatentDataset(data, cfg.data.latent_norm, cfg.data.latent_multiplier, latent_sv_norm=cfg.data.latent_sv_norm,
                               semantic_chans=cfg.model.semantic_chans)
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)        # the dataset's flips, the init and the label dropout: one run = one model
    items = [dataset[i] for i in range(len(dataset))]
    x_all = torch.stack([x for x, _, _ in items])
    y_all = torch.stack([y for _, y, _ in items])
    model = build_model(cfg, training=True)
    ema = copy.deepcopy(model).requires_grad_(False)
    transport = build_transport(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, cfg.optimizer.beta2))
    guide, t0, loss = None, time.perf_counter(), float("nan")
    for step in range(1, args.train_steps + 1):
        idx = torch.randint(len(x_all), (args.train_batch,), generator=g)
        terms = transport.training_losses(model, x_all[idx], dict(y=y_all[idx]), generator=g)
        total = sum(v.mean() for k, v in terms.items() if k.endswith("loss"))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        update_ema(ema, model, decay=args.ema_decay)
        loss = total.item()
        if step == max(1, int(args.guide_fraction * args.train_steps)):
            guide = copy.deepcopy(ema)
        if step % max(1, args.train_steps // 10) == 0:
            print(f"train step {step}/{args.train_steps}: loss {loss:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return ema.eval(), guide.eval(), time.perf_counter() - t0, loss


def double(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy (plain modules). The time embedders' sinusoids are computed in float32 as
    always; their MLPs get the embedding cast to float64."""
    net = copy.deepcopy(model).double()
    for name in ("t_embedder", "t_embedder_sem", "t_embedder_tex"):
        embedder = getattr(net, name, None)
        if embedder is not None:
            embedder.mlp.register_forward_pre_hook(lambda module, a: (a[0].double(),))
    return net


def solve(args, nets, z, y, method: str, steps: int, tolerances, scale: float):
    """Final latents and NFE of one sampler run (LatentSampler: the denoiser inference.py uses)."""
    atol, rtol = tolerances
    cfg = config(args, f"sample.sampling_method={method}", f"sample.num_sampling_steps={steps}",
                 f"sample.atol={atol}", f"sample.rtol={rtol}", f"sample.cfg_scale={scale}",
                 "sample.autoguidance=true")
    model, guide = nets
    sampler = LatentSampler(cfg, model, guide=guide if scale > 1 else None)
    with torch.no_grad():
        out = sampler(z, y)
    return out, sampler.num_calls


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return math.sqrt((a.double() - b.double()).pow(2).mean().item())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema-decay", type=float, default=0.998)
    p.add_argument("--guide-fraction", type=float, default=0.15, help="the guide: the EMA at this part of training")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--grid", type=int, default=4, help="latent grid (4: 16 tokens of 48 channels)")
    p.add_argument("--items", type=int, default=1024, help="toy latents to train on")
    p.add_argument("--batch", type=int, default=16, help="images per sampler run")
    p.add_argument("--steps", type=int, nargs="+", default=[5, 9, 13, 17, 33, 65], help="grid points of the fixed grids")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.5], help="1: unguided; >1: AutoGuidance")
    p.add_argument("--reference-tol", type=float, default=1e-9)
    p.add_argument("--check-steps", type=int, default=2001, help="grid points of the float64 heun2_phase check")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as tmp:
        data = write_tiny_latents(str(Path(tmp) / "latents"), num_items=args.items, shape=(32, args.grid, args.grid),
                                  num_classes=10, semantic_chans=16, seed=args.seed)
        model, guide, train_seconds, loss = train(args, data)
    fp32 = (select_kernels(copy.deepcopy(model)), select_kernels(copy.deepcopy(guide)))
    fp64 = (double(model), double(guide))
    z = sample_noise(range(args.batch), (48, args.grid, args.grid), args.seed)
    y = sample_labels(range(args.batch), 10, args.seed, "balanced", args.batch)
    tex = slice(0, 32)
    rows, checks = [], {}
    for scale in args.scales:
        t0 = time.perf_counter()
        ref, ref_nfe = solve(args, fp64, z.double(), y, "dopri5", 2, (args.reference_tol,) * 2, scale)
        check, _ = solve(args, fp64, z.double(), y, "heun2_phase", args.check_steps, SFD_TOLERANCES, scale)
        checks[scale] = {"reference_nfe": ref_nfe, "reference_check_rms": rms(check, ref),
                         "reference_seconds": round(time.perf_counter() - t0, 1)}
        runs = [("dopri5", None)] + [(m, n) for m in GRID_METHODS for n in args.steps]
        for method, steps in runs:
            t0 = time.perf_counter()
            out, nfe = solve(args, fp32, z, y, method, steps or 2, SFD_TOLERANCES, scale)
            rows.append({"guidance": "none" if scale <= 1 else f"autoguidance {scale:g}", "method": method,
                         "grid_points": steps, "nfe": nfe, "rms_texture": rms(out[:, tex], ref[:, tex]),
                         "rms_all": rms(out, ref), "seconds": round(time.perf_counter() - t0, 2)})

    print(f"\nSFD sampler benchmark: LightningDiT {args.hidden}x{args.depth} on {args.grid}x{args.grid}x48 toy latents, "
          f"{args.train_steps} training steps ({train_seconds:.0f} s, final loss {loss:.3f}), batch {args.batch}")
    for scale, c in checks.items():
        print(f"reference (w {scale:g}): float64 dopri5 at {args.reference_tol:g}, {c['reference_nfe']} NFE; "
              f"float64 heun2_phase x{args.check_steps - 1} steps is {c['reference_check_rms']:.1e} away (RMS)")
    print(f"{'guidance':<18}{'method':<13}{'points':>7}{'NFE':>6}{'RMS texture':>13}{'RMS all':>11}")
    for r in rows:
        print(f"{r['guidance']:<18}{r['method']:<13}{r['grid_points'] or '-':>7}{r['nfe']:>6}"
              f"{r['rms_texture']:>13.2e}{r['rms_all']:>11.2e}")
    print(json.dumps({"bench": "bench_sfd_sampler", "hidden": args.hidden, "depth": args.depth, "grid": args.grid,
                      "train_steps": args.train_steps, "train_seconds": round(train_seconds, 1), "final_loss": loss,
                      "batch": args.batch, "reference_tol": args.reference_tol,
                      "references": {str(k): v for k, v in checks.items()}, "rows": rows}))
    return rows, checks


if __name__ == "__main__":
    main()

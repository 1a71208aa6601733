"""Golden outputs: what the LightningDiT, DDPM and VA-VAE paths produce, recorded once and checked
after every refactor ("behaviour unchanged, bit for bit").

    python tools/golden.py record            # writes tests/golden/golden.pt (run on main before a refactor)
    python tools/golden.py check [--exact]   # re-runs every scenario and compares

Each scenario runs the real entry script (train.py, inference.py, train_tokenizer.py) in a fresh
single-threaded process on tiny configs, so the comparison covers the whole path: config loading,
the step-keyed draws, the model's CPU kernels (fp32 and bf16 autocast), accumulation, checkpoints,
every sampler (ODE Euler with the CFG interval, dopri5, the SDE, DDPM's ancestral chain, guidance
on all channels without the skip) and decoding. What is stored per scenario: the sha256 of every
tensor (the exact check), per-tensor float64 sums and squared sums (the tolerant check that
tests/test_golden.py runs, since another CPU's vector units may round differently), and the
sampled images themselves (uint8, tiny).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "golden.pt"
TINY = str(REPO / "configs" / "tiny" / "lightningdit_tiny.yaml")
TINY_TOKENIZER = str(REPO / "configs" / "tokenizer" / "tiny_cpu.yaml")

DDPM = ["transport.objective=ddpm", "model.learn_sigma=true", "transport.use_cosine_loss=false",
        "transport.use_lognorm=false"]
# Sampling scenarios: overrides of the tiny config (applied to the rectified-flow checkpoint unless
# the name starts with "ddpm").
SAMPLING = {
    "euler_cfg_interval": ["sample.num_sampling_steps=12"],
    "dopri5_unguided": ["sample.sampling_method=dopri5", "sample.cfg_scale=1.0"],
    "sde_cfg": ["sample.mode=SDE", "sample.sampling_method=Euler", "sample.num_sampling_steps=10",
                "sample.cfg_scale=2.0"],
    "euler_all_channels_noskip_bf16": ["sample.num_sampling_steps=8", "sample.cfg_channels=all",
                                       "sample.skip_uncond_outside_interval=false", "sample.precision=bf16"],
    "heun_cfg_no_interval": ["sample.sampling_method=heun2", "sample.num_sampling_steps=6",
                             "sample.cfg_interval_start=0.0", "sample.cfg_scale=3.0"],
    "ddpm_cfg": [*DDPM, "sample.num_sampling_steps=10", "sample.cfg_scale=2.0"],
}


def _run(cmd: List[str], env: Optional[Dict[str, str]] = None) -> None:
    full = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO),
                ACCELERATE_USE_CPU="1", **(env or {}))
    full.pop("ACCELERATE_MIXED_PRECISION", None)
    if env and "ACCELERATE_MIXED_PRECISION" in env:
        full["ACCELERATE_MIXED_PRECISION"] = env["ACCELERATE_MIXED_PRECISION"]
    proc = subprocess.run([sys.executable, *cmd], env=full, cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _flatten(prefix: str, obj, out: Dict[str, torch.Tensor]) -> None:
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            _flatten(f"{prefix}.{k}", obj[k], out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(f"{prefix}.{i}", v, out)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix] = torch.tensor(obj, dtype=torch.float64)


def _train_rows(run_dir: Path, keys=("loss", "cos_loss", "valid_loss", "valid_loss_ema", "grad_norm")) -> Dict[str, torch.Tensor]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    out = {}
    for key in keys:
        values = [r[key] for r in rows if key in r]
        if values:
            out[f"metrics.{key}"] = torch.tensor(values, dtype=torch.float64)
    return out


def produce(work: Path) -> Dict[str, Dict[str, torch.Tensor]]:
    """Run every scenario under `work`; returns {scenario: {name: tensor}}."""
    from datasets.tiny_latents import write_tiny_latents

    data = write_tiny_latents(str(work / "latents"), num_items=64, shape=(4, 4, 4), num_classes=10)
    valid = write_tiny_latents(str(work / "valid"), num_items=16, shape=(4, 4, 4), num_classes=10, seed=1)
    common = [f"data.data_path={data}", f"train.output_dir={work / 'out'}", "train.global_batch_size=16",
              "train.log_every=2", "train.ckpt_every=6", "train.max_steps=6"]
    results: Dict[str, Dict[str, torch.Tensor]] = {}

    # Training: rectified flow (cosine + logit-normal, accumulation, validation), bf16 and fp32; DDPM.
    runs = {
        "train_rf_bf16": (["train.exp_name=rf_bf16", "train.micro_batch_size=8", f"data.valid_path={valid}",
                           "train.valid_every=2", "train.num_valid_batches=1"], "bf16"),
        "train_rf_fp32": (["train.exp_name=rf_fp32", "model.use_qknorm=true"], "no"),
        "train_ddpm": (["train.exp_name=ddpm", *DDPM], "no"),
    }
    for name, (extra, precision) in runs.items():
        _run(["train.py", TINY, *common, *extra], env={"ACCELERATE_MIXED_PRECISION": precision})
        run_dir = work / "out" / extra[0].split("=", 1)[1]
        ckpt = _load(run_dir / "checkpoints" / "0000006.pt")
        out: Dict[str, torch.Tensor] = {}
        _flatten("model", ckpt["model"], out)
        _flatten("ema", ckpt["ema"], out)
        _flatten("opt", ckpt["opt"]["state"], out)
        out.update(_train_rows(run_dir))
        results[name] = out

    # Sampling from the fp32 checkpoints (random-init tiny tokenizer: the decoder is a fixed function).
    # A few training steps barely move the zero-initialised output layer, so the samplers would all
    # give the same picture: sample from the trained EMA weights plus seeded noise instead.
    ckpts = {}
    for name, run in (("rf", "rf_fp32"), ("ddpm", "ddpm")):
        ema = _load(work / "out" / run / "checkpoints" / "0000006.pt")["ema"]
        g = torch.Generator().manual_seed(1234)
        noisy = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() and k != "pos_embed"
                 and not k.startswith("feat_rope") else v for k, v in ema.items()}
        ckpts[name] = work / f"{name}_noisy.pt"
        torch.save({"ema": noisy}, ckpts[name])
    for name, extra in SAMPLING.items():
        ckpt = ckpts["ddpm" if name.startswith("ddpm") else "rf"]
        qk = [] if name.startswith("ddpm") else ["model.use_qknorm=true"]
        _run(["inference.py", TINY, f"data.data_path={data}", f"ckpt_path={ckpt}",
              f"train.output_dir={work / 'samples'}", f"train.exp_name={name}", "sample.fid_num=8",
              "sample.per_proc_batch_size=4", *qk, *extra, "--vae-random-init"])
        npz = next((work / "samples" / name).glob("*.npz"))
        with np.load(npz) as f:
            results[f"sample_{name}"] = {"images": torch.from_numpy(f["arr_0"].copy()),
                                         "labels": torch.from_numpy(f["arr_1"].copy())}

    # The VA-VAE trainer: 2 steps of the tiny tokenizer (GAN and VF losses on from step 0).
    from tokenizer.data import write_toy_images
    write_toy_images(work / "toy" / "train" / "class_a", 6, size=(40, 34), seed=0)
    write_toy_images(work / "toy" / "val", 3, size=(36, 36), seed=1)
    tok = {"data.params.train.data_root": work / "toy" / "train", "data.params.validation.data_root": work / "toy" / "val",
           "data.params.batch_size": 2, "model.params.lossconfig.params.disc_start": 0,
           "model.params.lossconfig.params.disc_ndf": 8, "train.max_steps": 2, "train.log_every": 1,
           "train.ckpt_every": 2, "train.val_every": "null", "train.sample_every": 100,
           "train.output_dir": work / "tok", "train.exp_name": "tok"}
    _run(["train_tokenizer.py", TINY_TOKENIZER, *[f"{k}={v}" for k, v in tok.items()]])
    ckpt = _load(work / "tok" / "tok" / "checkpoints" / "0000002.pt")
    out = {}
    _flatten("state_dict", ckpt["state_dict"], out)
    results["train_tokenizer"] = out
    return results


def digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return hashlib.sha256(str(t.dtype).encode() + str(tuple(t.shape)).encode() + raw).hexdigest()


def summarise(results: Dict[str, Dict[str, torch.Tensor]]) -> dict:
    """What golden.pt stores: exact digests, float64 sums, and the (small) sample images."""
    out = {}
    for scenario, tensors in results.items():
        entry = {"sha256": {k: digest(v) for k, v in tensors.items()},
                 "sum": {k: v.double().sum().item() for k, v in tensors.items()},
                 "sumsq": {k: v.double().pow(2).sum().item() for k, v in tensors.items()}}
        if scenario.startswith("sample_"):
            entry["tensors"] = {k: v.clone() for k, v in tensors.items()}
        else:
            entry["tensors"] = {k: v.clone() for k, v in tensors.items() if k.startswith("metrics.")}
        out[scenario] = entry
    return out


def compare(golden: dict, new: dict, exact: bool, scenarios: Optional[List[str]] = None) -> List[str]:
    """Differences between a recorded and a new summary, one line each (empty: equal)."""
    problems = []
    for scenario in scenarios or sorted(golden):
        g, n = golden[scenario], new.get(scenario)
        if n is None:
            problems.append(f"{scenario}: not produced")
            continue
        if set(g["sha256"]) != set(n["sha256"]):
            problems.append(f"{scenario}: tensor names differ: only recorded {sorted(set(g['sha256']) - set(n['sha256']))[:5]}, "
                            f"only new {sorted(set(n['sha256']) - set(g['sha256']))[:5]}")
            continue
        for k in sorted(g["sha256"]):
            if exact:
                if g["sha256"][k] != n["sha256"][k]:
                    problems.append(f"{scenario}/{k}: bytes differ (sum {g['sum'][k]!r} -> {n['sum'][k]!r})")
                continue
            if k in g.get("tensors", {}):
                a, b = g["tensors"][k], n["tensors"][k]
                if a.dtype == torch.uint8:
                    diff = (a.int() - b.int()).abs()
                    if diff.max() > 1 or diff.gt(0).float().mean() > 0.01:
                        problems.append(f"{scenario}/{k}: images differ (max {int(diff.max())}, "
                                        f"{100 * diff.gt(0).float().mean():.2f}% of values)")
                elif not torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-6):
                    problems.append(f"{scenario}/{k}: {a.tolist()} -> {b.tolist()}")
                continue
            for stat in ("sum", "sumsq"):
                a, b = g[stat][k], n[stat][k]
                if abs(a - b) > 1e-4 * max(1.0, abs(a)):
                    problems.append(f"{scenario}/{k}: {stat} {a!r} -> {b!r}")
    return problems


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("record", "check"))
    parser.add_argument("--exact", action="store_true", help="check: compare bytes (same machine only)")
    parser.add_argument("--golden", default=str(GOLDEN), help="the recorded file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        summary = summarise(produce(Path(tmp)))
    if args.action == "record":
        Path(args.golden).parent.mkdir(parents=True, exist_ok=True)
        torch.save(summary, args.golden)
        print(f"recorded {len(summary)} scenarios to {args.golden}")
        return 0
    problems = compare(torch.load(args.golden, weights_only=True), summary, args.exact)
    for line in problems:
        print(line)
    print(f"{len(summary)} scenarios, {'exact' if args.exact else 'tolerant'} check: "
          f"{'OK' if not problems else f'{len(problems)} difference(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

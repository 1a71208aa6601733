"""SFD's effect on the demo's toy data: LightningDiT, + REPA, the synchronous composite (delta 0) and
SFD (delta 0.3), with an optional delta sweep, trained at equal steps from one latent directory and
judged by the demo's toy classifier (and the ADM FID when Inception weights are given).

    bash run_demo.sh                                        # toy data, tokenizer, classifier
    python tools/sfd_study.py --demo-out demo_output        # ~1 h on 2 CPU cores (2 seeds)
    python tools/sfd_study.py --demo-out demo_output --plot-only   # redraw docs/sfd_study/ from its summary

Writes its work under DEMO_OUT/sfd_study/ and the result to --out (docs/sfd_study/: sfd_study.png
and summary.json). Every stage is a real command of the repository and resumes or skips what is done:

1. semantic encoder: the toy classifier's architecture (evaluation/toy_classifier.py) trained on the
   same training images with another seed (1), read after its second stride-2 stage: an 8 x 8 x 64
   feature map on the demo tokenizer's latent grid (tokenizer/composite.py: ToyFeatureEncoder).
   Why this one: it needs no download, it is trained on the same data, and its features are
   semantic (class-discriminative) and already on the latent grid, as DINOv2's are for SFD at
   256 px. Another seed than the judge's, so the samples are not scored by the very network they
   were aligned to (the same architecture and data still favour REPA and SFD somewhat);
2. its tokens of the training images -> SFD's feature file -> the Semantic VAE (train_semvae.py;
   ch16.yaml's transformer at width 64, 2 latent channels: SFD's 2:1 texture:semantic ratio);
3. extraction (run_extraction.sh, SFD's format): texture latents (the demo tokenizer, as the demo
   extracts them), Semantic VAE latents and the encoder's tokens as REPA targets, with flips; the
   demo network has patch 2 (4 x 4 tokens), so the REPA targets are 2 x 2 means (--repa-grid 4);
4. training (run_train.sh) of every variant on configs/demo/lightningdit.yaml (same network,
   batch, optimizer, steps), once per training seed (--seeds: the initial weights, the data order
   and the training noise): REPA on block 1 of 4 with a 256-wide projector (SFD's 2048 is for
   D = 1152), SFD's semantic weight 2 (balances 4 texture vs 2 semantic channels);
5. evaluation of the EMA every --eval-every steps: --eval-num class-balanced samples from noise
   fixed for every run (seed 0), Euler with --sample-steps evaluations over [0, 1 + delta], no
   guidance (SFD's Table 1),
   decoded by the demo tokenizer (texture channels), classified by the demo's classifier
   (accuracy = fraction classified as the class they were sampled for); with
   $ADM_INCEPTION_WEIGHTS and DEMO_OUT/toy_val_reference.npz also the FID;
6. one figure, the mean over seeds (band: min to max) of the accuracy against training steps and
   against training compute (equal compute: REPA's projector and SFD's extra channels cost FLOPs;
   counted by torch's FlopCounterMode over one training step, forward and backward, since wall
   seconds on a shared machine measure its load), and summary.json (every seed's numbers, the
   measured steps per second too).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo" / "lightningdit.yaml"
ENCODER = "toy_classifier"
SEMANTIC_CHANS = 2
SEM = [f"model.in_chans={4 + SEMANTIC_CHANS}", f"model.semantic_chans={SEMANTIC_CHANS}", "model.semantic_weight=2.0",
       "data.latent_sv_norm=true"]
REPA = ["model.use_repa=true", f"model.repa_dino_version={ENCODER}", "model.repa_feat_depth=1",
        "model.repa_projector_dim=256"]
ENCODER_SEED = 1
EVAL_SEED = 0           # the evaluation's noise and labels: the same for every run
REPA_GRID = 4           # the demo network's tokens: 8 x 8 latents at patch 2 (REPA targets: 2 x 2 means)

logger = logging.getLogger("sfd_study")


def variants(deltas: Sequence[float]) -> Dict[str, dict]:
    """name -> {label, delta, overrides of configs/demo/lightningdit.yaml}; the four of the brief, then
    SFD at each extra delta."""
    out = {
        "lightningdit": {"label": "LightningDiT", "delta": None, "overrides": []},
        "lightningdit_repa": {"label": "LightningDiT + REPA", "delta": None, "overrides": REPA},
        "composite_delta0": {"label": "composite, delta 0 (synchronous)", "delta": 0.0,
                             "overrides": SEM + REPA + ["model.semfirst_delta_t=0.0"]},
        "sfd_delta0.3": {"label": "SFD, delta 0.3", "delta": 0.3, "overrides": SEM + REPA + ["model.semfirst_delta_t=0.3"]},
    }
    for d in deltas:
        if f"sfd_delta{d:g}" not in out and d != 0.0:
            out[f"sfd_delta{d:g}"] = {"label": f"SFD, delta {d:g}", "delta": d,
                                      "overrides": SEM + REPA + [f"model.semfirst_delta_t={d:g}"]}
    return out


def run(cmd: List[str], log: Path, **env: str) -> None:
    """A repository command, its output appended to `log`; a failure stops the study naming the log."""
    full = dict(os.environ, PYTHONPATH=str(REPO), **env)
    logger.info("$ %s", " ".join(cmd))
    with open(log, "a") as f:
        code = subprocess.run(cmd, cwd=REPO, env=full, stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"error: `{' '.join(cmd[:3])} ...` failed (exit {code}); see {log}")


# ------------------------------------------------------------------------------------------------
# Stages 1-3: encoder, Semantic VAE, SFD's shards
# ------------------------------------------------------------------------------------------------

def train_encoder(demo: Path, work: Path, epochs: int) -> Path:
    from evaluation.toy_classifier import train_classifier

    path = work / "semantic_encoder.pt"
    if not path.is_file():
        result = train_classifier(str(demo / "toy/train"), str(demo / "toy/val"), str(path), image_size=32,
                                  epochs=epochs, seed=ENCODER_SEED)
        logger.info("semantic encoder: val accuracy %.3f", result.get("val_accuracy", float("nan")))
    return path


def write_features(demo: Path, work: Path, encoder_path: Path) -> Path:
    """The encoder's 8 x 8 tokens of every training image, in SFD's feature-file format."""
    from datasets.image_folder import ADMImageFolder
    from datasets.semantic_features import FeatureFileWriter
    from tokenizer.composite import load_encoder
    from utils.fileio import atomic_write_json

    folder = work / "features" / ENCODER
    dataset = ADMImageFolder(str(demo / "toy/train"), image_size=32)
    n = len(dataset)
    target = folder / f"features_{n}samples.safetensors"
    if target.is_file():
        return work / "features"
    folder.mkdir(parents=True, exist_ok=True)
    encoder = load_encoder(ENCODER, str(encoder_path), "cpu")
    writer = FeatureFileWriter(target, n, 64, encoder.feature_dim)
    try:
        for start in range(0, n, 250):
            items = [dataset[i] for i in range(start, min(n, start + 250))]
            images = torch.stack([it[0] for it in items])
            tokens = encoder.grid_tokens(images, 8)
            writer.write(start, tokens, tokens.mean(dim=1), torch.tensor([it[1] for it in items]))
        writer.finish()
    finally:
        writer.close()
    atomic_write_json({"model_name": ENCODER, "feature_dim": encoder.feature_dim, "num_samples": n,
                       "num_patches": 64, "class_to_idx": dataset.class_to_idx,
                       "num_classes": len(dataset.classes)}, folder / f"metadata_{n}samples.json")
    return work / "features"


SEMVAE_YAML = """# The study's Semantic VAE (tools/sfd_study.py): SFD's ch16.yaml layout at toy scale.
variables:
  output_root: "{root}"
  bottleneck_dim: {bottleneck}
  model_name: "{encoder}"
model:
  variational: true
  bottleneck_dim: ${{variables.bottleneck_dim}}
  arch: "transformer"
  params: {{hidden_dim: 64, transformer_heads: 2, transformer_blocks: 1}}
data:
  feature_dir: "{features}"
  model_name: "${{variables.model_name}}"
  batch_size: 64
  num_workers: 0
  shuffle: true
training:
  mixed_precision: "no"
  total_iterations: {iterations}
  optimizer: {{type: "AdamW", lr: 1e-3}}
  scheduler: {{warmup_steps: 50, constant_steps: {constant}}}
  loss: {{mse_weight: 1.0, cos_weight: 1.0, l1_weight: 0.0, kl_weight: 1e-7, classification_weight: 0.0}}
  checkpointing: {{save_every: {iterations}, checkpoint_dir: "${{variables.output_root}}/checkpoints"}}
  evaluation: {{feature_dir: ""}}
  log: {{log_dir: "${{variables.output_root}}", log_every: 100, report_to: none}}
"""


def train_semvae(work: Path, features: Path, iterations: int) -> Path:
    root = work / "semvae"
    final = root / "checkpoints" / "semantic_ae_final.pt"
    config = work / "semvae.yaml"
    config.write_text(SEMVAE_YAML.format(root=root, bottleneck=SEMANTIC_CHANS, encoder=ENCODER, features=features,
                                         iterations=iterations, constant=max(1, int(iterations * 0.8) - 50)))
    if not final.is_file():
        run([sys.executable, "train_semvae.py", str(config)], work / "semvae.log")
    return final


def extract(demo: Path, work: Path, encoder_path: Path, semvae: Path) -> Path:
    """SFD's shards of the toy training set with the demo tokenizer + the study's semantic part."""
    from omegaconf import OmegaConf

    out = work / "latents"
    tokenizer = OmegaConf.load(demo / "tokenizer/export/vavae.yaml")
    tokenizer.semvae = {"dino_model_name": ENCODER, "semvae_config": str(work / "semvae.yaml"),
                        "semvae_ckpt_path": str(semvae), "dino_weights": str(encoder_path)}
    OmegaConf.save(tokenizer, work / "tokenizer_semvae.yaml")
    if not (out / "latents_sv_stats.pt").is_file():
        run(["bash", "run_extraction.sh", "--data-path", str(demo / "toy/train"), "--output-path", str(out),
             "--tokenizer-config", str(work / "tokenizer_semvae.yaml"), "--image-size", "32", "--batch-size", "50",
             "--num-workers", "0", "--shard-size", "1000", "--semantic-feat-type", "semvae",
             "--repa-model", ENCODER, "--repa-grid", str(REPA_GRID)], work / "extraction.log", GPUS_PER_NODE="1")
    return out


# ------------------------------------------------------------------------------------------------
# Stages 4-5: training and evaluation
# ------------------------------------------------------------------------------------------------

def runs_dir(work: Path, seed: int) -> Path:
    return work / ("runs" if seed == 0 else f"runs_seed{seed}")


def config_overrides(demo: Path, work: Path, name: str, variant: dict, seed: int, args) -> List[str]:
    return [f"data.data_path={work / 'latents'}", f"vae.config_path={demo / 'tokenizer/export/vavae.yaml'}",
            f"train.output_dir={runs_dir(work, seed)}", f"train.exp_name={name}", f"train.max_steps={args.steps}",
            f"train.ckpt_every={args.eval_every}", f"train.log_every={args.log_every}", "train.resume=true",
            f"train.global_seed={seed}", *variant["overrides"]]


def train_variant(demo: Path, work: Path, name: str, variant: dict, seed: int, args) -> Path:
    exp = runs_dir(work, seed) / name
    if not (exp / "checkpoints" / f"{args.steps:07d}.pt").is_file():
        run(["bash", "run_train.sh", str(DEMO_CONFIG), *config_overrides(demo, work, name, variant, seed, args)],
            work / f"train_{name}_seed{seed}.log")
    return exp


def train_step_flops(demo: Path, work: Path, name: str, variant: dict, args) -> int:
    """FLOPs of one training step of the variant (the global batch, forward and backward, REPA's
    projector included), counted on the plain modules (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    from configs.schema import load_config
    from models.build import build_model
    from models.kernels import use_plain_modules
    from transport import build_transport

    cfg = load_config(str(DEMO_CONFIG), config_overrides(demo, work, name, variant, 0, args))
    model = use_plain_modules(build_model(cfg, training=True)).train()
    b, g = cfg.train.global_batch_size, 8
    x, y = torch.randn(b, cfg.model.in_chans, g, g), torch.randint(0, cfg.data.num_classes, (b,))
    extras = {"repa_target": torch.randn(b, 64, REPA_GRID, REPA_GRID)} if cfg.model.use_repa else {}
    with FlopCounterMode(display=False) as counter:
        out = build_transport(cfg).training_losses(model, x, dict(y=y), **extras)
        sum(v.mean() for k, v in out.items() if k.endswith("loss")).backward()
    return int(counter.get_total_flops())


def training_seconds(exp: Path) -> Dict[int, float]:
    """Cumulative training seconds at each logged step (log windows' steps / steps_per_sec: the
    optimizer steps themselves, not start-up, checkpoints or evaluation)."""
    out, total, last = {}, 0.0, 0
    for line in (exp / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "steps_per_sec" in row and row["step"] > last:
            total += (row["step"] - last) / row["steps_per_sec"]
            out[row["step"]] = total
            last = row["step"]
    return out


class Judge:
    """The demo's classifier (and the ADM FID when possible) on uint8 samples."""

    def __init__(self, demo: Path):
        from evaluation.toy_classifier import load_classifier

        self.classifier = load_classifier(str(demo / "classifier.pt"))
        self.fid = None
        weights, reference = os.environ.get("ADM_INCEPTION_WEIGHTS"), demo / "toy_val_reference.npz"
        if weights and reference.is_file():
            from evaluation.adm import reference_statistics
            from evaluation.inception import InceptionFeatureExtractor

            extractor = InceptionFeatureExtractor(weights)
            self.fid = (extractor, reference_statistics(str(reference), extractor))

    def __call__(self, images: np.ndarray, labels: torch.Tensor) -> dict:
        from evaluation.toy_classifier import predict

        row = {"accuracy": float((predict(self.classifier, images) == labels.numpy()).mean())}
        if self.fid is not None:
            from evaluation.adm import image_metrics
            row["fid"] = float(image_metrics(images, *self.fid)["fid"])
        return row


@torch.no_grad()
def evaluate(demo: Path, work: Path, name: str, variant: dict, seed: int, step: int, args, judge: Judge) -> dict:
    """Samples of the EMA at `step` of the run of training seed `seed` (noise and class-balanced
    labels of EVAL_SEED), judged."""
    from configs.schema import load_config
    from datasets.img_latent_dataset import normalizer_from_config
    from datasets.order import sample_labels, sample_noise
    from models.build import build_model
    from models.checkpoint import load_lightningdit_checkpoint
    from models.kernels import select_kernels
    from sampling.pipeline import LatentSampler
    from tokenizer.factory import load_tokenizer

    cfg = load_config(str(DEMO_CONFIG), config_overrides(demo, work, name, variant, seed, args) + [
        "sample.mode=ODE", "sample.sampling_method=euler", f"sample.num_sampling_steps={args.sample_steps}",
        "sample.cfg_scale=1.0", "sample.timestep_shift=0.0", "sample.precision=fp32"])
    model = build_model(cfg, training=False).eval()
    load_lightningdit_checkpoint(runs_dir(work, seed) / name / "checkpoints" / f"{step:07d}.pt", model,
                                 prefer_ema=True)
    select_kernels(model)
    sampler = LatentSampler(cfg, model)
    normalizer = normalizer_from_config(cfg)
    vae = load_tokenizer(cfg.vae.config_path, img_size=32, fp16=False, device="cpu")
    n = args.eval_num
    labels = sample_labels(range(n), 10, EVAL_SEED, "balanced", total=n)
    images = []
    for lo in range(0, n, 100):
        idx = range(lo, min(n, lo + 100))
        z = sample_noise(idx, (cfg.model.in_chans, 8, 8), EVAL_SEED)
        images.append(vae.decode_to_images(normalizer.denormalize(sampler(z, labels[lo: lo + len(idx)]))))
    return judge(np.concatenate(images), labels)


# ------------------------------------------------------------------------------------------------
# Stage 6: figure and summary
# ------------------------------------------------------------------------------------------------

def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["accuracy"] + (["fid"] if summary.get("fid_available") else [])
    fig, axes = plt.subplots(len(metrics), 2, figsize=(11, 4.2 * len(metrics)), squeeze=False)
    for m, metric in enumerate(metrics):
        for k, xkey in enumerate(("step", "compute")):
            ax = axes[m][k]
            for name, result in summary["variants"].items():
                rows = [r for r in result["evaluations"] if metric in r]
                x = [r["step"] * (1 if xkey == "step" else result["train_flops_per_step"] / 1e12) for r in rows]
                line, = ax.plot(x, [r[metric] for r in rows], marker="o", ms=3, label=result["label"],
                                lw=2.2 if name == "sfd_delta0.3" else 1.3)
                if len(summary["seeds"]) > 1:
                    ax.fill_between(x, [r[f"{metric}_min"] for r in rows], [r[f"{metric}_max"] for r in rows],
                                    color=line.get_color(), alpha=0.12)
            if metric == "accuracy":
                ax.axhline(summary["classifier_val_accuracy"], ls="--", c="gray", lw=0.8, label="real val images")
                ax.axhline(0.1, ls=":", c="gray", lw=0.8, label="chance")
                ax.set_ylim(0, 1.02)
            ax.set_xlabel("training steps" if xkey == "step" else "training compute (TFLOP, forward + backward)")
            ax.set_ylabel("classifier accuracy of samples" if metric == "accuracy" else "FID vs toy val")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    seeds = summary["seeds"]
    fig.suptitle(f"SFD study on the toy data: mean of {len(seeds)} training seed(s)"
                 f"{' (band: min-max)' if len(seeds) > 1 else ''}, {summary['eval_num']} class-balanced samples "
                 f"per point, Euler {summary['sample_steps']}, no guidance", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mean_over_seeds(per_seed: Dict[int, List[dict]]) -> List[dict]:
    """Per step: the mean of every metric over the seeds, with its min and max."""
    out = []
    for rows in zip(*per_seed.values()):
        row = {"step": rows[0]["step"]}
        for key in rows[0]:
            if key != "step":
                values = [r[key] for r in rows]
                row[key] = round(float(np.mean(values)), 4)
                if key != "seconds":
                    row[f"{key}_min"], row[f"{key}_max"] = min(values), max(values)
        out.append(row)
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo-out", default="demo_output", help="run_demo.sh's output folder (DEMO_OUT)")
    p.add_argument("--out", default=str(REPO / "docs" / "sfd_study"), help="figure and summary.json")
    p.add_argument("--steps", type=int, default=3000, help="training steps of every variant (the demo's)")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-num", type=int, default=400, help="samples per evaluation")
    p.add_argument("--sample-steps", type=int, default=50, help="Euler steps of the evaluation sampler")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--deltas", default="0.1,0.6", help="extra SFD deltas (comma-separated; '' for none)")
    p.add_argument("--encoder-epochs", type=int, default=6)
    p.add_argument("--semvae-iterations", type=int, default=1000)
    p.add_argument("--seeds", default="0,1", help="training seeds (comma-separated)")
    p.add_argument("--plot-only", action="store_true", help="redraw the figure from --out/summary.json")
    args = p.parse_args(argv)
    args.delta_list = [float(d) for d in args.deltas.split(",") if d.strip()]
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not args.seed_list:
        p.error("--seeds: at least one training seed")
    if args.steps % args.eval_every:
        p.error(f"--steps {args.steps} must be a multiple of --eval-every {args.eval_every}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    out = Path(args.out)
    if args.plot_only:
        summary = json.loads((out / "summary.json").read_text())
        plot(summary, out / "sfd_study.png")
        return summary
    demo = Path(args.demo_out).resolve()
    needed = [demo / "toy/train", demo / "toy/val", demo / "tokenizer/export/vavae.yaml", demo / "classifier.pt"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise SystemExit(f"error: {missing[0]} not found: run `DEMO_OUT={demo} bash run_demo.sh` first")
    work = demo / "sfd_study"
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    began, stage_seconds = time.time(), {}

    def stage(name, fn, *a):
        t0 = time.time()
        result = fn(*a)
        stage_seconds[name] = round(time.time() - t0, 1)
        return result

    encoder = stage("semantic_encoder", train_encoder, demo, work, args.encoder_epochs)
    features = stage("features", write_features, demo, work, encoder)
    semvae = stage("semantic_vae", train_semvae, work, features, args.semvae_iterations)
    stage("extraction", extract, demo, work, encoder, semvae)
    judge = Judge(demo)
    cache_path = work / "evaluations.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    results = {}
    for name, variant in variants(args.delta_list).items():
        per_seed: Dict[int, List[dict]] = {}
        speeds = []
        for seed in args.seed_list:
            exp = stage(f"train_{name}_seed{seed}", train_variant, demo, work, name, variant, seed, args)
            seconds = training_seconds(exp)
            speeds.append(args.steps / max(seconds.values()))
            t0, rows = time.time(), []
            for step in range(args.eval_every, args.steps + 1, args.eval_every):
                key = f"{name}/{step}/{args.eval_num}/{args.sample_steps}/{seed}"
                if key not in cache:
                    cache[key] = evaluate(demo, work, name, variant, seed, step, args, judge)
                    cache_path.write_text(json.dumps(cache, indent=1))
                rows.append({"step": step, "seconds": round(seconds.get(step, float("nan")), 1), **cache[key]})
                logger.info("%s seed %d step %d: %s", name, seed, step, cache[key])
            stage_seconds[f"eval_{name}_seed{seed}"] = round(time.time() - t0, 1)
            per_seed[seed] = rows
        results[name] = {"label": variant["label"], "delta": variant["delta"], "overrides": variant["overrides"],
                         "evaluations": mean_over_seeds(per_seed), "per_seed": {str(k): v for k, v in per_seed.items()},
                         "steps_per_sec": round(float(np.mean(speeds)), 2),
                         "train_flops_per_step": train_step_flops(demo, work, name, variant, args)}
    from utils.safe_load import load_torch_file
    clf = load_torch_file(demo / "classifier.pt", "toy classifier checkpoint")
    enc = load_torch_file(encoder, "semantic encoder checkpoint")
    summary = {
        "command": f"python tools/sfd_study.py --demo-out DEMO_OUT --steps {args.steps} --eval-every {args.eval_every} "
                   f"--eval-num {args.eval_num} --sample-steps {args.sample_steps} --deltas '{args.deltas}' "
                   f"--seeds '{args.seeds}'",
        "plot_command": "python tools/sfd_study.py --plot-only",
        "steps": args.steps, "eval_every": args.eval_every, "eval_num": args.eval_num,
        "sample_steps": args.sample_steps, "seeds": args.seed_list, "eval_seed": EVAL_SEED,
        "classifier_val_accuracy": clf["metrics"].get("val_accuracy"),
        "semantic_encoder": {"name": ENCODER, "seed": ENCODER_SEED, "val_accuracy": enc["metrics"].get("val_accuracy"),
                             "feature_map": "stage 2 of 4 (stride 4): 8 x 8 x 64", "semantic_channels": SEMANTIC_CHANS},
        "fid_available": judge.fid is not None,
        "variants": results,
        "stage_seconds": stage_seconds, "seconds_total": round(time.time() - began, 1),
        "threads": torch.get_num_threads(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, out / "sfd_study.png")
    for name, result in results.items():
        last = result["evaluations"][-1]
        best = max(result["evaluations"], key=lambda r: r["accuracy"])
        logger.info("%-34s accuracy at %d steps %.3f (best %.3f at %d), %.2f GFLOP per step", result["label"],
                    last["step"], last["accuracy"], best["accuracy"], best["step"], result["train_flops_per_step"] / 1e9)
    logger.info("wrote %s and %s", out / "summary.json", out / "sfd_study.png")
    return summary


if __name__ == "__main__":
    main()

"""Curves and summary of a tokenizer training run (the issue-5 small-scale CPU check).

Usage: python docs/tokenizer_training/make_report.py RUN_DIR [OUT_DIR]
Reads RUN_DIR/metrics.jsonl (written by train_tokenizer.py) and writes OUT_DIR/curves.png and
OUT_DIR/summary.json (default OUT_DIR: this folder).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from utils.fileio import atomic_write, atomic_write_json

PANELS = [("rec_loss", "reconstruction loss (mean |x - x_rec|)"), ("vf_loss", "VF loss (mdms + mcos)"),
          ("vf_cos", "alignment: mean cos(projected latent, features)"), ("disc_loss", "discriminator loss")]


def main(run_dir: str, out_dir: str) -> None:
    rows = [json.loads(line) for line in open(Path(run_dir) / "metrics.jsonl")]
    train = [r for r in rows if "train/rec_loss" in r]
    val = [r for r in rows if "val/rec_loss" in r]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for ax, (key, title) in zip(axes, PANELS):
        ax.plot([r["step"] for r in train], [r[f"train/{key}"] for r in train], label="train", lw=1.2)
        if val and f"val/{key}" in val[0]:
            ax.plot([r["step"] for r in val], [r[f"val/{key}"] for r in val], "o-", label="val", ms=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step (batches)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("tiny VA-VAE on CPU (configs/tokenizer/tiny_cpu.yaml; foundation model = tiny RANDOM ViT)",
                 fontsize=10)
    fig.tight_layout()
    out = Path(out_dir)
    atomic_write(out / "curves.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))

    def ends(series, key):
        return {"first": series[0][key], "last": series[-1][key],
                "first_step": series[0]["step"], "last_step": series[-1]["step"]}

    summary = {
        "run_dir": str(run_dir),
        "config": "configs/tokenizer/tiny_cpu.yaml",
        "note": ("CPU check: 32 px toy shapes (tokenizer.data.write_toy_images, 512 train / 64 val), "
                 "f2 latent 16x16x4, adaptive VF weight 0.1, GAN from batch 200, no LPIPS (no VGG "
                 "weights offline). The foundation model is a tiny randomly initialised, frozen "
                 "DINOv2-family ViT (embed 32, depth 2), not real DINOv2 weights."),
        "steps": train[-1]["step"],
        "train": {k: ends(train, f"train/{k}") for k in ("rec_loss", "vf_loss", "vf_cos", "nll_loss")},
        "val": {k: ends(val, f"val/{k}") for k in ("rec_loss", "vf_loss", "vf_cos")} if val else {},
        "mean_steps_per_sec": sum(r["steps_per_sec"] for r in train) / len(train),
    }
    atomic_write_json(summary, out / "summary.json")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else str(Path(__file__).parent))

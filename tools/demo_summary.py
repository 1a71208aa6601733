"""Collect the CPU demo's results (run_demo.sh) into one table, `summary.json` and loss curves.

Reads what the real scripts wrote into the demo folder: tokenizer metrics (`tokenizer/metrics.jsonl`),
evaluation (`tokenizer_eval.json`) and colour error at shape edges (`tokenizer_edges.json`, written by
tools/analyse_reconstruction.py), the extraction manifest, the LightningDiT checkpoint's loss
history, and each sample batch (`dit/*.npz` with its `protocol.json`). Generated samples are scored
with the toy classifier (accuracy against the class they were sampled for) and, when a reference
batch and the Inception weights are given, with the ADM FID.

    python -m tools.demo_summary demo_output --classifier demo_output/classifier.pt
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from utils.fileio import atomic_write, atomic_write_json
from evaluation.toy_classifier import conditional_accuracy

logger = logging.getLogger(__name__)


def _read_jsonl(path: Path) -> List[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tokenizer_summary(out: Path) -> Dict:
    """First/last training reconstruction loss, the last LR, the evaluation metrics of the demo
    tokenizer and, when measured, its blue excess (B - Y, 8-bit levels) just outside each side of the
    shapes (the colour fringe a short run at a high constant LR leaves; docs/demo.md)."""
    records = _read_jsonl(out / "tokenizer" / "metrics.jsonl")
    train = [r for r in records if "train/rec_loss" in r]
    summary = {"steps": train[-1]["step"], "train_rec_loss_first": train[0]["train/rec_loss"],
               "train_rec_loss_last": train[-1]["train/rec_loss"], "lr_last": train[-1].get("lr"),
               "vf_loss": "train/vf_loss" in train[-1]}
    evaluation = json.loads((out / "tokenizer_eval.json").read_text())
    summary.update({k.lower(): evaluation[k] for k in ("PSNR", "SSIM", "LPIPS", "rFID") if k in evaluation})
    edges = out / "tokenizer_edges.json"
    if edges.is_file():
        final = json.loads(edges.read_text())["runs"]["final"]
        summary["edge_blue_excess"] = final["outside_blue_minus_luma"]
        summary["mean_abs_error_8bit"] = final["mean_abs_error"]
    return summary


def dit_history(out: Path) -> List[dict]:
    """The training log history stored in the newest LightningDiT checkpoint."""
    ckpts = sorted((out / "dit" / "checkpoints").glob("*.pt"))
    if not ckpts:
        raise FileNotFoundError(f"no LightningDiT checkpoint under {out / 'dit' / 'checkpoints'}")
    return list(torch.load(ckpts[-1], map_location="cpu", weights_only=True).get("log_history", []))


def sample_batches(out: Path, classifier: Optional[str], reference: Optional[Path],
                   inception_weights: Optional[str]) -> List[Dict]:
    """Score every sample batch written by inference.py: conditional accuracy, FID when possible."""
    rows = []
    for npz in sorted((out / "dit").glob("*.npz")):
        protocol = json.loads((npz.with_suffix("") / "protocol.json").read_text())
        row = {"batch": npz.name, "cfg_scale": protocol.get("cfg_scale"),
               "cfg_channels": protocol.get("cfg_channels"), "num_steps": protocol.get("num_steps")}
        if classifier:
            row.update({f"classifier_{k}": v for k, v in conditional_accuracy(classifier, str(npz)).items()
                        if k in ("samples", "accuracy", "chance")})
        if reference is not None and inception_weights:
            from evaluation.adm import evaluate_files
            row["fid"] = evaluate_files(str(reference), str(npz), inception_weights)["fid"]
        rows.append(row)
    return rows


def class_grid(npz: Path, class_names: List[str], path: Path, per_class: int = 8, zoom: int = 3) -> None:
    """Samples of each class in a row (row label = class name), upscaled for viewing."""
    from PIL import Image, ImageDraw

    data = np.load(npz)
    images, labels = data["arr_0"], data["arr_1"]
    size = images.shape[1] * zoom
    label_w = 90
    canvas = Image.new("RGB", (label_w + per_class * size, len(class_names) * size), "white")
    draw = ImageDraw.Draw(canvas)
    for row, name in enumerate(class_names):
        draw.text((4, row * size + size // 2 - 5), name, fill="black")
        for col, index in enumerate(np.flatnonzero(labels == row)[:per_class]):
            tile = Image.fromarray(images[index]).resize((size, size), Image.NEAREST)
            canvas.paste(tile, (label_w + col * size, row * size))
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))


def plot_curves(tokenizer_records: List[dict], history: List[dict], path: Path) -> None:
    """Tokenizer reconstruction loss and LightningDiT training loss, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    tok = [(r["step"], r["train/rec_loss"]) for r in tokenizer_records if "train/rec_loss" in r]
    val = [(r["step"], r["val/rec_loss"]) for r in tokenizer_records if "val/rec_loss" in r]
    axes[0].plot(*zip(*tok), label="train")
    if val:
        axes[0].plot(*zip(*val), "o-", label="validation")
    axes[0].set(title="tokenizer: reconstruction L1", xlabel="step")
    axes[0].legend()
    dit = [(h["step"], h["loss"]) for h in history if "loss" in h]
    cos = [(h["step"], h["cos_loss"]) for h in history if "cos_loss" in h]
    axes[1].plot(*zip(*dit), label="MSE (velocity)")
    if cos:
        axes[1].plot(*zip(*cos), label="cosine term")
    axes[1].set(title="LightningDiT: training loss", xlabel="step", yscale="log")
    axes[1].legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def format_table(summary: Dict) -> str:
    tok, lines = summary["tokenizer"], []
    lines.append(f"{'what':<46} {'value':>12}")
    lines.append("-" * 59)
    lines.append(f"{'toy images (train / val)':<46} {summary['data']['train_images']:>6} / {summary['data']['val_images']:<4}")
    lines.append(f"{'tokenizer objective':<46} {'VF (DINOv2)' if tok['vf_loss'] else 'LDM (no VF)':>12}")
    lines.append(f"{'tokenizer train L1, first -> last':<46} {tok['train_rec_loss_first']:>5.3f} -> {tok['train_rec_loss_last']:.3f}")
    for key, label in (("psnr", "tokenizer PSNR (val, dB)"), ("ssim", "tokenizer SSIM (val)"),
                       ("lpips", "tokenizer LPIPS (val)"), ("rfid", "tokenizer rFID (val)")):
        if key in tok and tok[key] is not None:
            lines.append(f"{label:<46} {tok[key]:>12.3f}")
    if "edge_blue_excess" in tok:
        value = " / ".join(f"{tok['edge_blue_excess'][s]:.1f}" for s in ("left", "right", "top", "bottom"))
        lines.append(f"{'tokenizer blue excess at edges L/R/T/B':<{58 - len(value)}} {value}")
    lines.append(f"{'latents extracted (processes)':<46} {summary['extraction']['images']:>6} ({summary['extraction']['world_size']})")
    dit = summary["lightningdit"]
    lines.append(f"{'LightningDiT loss, first -> last log':<46} {dit['loss_first']:>5.3f} -> {dit['loss_last']:.3f}")
    lines.append(f"{'classifier accuracy on real val images':<46} {summary['classifier_val_accuracy']:>12.3f}")
    for row in summary["samples"]:
        label = f"samples cfg {row['cfg_scale']}: classifier accuracy"
        lines.append(f"{label:<46} {row.get('classifier_accuracy', float('nan')):>12.3f}")
        if row.get("fid") is not None:
            lines.append(f"{'samples cfg ' + str(row['cfg_scale']) + ': FID vs toy val':<46} {row['fid']:>12.3f}")
    lines.append(f"{'chance accuracy':<46} {summary['samples'][0].get('classifier_chance', float('nan')):>12.3f}")
    lines.append(f"{'wall time (s)':<46} {summary['seconds_total']:>12.0f}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="demo folder (run_demo.sh's DEMO_OUT)")
    parser.add_argument("--classifier", default=None, help="toy classifier checkpoint")
    parser.add_argument("--stage-times", default=None, help="file of 'stage seconds' lines")
    parser.add_argument("--reference", default=None, help="ADM reference batch for FID (optional)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    out = Path(args.out)
    stage_seconds = {}
    if args.stage_times and Path(args.stage_times).is_file():
        stage_seconds = {k: int(v) for k, v in (line.split() for line in Path(args.stage_times).read_text().splitlines() if line.strip())}
    reference = Path(args.reference) if args.reference else out / "toy_val_reference.npz"
    inception = os.environ.get("ADM_INCEPTION_WEIGHTS")
    history = dit_history(out)
    losses = [h["loss"] for h in history if "loss" in h]
    extraction = json.loads((out / "latents" / "extraction.json").read_text())
    classifier_metrics = torch.load(args.classifier, map_location="cpu", weights_only=True)["metrics"] if args.classifier else {}
    summary = {
        "data": {"train_images": len(list((out / "toy" / "train").rglob("*.png"))),
                 "val_images": len(list((out / "toy" / "val").rglob("*.png")))},
        "tokenizer": tokenizer_summary(out),
        "extraction": {"images": extraction["num_images"], "world_size": extraction["shard_name_world_size"]},
        "lightningdit": {"steps": history[-1]["step"] if history else 0, "loss_first": losses[0],
                         "loss_last": losses[-1]},
        "classifier_val_accuracy": classifier_metrics.get("val_accuracy"),
        "samples": sample_batches(out, args.classifier, reference if reference.is_file() else None, inception),
        "fid_available": bool(inception and reference.is_file()),
        "files": {"grid": str(out / "demo_samples.png"), "curves": str(out / "loss_curves.png"),
                  "samples_by_class": str(out / "samples_by_class.png"),
                  "tokenizer_reconstructions": str(out / "tokenizer" / "images")},
        "stage_seconds": stage_seconds,
        "seconds_total": sum(stage_seconds.values()),
    }
    plot_curves(_read_jsonl(out / "tokenizer" / "metrics.jsonl"), history, out / "loss_curves.png")
    guided = max(summary["samples"], key=lambda row: row["cfg_scale"] or 0.0)
    names = (out / "toy" / "class_names.txt").read_text().split()
    class_grid(out / "dit" / guided["batch"], names, out / "samples_by_class.png")
    atomic_write_json(summary, out / "summary.json")
    print(format_table(summary))
    print(f"\nsummary: {out / 'summary.json'}   samples: {out / 'samples_by_class.png'}, "
          f"{out / 'demo_samples.png'}   curves: {out / 'loss_curves.png'}")
    return summary


if __name__ == "__main__":
    main()

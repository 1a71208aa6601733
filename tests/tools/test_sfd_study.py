"""tools/sfd_study.py at a tiny size on a stand-in of run_demo.sh's output (toy images, the demo
tokenizer's architecture with random weights saved as its export, a one-epoch classifier): every
stage runs its real command (semantic encoder, feature file, train_semvae.py, run_extraction.sh,
run_train.sh for each variant), the variants differ only in what they are meant to, every
checkpoint is judged, and the figure and summary.json are written; --plot-only redraws them."""
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from tools import sfd_study

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The files the study reads from a demo run."""
    from datasets.toy import generate_toy_imagefolder
    from evaluation.toy_classifier import train_classifier
    from tokenizer.vavae import VA_VAE

    root = tmp_path_factory.mktemp("demo")
    torch.set_num_threads(1)
    generate_toy_imagefolder(str(root / "toy/train"), num_per_class=7, image_size=32, split="train")
    generate_toy_imagefolder(str(root / "toy/val"), num_per_class=2, image_size=32, split="val")
    export = root / "tokenizer/export"
    export.mkdir(parents=True)
    cfg = OmegaConf.load(REPO / "configs/demo/tokenizer.yaml")
    cfg.ckpt_path = str(export / "vavae.pt")
    OmegaConf.save(cfg, export / "vavae.yaml")
    torch.manual_seed(0)
    vae = VA_VAE(str(export / "vavae.yaml"), img_size=32, fp16=False, device="cpu", random_init=True)
    torch.save({"state_dict": vae.model.state_dict()}, export / "vavae.pt")
    train_classifier(str(root / "toy/train"), str(root / "toy/val"), str(root / "classifier.pt"), image_size=32,
                     epochs=1)
    return root


ARGS = ["--steps", "8", "--eval-every", "4", "--eval-num", "20", "--sample-steps", "3", "--log-every", "4",
        "--deltas", "0.6", "--encoder-epochs", "1", "--semvae-iterations", "6", "--seeds", "0"]


@pytest.fixture(scope="module")
def study(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("study_out")
    return sfd_study.main(["--demo-out", str(demo), "--out", str(out), *ARGS]), out


@pytest.mark.slow   # ~2-3 min: every stage of the study at a tiny size
def test_every_variant_trained_and_judged(demo, study):
    summary, out = study
    names = ["lightningdit", "lightningdit_repa", "composite_delta0", "sfd_delta0.3", "sfd_delta0.6"]
    assert list(summary["variants"]) == names
    for name, result in summary["variants"].items():
        assert [r["step"] for r in result["evaluations"]] == [4, 8]
        assert all(0.0 <= r["accuracy"] <= 1.0 and r["seconds"] > 0 for r in result["evaluations"])
        ckpt = torch.load(demo / "sfd_study/runs" / name / "checkpoints/0000008.pt", map_location="cpu",
                          weights_only=True)
        m = ckpt["config"]["model"]
        assert (m["in_chans"], m["semantic_chans"], m["use_repa"]) == {
            "lightningdit": (4, 0, False), "lightningdit_repa": (4, 0, True)}.get(name, (6, 2, True))
        assert m["semfirst_delta_t"] == (result["delta"] or 0.0)
        # the same network, data, batch, optimizer and seed otherwise
        assert (m["hidden_size"], m["depth"], m["patch_size"], ckpt["config"]["train"]["global_batch_size"],
                ckpt["config"]["train"]["global_seed"], ckpt["config"]["data"]["data_path"]) == \
            (128, 4, 2, 64, 0, str(demo / "sfd_study/latents"))
    assert summary["fid_available"] is False and summary["semantic_encoder"]["seed"] == 1
    assert summary["seeds"] == [0] and list(summary["variants"]["lightningdit"]["per_seed"]) == ["0"]
    flops = {name: r["train_flops_per_step"] for name, r in summary["variants"].items()}
    # REPA's projector and the semantic channels cost compute; delta does not
    assert flops["lightningdit"] < flops["lightningdit_repa"] < flops["composite_delta0"]
    assert flops["sfd_delta0.3"] == flops["sfd_delta0.6"]
    assert abs(flops["composite_delta0"] / flops["sfd_delta0.3"] - 1) < 0.01    # one vs two time embedders
    assert (out / "sfd_study.png").stat().st_size > 10000
    assert json.loads((out / "summary.json").read_text()) == summary


@pytest.mark.slow   # ~2-3 min: every stage of the study at a tiny size
def test_shards_hold_the_semantic_part_and_patch2_repa_targets(demo, study):
    shard = sorted((demo / "sfd_study/latents").glob("*.safetensors"))[0]
    with safe_open(str(shard), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()[1:]) for k in f.keys()}
    assert shapes == {"latents": (4, 8, 8), "latents_flip": (4, 8, 8), "labels": (), "latents_sv": (2, 8, 8),
                      "latents_sv_flip": (2, 8, 8), "feats_dino": (64, 4, 4), "feats_dino_flip": (64, 4, 4)}
    assert (demo / "sfd_study/semvae/checkpoints/semantic_ae_final.pt").is_file()


@pytest.mark.slow   # ~2-3 min: every stage of the study at a tiny size
def test_rerun_resumes_and_plot_only_redraws(demo, study):
    summary, out = study
    (out / "sfd_study.png").unlink()
    again = sfd_study.main(["--demo-out", str(demo), "--out", str(out), *ARGS])   # everything cached
    assert again["variants"] == summary["variants"]
    (out / "sfd_study.png").unlink()
    sfd_study.main(["--out", str(out), "--plot-only"])
    assert (out / "sfd_study.png").is_file()


def test_missing_demo_output_is_named(tmp_path):
    with pytest.raises(SystemExit, match="run_demo.sh"):
        sfd_study.main(["--demo-out", str(tmp_path), "--out", str(tmp_path / "o")])


def test_training_seconds_sum_the_log_windows(tmp_path):
    rows = [{"step": 4, "steps_per_sec": 2.0}, {"step": 8, "steps_per_sec": 4.0}, {"step": 8, "eval_fid": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert sfd_study.training_seconds(tmp_path) == {4: 2.0, 8: 3.0}


def test_mean_over_seeds():
    per_seed = {0: [{"step": 4, "seconds": 1.0, "accuracy": 0.2}, {"step": 8, "seconds": 2.0, "accuracy": 0.5}],
                1: [{"step": 4, "seconds": 3.0, "accuracy": 0.4}, {"step": 8, "seconds": 4.0, "accuracy": 0.9}]}
    assert sfd_study.mean_over_seeds(per_seed) == [
        {"step": 4, "seconds": 2.0, "accuracy": 0.3, "accuracy_min": 0.2, "accuracy_max": 0.4},
        {"step": 8, "seconds": 3.0, "accuracy": 0.7, "accuracy_min": 0.5, "accuracy_max": 0.9}]

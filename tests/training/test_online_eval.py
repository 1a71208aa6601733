"""Evaluation during training: a fixed class-balanced set from fixed seeds (the same for any
number of processes and at every evaluation), grid PNGs and metrics rows from train.py (what is
skipped is said once, resume keeps the rows), and FID against a reference batch."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from configs.schema import load_config
from datasets.order import sample_noise
from datasets.tiny_latents import write_tiny_latents
from training.online_eval import OnlineEvaluator, eval_set, image_grid

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs/tiny/lightningdit_tiny.yaml")


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return write_tiny_latents(str(tmp_path_factory.mktemp("eval") / "latents"), num_items=64,
                              shape=(4, 4, 4), num_classes=10)


def test_eval_set_is_fixed_balanced_and_split_free():
    cfg = load_config(CONFIG, ["train.eval_num=25", "train.global_seed=7"])
    idx, noise, labels = eval_set(cfg, 0, 1)
    assert idx == list(range(25))
    assert torch.equal(noise, sample_noise(range(25), (4, 4, 4), 7))
    assert sorted(torch.bincount(labels, minlength=10).tolist()) == [2] * 5 + [3] * 5  # balanced
    halves = [eval_set(cfg, r, 2) for r in range(2)]
    assert halves[0][0] == list(range(0, 25, 2)) and halves[1][0] == list(range(1, 25, 2))
    merged_noise, merged_labels = torch.empty_like(noise), torch.empty_like(labels)
    for ids, z, y in halves:
        merged_noise[ids], merged_labels[ids] = z, y
    assert torch.equal(merged_noise, noise) and torch.equal(merged_labels, labels)
    idx2, noise2, labels2 = eval_set(cfg, 0, 1)  # a second evaluation: the same set
    assert torch.equal(noise2, noise) and torch.equal(labels2, labels)
    other = eval_set(load_config(CONFIG, ["train.eval_num=25", "train.global_seed=8"]), 0, 1)
    assert not torch.equal(other[1], noise)


def test_image_grid_layout():
    images = np.arange(3 * 2 * 2 * 3, dtype=np.uint8).reshape(3, 2, 2, 3)
    grid = image_grid(images, cols=2)
    assert grid.shape == (4, 4, 3)
    assert np.array_equal(grid[2:, :2], images[2]) and (grid[2:, 2:] == 0).all()


def test_train_evaluates_and_resume_keeps_the_curve(latents, tmp_path):
    common = [CONFIG, f"data.data_path={latents}", f"train.output_dir={tmp_path}", "train.exp_name=ev",
              "train.global_batch_size=16", "train.log_every=5", "train.ckpt_every=10",
              "train.eval_every=5", "train.eval_num=12", "train.eval_steps=2", "train.eval_batch_size=5"]
    exp = train.main(common + ["train.max_steps=10"])
    train.main(common + ["train.max_steps=15", "train.resume=true"])
    assert sorted(p.name for p in (exp / "eval").iterdir()) == ["0000005.png", "0000010.png", "0000015.png"]
    rows = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_num" in r] == [5, 10, 15]
    assert [r["step"] for r in rows if "loss" in r] == [5, 10, 15]
    from PIL import Image
    grid = np.asarray(Image.open(exp / "eval" / "0000005.png"))
    assert grid.shape == (2 * 4, 8 * 4, 3)  # 12 latent pictures (no tokenizer weights), 8 per row
    log = (exp / "log.txt").read_text()
    assert log.count("skipping decoding and FID (no tokenizer") == 2  # once per run


@pytest.mark.slow  # Inception at 299 px on CPU and 2048-d eigendecompositions
def test_fid_against_the_samples_themselves_is_zero(latents, tmp_path):
    from models.build import build_model
    from training.metrics import MetricsSink
    from utils.runtime import setup_runtime

    cfg = load_config(CONFIG, [f"data.data_path={latents}", "train.eval_num=10", "train.eval_steps=2",
                               "train.eval_every=1", f"data.fid_reference_file={tmp_path / 'ref.npz'}",
                               f"vae.config_path={REPO / 'configs/tiny/tiny_vavae_f4d4.yaml'}"])
    rt = setup_runtime()
    torch.manual_seed(0)
    ema = build_model(cfg).eval()
    sink = MetricsSink(tmp_path, True, report_to="none")
    # the samples as their own reference batch: FID and sFID ~ 0
    probe = OnlineEvaluator(cfg, rt, ema, sink, tmp_path, random_init=True)
    images = probe.generate().numpy()
    assert images.dtype == np.uint8 and images.shape == (10, 16, 16, 3)
    np.savez(tmp_path / "ref.npz", arr_0=images)
    evaluator = OnlineEvaluator(cfg, rt, ema, sink, tmp_path, random_init=True)
    first = evaluator(1)  # evaluator.generate() makes the same images as probe.generate()
    assert abs(first["eval_fid"]) < 1e-4 and abs(first["eval_sfid"]) < 1e-4
    np.savez(tmp_path / "ref.npz", arr_0=255 - images)
    shifted = OnlineEvaluator(cfg, rt, ema, sink, tmp_path, random_init=True)(2)
    assert shifted["eval_fid"] > 0.05 and shifted["eval_sfid"] > 0.05  # 0.29 and 0.82 (sqrtm)
    assert (tmp_path / "fid_curve.png").stat().st_size > 0

"""SFD trained by our train.py from SFD's released YAML (configs/sfd/lightningdit_xl/train.yaml) at
a tiny size: 32 texture + 16 semantic channels on a 4x4 grid, REPA on block 2 against 768-wide
(DINOv2-B/14-reg) targets, delta 0.3, semantic weight 2, qk-norm, as released; only the width, the
depth, the image size and the run lengths are overridden.

What our trainer guarantees holds with SFD's objective, network and extra targets:
- exact gradient accumulation: 1 x 16 == 1 process x 4 micro-steps of 4;
- exact resume: 10 steps + resume to 15 == 15 steps, bit for bit (accumulating);
- 1 process == 2 processes (launched by run_train.sh, 2 micro-steps of 4 each), weights and the
  evaluation during training, which samples with SFD's phase schedule;
- evaluation with AutoGuidance when the config turns it on: a guide equal to the sampled EMA
  gives the unguided images bit for bit, another guide other images;
- the checkpoint's state dict is SFD's network, key for key and shape for shape, against a list
  written by hand from SFD's module tree (models/lightningdit.py of SFD), the same list that gives
  the released XL/1's keys;
- REPA on plain LightningDiT (SFD's Table 1 "+ REPA" rows, configs/sfd/paper) from the same shards.
"""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import train
from datasets.tiny_latents import write_tiny_latents

REPO = Path(__file__).resolve().parents[2]
SFD_YAML = "configs/sfd/lightningdit_xl/train.yaml"
GUIDE_YAML = "configs/sfd/autoguidance_b/inference.yaml"
D, DEPTH, HEADS, GRID = 64, 2, 2, 4
TINY = [f"model.hidden_size={D}", f"model.depth={DEPTH}", f"model.num_heads={HEADS}",
        f"data.image_size={GRID * 16}", "data.num_workers=0", "train.global_batch_size=16",
        "train.log_every=5", "train.ckpt_every=10", "train.max_steps=10", "train.report_to=none",
        "train.eval_every=10", "train.eval_num=6", "train.eval_steps=3"]


def sfd_state_dict_shapes(D, depth, heads, tokens, texture=32, semantic=16, repa=768, classes=1000):
    """SFD's LightningDiT (use_qknorm, use_swiglu, use_rope, use_rmsnorm, patch 1, two time
    embedders, REPA projector D -> 2048 -> 2048 -> repa) written out from its module tree."""
    C, half, head, F = texture + semantic, D // 2, D // heads, int(2 / 3 * 4 * D)
    keys = {"x_embedder.proj.weight": (D, C, 1, 1), "x_embedder.proj.bias": (D,), "pos_embed": (1, tokens, D),
            "y_embedder.embedding_table.weight": (classes + 1, D),
            "feat_rope.freqs_cos": (tokens, head), "feat_rope.freqs_sin": (tokens, head)}
    for part in ("sem", "tex"):
        keys.update({f"t_embedder_{part}.mlp.0.weight": (half, 256), f"t_embedder_{part}.mlp.0.bias": (half,),
                     f"t_embedder_{part}.mlp.2.weight": (half, half), f"t_embedder_{part}.mlp.2.bias": (half,)})
    block = {"norm1.weight": (D,), "attn.qkv.weight": (3 * D, D), "attn.qkv.bias": (3 * D,),
             "attn.q_norm.weight": (head,), "attn.k_norm.weight": (head,), "attn.proj.weight": (D, D),
             "attn.proj.bias": (D,), "norm2.weight": (D,), "mlp.w12.weight": (2 * F, D), "mlp.w12.bias": (2 * F,),
             "mlp.w3.weight": (D, F), "mlp.w3.bias": (D,), "adaLN_modulation.1.weight": (6 * D, D),
             "adaLN_modulation.1.bias": (6 * D,)}
    for i in range(depth):
        keys.update({f"blocks.{i}.{name}": shape for name, shape in block.items()})
    keys.update({"final_layer.norm_final.weight": (D,), "final_layer.linear.weight": (C, D),
                 "final_layer.linear.bias": (C,), "final_layer.adaLN_modulation.1.weight": (2 * D, D),
                 "final_layer.adaLN_modulation.1.bias": (2 * D,),
                 "repa_projector.0.weight": (2048, D), "repa_projector.0.bias": (2048,),
                 "repa_projector.2.weight": (2048, 2048), "repa_projector.2.bias": (2048,),
                 "repa_projector.4.weight": (repa, 2048), "repa_projector.4.bias": (repa,)})
    return keys


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sfd_train")
    data = write_tiny_latents(str(root / "latents"), num_items=64, shape=(32, GRID, GRID), num_classes=10,
                              semantic_chans=16, repa_dim=768)
    common = [*TINY, f"data.data_path={data}", f"train.output_dir={root / 'out'}"]
    return {"root": root, "common": common, "out": root / "out"}


def run(tiny, name, *overrides):
    torch.set_num_threads(1)
    return train.main([SFD_YAML, *tiny["common"], f"train.exp_name={name}", *overrides])


def load(exp_dir, step=10):
    return torch.load(exp_dir / "checkpoints" / f"{step:07d}.pt", map_location="cpu", weights_only=True)


def rows(exp_dir):
    return [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]


def grid(exp_dir, step=10):
    return np.asarray(Image.open(exp_dir / "eval" / f"{step:07d}.png")).astype(int)


def assert_close_weights(a, b, atol=1e-5):
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            torch.testing.assert_close(b[key][name], a[key][name], rtol=0, atol=atol, msg=f"{key} {name}")


@pytest.fixture(scope="module")
def base(tiny):
    return run(tiny, "base")


@pytest.fixture(scope="module")
def micro4(tiny):
    return run(tiny, "micro4", "train.micro_batch_size=4")


def test_sfd_recipe_runs_and_logs_its_terms(base):
    cfg = load(base)["config"]
    assert cfg["model"]["semantic_chans"] == 16 and cfg["model"]["semfirst_delta_t"] == 0.3
    assert cfg["model"]["use_repa"] and cfg["model"]["repa_feat_depth"] == 2 and cfg["optimizer"]["beta2"] == 0.999
    for r in rows(base):
        if "loss" in r:
            assert r["total_loss"] == pytest.approx(r["loss"] + r["cos_loss"] + r["repa_loss"], rel=1e-6)
    log = (base / "log.txt").read_text()
    assert "REPA Loss" in log and "cfg scale 1" in log
    assert grid(base).shape == (4, 8 * 4, 3)         # 6 latent pictures of 4x4 in one row of 8 cells


def test_checkpoint_is_sfd_network(base):
    """Our checkpoint's model and EMA are SFD's state dict (hand-written from SFD's module tree);
    the same hand-written list at XL/1 sizes is the network of SFD's released YAML."""
    from configs.schema import load_config
    from models.build import build_model

    ckpt = load(base)
    expected = sfd_state_dict_shapes(D, DEPTH, HEADS, GRID * GRID)
    for key in ("model", "ema"):
        assert {k: tuple(v.shape) for k, v in ckpt[key].items()} == expected
    with torch.device("meta"):
        xl = build_model(load_config(SFD_YAML), training=False)
    assert {k: tuple(v.shape) for k, v in xl.state_dict().items()} == sfd_state_dict_shapes(1152, 28, 16, 256)


def test_accumulation_is_exact(base, micro4):
    a, b = load(base), load(micro4)
    assert b["data"]["accum_steps"] == 4
    assert_close_weights(a, b)
    for ra, rb in zip(rows(base), rows(micro4)):
        for key in ("loss", "cos_loss", "repa_loss", "total_loss"):
            if key in ra:
                assert abs(ra[key] - rb[key]) < 1e-5, key


def test_resume_is_bit_identical(tiny, micro4):
    whole = run(tiny, "whole15", "train.micro_batch_size=4", "train.max_steps=15", "train.eval_every=15")
    resumed = run(tiny, "micro4", "train.micro_batch_size=4", "train.max_steps=15", "train.eval_every=15",
                  "train.resume=true")
    a, b = load(whole, 15), load(resumed, 15)
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    for i, state in a["opt"]["state"].items():
        for field, value in state.items():
            assert torch.equal(value, b["opt"]["state"][i][field]), (i, field)
    assert np.array_equal(grid(whole, 15), grid(resumed, 15))


def test_two_processes_equal_one(tiny, base):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), GPUS_PER_NODE="2", MASTER_PORT="29571",
               PRECISION="no")
    cmd = ["bash", "run_train.sh", SFD_YAML, *tiny["common"], "train.exp_name=ddp", "train.micro_batch_size=4"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exp = tiny["out"] / "ddp"
    assert "per-process batch 8 (2 micro-step(s) of 4)" in (exp / "log.txt").read_text()
    a, b = load(base), load(exp)
    assert b["world_size"] == 2
    assert_close_weights(a, b)
    assert np.abs(grid(base) - grid(exp)).max() <= 1    # uint8 rounding of ~1e-6 differences
    for ra, rb in zip(rows(base), rows(exp)):
        for key in ("loss", "cos_loss", "repa_loss"):
            if key in ra:
                assert abs(ra[key] - rb[key]) < 1e-4, key


def guide_yaml(tiny, name, ckpt_path):
    """SFD's guide YAML (autoguidance_b/inference.yaml) at the tiny run's image size, with a checkpoint."""
    cfg = OmegaConf.load(REPO / GUIDE_YAML)
    cfg.data.image_size, cfg.ckpt_path = GRID * 16, str(ckpt_path)
    path = tiny["root"] / f"{name}.yaml"
    OmegaConf.save(cfg, path)
    return path


def test_evaluation_with_autoguidance(tiny, base):
    auto = ["sample.autoguidance=true", "train.eval_cfg_scale=1.5"]
    # the guide is this very EMA (base's step 10): v_B + w (v - v_B) = v, the unguided images exactly
    same = run(tiny, "auto_same", *auto,
               f"sample.autoguidance_config={guide_yaml(tiny, 'guide_same', base / 'checkpoints/0000010.pt')}")
    assert "AutoGuidance scale 1.5" in (same / "log.txt").read_text()
    assert np.array_equal(grid(same), grid(base))
    # another guide (the same EMA with per-channel output offsets) moves the samples
    weaker = load(base)
    weaker["ema"]["final_layer.linear.bias"] += torch.linspace(-1, 1, 48)
    torch.save({"ema": weaker["ema"]}, tiny["root"] / "weaker.pt")
    other = run(tiny, "auto_other", *auto,
                f"sample.autoguidance_config={guide_yaml(tiny, 'guide_other', tiny['root'] / 'weaker.pt')}")
    assert not np.array_equal(grid(other), grid(base))
    # a guide checkpoint that does not exist is refused before the run directory is made
    with pytest.raises(SystemExit, match="guide checkpoint"):
        run(tiny, "auto_missing", *auto,
            f"sample.autoguidance_config={guide_yaml(tiny, 'guide_missing', tiny['root'] / 'nope.pt')}")
    assert not (tiny["out"] / "auto_missing").exists()


def test_lightningdit_with_repa_on_sfd_shards(tiny, base):
    """SFD's Table 1 "LightningDiT + REPA" row (configs/sfd/paper): one channel group on the texture
    part of the same shards, REPA on block 2 against the same feats_dino; its twin without REPA
    has no REPA term and ends elsewhere."""
    paper = "configs/sfd/paper/sfd_t1_lightningdit_xl1{}.yaml"
    runs = {}
    for suffix in ("_repa", ""):
        torch.set_num_threads(1)
        runs[suffix] = train.main([paper.format(suffix), *tiny["common"], f"train.exp_name=lightningdit{suffix}"])
    repa, plain = load(runs["_repa"]), load(runs[""])
    shapes = sfd_state_dict_shapes(D, DEPTH, HEADS, GRID * GRID, semantic=0)
    one_time = {k: v for k, v in shapes.items() if not k.startswith("t_embedder_")}
    one_time.update({"t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.0.bias": (D,),
                     "t_embedder.mlp.2.weight": (D, D), "t_embedder.mlp.2.bias": (D,)})
    assert {k: tuple(v.shape) for k, v in repa["model"].items()} == one_time
    assert not any(k.startswith("repa_projector") for k in plain["model"])
    for r in rows(runs["_repa"]):
        if "loss" in r:
            assert r["total_loss"] == pytest.approx(r["loss"] + r["cos_loss"] + r["repa_loss"], rel=1e-6)
    assert all("repa_loss" not in r for r in rows(runs[""]))
    assert max((repa["model"][k] - plain["model"][k]).abs().max() for k in plain["model"]) > 1e-4

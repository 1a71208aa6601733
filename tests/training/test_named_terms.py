"""Named loss terms and extra targets in the LightningDiT trainer.

- the objective's per-sample terms are logged by name and only those ending in `loss` are
  optimised (DDPM's `mse` and `vb` appear in metrics.jsonl but never in `total_loss`);
- SFD's objective and network (tiny: 4 texture + 2 semantic channels, REPA on block 1 against
  384-wide targets, the width of `dinov2_vits14_reg`): loss, cos_loss and repa_loss are logged
  and summed, the validation loss runs with the REPA targets, and the targets really move the
  weights (the same run on shards whose only difference is the REPA targets ends elsewhere).
  Accumulation, resume and 1 vs 2 processes with SFD's released YAML: tests/training/test_sfd_training.py;
- the door checks of SFD's parts (semantic channels, sv stats, REPA targets and their grid).
"""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import train
from datasets.tiny_latents import write_tiny_latents
from training.dit import loss_terms, optimised_loss

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs/tiny/lightningdit_tiny.yaml")
DDPM = ["transport.objective=ddpm", "model.learn_sigma=true", "transport.use_cosine_loss=false",
        "transport.use_lognorm=false"]
REPA_DIM = 384   # the projector's width for dinov2_vits14_reg
SFD = ["model.in_chans=6", "model.semantic_chans=2", "model.semfirst_delta_t=0.3", "model.semantic_weight=2.0",
       "data.latent_sv_norm=true", "model.use_repa=true", "model.repa_dino_version=dinov2_vits14_reg",
       "model.repa_feat_depth=1"]


def rows(exp_dir):
    return [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]


def ckpt(exp_dir, step=10):
    return torch.load(exp_dir / "checkpoints" / f"{step:07d}.pt", map_location="cpu", weights_only=True)


def negated_repa_copy(src: Path, dst: Path) -> Path:
    """`src` with every REPA target negated and everything else byte for byte the same."""
    shutil.copytree(src, dst)
    for shard in dst.glob("*.safetensors"):
        tensors = load_file(str(shard))
        for key in ("feats_dino", "feats_dino_flip"):
            tensors[key] = -tensors[key]
        save_file(tensors, str(shard), metadata={"total_size": str(len(tensors["labels"])),
                                                 "dtype": "torch.float32", "device": "cpu"})
    return dst


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("terms")
    plain = write_tiny_latents(str(root / "plain"), num_items=64, shape=(4, 4, 4), num_classes=10)
    sfd = write_tiny_latents(str(root / "sfd"), num_items=64, shape=(4, 4, 4), num_classes=10,
                             semantic_chans=2, repa_dim=REPA_DIM)
    valid = write_tiny_latents(str(root / "valid"), num_items=16, shape=(4, 4, 4), num_classes=10, seed=1,
                               semantic_chans=2, repa_dim=REPA_DIM)
    common = [f"train.output_dir={root / 'out'}", "train.global_batch_size=16", "train.log_every=5",
              "train.ckpt_every=10", "train.max_steps=10"]
    sfd_args = [*SFD, f"data.valid_path={valid}", "train.valid_every=10", "train.num_valid_batches=1"]
    return {"root": root, "plain": plain, "sfd": sfd, "common": common, "sfd_args": sfd_args, "out": root / "out"}


def run(tiny, name, *overrides):
    torch.set_num_threads(1)
    return train.main([CONFIG, *tiny["common"], f"train.exp_name={name}", *overrides])


def run_sfd(tiny, name, data=None, *overrides):
    return run(tiny, name, f"data.data_path={data or tiny['sfd']}", *tiny["sfd_args"], *overrides)


def test_term_rules():
    out = {"pred": torch.ones(2, 3, 4, 4), "loss": torch.tensor([1.0, 3.0]), "cos_loss": torch.tensor([0.5, 0.5]),
           "mse": torch.tensor([7.0, 9.0]), "repa_loss": torch.tensor([0.25, 0.75])}
    terms = loss_terms(out, batch=2)
    assert list(terms) == ["loss", "cos_loss", "mse", "repa_loss"]          # not pred; the objective's order
    assert [float(v) for v in terms.values()] == [2.0, 0.5, 8.0, 0.5]
    assert float(optimised_loss(terms)) == 3.0                             # loss + cos_loss + repa_loss, not mse
    with pytest.raises(ValueError, match="expected a 'loss' term"):
        loss_terms({"mse": torch.ones(2)}, batch=2)
    with pytest.raises(ValueError, match="none named"):
        loss_terms({"loss": torch.ones(2), "total": torch.ones(2)}, batch=2)


def test_ddpm_logs_mse_and_vb(tiny):
    exp = run(tiny, "ddpm", f"data.data_path={tiny['plain']}", *DDPM)
    logged = rows(exp)
    assert [r["step"] for r in logged] == [5, 10]
    for r in logged:
        assert {"loss", "mse", "vb", "cos_loss", "total_loss"} <= set(r)
        assert r["vb"] > 0 and r["mse"] > 0 and r["cos_loss"] == 0.0       # cos_loss kept (0) as before
        # DDPM's loss is mse + vb per sample; window means are linear
        assert r["loss"] == pytest.approx(r["mse"] + r["vb"], rel=1e-6)
        assert r["total_loss"] == r["loss"]                                # what is optimised
    log = (exp / "log.txt").read_text()
    assert re.search(r"\(step=0000010\) Train Loss: [\d.]+, .*MSE: [\d.]+, VB: [\d.]+, Grad Norm", log)
    assert "Cos Loss" not in log


@pytest.fixture(scope="module")
def sfd_full(tiny):
    return run_sfd(tiny, "sfd_full")


def test_sfd_terms_logged_and_summed(sfd_full):
    logged = rows(sfd_full)
    assert [r["step"] for r in logged] == [5, 10]
    for r in logged:
        assert {"loss", "cos_loss", "repa_loss", "total_loss"} <= set(r)
        assert r["total_loss"] == pytest.approx(r["loss"] + r["cos_loss"] + r["repa_loss"], rel=1e-6)
        # 1 - cos of a random projection against random targets starts near 1
        assert 0.3 < r["repa_loss"] < 1.7 and r["cos_loss"] > 0
    assert "valid_loss" in logged[-1] and "valid_loss_ema" in logged[-1]
    log = (sfd_full / "log.txt").read_text()
    assert re.search(r"Train Loss: [\d.]+, .*Cos Loss: [\d.]+, REPA Loss: [\d.]+, Grad Norm", log)
    state = ckpt(sfd_full)["model"]
    assert state["repa_projector.4.weight"].shape == (REPA_DIM, 2048)
    assert "t_embedder_sem.mlp.0.weight" in state and "t_embedder.mlp.0.weight" not in state


def test_repa_targets_move_the_weights(tiny, sfd_full):
    """Only the REPA targets differ (negated): the REPA term and the weights end elsewhere (every
    block before and at the REPA depth moves by ~1e-2 in 10 steps)."""
    other = negated_repa_copy(tiny["sfd"], tiny["root"] / "sfd_negated")
    a, b = ckpt(sfd_full), ckpt(run_sfd(tiny, "sfd_negated", other))
    assert max((b["model"][k] - a["model"][k]).abs().max() for k in a["model"]) > 1e-3
    ra, rb = rows(sfd_full)[0], rows(tiny["out"] / "sfd_negated")[0]
    assert ra["repa_loss"] != rb["repa_loss"]


DOOR = {
    "semantic channels": (["model.semantic_chans=3", "model.in_chans=7"], "semantic latents have 2 channels"),
    "no semantic part": (["data.latent_sv_norm=false", "model.use_repa=false", "data.data_path=PLAIN"],
                         "but the shards hold no semantic latents"),
    "sv norm without semantics": (["model.semantic_chans=0", "model.semfirst_delta_t=0", "model.in_chans=4"],
                                  "latent_sv_norm is true"),
    "repa without targets": (["model.semantic_chans=0", "model.semfirst_delta_t=0", "model.in_chans=4",
                              "data.latent_sv_norm=false",
                              "data.data_path=PLAIN"], "model.use_repa needs REPA targets"),
    "repa grid": (["model.patch_size=2"], "REPA targets feats_dino of 4x4 = 16 positions, the model has 4 tokens"),
    "repa width": (["model.repa_dino_version=dinov2_vitb14_reg"],
                   "REPA targets feats_dino are 384 wide, model.repa_dino_version 'dinov2_vitb14_reg' projects to 768"),
}


@pytest.mark.parametrize("case", sorted(DOOR))
def test_sfd_door_checks(tiny, case):
    overrides, message = DOOR[case]
    overrides = [o.replace("PLAIN", str(tiny["plain"])) for o in overrides]
    with pytest.raises(SystemExit, match=re.escape(message)):
        run(tiny, f"door_{case.replace(' ', '_')}", f"data.data_path={tiny['sfd']}", *SFD, *overrides)
    assert not (tiny["out"] / f"door_{case.replace(' ', '_')}").exists()

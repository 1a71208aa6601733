"""Named loss terms and extra targets in the LightningDiT trainer.

- the objective's per-sample terms are logged by name and only those ending in `loss` are
  optimised (DDPM's `mse` and `vb` appear in metrics.jsonl; a stand-in `probe` term never
  enters `total_loss`);
- SFD's REPA target travels with its latents (tests/training/sfd_standin.py stands in for the
  objective): 1 x 16 == 1 process x 4 micro-steps of 4 == 2 processes x 2 micro-steps of 4, and
  the target really moves the weights (a run that ignores it ends elsewhere);
- the door checks of SFD's parts (semantic channels, sv stats, REPA targets and their grid).
"""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

import train
from datasets.tiny_latents import write_tiny_latents
from training.dit import loss_terms, optimised_loss

import sfd_standin

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs/tiny/lightningdit_tiny.yaml")
DDPM = ["transport.objective=ddpm", "model.learn_sigma=true", "transport.use_cosine_loss=false",
        "transport.use_lognorm=false"]
SFD = ["model.in_chans=6", "model.semantic_chans=2", "data.latent_sv_norm=true", "model.use_repa=true"]


def rows(exp_dir):
    return [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]


def ckpt(exp_dir, step=10):
    return torch.load(exp_dir / "checkpoints" / f"{step:07d}.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("terms")
    plain = write_tiny_latents(str(root / "plain"), num_items=64, shape=(4, 4, 4), num_classes=10)
    sfd = write_tiny_latents(str(root / "sfd"), num_items=64, shape=(4, 4, 4), num_classes=10,
                             semantic_chans=2, repa_dim=8)
    valid = write_tiny_latents(str(root / "valid"), num_items=16, shape=(4, 4, 4), num_classes=10, seed=1,
                               semantic_chans=2, repa_dim=8)
    common = [f"train.output_dir={root / 'out'}", "train.global_batch_size=16", "train.log_every=5",
              "train.ckpt_every=10", "train.max_steps=10"]
    sfd_args = [f"data.data_path={sfd}", *SFD, f"data.valid_path={valid}", "train.valid_every=10",
                "train.num_valid_batches=1"]
    return {"root": root, "plain": plain, "sfd": sfd, "common": common, "sfd_args": sfd_args, "out": root / "out"}


def run(tiny, name, *overrides):
    torch.set_num_threads(1)
    return train.main([CONFIG, *tiny["common"], f"train.exp_name={name}", *overrides])


def run_sfd(tiny, name, *overrides, use_target=True):
    original = sfd_standin.install(use_target)
    try:
        return run(tiny, name, *tiny["sfd_args"], *overrides)
    finally:
        import training.dit
        training.dit.build_transport = original


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


def assert_same_weights(a, b, atol=1e-5):
    for key in ("model", "ema"):
        for name in a[key]:
            torch.testing.assert_close(b[key][name], a[key][name], rtol=0, atol=atol, msg=f"{key} {name}")


def test_sfd_terms_logged_and_summed(sfd_full):
    logged = rows(sfd_full)
    for r in logged:
        assert {"loss", "cos_loss", "repa_loss", "probe", "total_loss"} <= set(r)
        assert r["total_loss"] == pytest.approx(r["loss"] + r["cos_loss"] + r["repa_loss"], rel=1e-6)
        assert r["probe"] > 1000                                            # logged, never optimised
    assert "valid_loss" in logged[-1] and "valid_loss_ema" in logged[-1]
    log = (sfd_full / "log.txt").read_text()
    assert re.search(r"Train Loss: [\d.]+, .*Cos Loss: [\d.]+, REPA Loss: [\d.]+, probe: [\d.]+, Grad Norm", log)


def test_extras_survive_accumulation(tiny, sfd_full):
    micro = run_sfd(tiny, "sfd_micro4", "train.micro_batch_size=4")
    a, b = ckpt(sfd_full), ckpt(micro)
    assert b["data"]["accum_steps"] == 4
    assert_same_weights(a, b)
    for ra, rb in zip(rows(sfd_full), rows(micro)):
        for key in ("loss", "cos_loss", "repa_loss", "total_loss"):
            assert abs(ra[key] - rb[key]) < 1e-5, key
    # the REPA targets matter: ignoring them ends somewhere else
    blind = ckpt(run_sfd(tiny, "sfd_blind", use_target=False))
    assert max((blind["model"][k] - a["model"][k]).abs().max() for k in a["model"]) > 1e-3


def test_extras_two_processes_equal_one(tiny, sfd_full):
    launcher = ["bash", "-c", f'source "{REPO}/tools/launch.sh"; launch "$@"', "launch",
                str(REPO / "tests/training/sfd_standin.py")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), GPUS_PER_NODE="2", MASTER_PORT="29563")
    cmd = [*launcher, CONFIG, *tiny["common"], *tiny["sfd_args"], "train.exp_name=sfd_ddp",
           "train.micro_batch_size=4"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exp = tiny["out"] / "sfd_ddp"
    assert "per-process batch 8 (2 micro-step(s) of 4)" in (exp / "log.txt").read_text()
    a, b = ckpt(sfd_full), ckpt(exp)
    assert b["world_size"] == 2
    assert_same_weights(a, b)
    for ra, rb in zip(rows(sfd_full), rows(exp)):
        for key in ("loss", "cos_loss", "repa_loss", "valid_loss"):
            if key in ra:
                assert abs(ra[key] - rb[key]) < 1e-4, key


DOOR = {
    "semantic channels": (["model.semantic_chans=3", "model.in_chans=7"], "semantic latents have 2 channels"),
    "no semantic part": (["data.latent_sv_norm=false", "model.use_repa=false", "data.data_path=PLAIN"],
                         "but the shards hold no semantic latents"),
    "sv norm without semantics": (["model.semantic_chans=0", "model.in_chans=4"], "latent_sv_norm is true"),
    "repa without targets": (["model.semantic_chans=0", "model.in_chans=4", "data.latent_sv_norm=false",
                              "data.data_path=PLAIN"], "model.use_repa needs REPA targets"),
    "repa grid": (["model.patch_size=2"], "REPA targets feats_dino of 4x4 = 16 positions, the model has 4 tokens"),
}


@pytest.mark.parametrize("case", sorted(DOOR))
def test_sfd_door_checks(tiny, case):
    overrides, message = DOOR[case]
    overrides = [o.replace("PLAIN", str(tiny["plain"])) for o in overrides]
    with pytest.raises(SystemExit, match=re.escape(message)):
        run(tiny, f"door_{case.replace(' ', '_')}", f"data.data_path={tiny['sfd']}", *SFD, *overrides)
    assert not (tiny["out"] / f"door_{case.replace(' ', '_')}").exists()

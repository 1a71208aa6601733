"""Every YAML of configs/sfd/ starts its run on CPU at the tiny size (conftest.py: SFD's released
layout, so the YAMLs' own paths are used): the train YAMLs train (REPA targets from SFD-format
shards) and write SFD-layout checkpoints that sample as a guide, the inference YAMLs write their
FID batches; and through the run_*.sh scripts (one each here, all sixteen in the slow set).
Batches are fixed per image (sampling/loop.py: batch_plan), the same for any number of processes."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

import inference
import train
from configs.schema import load_config
from sampling.loop import batch_plan, fid_plan

from sfd_release import REPO, SFD_CONFIGS, TINY

YAMLS = sorted(SFD_CONFIGS.rglob("*.yaml"))
TRAIN_YAMLS = [p for p in YAMLS if p.name.startswith("train")]
INFERENCE_YAMLS = [p for p in YAMLS if p.name.startswith("inference")]
TRAIN_RUN = ["train.max_steps=2", "train.global_batch_size=4", "train.ckpt_every=2", "train.log_every=1",
             "data.num_workers=0", "train.report_to=none"]
SAMPLE_RUN = ["sample.fid_num=1", "sample.per_proc_batch_size=1", "--vae-random-init"]


def rel(path):
    return str(path.relative_to(SFD_CONFIGS))


def guided(path) -> list:
    """AutoGuidance YAMLs leave cfg_scale at 1 (SFD's README passes CFG_SCALE=1.5)."""
    return ["sample.cfg_scale=1.5"] if load_config(str(path)).sample.autoguidance else []


@pytest.mark.parametrize("path", TRAIN_YAMLS, ids=rel)
def test_every_train_yaml_trains_with_repa_targets(in_released, path):
    exp = train.main([str(path), *TINY, *TRAIN_RUN, f"train.exp_name=t_{path.parent.name}_{path.stem}"])
    rows = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["repa_loss"] > 0 and np.isclose(r["total_loss"], r["loss"] + r["cos_loss"] + r["repa_loss"], rtol=1e-5)
               for r in rows)
    ckpt = torch.load(exp / "checkpoints/0000002.pt", map_location="cpu", weights_only=False)
    assert {"model", "ema", "opt", "config"} <= set(ckpt)
    assert ckpt["ema"]["x_embedder.proj.weight"].shape == (64, 48, 1, 1)
    assert {"t_embedder_sem.mlp.0.weight", "t_embedder_tex.mlp.0.weight", "repa_projector.4.weight"} <= set(ckpt["ema"])
    assert ckpt["ema"]["repa_projector.4.weight"].shape == (768, 2048)


@pytest.mark.parametrize("path", INFERENCE_YAMLS, ids=rel)
def test_every_inference_yaml_samples(in_released, path):
    name = f"run_{path.parent.name}_{path.stem}"   # the session's layout is shared with test_sfd_inference.py
    folder = inference.main([str(path), *TINY, *SAMPLE_RUN, *guided(path), f"train.exp_name={name}"])
    npz = np.load(f"{folder}.npz")
    assert npz["arr_0"].shape == (1, 64, 64, 3)
    proto = json.loads((folder / "protocol.json").read_text())
    assert proto["autoguidance"] == bool(guided(path)) and proto["latent_sv_stats_sha256"]


def test_a_trained_guide_samples(in_released):
    """The guide trained by SFD's autoguidance_b/train.yaml guides the XL YAML (checkpoint layout
    {model, ema, opt, config}, EMA loaded), through its YAML's ckpt_path at 10K-step names."""
    exp = train.main([str(SFD_CONFIGS / "autoguidance_b/train.yaml"), *TINY, *TRAIN_RUN, "train.exp_name=trained_guide"])
    root = in_released["root"]
    guide_yaml = root / "guide.yaml"
    guide_yaml.write_text((SFD_CONFIGS / "autoguidance_b/inference.yaml").read_text().replace(
        "outputs/train/sfd_autoguidance_b/checkpoints/0070000.pt", str(exp / "checkpoints/0000002.pt")))
    folder = inference.main([str(SFD_CONFIGS / "lightningdit_xl/inference_4m_autoguidance.yaml"), *TINY, *SAMPLE_RUN,
                             "sample.cfg_scale=1.5", f"sample.autoguidance_config={guide_yaml}", "train.exp_name=trained"])
    proto = json.loads((folder / "protocol.json").read_text())
    assert proto["guide_ckpt_path"] == os.path.abspath(exp / "checkpoints/0000002.pt") and folder.name.endswith("-ag0000002-balanced")


def test_fixed_batches_are_the_same_on_any_number_of_processes():
    for total, n in ((10, 4), (7, 2), (3, 4), (50000, 4)):
        batches = batch_plan(total, n, 1, 0)
        assert [i for b in batches for i in b] == list(range(total))
        for w in (1, 2, 3, 8):
            plans = [batch_plan(total, n, w, r) for r in range(w)]
            assert len({len(p) for p in plans}) == 1                       # every rank, every iteration
            assert sorted((b for p in plans for b in p if b), key=lambda b: b[0]) == batches
    dopri = load_config(None, ["sample.sampling_method=dopri5", "sample.per_proc_batch_size=4"])
    euler = load_config(None, ["sample.sampling_method=euler_phase", "sample.per_proc_batch_size=4"])
    assert fid_plan(dopri, 10, 2, 1) == [[4, 5, 6, 7], []]
    assert fid_plan(euler, 10, 2, 1) == [[1, 3, 5, 7], [9]]                # the reference's order


def launch(script, args, cwd, port):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MASTER_PORT=str(port))
    return subprocess.run(["bash", str(REPO / script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


SLOW = pytest.mark.slow
SCRIPT_RUNS = [pytest.param(p, marks=() if rel(p) == "autoguidance_b/train.yaml" else SLOW, id=rel(p))
               for p in TRAIN_YAMLS]
SCRIPT_RUNS += [pytest.param(p, marks=SLOW, id=rel(p)) for p in INFERENCE_YAMLS]


@pytest.mark.parametrize("path", SCRIPT_RUNS)
def test_every_yaml_starts_its_script(released, path):
    root, name = released["root"], f"sh_{path.parent.name}_{path.stem}"
    if path in TRAIN_YAMLS:
        proc = launch("run_train.sh", [str(path), *TINY, *TRAIN_RUN, f"train.exp_name={name}"], root, 29591)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert (root / "outputs/train" / name / "checkpoints/0000002.pt").is_file()
    else:
        proc = launch("run_inference.sh", [str(path), *TINY, *SAMPLE_RUN, *guided(path), f"train.exp_name={name}"],
                      root, 29592)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert len(list((root / "outputs/train" / name).glob("*.npz"))) == 1


def test_run_fast_inference_sh_draws_sfds_demo(released, tmp_path):
    path = SFD_CONFIGS / "lightningdit_1p0/inference_4m_autoguidance.yaml"
    proc = launch("run_fast_inference.sh", [str(path), *TINY, "--vae-random-init", "--demo-out", str(tmp_path / "d.png")],
                  released["root"], 29593)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "SFD's overrides: cfg_scale 1.00 -> 1.5" in proc.stdout + proc.stderr
    assert "demo image 0: class 106" in proc.stdout and (tmp_path / "d.png").is_file()

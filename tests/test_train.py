"""train.py on CPU with a tiny model and a synthetic latent directory: loss goes down, checkpoint
contents, exact resume after SIGKILL, 2 processes == 1 process, NaN guard, EMA and warm-start
rules, the step-keyed data order."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from configs.schema import load_config
from datasets.tiny_latents import write_tiny_latents
from datasets.order import GlobalBatchSampler
from models.build import build_model
from models.checkpoint import warm_start
from models.ema import update_ema
from training.checkpoints import list_checkpoints

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/tiny/lightningdit_tiny.yaml")


@pytest.fixture(scope="module")
def single_thread():
    # Bit-exact comparisons between this process and subprocesses need equal thread counts;
    # one thread is also much faster on a shared 2-core machine.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, single_thread):
    root = tmp_path_factory.mktemp("train")
    data = write_tiny_latents(str(root / "latents"), num_items=128, shape=(4, 4, 4), num_classes=10)
    valid = write_tiny_latents(str(root / "valid"), num_items=24, shape=(4, 4, 4), num_classes=10, seed=1)
    common = [f"data.data_path={data}", f"train.output_dir={root / 'out'}", "train.global_batch_size=16",
              "train.log_every=5", "train.ckpt_every=10", "train.max_steps=30",
              f"data.valid_path={valid}", "train.valid_every=10", "train.num_valid_batches=2",
              "train.eval_every=10", "train.eval_num=6", "train.eval_steps=2"]
    return {"root": root, "common": common, "out": root / "out"}


def run_in_process(tiny, *overrides):
    return train.main([CONFIG, *tiny["common"], *overrides])


def run_subprocess(tiny, *overrides, env=None, launcher=None):
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **(env or {}))
    cmd = (launcher or [sys.executable, str(REPO / "train.py")]) + [CONFIG, *tiny["common"], *overrides]
    return subprocess.run(cmd, env=full_env, cwd=REPO, capture_output=True, text=True, timeout=300)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def baseline(tiny):
    return run_in_process(tiny, "train.exp_name=base")


def log_losses(exp_dir):
    lines = (exp_dir / "log.txt").read_text()
    found = re.findall(r"\(step=(\d{7})\) Train Loss: ([\d.]+), Train Steps/Sec: [\d.]+, "
                       r"Images/Sec: [\d.]+, Cos Loss: ([\d.]+)", lines)
    return [(int(s), float(m), float(c)) for s, m, c in found]


def test_short_run_lowers_the_loss(baseline):
    losses = log_losses(baseline)
    assert [s for s, _, _ in losses] == [5, 10, 15, 20, 25, 30]
    first, last = losses[0][1] + losses[0][2], losses[-1][1] + losses[-1][2]
    assert last < first - 0.05, losses


def test_validation_loss_at_fixed_t(baseline):
    found = re.findall(r"\(step=(\d{7})\) Valid Loss: ([\d.]+), EMA Valid Loss: ([\d.]+)",
                       (baseline / "log.txt").read_text())
    assert [int(s) for s, _, _ in found] == [10, 20, 30]
    model_losses = [float(v) for _, v, _ in found]
    assert model_losses[-1] < model_losses[0]  # fixed t and noise: a like-for-like comparison
    history = load(baseline / "checkpoints/0000030.pt")["log_history"]
    assert [h["step"] for h in history if "valid_loss" in h] == [10, 20, 30]


def test_checkpoint_contents(baseline):
    files = list_checkpoints(baseline / "checkpoints")
    assert [s for s, _ in files] == [10, 20, 30]
    ckpt = load(files[-1][1])  # weights_only: no pickled objects
    assert {"model", "ema", "opt", "config", "step", "data", "rng", "t_sampling", "log_history"} <= set(ckpt)
    cfg = load_config(CONFIG)
    names = set(build_model(cfg).state_dict())
    assert set(ckpt["model"]) == names and set(ckpt["ema"]) == names  # clean keys, no "module."
    assert ckpt["step"] == 30 and ckpt["world_size"] == 1 and len(ckpt["rng"]) == 1
    assert ckpt["data"]["steps_per_epoch"] == 8 and ckpt["data"]["epoch"] == 3
    assert ckpt["config"]["train"]["exp_name"] == "base"
    assert ckpt["t_sampling"]["lognorm_active"] is True
    num_params = len(list(build_model(cfg).parameters()))
    assert len(ckpt["opt"]["state"]) == num_params - 1  # every parameter but the frozen pos_embed
    # EMA moved towards the model by ~30 * 1e-4 of the way: small but non-zero.
    diffs = [(ckpt["ema"][k] - ckpt["model"][k]).abs().max() for k in names]
    assert max(diffs) > 0
    # frozen pos_embed is averaged too (docs/reference_behaviour.md §3.4): equal up to the rounding of the update
    torch.testing.assert_close(ckpt["ema"]["pos_embed"], ckpt["model"]["pos_embed"], rtol=0, atol=1e-5)
    # inference's strict loader takes the EMA
    from models.checkpoint import load_lightningdit_checkpoint
    model = load_lightningdit_checkpoint(files[-1][1], build_model(cfg, training=False))
    assert torch.equal(model.state_dict()["final_layer.linear.weight"], ckpt["ema"]["final_layer.linear.weight"])
    assert (baseline / "loss_curve.png").stat().st_size > 0
    assert any((baseline / "tensorboard").iterdir())


def test_kill_and_resume_is_bit_identical(tiny, baseline):
    proc = run_subprocess(tiny, "train.exp_name=killed", env={"LIGHTNINGDIT_FAULT": "sigkill@15"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    exp = tiny["out"] / "killed"
    assert [s for s, _ in list_checkpoints(exp / "checkpoints")] == [10]
    run_in_process(tiny, "train.exp_name=killed", "train.resume=true")
    a, b = load(baseline / "checkpoints/0000030.pt"), load(exp / "checkpoints/0000030.pt")
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    for i, state in a["opt"]["state"].items():
        for field, value in state.items():
            assert torch.equal(value, b["opt"]["state"][i][field]), (i, field)
    assert "resumed from" in (exp / "log.txt").read_text()


def test_two_processes_equal_one(tiny, baseline):
    launcher = ["bash", "-c", f'source "{REPO}/tools/launch.sh"; launch "$@"', "launch",
                str(REPO / "train.py")]
    # 2 processes x 2 micro-steps of 4 (exact gradient accumulation) == 1 process x 1 step of 16
    proc = run_subprocess(tiny, "train.exp_name=ddp", "train.max_steps=10", "train.micro_batch_size=4",
                          launcher=launcher, env={"GPUS_PER_NODE": "2", "MASTER_PORT": "29561"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exp = tiny["out"] / "ddp"
    log = (exp / "log.txt").read_text()
    assert "processes: 2," in log and "per-process batch 8 (2 micro-step(s) of 4)" in log
    a, b = load(baseline / "checkpoints/0000010.pt"), load(exp / "checkpoints/0000010.pt")
    assert b["world_size"] == 2 and len(b["rng"]) == 2 and b["data"]["accum_steps"] == 2
    for key in ("model", "ema"):
        for name in a[key]:
            torch.testing.assert_close(b[key][name], a[key][name], rtol=0, atol=1e-5)
    # evaluation during training: the same set, split over the 2 processes and gathered in order
    from PIL import Image
    grids = [np.asarray(Image.open(e / "eval" / "0000010.png")).astype(int) for e in (baseline, exp)]
    assert grids[0].shape == grids[1].shape == (4, 8 * 4, 3)  # 6 images in a row of 8 cells
    assert np.abs(grids[0] - grids[1]).max() <= 1  # uint8 rounding of ~1e-6 differences
    # the logged losses are means over the same global batches
    la, lb = log_losses(baseline)[:2], log_losses(exp)
    assert [s for s, _, _ in lb] == [5, 10]
    for (_, ma, ca), (_, mb, cb) in zip(la, lb):
        assert abs(ma - mb) < 1e-3 and abs(ca - cb) < 1e-3


def test_nan_guard_keeps_last_good_checkpoint(tiny, monkeypatch):
    monkeypatch.setenv("LIGHTNINGDIT_FAULT", "nan@12")
    with pytest.raises(train.NonFiniteLossError, match="Last good checkpoint: .*0000010.pt"):
        run_in_process(tiny, "train.exp_name=nan", "train.ckpt_every=5", "train.keep_last_n=1")
    files = list_checkpoints(tiny["out"] / "nan" / "checkpoints")
    assert [s for s, _ in files] == [10]  # keep_last_n=1 removed step 5; step 15 never written
    ckpt = load(files[0][1])
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_update_ema_matches_hand_computation():
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    frozen = torch.nn.Parameter(torch.randn(4), requires_grad=False)
    model.register_parameter("frozen", frozen)
    ema.register_parameter("frozen", torch.nn.Parameter(torch.zeros(4), requires_grad=False))
    before = {k: v.clone() for k, v in ema.named_parameters()}
    update_ema(ema, model, decay=0.9)
    for name, p in model.named_parameters():
        expected = 0.9 * before[name] + 0.1 * p.detach()
        torch.testing.assert_close(dict(ema.named_parameters())[name], expected, rtol=1e-6, atol=1e-7)
    update_ema(ema, model, decay=0.0)  # exact copy, including the frozen parameter
    assert all(torch.equal(a, b) for a, b in zip(ema.parameters(), model.parameters()))


def test_warm_start_shape_mismatch_rule(tmp_path, caplog):
    base = load_config(CONFIG, ["model.in_chans=20"])
    src = build_model(base)
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pt")
    dst = build_model(load_config(CONFIG, ["model.in_chans=24", "data.num_classes=12"]))
    with caplog.at_level("WARNING"):
        loaded, skipped = warm_start(dst, str(tmp_path / "w.pt"))
    w_src, w_dst = src.state_dict()["x_embedder.proj.weight"], dst.state_dict()["x_embedder.proj.weight"]
    assert torch.equal(w_dst[:, :16], w_src[:, :16]) and (w_dst[:, 16:] == 0).all()
    assert "y_embedder.embedding_table.weight" in skipped
    assert "skipped y_embedder.embedding_table.weight" in caplog.text
    assert torch.equal(dst.state_dict()["blocks.0.attn.qkv.weight"], src.state_dict()["blocks.0.attn.qkv.weight"])


def test_global_batches_do_not_depend_on_world_size():
    one = GlobalBatchSampler(50, 8, 0, 1, seed=3, start_step=5)
    two = [GlobalBatchSampler(50, 8, r, 2, seed=3, start_step=5) for r in range(2)]
    it1, it2 = iter(one), [iter(s) for s in two]
    for _ in range(12):  # crosses epochs (6 steps per epoch)
        assert next(it1) == next(it2[0]) + next(it2[1])
    epoch = [i for s in range(6) for i, _ in one.batch(s)]
    assert len(set(epoch)) == 48  # one epoch: distinct items (drop_last)
    assert one.batch(7) != one.batch(1)  # next epoch: new permutation and flip seeds
    with pytest.raises(ValueError, match="not divisible"):
        GlobalBatchSampler(50, 8, 0, 3, seed=0)

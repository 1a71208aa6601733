"""Exact gradient accumulation: the same global batch gives the same update whatever the split
(1 x 16 == 1 process x 4 micro-steps of 4 here; 2 processes x 2 micro-steps of 4 is
tests/test_train.py::test_two_processes_equal_one), only the last micro-step all-reduces, resume stays exact, and the log windows report the gradient norm,
clipping, images seen and loss spikes."""
import json
from pathlib import Path

import pytest
import torch

import train
from datasets.tiny_latents import write_tiny_latents
from training.dit import loss_spike

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs/tiny/lightningdit_tiny.yaml")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("accum")
    data = write_tiny_latents(str(root / "latents"), num_items=64, shape=(4, 4, 4), num_classes=10)
    common = [f"data.data_path={data}", f"train.output_dir={root / 'out'}", "train.global_batch_size=16",
              "train.log_every=5", "train.ckpt_every=10", "train.max_steps=10"]
    return {"common": common, "out": root / "out"}


def run(tiny, name, *overrides):
    torch.set_num_threads(1)
    return train.main([CONFIG, *tiny["common"], f"train.exp_name={name}", *overrides])


def params(exp_dir, step=10):
    ckpt = torch.load(exp_dir / "checkpoints" / f"{step:07d}.pt", map_location="cpu", weights_only=True)
    return ckpt


def rows(exp_dir):
    return [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_batch(tiny):
    return run(tiny, "full")


@pytest.fixture(scope="module")
def micro4(tiny):
    """1 process x 4 micro-steps of 4; counts the micro-steps that skip the all-reduce."""
    from accelerate import Accelerator

    calls, original = [], Accelerator.no_sync

    def counting_no_sync(self, model):
        calls.append(1)
        return original(self, model)

    Accelerator.no_sync = counting_no_sync
    try:
        exp = run(tiny, "micro4", "train.micro_batch_size=4")
    finally:
        Accelerator.no_sync = original
    return exp, len(calls)


def assert_same_weights(a, b, atol=1e-5):
    for key in ("model", "ema"):
        for name in a[key]:
            torch.testing.assert_close(b[key][name], a[key][name], rtol=0, atol=atol, msg=f"{key} {name}")


def test_micro_steps_equal_the_full_batch(tiny, full_batch, micro4):
    micro, no_sync_calls = micro4
    assert no_sync_calls == 10 * 3  # 3 of the 4 micro-steps of each step skip the all-reduce
    a, b = params(full_batch), params(micro)
    assert b["data"]["accum_steps"] == 4 and a["data"]["accum_steps"] == 1
    assert_same_weights(a, b)
    # the logged loss is the mean over the global batch, as with one full batch
    for ra, rb in zip(rows(full_batch), rows(micro)):
        assert ra["step"] == rb["step"] and abs(ra["loss"] - rb["loss"]) < 1e-5
        assert abs(ra["grad_norm"] - rb["grad_norm"]) < 1e-4 * ra["grad_norm"]
        assert rb["images_seen"] == rb["step"] * 16
    # the micro-steps really change something: a different global batch gives other weights
    other = params(run(tiny, "other_seed", "train.micro_batch_size=4", "train.global_seed=1"))
    assert max((other["model"][k] - a["model"][k]).abs().max() for k in a["model"]) > 1e-3


def test_resume_with_accumulation_is_exact(tiny, micro4):
    whole = run(tiny, "whole", "train.micro_batch_size=4", "train.max_steps=15")
    resumed = run(tiny, "micro4", "train.micro_batch_size=4", "train.max_steps=15", "train.resume=true")
    a, b = params(whole, 15), params(resumed, 15)
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    # checkpoints only fall on optimizer steps: no state inside an accumulation cycle to lose
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["0000010.pt", "0000015.pt"]


def test_uneven_split_is_a_one_line_error(tiny):
    with pytest.raises(ValueError, match=r"^train.global_batch_size 16 is not divisible by processes \(1\) "
                                         r"x train.micro_batch_size \(3\)$"):
        run(tiny, "uneven", "train.micro_batch_size=3")


def test_clipping_fraction_and_grad_norm(tiny, full_batch):
    clipped = run(tiny, "clipped", "optimizer.max_grad_norm=1e-6")
    free = run(tiny, "unclipped", "optimizer.max_grad_norm=1e12")  # the first steps exceed 1e6
    r_clip, r_free, r_none = rows(clipped), rows(free), rows(full_batch)
    assert [r["clipped_frac"] for r in r_clip] == [1.0, 1.0]
    assert [r["clipped_frac"] for r in r_free] == [0.0, 0.0]
    # norm before clipping: a no-op clip and no clip see the same gradients
    for a, b in zip(r_free, r_none):
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-5 * b["grad_norm"]
    assert r_clip[0]["grad_norm"] > 0.1  # the norm before clipping, not the clipped 1e-6
    assert "Grad Norm: " in (clipped / "log.txt").read_text()


def test_spike_warning_fires_on_an_injected_spike(tiny, monkeypatch):
    monkeypatch.setenv("LIGHTNINGDIT_FAULT", "spike@22")
    exp = run(tiny, "spike", "train.max_steps=25", "train.ckpt_every=25")
    log = (exp / "log.txt").read_text()
    assert "(step=0000025) loss spike:" in log
    assert log.count("loss spike") == 1  # steps 5..20 are quiet


def test_loss_spike_rule():
    history = [{"step": s, "loss": v, "cos_loss": 0.0} for s, v in enumerate([1.0, 1.2, 0.9, 5.0, 1.1])]
    assert loss_spike(history[:2], 100.0, 3.0) is None           # fewer than 3 windows: no verdict
    assert loss_spike(history, 3.31, 3.0) == pytest.approx(1.1)   # median of 1.0 1.2 0.9 5.0 1.1
    assert loss_spike(history, 3.29, 3.0) is None
    assert loss_spike(history, 1e9, None) is None
    long = [{"step": s, "loss": 10.0} for s in range(30)] + [{"step": s, "loss": 1.0} for s in range(20)]
    assert loss_spike(long, 3.5, 3.0) == 1.0                     # only the last 20 windows count

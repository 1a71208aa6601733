"""training/lr_schedule.py against its closed forms (SFD's Semantic VAE schedule included)."""
import math

import pytest
import torch

from training.lr_schedule import LRSchedule, set_lr


def test_sfd_semantic_vae_schedule():
    s = LRSchedule(warmup_steps=500, warmup_start=0.01, decay_start=800_500, total_steps=1_000_000, final=0.1)
    assert s.factor(0) == pytest.approx(0.01)
    assert s.factor(250) == pytest.approx(0.01 + 0.99 * 0.5)
    assert s.factor(500) == 1.0 and s.factor(800_499) == 1.0
    mid = 800_500 + (1_000_000 - 800_500) // 2
    assert s.factor(mid) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)), abs=1e-5)
    assert s.factor(1_000_000) == pytest.approx(0.1) and s.factor(2_000_000) == pytest.approx(0.1)
    values = [s.factor(k) for k in range(800_500, 1_000_001, 997)]
    assert all(a >= b for a, b in zip(values, values[1:]))          # monotone decay


def test_constant_linear_and_set_lr():
    assert LRSchedule().factor(0) == 1.0 and LRSchedule().factor(10**9) == 1.0
    lin = LRSchedule(decay_start=10, total_steps=20, final=0.0, decay="linear")
    assert lin.factor(15) == pytest.approx(0.5) and lin.factor(20) == 0.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert set_lr(opt, 2e-4, lin, 15) == pytest.approx(1e-4)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert set_lr(opt, 2e-4, None, 15) == 2e-4


@pytest.mark.parametrize("kwargs", [dict(warmup_steps=-1), dict(warmup_start=2.0), dict(decay="step"),
                                    dict(decay_start=5), dict(decay_start=5, total_steps=5),
                                    dict(warmup_steps=10, decay_start=5, total_steps=20)])
def test_bad_schedules(kwargs):
    with pytest.raises(ValueError):
        LRSchedule(**kwargs)

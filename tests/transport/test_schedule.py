"""transport/schedule.py: the one-group schedule is the identity; SFD's two-group schedule gives
the stretch, clips and phases of its closed forms (docs/reference_behaviour.md, SFD part)."""
import pytest
import torch

from transport.schedule import TimeSchedule


def test_single_group_is_identity():
    s = TimeSchedule.single(32)
    t = torch.rand(7)
    assert s.synchronous and s.span() == (0.0, 1.0) and s.breakpoints() == ()
    assert s.stretch(t) is t
    (g,) = s.group_times(t)
    assert g is t and s.model_times([g]) is t
    x = torch.randn(7, 32, 4, 4)
    assert s.channel_times([t], x).shape == (7, 1, 1, 1)
    assert torch.equal(s.channel_times([t], x).flatten(), t)
    assert s.channel_mask(t, x) is None and s.active(0.5) == (True,)


def test_semantic_first_closed_forms():
    delta = 0.3
    s = TimeSchedule.semantic_first(32, 16, delta)
    assert s.span() == (0.0, 1.3) and s.lags == (0.3, 0.0) and s.breakpoints() == (0.3, 1.0)
    t = torch.linspace(0, 1, 1001)
    tau = s.stretch(t)
    assert torch.equal(tau, t * 1.3)
    tex, sem = s.group_times(tau)
    assert torch.equal(sem, torch.minimum(tau, torch.ones(())))
    assert torch.equal(tex, torch.clamp(tau - delta, min=0))
    mid = (tau > delta) & (tau < 1)
    assert torch.allclose(sem[mid] - tex[mid], torch.full_like(sem[mid], delta), atol=1e-6)
    # phase probabilities under logit-normal(0, 1): ~11.4% in each clipped phase
    g = torch.Generator().manual_seed(0)
    u = s.stretch(torch.sigmoid(torch.randn(200_000, generator=g)))
    a, b = s.group_times(u)
    assert abs((a == 0).float().mean().item() - 0.114) < 0.005
    assert abs((b == 1).float().mean().item() - 0.114) < 0.005


def test_phases_and_masks():
    s = TimeSchedule.semantic_first(3, 2, 0.3)
    assert s.active(0.1) == (False, True)     # stage I: semantics only
    assert s.active(0.3) == (True, True)
    assert s.active(0.7) == (True, True)      # stage II
    assert s.active(1.0) == (True, True)
    assert s.active(1.2) == (True, False)     # stage III: texture only
    x = torch.zeros(3, 5, 2, 2)
    tau = torch.tensor([0.1, 0.7, 1.2])
    m = s.channel_mask(tau, x)
    assert m.shape == (3, 5, 1, 1)
    assert m[:, :, 0, 0].tolist() == [[0, 0, 0, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    times = s.group_times(tau)
    ct = s.channel_times(times, x)[:, :, 0, 0]
    assert torch.equal(ct[:, :3], times[0][:, None].expand(-1, 3))
    assert torch.equal(ct[:, 3:], times[1][:, None].expand(-1, 2))
    assert s.model_times(times) == times


def test_bad_schedules_refused():
    with pytest.raises(ValueError):
        TimeSchedule((4,), (1.5,), ("a",))
    with pytest.raises(ValueError):
        TimeSchedule((4, 0), (0.0, 0.3), ("a", "b"))
    with pytest.raises(ValueError):
        TimeSchedule.semantic_first(3, 2, 0.3).channel_times([torch.zeros(1)] * 2, torch.zeros(1, 4, 1, 1))

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


def test_phase_tests_are_in_float32_as_sfds():
    """SFD compares its float32 time tensor with Python floats: float32(0.7) is below 0.7, yet a
    group lagging by 0.7 moves at tau = float32(0.7) (a float64 test would say it does not)."""
    s = TimeSchedule.semantic_first(3, 2, 0.7)
    f32 = torch.tensor(0.7).item()
    assert f32 < 0.7 and s.active(f32) == (True, True) and s.active(0.7) == (True, True)
    assert bool(torch.tensor([f32]) >= 0.7)  # what SFD's tensor comparison says
    assert s.active(torch.tensor(0.7).nextafter(torch.tensor(0.0)).item()) == (False, True)
    tau = torch.tensor([0.7, 1.0, torch.tensor(1.0).nextafter(torch.tensor(2.0)).item()])
    m = s.channel_mask(tau, torch.zeros(3, 5, 1, 1))[:, :, 0, 0]
    assert m.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert [s.active(t) for t in tau.tolist()] == [(True, True), (True, True), (True, False)]


def test_times_at_is_sfds_network_call():
    s = TimeSchedule.semantic_first(3, 2, 0.3)
    for tau in (0.0, 0.1, 0.3, 0.77, 1.0, 1.2, 1.3):
        t_tex, t_sem = s.times_at(tau, 4)
        ones = torch.ones(4) * torch.tensor(tau)  # SFD: ones(B) * t, then its clips
        assert torch.equal(t_sem, ones.clamp(max=1.0)) and torch.equal(t_tex, (ones - 0.3).clamp(min=0.0))
    one = TimeSchedule.single().times_at(0.25, 3)
    assert isinstance(one, torch.Tensor) and one.dtype == torch.float32 and one.tolist() == [0.25] * 3
    # delta = 0 with two groups: one time (B,), as SFD's network without the two embedders
    two = TimeSchedule.semantic_first(3, 2, 0.0)
    assert two.synchronous and isinstance(two.times_at(0.5, 2), torch.Tensor)
    assert two.channel_times(two.group_times(torch.rand(2)), torch.zeros(2, 5, 1, 1)).shape == (2, 1, 1, 1)


def test_group_mask_and_slices():
    s = TimeSchedule.semantic_first(3, 2, 0.3)
    x = torch.zeros(2, 5, 4, 4, dtype=torch.float64)
    m = s.group_mask((False, True), x)
    assert m.shape == (1, 5, 1, 1) and m.dtype == torch.float64 and m.flatten().tolist() == [0, 0, 0, 1, 1]
    assert s.slices() == (slice(0, 3), slice(3, 5)) and s.group("sem") == 1
    any_width = TimeSchedule.single()
    assert any_width.slices() == (slice(None),)
    any_width.check_channels(torch.zeros(1, 7, 1, 1))  # one group: every width
    with pytest.raises(ValueError, match="semantic"):
        s.group("semantic")
    with pytest.raises(ValueError, match="positive"):
        TimeSchedule((0, 2), (0.0, 0.3), ("a", "b"))

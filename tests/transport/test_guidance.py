"""Guidance-aware sampling: same first-half samples as the reference CFG path, fewer evaluations."""
import pytest
import torch

from transport import Sampler, create_transport, make_guided_sampler
from transport.guidance import fixed_grid_eval_times, needs_uncond

from conftest import CallCounter, TinyCFGModel

NULL = 10  # TinyCFGModel's null class (num_classes)


def reference_cfg(sampler_fn, z, model, y, null, **cfg):
    """The reference path (docs/reference_behaviour.md §7.1): doubled batch through forward_with_cfg, first half kept."""
    z2 = torch.cat([z, z])
    y2 = torch.cat([y, torch.full_like(y, null)])
    return sampler_fn(z2, lambda x, s: model.forward_with_cfg(x, torch.full((len(x),), s), y2, **cfg))[:, : len(z)]


def test_released_setting_skips_73_of_249():
    sampler = Sampler(create_transport())
    times = fixed_grid_eval_times(sampler.ode_grid(250, 0.3), "euler")
    assert len(times) == 249
    guided = needs_uncond(times, True, 0.11)
    assert int((~guided).sum()) == 73
    # docs/reference_behaviour.md §2.5: 181 / 176 / 168 guided evaluations for starts 0.10 / 0.11 / 0.125, 221 unshifted
    assert [int(needs_uncond(times, True, s).sum()) for s in (0.10, 0.11, 0.125)] == [181, 176, 168]
    plain = fixed_grid_eval_times(sampler.ode_grid(250, 0.0), "euler")
    assert int(needs_uncond(plain, True, 0.11).sum()) == 221
    assert bool(needs_uncond(times, False, 0.11).all())


@pytest.mark.parametrize("cfg_channels", [3, None])
def test_skip_path_equals_reference_with_fewer_rows(cfg_channels):
    model = TinyCFGModel().eval()
    sampler = Sampler(create_transport())
    g = torch.Generator().manual_seed(0)
    n = 3
    z = torch.randn(n, 4, 4, 4, generator=g)
    y = torch.tensor([1, 5, 7])
    cfg = dict(cfg_scale=4.0, cfg_interval=True, cfg_interval_start=0.11, cfg_channels=cfg_channels)

    ref_rows = CallCounter(model.forward)
    model.forward = ref_rows  # instance attribute: forward_with_cfg calls it too
    ref = reference_cfg(sampler.sample_ode("euler", num_steps=250, timestep_shift=0.3), z, model, y, NULL, **cfg)
    assert ref_rows.batch_sizes == [2 * n] * 249

    skip_rows = CallCounter(ref_rows.fn)
    model.forward = skip_rows
    guided = make_guided_sampler(sampler, sampling_method="euler", num_steps=250, timestep_shift=0.3)
    with torch.no_grad():
        out = guided(z, model, y, null_class=NULL, **cfg)
    assert out.shape == ref.shape == (250, n, 4, 4, 4)
    assert guided.num_calls == 249 and guided.num_cond_only == 73
    assert sorted(skip_rows.batch_sizes) == [n] * 73 + [2 * n] * 176
    assert skip_rows.batch_sizes[:73] == [n] * 73  # the noisy end of the grid is unguided
    diff = (out - ref).abs().max().item()
    assert diff <= 1e-6, diff
    # guidance actually matters here, so the comparison is not vacuous
    unguided = make_guided_sampler(sampler, sampling_method="euler", num_steps=250, timestep_shift=0.3)(
        z, model, y, null_class=NULL, cfg_scale=1.0, cfg_interval=True, cfg_interval_start=0.11)
    assert (unguided[-1] - ref[-1]).abs().max() > 1e-2


def test_no_interval_and_no_skip_paths_are_bit_identical_to_reference():
    model = TinyCFGModel().eval()
    sampler = Sampler(create_transport())
    z, y = torch.randn(2, 4, 3, 3), torch.tensor([0, 3])
    kw = dict(sampling_method="euler", num_steps=40, timestep_shift=0.3)
    fn = sampler.sample_ode("euler", num_steps=40, timestep_shift=0.3)
    # without an interval every evaluation is guided: the same calls as the reference
    ref = reference_cfg(fn, z, model, y, NULL, cfg_scale=3.0, cfg_interval=False)
    gs = make_guided_sampler(sampler, **kw)
    assert torch.equal(gs(z, model, y, 3.0, cfg_interval=False, null_class=NULL), ref)
    assert gs.num_cond_only == 0
    # skip_uncond=False keeps the reference's doubled call at every step, interval decided by the model
    ref = reference_cfg(fn, z, model, y, NULL, cfg_scale=3.0, cfg_interval=True, cfg_interval_start=0.3)
    gs = make_guided_sampler(sampler, skip_uncond=False, **kw)
    assert torch.equal(gs(z, model, y, 3.0, cfg_interval=True, cfg_interval_start=0.3, null_class=NULL), ref)


@pytest.mark.parametrize("method,per_step", [("midpoint", 2), ("rk4", 4), ("heun2", 2)])
def test_multi_stage_fixed_grid_methods(method, per_step):
    model = TinyCFGModel().eval()
    sampler = Sampler(create_transport())
    z, y = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1)), torch.tensor([2, 9])
    cfg = dict(cfg_scale=3.0, cfg_interval=True, cfg_interval_start=0.2)
    ref = reference_cfg(sampler.sample_ode(method, num_steps=30, timestep_shift=0.3), z, model, y, NULL, **cfg)
    gs = make_guided_sampler(sampler, sampling_method=method, num_steps=30, timestep_shift=0.3)
    out = gs(z, model, y, null_class=NULL, **cfg)
    times = fixed_grid_eval_times(sampler.ode_grid(30, 0.3), method)
    assert gs.num_calls == per_step * 29 == len(times)
    assert gs.num_cond_only == int((times < 0.2).sum()) > 0
    assert (out - ref).abs().max().item() <= 1e-6


def test_adaptive_method_falls_back_to_host_decision():
    model = TinyCFGModel().eval()
    sampler = Sampler(create_transport())
    z, y = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2)), torch.tensor([4, 6])
    cfg = dict(cfg_scale=3.0, cfg_interval=True, cfg_interval_start=0.2)
    kw = dict(num_steps=5, atol=1e-8, rtol=1e-8)
    ref = reference_cfg(sampler.sample_ode("dopri5", **kw), z, model, y, NULL, **cfg)
    gs = make_guided_sampler(sampler, sampling_method="dopri5", **kw)
    out = gs(z, model, y, null_class=NULL, **cfg)
    assert 0 < gs.num_cond_only < gs.num_calls
    # step sizes differ (the error norm sees n instead of 2n rows), so agreement is to tolerance
    assert (out[-1] - ref[-1]).abs().max().item() < 1e-5


def test_with_tiny_lightningdit():
    lightningdit = pytest.importorskip("models.lightningdit")
    torch.manual_seed(0)
    model = lightningdit.LightningDiT(input_size=4, patch_size=1, in_channels=8, hidden_size=32, depth=2,
                                      num_heads=2, num_classes=10, use_swiglu=True, use_rope=True,
                                      use_rmsnorm=True).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the DiT init zeroes the output layers; give every weight a value
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    sampler = Sampler(create_transport())
    z, y = torch.randn(2, 8, 4, 4, generator=g), torch.tensor([3, 8])
    cfg = dict(cfg_scale=5.0, cfg_interval=True, cfg_interval_start=0.11)
    steps = 60  # the 250-step setting is covered with the stand-in; keep this one fast
    with torch.no_grad():
        ref = reference_cfg(sampler.sample_ode("euler", num_steps=steps, timestep_shift=0.3), z, model, y, NULL, **cfg)
        gs = make_guided_sampler(sampler, sampling_method="euler", num_steps=steps, timestep_shift=0.3)
        out = gs(z, model, y, null_class=NULL, **cfg)
    times = fixed_grid_eval_times(sampler.ode_grid(steps, 0.3), "euler")
    assert gs.num_calls == steps - 1 and gs.num_cond_only == int((times < 0.11).sum()) > 0
    assert torch.isfinite(out).all() and out[-1].abs().max() > 0
    assert (out[-1] - ref[-1]).abs().max().item() <= 1e-5 * max(1.0, ref[-1].abs().max().item())

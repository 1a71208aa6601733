"""sampling/guidance.py: the one denoiser for every guidance.

Checked against the authors' API (LightningDiT.forward_with_cfg, bit for bit), against an
independent re-statement of SFD's forward_with_cfg / forward_with_autoguidance (two channel
groups, per-part scales, the interval modes), and through a stand-in Euler integrator (the skip
gives the same samples, and skips exactly the evaluations outside the interval)."""
import pytest
import torch

from configs.schema import load_config
from models.lightningdit import LightningDiT
from sampling.guidance import (DDPMTimes, Denoiser, FlowTimes, Guidance, cfg_combine, combine,
                               parse_cfg_channels)
from transport import Sampler, create_transport
from transport.schedule import TimeSchedule

NULL = 10  # num_classes of the test networks: the null label


def tiny_lightningdit(channels: int = 4, seed: int = 0) -> LightningDiT:
    torch.manual_seed(seed)
    model = LightningDiT(input_size=4, patch_size=1, in_channels=channels, hidden_size=32, depth=2, num_heads=2,
                         num_classes=NULL, use_swiglu=True, use_rope=True, use_rmsnorm=True).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the DiT init zeroes the output layers; give every weight a value
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


class TwoTimeNet(torch.nn.Module):
    """Stand-in for an SFD network: called with the tuple (t_tex, t_sem); every output channel
    depends on the label and on its own group's time, so mixing them up shows."""

    def __init__(self, tex: int = 3, sem: int = 2, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        c = tex + sem
        self.tex = tex
        self.mix = torch.nn.Parameter(torch.randn(c, c, generator=g) * 0.5)
        self.emb = torch.nn.Parameter(torch.randn(NULL + 1, c, generator=g))
        self.labels = []

    def forward(self, x, t, y):
        t_tex, t_sem = t
        self.labels.append(y.clone())
        times = torch.cat([t_tex[:, None].expand(-1, self.tex), t_sem[:, None].expand(-1, x.shape[1] - self.tex)], 1)
        h = torch.einsum("dc,nc...->nd...", self.mix, torch.tanh(x))
        return h * (1 + times[:, :, None, None]) + self.emb[y][:, :, None, None] * times[:, :, None, None] ** 2


def config(*overrides):
    return load_config(None, ["model.in_chans=4", "data.num_classes=10", *overrides])


def sfd_config(*overrides):
    return load_config(None, ["model.in_chans=5", "model.semantic_chans=2", "model.semfirst_delta_t=0.3",
                              "data.num_classes=10", *overrides])


SFD = TimeSchedule.semantic_first(3, 2, 0.3)


def sfd_reference(main_out, ref_out, t, scale_tex, scale_sem, interval_start, mode, tex=3):
    """SFD's per-part guidance (spec SFD.md §4.2), written out directly: each part
    ref + w (main - ref), replaced by the main output while its own time is below the start when
    the mode names it (interval_start None: no interval)."""
    t_tex, t_sem = t
    out_tex = ref_out[:, :tex] + scale_tex * (main_out[:, :tex] - ref_out[:, :tex])
    out_sem = ref_out[:, tex:] + scale_sem * (main_out[:, tex:] - ref_out[:, tex:])
    if interval_start is not None:
        if mode in ("both", "tex") and t_tex[0] < interval_start:
            out_tex = main_out[:, :tex]
        if mode in ("both", "sem") and t_sem[0] < interval_start:
            out_sem = main_out[:, tex:]
    return torch.cat([out_tex, out_sem], dim=1)


def euler(denoiser, x, grid):
    """Stand-in integrator: Euler over the grid, the denoiser called with the host time."""
    for t0, t1 in zip(grid[:-1].tolist(), grid[1:].tolist()):
        x = x + (t1 - t0) * denoiser(x, t0)
    return x


# ------------------------------------------------------------------------------ the pieces

def test_parse_cfg_channels_and_the_schema_check():
    assert parse_cfg_channels("3") == 3 and parse_cfg_channels("all") is None and parse_cfg_channels("32") == 32
    for bad in ("0", "-1", "some", "3.5", ""):
        with pytest.raises(ValueError, match="sample.cfg_channels"):
            parse_cfg_channels(bad)
    with pytest.raises(ValueError, match=r"^override 'sample.cfg_channels=x': bad value for 'sample.cfg_channels': 'x' \(expected"):
        load_config(None, ["sample.cfg_channels=x"])


def test_combine_per_part():
    g = torch.Generator().manual_seed(0)
    main, ref = torch.randn(2, 7, 3, generator=g), torch.randn(2, 7, 3, generator=g)
    parts = (slice(0, 3), slice(3, 5))
    out = combine(main, ref, parts, (2.0, 5.0), (True, False))
    assert torch.equal(out[:, :3], ref[:, :3] + 2.0 * (main[:, :3] - ref[:, :3]))
    assert torch.equal(out[:, 3:], main[:, 3:])  # unguided part and the channels after the parts
    assert torch.equal(cfg_combine(main, ref, 4.0), ref + 4.0 * (main - ref))
    with pytest.raises(ValueError):
        cfg_combine(main, ref, 4.0, 8)


def test_flow_times_equal_the_reference_time_tensor():
    times = FlowTimes(TimeSchedule.single(4))
    for t in torch.linspace(0, 1, 7).tolist() + [0.1234567]:
        t32 = torch.tensor(t, dtype=torch.float32)
        assert torch.equal(times.network(float(t32), 3, torch.device("cpu")), torch.ones(3) * t32)
    # the interval test in float32, as `t[0] < cfg_interval_start` on the float32 time
    t32 = float(torch.tensor(0.1, dtype=torch.float32))  # 0.10000000149 > 0.1 in float64
    assert times.below(t32, 0.1) == (False,) and times.below(0.0999, 0.1) == (True,)
    sfd = FlowTimes(SFD).network(0.5, 2, torch.device("cpu"))
    assert isinstance(sfd, tuple) and torch.allclose(sfd[0], torch.full((2,), 0.2)) and torch.equal(sfd[1], torch.full((2,), 0.5))


# ------------------------------------------------------------------------------ CFG == forward_with_cfg

@pytest.mark.parametrize("channels", ["3", "all"])
@pytest.mark.parametrize("interval", [False, True])
def test_cfg_denoiser_equals_forward_with_cfg(channels, interval):
    model = tiny_lightningdit()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 4, 4, 4, generator=g), torch.tensor([1, 5, 7])
    y2 = torch.cat([y, torch.full_like(y, NULL)])
    k = parse_cfg_channels(channels)
    cfg = config(f"sample.cfg_channels={channels}", "sample.cfg_scale=4.0", "sample.cfg_interval_start=0.4")
    for skip in (False, True):
        guidance = Guidance.from_config(cfg, TimeSchedule.single(4), interval=interval, skip_uncond=skip)
        denoiser = Denoiser(model, y, FlowTimes(TimeSchedule.single(4)), guidance, null_class=NULL)
        for s in (0.1, 0.4, 0.75):
            t = torch.ones(6) * torch.tensor(s)
            with torch.no_grad():
                ref = model.forward_with_cfg(torch.cat([x, x]), t, y2, 4.0, cfg_interval=interval,
                                             cfg_interval_start=0.4, cfg_channels=k)[:3]
                out = denoiser(x, s)
            if skip and interval and s < 0.4:  # one conditional call on 3 rows instead of 6
                torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(out, ref), (skip, s)
        assert denoiser.cond_only == (1 if skip and interval else 0)


def test_cfg_combine_is_forward_with_cfgs_combine():
    model = tiny_lightningdit()
    x, y = torch.randn(2, 4, 4, 4), torch.tensor([2, 3])
    t = torch.full((4,), 0.6)
    with torch.no_grad():
        raw = model(torch.cat([x, x]), t, torch.cat([y, torch.full_like(y, NULL)]))
        for k in (3, None):
            ref = model.forward_with_cfg(torch.cat([x, x]), t, torch.cat([y, torch.full_like(y, NULL)]), 2.5,
                                         cfg_channels=k)
            assert torch.equal(cfg_combine(raw[:2], raw[2:], 2.5, k), ref[:2])


def test_unguided_denoiser_is_the_network():
    model = tiny_lightningdit()
    x, y = torch.randn(2, 4, 4, 4), torch.tensor([2, 3])
    denoiser = Denoiser(model, y, FlowTimes(TimeSchedule.single(4)), Guidance.from_config(config(), TimeSchedule.single(4)))
    with torch.no_grad():
        assert torch.equal(denoiser(x, 0.3), model(x, torch.ones(2) * torch.tensor(0.3), y))


# ------------------------------------------------------------------------------ the skip

class Rows(torch.nn.Module):
    """Wraps a network and records the rows of every call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.rows = net, []

    def forward(self, x, t, y):
        self.rows.append(x.shape[0])
        return self.net(x, t, y)


def test_skip_gives_the_same_samples_with_fewer_rows():
    """The released setting (Euler, 250 points, shift 0.3, start 0.11): 73 of the 249 evaluations
    run on n rows, and the samples equal the no-skip ones (docs/reference_behaviour.md §2.5)."""
    model = Rows(tiny_lightningdit())
    grid = Sampler(create_transport()).ode_grid(250, 0.3)
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(3, 4, 4, 4, generator=g), torch.tensor([1, 5, 7])
    cfg = config("sample.cfg_scale=4.0", "sample.cfg_interval_start=0.11")
    out = {}
    for skip in (False, True):
        model.rows = []
        guidance = Guidance.from_config(cfg, TimeSchedule.single(4), skip_uncond=skip)
        denoiser = Denoiser(model, y, FlowTimes(TimeSchedule.single(4)), guidance, null_class=NULL)
        with torch.no_grad():
            out[skip] = euler(denoiser, z, grid)
        assert denoiser.calls == 249 and denoiser.cond_only == (73 if skip else 0)
    assert model.rows[:73] == [3] * 73 and model.rows[73:] == [6] * 176  # the noisy end is unguided
    torch.testing.assert_close(out[True], out[False], rtol=0, atol=1e-5)
    with torch.no_grad():  # guidance matters here, so the comparison is not vacuous
        plain = euler(Denoiser(model, y, FlowTimes(TimeSchedule.single(4))), z, grid)
    assert (plain - out[False]).abs().max() > 1e-2


def test_guided_evaluation_counts_of_the_released_grids():
    """docs/reference_behaviour.md §2.5: with shift 0.3, 181 / 176 / 168 of 249 Euler evaluations
    are guided for starts 0.10 / 0.11 / 0.125; 221 on the unshifted grid (start 0.11)."""
    sampler = Sampler(create_transport())
    times = FlowTimes(TimeSchedule.single(4))

    def guided(shift, start):
        return sum(not times.below(t, start)[0] for t in sampler.ode_grid(250, shift)[:-1].tolist())

    assert [guided(0.3, s) for s in (0.10, 0.11, 0.125)] == [181, 176, 168]
    assert guided(0.0, 0.11) == 221


# ------------------------------------------------------------------------------ SFD: two groups

@pytest.mark.parametrize("mode", ["tex", "sem", "both"])
@pytest.mark.parametrize("kind", ["cfg", "auto"])
def test_sfd_interval_modes_and_per_part_scales(mode, kind):
    net, guide = TwoTimeNet(seed=0), TwoTimeNet(seed=1)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 5, 2, 2, generator=g), torch.tensor([3, 4])
    cfg = sfd_config("sample.cfg_scale=3.0", "sample.cfg_scale_sem=1.5", "sample.cfg_interval_start=0.25",
                     f"model.semfirst_infer_interval_mode={mode}", f"sample.autoguidance={kind == 'auto'}")
    times = FlowTimes(SFD)
    for skip in (False, True):
        guidance = Guidance.from_config(cfg, SFD, skip_uncond=skip)
        assert guidance.scales == (3.0, 1.5) and guidance.kind == kind
        denoiser = Denoiser(net, y, times, guidance, guide=guide if kind == "auto" else None, null_class=NULL)
        # base times: both parts below the start; texture below (t_tex = 0.1), semantics above; both above
        for s in (0.2, 0.4, 0.9):
            t = times.network(s, 2, x.device)
            with torch.no_grad():
                if kind == "cfg":
                    both = net(torch.cat([x, x]), times.network(s, 4, x.device), torch.cat([y, torch.full_like(y, NULL)]))
                    main, ref = both[:2], both[2:]
                else:
                    main, ref = net(x, t, y), guide(x, t, y)
                expected = sfd_reference(main, ref, t, 3.0, 1.5, 0.25, mode)
                out = denoiser(x, s)
            if skip and s == 0.2 and mode == "both":  # nothing guided: one conditional call
                torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
            else:
                assert torch.equal(out, expected), (mode, kind, skip, s)
        assert denoiser.cond_only == (1 if skip and mode == "both" else 0)


def test_per_part_scales_touch_only_their_channels():
    net, guide = TwoTimeNet(seed=0), TwoTimeNet(seed=1)
    x, y = torch.randn(2, 5, 2, 2, generator=torch.Generator().manual_seed(3)), torch.tensor([1, 2])
    times = FlowTimes(SFD)

    def run(*overrides):
        cfg = sfd_config("sample.autoguidance=true", "sample.cfg_scale=2.0", *overrides)
        with torch.no_grad():
            return Denoiser(net, y, times, Guidance.from_config(cfg, SFD), guide=guide)(x, 0.6)

    base, sem, tex = run(), run("sample.cfg_scale_sem=4.0"), run("sample.cfg_scale_tex=4.0")
    assert torch.equal(sem[:, :3], base[:, :3]) and not torch.allclose(sem[:, 3:], base[:, 3:])
    assert torch.equal(tex[:, 3:], base[:, 3:]) and not torch.allclose(tex[:, :3], base[:, :3])
    assert torch.equal(run("sample.cfg_scale_sem=2.0", "sample.cfg_scale_tex=2.0"), base)  # defaults = cfg_scale


# ------------------------------------------------------------------------------ AutoGuidance

def test_autoguidance_scale_one_is_the_main_network():
    main, guide = Rows(tiny_lightningdit(seed=0)), Rows(tiny_lightningdit(seed=1))
    x, y = torch.randn(2, 4, 4, 4), torch.tensor([2, 3])
    cfg = config("sample.autoguidance=true", "sample.cfg_scale=1.0")
    guidance = Guidance.from_config(cfg, TimeSchedule.single(4))
    assert not guidance.active  # active only above 1, as SFD
    with torch.no_grad():
        out = Denoiser(main, y, FlowTimes(TimeSchedule.single(4)), guidance, guide=guide)(x, 0.5)
        assert torch.equal(out, main(x, torch.full((2,), 0.5), y))
    assert guide.rows == []


@pytest.mark.parametrize("scale", [1.5, 4.0, 10.0])
def test_autoguidance_with_the_main_network_as_guide_is_the_main_network(scale):
    main = tiny_lightningdit(seed=0)
    x, y = torch.randn(2, 4, 4, 4), torch.tensor([2, 3])
    cfg = config("sample.autoguidance=true", f"sample.cfg_scale={scale}", "sample.cfg_interval_start=0.3")
    denoiser = Denoiser(main, y, FlowTimes(TimeSchedule.single(4)), Guidance.from_config(cfg, TimeSchedule.single(4)),
                        guide=main)
    with torch.no_grad():
        for s in (0.1, 0.5, 0.9):
            assert torch.equal(denoiser(x, s), main(x, torch.full((2,), s), y))


def test_autoguidance_calls_the_guide_with_the_true_labels_on_every_channel():
    main, guide = tiny_lightningdit(seed=0), TwoTimeNet()
    recorded = []

    def guide_net(x, t, y):
        recorded.append(y.clone())
        return guide_out

    x, y = torch.randn(2, 4, 4, 4), torch.tensor([2, 3])
    guide_out = torch.randn(2, 4, 4, 4)
    cfg = config("sample.autoguidance=true", "sample.cfg_scale=2.0")  # cfg_channels: the default '3'
    with torch.no_grad():
        out = Denoiser(main, y, FlowTimes(TimeSchedule.single(4)), Guidance.from_config(cfg, TimeSchedule.single(4)),
                       guide=guide_net)(x, 0.5)
        cond = main(x, torch.full((2,), 0.5), y)
    assert torch.equal(recorded[0], y)
    assert torch.equal(out, guide_out + 2.0 * (cond - guide_out))  # all 4 channels guided


# ------------------------------------------------------------------------------ DDPM

def test_ddpm_denoiser_guides_eps_channels_and_keeps_the_variance_conditional():
    """One pass on [x; x] with [y; null] at the original timestep; the first cfg_channels eps
    channels guided, the other eps channels and the variance channels conditional."""
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(11, 8, generator=g)
    seen = []

    def model(x, t, y):
        seen.append(t.clone())
        return torch.cat([x, x], dim=1) * weight[y].reshape(-1, 8, 1, 1) + t.reshape(-1, 1, 1, 1) / 1000

    x, y = torch.randn(3, 4, 2, 2, generator=g), torch.tensor([1, 2, 3])
    times = DDPMTimes([0, 111, 222, 999])
    t = torch.full((3,), 222)
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, NULL))
    for channels, k in (("3", 3), ("all", 4), ("1", 1)):
        cfg = config(f"sample.cfg_channels={channels}", "sample.cfg_scale=4.0", "sample.cfg_interval_start=0.5")
        out = Denoiser(model, y, times, Guidance.from_config(cfg, TimeSchedule.single(4)), null_class=NULL)(x, 2)
        expected = cond.clone()
        expected[:, :k] = uncond[:, :k] + 4.0 * (cond[:, :k] - uncond[:, :k])
        assert torch.equal(out, expected)
    assert torch.equal(seen[-1], torch.full((6,), 222)) and seen[-1].dtype == torch.long
    plain = Denoiser(model, y, times, Guidance.from_config(config(), TimeSchedule.single(4)))(x, 2)
    assert torch.equal(plain, cond)


# ------------------------------------------------------------------------------ settings that cannot apply

@pytest.mark.parametrize("overrides,match", [
    (["sample.cfg_scale_sem=2.0"], "sample.cfg_scale_sem scales one SFD part"),
    (["model.semfirst_infer_interval_mode=tex"], "semfirst_infer_interval_mode='tex'"),
    (["sample.cfg_channels=5"], "exceeds the latent's 4 channels"),
    (["sample.autoguidance=true", "sample.cfg_channels=2"], "AutoGuidance guides every channel"),
])
def test_one_group_refuses_what_cannot_apply(overrides, match):
    with pytest.raises(ValueError, match=match):
        Guidance.from_config(config("sample.cfg_scale=2.0", *overrides), TimeSchedule.single(4))
    Guidance.from_config(config("sample.cfg_scale=1.0", *overrides), TimeSchedule.single(4))  # unguided: unused


def test_sfd_refuses_a_channel_subset():
    with pytest.raises(ValueError, match="SFD's guidance guides every channel"):
        Guidance.from_config(sfd_config("sample.cfg_scale=2.0", "sample.cfg_channels=2"), SFD)
    for value in ("3", "all"):
        guidance = Guidance.from_config(sfd_config("sample.cfg_scale=2.0", f"sample.cfg_channels={value}"), SFD)
        assert guidance.parts == (slice(0, 3), slice(3, 5))


def test_denoiser_needs_what_its_guidance_uses():
    cfg = config("sample.cfg_scale=2.0")
    with pytest.raises(ValueError, match="null class"):
        Denoiser(lambda *a: None, torch.tensor([1]), FlowTimes(TimeSchedule.single(4)),
                 Guidance.from_config(cfg, TimeSchedule.single(4)))
    with pytest.raises(ValueError, match="guide network"):
        Denoiser(lambda *a: None, torch.tensor([1]), FlowTimes(TimeSchedule.single(4)),
                 Guidance.from_config(config("sample.cfg_scale=2.0", "sample.autoguidance=true"),
                                      TimeSchedule.single(4)))


def test_decisions_read_no_device_value():
    """Every guidance decision comes from the host time: the denoiser runs on meta tensors, which
    have no values to read (a `bool(t[0] < start)` on the device tensor would raise)."""
    meta = torch.device("meta")
    net = torch.nn.Conv2d(4, 4, 1).to(meta)

    def network(x, t, y):
        return net(x) * t[:, None, None, None]

    x, y = torch.empty(2, 4, 3, 3, device=meta), torch.empty(2, dtype=torch.long, device=meta)
    for skip in (True, False):
        guidance = Guidance.from_config(config("sample.cfg_scale=3.0", "sample.cfg_interval_start=0.5"),
                                        TimeSchedule.single(4), skip_uncond=skip)
        denoiser = Denoiser(network, y, FlowTimes(TimeSchedule.single(4)), guidance, null_class=NULL)
        assert denoiser(x, 0.2).shape == (2, 4, 3, 3) and denoiser(x, 0.7).device == meta
        assert denoiser.cond_only == (1 if skip else 0)

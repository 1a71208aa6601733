"""SFD's semantic-first objective and sampler (docs/reference_behaviour.md §12.3-12.4) against
independent re-statements: the loss terms computed SFD's way (split, plan per part, concatenate),
closed forms of the weighting, the REPA modes and the clipped-phase mask, SFD-style masked
torchdiffeq solves, and the phase-aligned grid's convergence orders."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torchdiffeq import odeint

from configs.schema import load_config
from transport import Sampler, TimeSchedule, build_transport, create_transport
from transport.path import ICPlan
from transport.utils import snap_to_breakpoints

REPO = Path(__file__).resolve().parents[2]
SFD_80EP = str(REPO / "configs/sfd/lightningdit_xl/train_80ep_lr2e-4.yaml")
SFD_4M = str(REPO / "configs/sfd/lightningdit_xl/train.yaml")
DELTA = 0.3


# ---------------------------------------------------------------------------------- stand-ins

class TwoTimeNet(torch.nn.Module):
    """A small network with SFD's call (x, (t_tex, t_sem), y) -> (v, REPA features (B, N, D))."""

    def __init__(self, channels=48, feat=24, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.nn.Parameter(torch.randn(channels, channels, generator=g) / channels ** 0.5)
        self.proj = torch.nn.Parameter(torch.randn(channels, feat, generator=g))
        self.emb = torch.nn.Parameter(torch.randn(10, channels, generator=g))
        self.seen = []

    def forward(self, x, t, y):
        self.seen.append(t)
        t_tex, t_sem = t if isinstance(t, tuple) else (t, t)
        h = torch.einsum("bchw,cd->bdhw", x, self.mix) + self.emb[y][:, :, None, None]
        h = h * (1 + t_tex[:, None, None, None]) - t_sem[:, None, None, None] ** 2
        feats = torch.einsum("bchw,cd->bhwd", torch.tanh(h), self.proj).flatten(1, 2)  # (B, N, D)
        return h, feats


def sfd_reference_terms(model, x1, y, t, noise, feats_dino, *, delta, semantic_chans, semantic_weight,
                        repa_mode, repa_weight):
    """SFD's training_losses re-stated from its description: stretch and clip the times, plan the
    texture and semantic parts separately, concatenate, weight the semantic squared errors by
    concatenation, REPA on the rearranged target."""
    plan, s = ICPlan(), semantic_chans
    t = t.to(x1)
    t_sem = t * (1 + delta)
    t_tex = (t_sem - delta).clamp(min=0.0)
    t_sem = t_sem.clamp(max=1.0)
    parts = []
    for tt, sl in ((t_tex, slice(None, -s)), (t_sem, slice(-s, None))):
        parts.append(plan.plan(tt[:, None, None, None], noise[:, sl], x1[:, sl]))
    xt = torch.cat([parts[0][0], parts[1][0]], dim=1)
    ut = torch.cat([parts[0][1], parts[1][1]], dim=1)
    out, proj = model(xt, (t_tex, t_sem), y)
    sq = (out - ut) ** 2
    weighted = torch.cat([sq[:, :-s], sq[:, -s:] * semantic_weight], dim=1)
    terms = {"loss": weighted.mean(dim=(1, 2, 3)),
             "cos_loss": (1 - F.cosine_similarity(out, ut, dim=1)).mean(dim=(1, 2))}
    b, d, h, w = feats_dino.shape
    target = feats_dino.float().reshape(b, d, h * w).transpose(1, 2)  # b c h w -> b (h w) c
    cos = (1 - F.cosine_similarity(target, proj, dim=-1)).mean(dim=1)
    mse = ((target - proj) ** 2).mean(dim=(1, 2))
    repa = {"cos": cos, "mse": mse, "cos_mse": (cos + mse) / 2}[repa_mode]
    terms["repa_loss"] = repa * repa_weight
    return terms, out


def sfd_batch(b=6, c=48, hw=4, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1, noise = torch.randn(b, c, hw, hw, generator=g), torch.randn(b, c, hw, hw, generator=g)
    feats = torch.randn(b, d, hw, hw, generator=g).half()
    # one base time in each phase and the two phase boundaries (tau = 0.3 and tau = 1)
    t = torch.tensor([0.05, 0.2, 0.3 / 1.3, 0.5, 1 / 1.3, 0.95])[:b]
    return x1, noise, feats, t, torch.randint(0, 10, (b,), generator=g)


# ---------------------------------------------------------------------------------- the objective

@pytest.mark.parametrize("config", [SFD_80EP, SFD_4M])
def test_released_configs_build_sfds_objective(config):
    cfg = load_config(config)
    tr = build_transport(cfg)
    assert tr.schedule == TimeSchedule.semantic_first(32, 16, 0.3)
    assert tr.group_weights == (1.0, 2.0) and tr.use_cosine_loss and tr.use_lognorm
    assert (tr.repa_mode, tr.repa_weight) == ((cfg.model.repa_mode, cfg.model.repa_weight))
    assert not tr.mask_clipped_phases
    assert load_config(config, ["transport.mask_clipped_phases=true"]).transport.mask_clipped_phases


@pytest.mark.parametrize("config", [SFD_80EP, SFD_4M])
def test_training_losses_equal_the_sfd_restatement(config):
    cfg = load_config(config)
    tr = build_transport(cfg)
    x1, noise, feats, t, y = sfd_batch()
    model = TwoTimeNet()
    terms = tr.training_losses(model, x1, dict(y=y), t=t, x0=noise, repa_target=feats)
    ref, out = sfd_reference_terms(model, x1, y, t, noise, feats, delta=0.3, semantic_chans=16,
                                   semantic_weight=2.0, repa_mode=cfg.model.repa_mode,
                                   repa_weight=cfg.model.repa_weight)
    assert set(terms) == {"pred", "loss", "cos_loss", "repa_loss"}
    assert torch.equal(terms["pred"], out)
    for key in ("loss", "cos_loss", "repa_loss"):
        assert terms[key].shape == (6,)
        assert torch.equal(terms[key], ref[key]), key
    # the network saw SFD's (t_tex, t_sem), bit for bit
    t_tex, t_sem = model.seen[0]
    tau = t * 1.3
    assert torch.equal(t_sem, tau.clamp(max=1.0)) and torch.equal(t_tex, (tau - 0.3).clamp(min=0.0))
    assert t_tex[0] == 0 and t_sem[-1] == 1 and t_tex[2] == 0 and t_sem[4] == 1  # the clips fire


def test_gradients_flow_through_the_weighted_loss():
    tr = build_transport(load_config(SFD_4M))
    x1, noise, feats, t, y = sfd_batch()
    model = TwoTimeNet()
    terms = tr.training_losses(model, x1, dict(y=y), t=t, x0=noise, repa_target=feats)
    sum(v.mean() for k, v in terms.items() if k.endswith("loss")).backward()
    assert model.mix.grad.abs().sum() > 0 and model.proj.grad.abs().sum() > 0


def test_weighted_mse_is_two_thirds_of_each_part():
    """32 texture + 16 semantic channels with weight 2: (32 m_tex + 2 * 16 m_sem) / 48."""
    tr = create_transport(schedule=TimeSchedule.semantic_first(32, 16, 0.3), group_weights=(1.0, 2.0))
    x1, noise, _, t, _ = sfd_batch()
    pred = torch.randn_like(x1)
    loss = tr.training_losses(lambda x, tt: pred, x1, t=t, x0=noise)["loss"]
    sq = (pred - (x1 - noise)).double() ** 2  # the Linear path's target u = x1 - x0 at any time
    expected = 2 / 3 * sq[:, :32].mean(dim=(1, 2, 3)) + 2 / 3 * sq[:, 32:].mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=0)


def test_delta_zero_is_lightningdit_exactly():
    """semantic_chans > 0 with delta 0: one time (B,) for the network, the same numbers as the one
    group schedule (weight 1); the semantic weight still applies (SFD)."""
    x1, noise, _, t, y = sfd_batch()
    lightning = create_transport(use_cosine_loss=True)
    two = create_transport(use_cosine_loss=True, schedule=TimeSchedule.semantic_first(32, 16, 0.0))
    seen = []

    def model(x, tt, y):
        seen.append(tt)
        return torch.tanh(x) * (1 + tt[:, None, None, None]) + y[:, None, None, None]

    a = lightning.training_losses(model, x1, dict(y=y), t=t, x0=noise)
    b = two.training_losses(model, x1, dict(y=y), t=t, x0=noise)
    assert all(torch.equal(a[k], b[k]) for k in ("pred", "loss", "cos_loss"))
    assert isinstance(seen[1], torch.Tensor) and torch.equal(seen[0], seen[1]) and torch.equal(seen[1], t)
    weighted = create_transport(schedule=TimeSchedule.semantic_first(32, 16, 0.0), group_weights=(1.0, 2.0))
    c = weighted.training_losses(model, x1, dict(y=y), t=t, x0=noise)
    sq = (c["pred"] - (x1 - noise)) ** 2
    torch.testing.assert_close(c["loss"], torch.cat([sq[:, :32], 2 * sq[:, 32:]], 1).mean(dim=(1, 2, 3)))


def test_mask_clipped_phases_closed_form():
    """Per sample: Stage I keeps the semantic channels only, Stage III the texture channels only,
    Stage II everything; always divided by C H W; cos_loss unchanged."""
    schedule = TimeSchedule.semantic_first(32, 16, 0.3)
    plain = create_transport(use_cosine_loss=True, schedule=schedule, group_weights=(1.0, 2.0))
    masked = create_transport(use_cosine_loss=True, schedule=schedule, group_weights=(1.0, 2.0),
                              mask_clipped_phases=True)
    x1, noise, _, _, _ = sfd_batch()
    # stage I, I, II, II, III, III (tau = 0.065, 0.26, 0.52, 0.91, 1.04, 1.235)
    t = torch.tensor([0.05, 0.2, 0.4, 0.7, 0.8, 0.95])
    pred = torch.randn_like(x1)
    a = plain.training_losses(lambda x, tt: pred, x1, t=t, x0=noise)
    b = masked.training_losses(lambda x, tt: pred, x1, t=t, x0=noise)
    sq = (pred - (x1 - noise)) ** 2
    tex, sem = sq[:, :32].sum(dim=(1, 2, 3)), 2 * sq[:, 32:].sum(dim=(1, 2, 3))
    n = 48 * 4 * 4
    expected = torch.stack([sem[0] / n, sem[1] / n, a["loss"][2], a["loss"][3], tex[4] / n, tex[5] / n])
    torch.testing.assert_close(b["loss"], expected, rtol=1e-6, atol=0)
    assert torch.equal(b["loss"][2:4], a["loss"][2:4]) and torch.equal(b["cos_loss"], a["cos_loss"])
    # the kept channels are the ones the sampler moves at that tau, also on the phase boundaries
    t = torch.cat([t[2:4], torch.tensor([0.3, 1.0]) / 1.3, torch.tensor([0.3, 1.0]) / 1.3 + 1e-7])
    b = masked.training_losses(lambda x, tt: pred, x1, t=t, x0=noise)
    for i, tau in enumerate((t * 1.3).tolist()):
        flags = schedule.active(tau)
        kept = (tex[i] if flags[0] else 0) + (sem[i] if flags[1] else 0)
        torch.testing.assert_close(b["loss"][i], kept / n, rtol=1e-6, atol=0)
    # a one-group schedule has nothing to mask
    one = create_transport(mask_clipped_phases=True).training_losses(lambda x, tt: pred, x1, t=t, x0=noise)
    assert torch.equal(one["loss"], create_transport().training_losses(lambda x, tt: pred, x1, t=t, x0=noise)["loss"])


@pytest.mark.parametrize("mode", ["cos", "mse", "cos_mse"])
def test_repa_modes_against_their_formulas(mode):
    tr = create_transport(repa_mode=mode, repa_weight=0.7)
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(3, 5, 7, generator=g)                # (B, N = 5, D = 7): h = 1, w = 5
    target = torch.randn(3, 7, 1, 5, generator=g).half()     # (B, D, h, w) as the shards store it
    loss = tr.repa_loss(feats, target)
    tgt = target.double()[:, :, 0, :]                          # (B, D, N)
    f = feats.double().transpose(1, 2)
    cos = 1 - (tgt * f).sum(1) / (tgt.norm(dim=1) * f.norm(dim=1))   # (B, N)
    mse = ((tgt - f) ** 2).mean(dim=(1, 2))
    expected = {"cos": cos.mean(1), "mse": mse, "cos_mse": (cos.mean(1) + mse) / 2}[mode] * 0.7
    assert loss.dtype == torch.float32 and loss.shape == (3,)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_repa_token_order_is_row_major():
    """Token n = i w + j of the features meets the target at (h = i, w = j), SFD's einops
    rearrange 'b c h w -> b (h w) c' (same values and memory layout, so the same cosine sums)."""
    tr = create_transport(repa_mode="mse")
    target = torch.randn(1, 3, 2, 4)
    feats = rearrange(target, "b c h w -> b (h w) c")
    assert tr.repa_loss(feats, target).item() == 0
    assert tr.repa_loss(target.permute(0, 3, 2, 1).reshape(1, 8, 3), target).item() > 0
    g = torch.Generator().manual_seed(0)
    target, feats = torch.randn(2, 16, 4, 4, generator=g), torch.randn(2, 16, 16, generator=g)
    sfd = (1 - F.cosine_similarity(rearrange(target, "b c h w -> b (h w) c"), feats, dim=-1)).mean(dim=1)
    assert torch.equal(create_transport().repa_loss(feats, target), sfd)


def test_repa_inputs_are_checked():
    tr = create_transport()
    x1 = torch.randn(2, 4, 2, 2)
    with_feats = lambda x, t: (x, torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="repa_target"):
        tr.training_losses(with_feats, x1)
    with pytest.raises(ValueError, match="REPA target"):
        tr.training_losses(with_feats, x1, repa_target=torch.zeros(2, 5, 2, 2))
    # eval-mode networks return the output alone: no REPA term
    assert "repa_loss" not in tr.training_losses(lambda x, t: x, x1, repa_target=torch.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError, match="repa_mode"):
        create_transport(repa_mode="l1")


def test_bad_combinations_are_refused():
    with pytest.raises(ValueError, match="velocity"):
        create_transport(prediction="noise", schedule=TimeSchedule.semantic_first(3, 2, 0.3))
    with pytest.raises(ValueError, match="velocity"):
        create_transport(prediction="score", schedule=TimeSchedule.semantic_first(3, 2, 0.0), group_weights=(1, 2))
    with pytest.raises(ValueError, match="3 loss weights"):
        create_transport(schedule=TimeSchedule.semantic_first(3, 2, 0.3), group_weights=(1, 2, 3))
    tr = create_transport(schedule=TimeSchedule.semantic_first(3, 2, 0.3))
    with pytest.raises(ValueError, match="latent has 4 channels"):
        tr.training_losses(lambda x, t: x, torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="model.use_repa"):
        build_transport(load_config(None, ["transport.objective=ddpm", "model.use_repa=true",
                                           "model.repa_dino_version=dinov2_vitb14_reg", "model.repa_feat_depth=1"]))


# ---------------------------------------------------------------------------------- the sampler

C_TEX, C_SEM = 3, 2
SCHEDULE = TimeSchedule.semantic_first(C_TEX, C_SEM, DELTA)
FIELD_W = torch.randn(5, 5, generator=torch.Generator().manual_seed(3)) / 2


def toy_velocity(x, t_tex, t_sem):
    """A smooth velocity coupling every channel, with both group times (SFD's call shape)."""
    tt = torch.cat([t_tex[:, None].expand(-1, C_TEX), t_sem[:, None].expand(-1, C_SEM)], dim=1)[..., None, None]
    h = torch.einsum("bchw,cd->bdhw", x, FIELD_W.to(x.dtype))
    return torch.tanh(h) * (1 + tt.to(x.dtype)) - 0.5 * x * tt.to(x.dtype)


def sfd_denoiser(x, s):
    """The network at base time s through the schedule (float32 times, SFD's clips)."""
    return toy_velocity(x, *SCHEDULE.times_at(s, x.shape[0]))


def sfd_masked_fn(t, x):
    """SFD's sample_ode_semantic_first drift, re-stated: ones(B) t, the clips, the float32 mask."""
    tt = torch.ones(x.shape[0]) * t
    out = toy_velocity(x, (tt - DELTA).clamp(min=0.0), tt.clamp(max=1.0))
    mask = torch.zeros_like(x)
    mask[:, :C_TEX] = (tt >= DELTA).view(-1, 1, 1, 1)
    mask[:, -C_SEM:] = (tt <= 1.0).view(-1, 1, 1, 1)
    return out * mask


def sfd_grid(num_steps, shift=0.0):
    """SFD's ode grid: linspace(0, 1 + D), shifted element by element on grid / (1 + D)."""
    t = torch.linspace(0, 1.0 + DELTA, num_steps)
    if shift > 0:
        t = torch.tensor([shift * tn / (1 + (shift - 1) * tn) for tn in t / (1 + DELTA)]) * (1 + DELTA)
    return t


def start(b=4, dtype=torch.float32, seed=0):
    return torch.randn(b, 5, 2, 2, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_grid_is_sfds(shift):
    grid = Sampler(create_transport(schedule=SCHEDULE)).ode_grid(250, shift)
    assert grid.dtype == torch.float32 and torch.equal(grid, sfd_grid(250, shift))
    assert grid[0] == 0 and grid[-1].item() == pytest.approx(1.3)
    # one group: the reference's grid, untouched by the (1 + D) rescaling
    assert torch.equal(Sampler(create_transport()).ode_grid(9, shift), Sampler(create_transport(
        schedule=TimeSchedule.semantic_first(C_TEX, C_SEM, 0.0))).ode_grid(9, shift))


@pytest.mark.parametrize("method", ["euler", "heun2", "dopri5", "rk4"])
def test_sampler_equals_sfd_masked_torchdiffeq(method):
    sampler = Sampler(create_transport(schedule=SCHEDULE))
    x = start()
    ours = sampler.sample_ode(method, num_steps=40, timestep_shift=0.3)(x, sfd_denoiser)
    # one-element tolerance lists, as SFD (and the reference) pass them: dopri5 then matches bit for bit
    ref = odeint(sfd_masked_fn, x, sfd_grid(40, 0.3), method=method, atol=[1e-6], rtol=[1e-3])
    assert torch.equal(ours, ref)


def test_phase_masks_freeze_texture_then_semantics():
    sampler = Sampler(create_transport(schedule=SCHEDULE))
    grid = sampler.ode_grid(60)
    x = start()
    times = []
    traj = sampler.sample_ode("euler", num_steps=60)(x, lambda x_, s: times.append(s) or sfd_denoiser(x_, s))
    assert all(type(s) is float for s in times) and times == grid[:-1].tolist()
    for k in range(1, 60):  # state k comes from the evaluation at grid[k - 1]
        before, after = traj[k - 1], traj[k]
        tau = grid[k - 1].item()
        assert torch.equal(after[:, :C_TEX], before[:, :C_TEX]) == (tau < DELTA)
        assert torch.equal(after[:, C_TEX:], before[:, C_TEX:]) == (tau > 1.0)
    assert torch.equal(traj[-1][:, :C_TEX] != x[:, :C_TEX], torch.ones_like(x[:, :C_TEX], dtype=torch.bool))


def test_delta_zero_sampler_is_the_one_group_sampler():
    x = start()
    one = Sampler(create_transport())
    two = Sampler(create_transport(schedule=TimeSchedule.semantic_first(C_TEX, C_SEM, 0.0)))
    den = lambda x_, s: toy_velocity(x_, torch.full((x_.shape[0],), s), torch.full((x_.shape[0],), s))
    for method in ("euler", "heun2_phase", "dopri5"):
        assert torch.equal(one.sample_ode(method, num_steps=12, timestep_shift=0.3)(x, den),
                           two.sample_ode(method, num_steps=12, timestep_shift=0.3)(x, den))


def test_multi_group_refuses_sde_and_likelihood():
    sampler = Sampler(create_transport(schedule=SCHEDULE))
    with pytest.raises(ValueError, match="semfirst_delta_t"):
        sampler.sample_sde()
    with pytest.raises(ValueError, match="semfirst_delta_t"):
        sampler.sample_ode_likelihood()


def test_reverse_retraces_the_forward_solve():
    sampler = Sampler(create_transport(schedule=SCHEDULE))
    x = start(dtype=torch.float64)
    den = lambda x_, s: toy_velocity(x_, max(s - DELTA, 0.0) * torch.ones(x_.shape[0]),
                                     min(s, 1.0) * torch.ones(x_.shape[0]))
    data = sampler.sample_ode("heun2_phase", num_steps=300)(x, den)[-1]
    back = sampler.sample_ode("heun2_phase", num_steps=300, reverse=True)(data, den)
    assert back.shape[0] == 300
    torch.testing.assert_close(back[-1], x, atol=1e-4, rtol=0)
    assert (back[-1] - x).abs().max() < 1e-3 * (data - x).abs().max()


# ---------------------------------------------------------------------------------- the phase grid

def test_snap_puts_nodes_on_the_breakpoints():
    grid = Sampler(create_transport(schedule=SCHEDULE)).ode_grid(25, 0.3)
    snapped = snap_to_breakpoints(grid, SCHEDULE.breakpoints())
    assert torch.float32 == snapped.dtype and len(snapped) == 25 and bool((snapped[1:] > snapped[:-1]).all())
    assert float(torch.tensor(0.3)) in snapped.tolist() and 1.0 in snapped.tolist()
    assert int((snapped != grid).sum()) <= 2 and snapped[0] == grid[0] and snapped[-1] == grid[-1]
    assert torch.equal(Sampler(create_transport(schedule=SCHEDULE)).phase_grid(25, 0.3), snapped)
    assert torch.equal(Sampler(create_transport()).phase_grid(9, 0.3), Sampler(create_transport()).ode_grid(9, 0.3))
    assert torch.equal(snap_to_breakpoints(torch.linspace(0, 1.3, 4), (0.3, 1.0)),
                       torch.tensor([0.0, 0.3, 1.0, 1.3]))
    with pytest.raises(ValueError, match="too few"):
        snap_to_breakpoints(torch.linspace(0, 1.3, 3), (0.3, 1.0))
    with pytest.raises(ValueError, match="breakpoint"):
        Sampler(create_transport(schedule=SCHEDULE)).sample_ode("euler_phase", num_steps=2)


def test_phase_methods_are_plain_steppers_for_one_group():
    x = start()
    one = Sampler(create_transport())
    den = lambda x_, s: toy_velocity(x_, torch.full((x_.shape[0],), s), torch.full((x_.shape[0],), s))
    for plain, phase in (("euler", "euler_phase"), ("heun2", "heun2_phase")):
        assert torch.equal(one.sample_ode(plain, num_steps=15, timestep_shift=0.3)(x, den),
                           one.sample_ode(phase, num_steps=15, timestep_shift=0.3)(x, den))


def test_euler_phase_equals_sfd_masked_euler_but_the_step_leaving_one():
    """On a grid with nodes at delta and 1, SFD-masked torchdiffeq Euler moves the semantics once
    more in the step leaving tau = 1 (its test tau <= 1 holds at the node); the phase sampler
    freezes them there. With that one mask taken at the step's phase, the two are bit-identical."""
    sampler = Sampler(create_transport(schedule=SCHEDULE))
    grid = sampler.phase_grid(27)                     # h = 0.05: 0.3 and 1.0 are nodes 6 and 20
    assert grid[6].item() == float(torch.tensor(0.3)) and grid[20].item() == 1.0
    x = start()
    ours = sampler.sample_ode("euler_phase", num_steps=27)(x, sfd_denoiser)
    sfd = odeint(sfd_masked_fn, x, grid, method="euler")
    assert torch.equal(ours[:21], sfd[:21])
    assert torch.equal(ours[20:, :, C_TEX:], ours[20:21, :, C_TEX:].expand(7, -1, -1, -1, -1))
    jump = sfd[21, :, C_TEX:] - sfd[20, :, C_TEX:]     # SFD's one extra semantic step
    torch.testing.assert_close(jump, (grid[21] - grid[20]) * sfd_denoiser(sfd[20], 1.0)[:, C_TEX:])

    texture_only = torch.cat([torch.ones(C_TEX), torch.zeros(C_SEM)])[None, :, None, None]

    def open_phase_fn(t, x_):  # SFD's drift, with the semantics frozen at the node tau = 1 too
        return sfd_masked_fn(t, x_) * (texture_only if t == 1.0 else 1.0)

    assert torch.equal(ours, odeint(open_phase_fn, x, grid, method="euler"))


def exact_piecewise(x, end):
    """A tight dopri5 solution of the masked ODE, integrated phase by phase (no jump inside)."""
    den = lambda x_, s: toy_velocity(x_, max(s - DELTA, 0.0) * torch.ones(x_.shape[0], dtype=x_.dtype),
                                     min(s, 1.0) * torch.ones(x_.shape[0], dtype=x_.dtype))
    mask = lambda flags: torch.cat([torch.full((C_TEX,), float(flags[0])), torch.full((C_SEM,), float(flags[1]))]
                                   ).to(x.dtype)[None, :, None, None]
    nodes = [0.0, float(torch.tensor(DELTA)), 1.0, end]
    for a, b in zip(nodes[:-1], nodes[1:]):
        m = mask(SCHEDULE.active((a + b) / 2))
        x = odeint(lambda t, y: den(y, float(t)) * m, x, torch.tensor([a, b], dtype=torch.float64),
                   method="dopri5", rtol=1e-12, atol=1e-12)[-1]
    return x, den


@pytest.mark.parametrize("method,order", [("euler_phase", 1), ("heun2_phase", 2)])
def test_phase_grid_converges_with_the_methods_order(method, order):
    sampler = Sampler(create_transport(schedule=SCHEDULE))
    x = start(dtype=torch.float64)
    end = sampler.ode_grid(2)[-1].item()
    exact, den = exact_piecewise(x, end)
    errors = [(sampler.sample_ode(method, num_steps=13 * m + 1)(x, den)[-1] - exact).abs().max().item()
              for m in (2, 4, 8, 16)]
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(abs(r - 2 ** order) < 0.25 * 2 ** order for r in ratios), (errors, ratios)
    if order == 2:  # heun2 on SFD's grid steps across the jumps: first order only
        plain = [(sampler.sample_ode("heun2", num_steps=13 * m + 2)(x, den)[-1] - exact).abs().max().item()
                 for m in (4, 16)]
        assert plain[1] > 20 * errors[-1] and plain[0] / plain[1] < 6

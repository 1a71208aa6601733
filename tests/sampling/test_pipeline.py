"""LatentSampler: every sampler (ODE, SDE, DDPM's chain) integrates the one guided denoiser, so
`sample.reverse` and `sample.skip_uncond_outside_interval` mean the same in every mode or are
refused (tiny random LightningDiT on CPU)."""
import logging
from pathlib import Path

import pytest
import torch

import inference
from configs.schema import load_config
from datasets.order import sample_labels, sample_noise
from datasets.tiny_latents import write_tiny_latents
from models.build import build_model
from sampling.guidance import FlowTimes
from sampling.pipeline import LatentSampler, check_sampling_settings
from transport import Sampler, build_transport
from transport.schedule import TimeSchedule

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs/tiny/lightningdit_tiny.yaml")
DDPM = ["transport.objective=ddpm", "model.learn_sigma=true", "transport.use_cosine_loss=false",
        "transport.use_lognorm=false"]


@pytest.fixture(scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny(*overrides):
    cfg = load_config(CONFIG, list(overrides))
    torch.manual_seed(0)
    model = build_model(cfg, training=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    z, y = sample_noise(range(3), (4, 4, 4), 0), sample_labels(range(3), 10, 0)
    return cfg, model, z, y


@pytest.mark.parametrize("mode,overrides", [
    ("SDE", ["sample.mode=SDE", "sample.sampling_method=Euler"]),
    ("DDPM", DDPM),
])
def test_reverse_is_refused_where_it_cannot_apply(mode, overrides):
    cfg = load_config(CONFIG, overrides + ["sample.reverse=true"])
    with pytest.raises(ValueError, match=r"sample.reverse=true: .* runs noise -> data only") as info:
        check_sampling_settings(cfg)
    assert "\n" not in str(info.value)
    check_sampling_settings(load_config(CONFIG, overrides))


def test_reverse_stops_at_the_door(tmp_path, one_thread):
    cfg, model, _, _ = tiny()
    torch.save({"ema": model.state_dict()}, tmp_path / "m.pt")
    data = write_tiny_latents(str(tmp_path / "latents"), num_items=8, shape=(4, 4, 4), num_classes=10)
    with pytest.raises(SystemExit, match=r"^error: sample.reverse=true: the SDE sampler runs noise -> data only"):
        inference.main([CONFIG, f"data.data_path={data}", f"ckpt_path={tmp_path / 'm.pt'}", "sample.mode=SDE",
                        "sample.sampling_method=Euler", "sample.reverse=true", f"train.output_dir={tmp_path}"])
    assert not (tmp_path / "lightningdit_tiny").exists()  # nothing created


def test_reverse_ode_is_guided(one_thread):
    """data -> noise on the flipped grid with the guided denoiser (guidance used to be forced off)."""
    cfg, model, z, y = tiny("sample.reverse=true", "sample.num_sampling_steps=8", "sample.timestep_shift=0.0",
                            "sample.cfg_interval_start=0.3")
    out = LatentSampler(cfg, model)(z, y)
    sampler = LatentSampler(cfg, model)
    denoiser = sampler.denoiser(y)
    grid = Sampler(build_transport(cfg)).ode_grid(8, 0.0, reverse=True)
    x = z
    with torch.no_grad():
        for t0, t1 in zip(grid[:-1], grid[1:]):
            x = x + (t1 - t0) * denoiser(x, float(t0))
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)
    assert denoiser.cond_only == 2  # t = 2/7, 1/7: below the start (the flipped grid ends at 0)
    unguided = LatentSampler(cfg, model, cfg_scale=1.0)(z, y)
    assert (unguided - out).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["Euler", "Heun"])
def test_sde_honours_the_skip(method, one_thread):
    cfg, model, z, y = tiny("sample.mode=SDE", f"sample.sampling_method={method}", "sample.num_sampling_steps=10",
                            "sample.cfg_interval_start=0.2")
    out = {}
    for skip in (False, True):
        sampler = LatentSampler(cfg, model, skip_uncond=skip)
        out[skip] = sampler(z, y, sde_seed=3)
        assert (sampler.num_cond_only > 0) == skip
    torch.testing.assert_close(out[True], out[False], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[True], LatentSampler(cfg, model, skip_uncond=True)(z, y, sde_seed=4))


def test_ddpm_has_no_interval_to_skip(one_thread, caplog):
    cfg, model, z, y = tiny(*DDPM, "sample.num_sampling_steps=10", "sample.cfg_scale=2.0")
    with caplog.at_level(logging.WARNING):
        sampler = LatentSampler(cfg, model, skip_uncond=True)
    assert "sample.cfg_interval_start=0.1 does not apply to DDPM's chain" in caplog.text
    out = sampler(z, y, sde_seed=1)
    assert sampler.num_calls == 10 and sampler.num_cond_only == 0
    assert torch.equal(out, LatentSampler(cfg, model, skip_uncond=False)(z, y, sde_seed=1))


def test_latent_sampler_uses_the_transports_time_schedule(one_thread):
    cfg, model, z, y = tiny()
    sampler = LatentSampler(cfg, model)
    assert isinstance(sampler.times, FlowTimes) and sampler.times.schedule == TimeSchedule.single(4)
    assert sampler.guidance.kind == "cfg" and sampler.guidance.parts == (slice(0, 3),)


class SFDStandIn(torch.nn.Module):
    """A two-time network for SFD's schedule (texture 3 + semantics 2 channels): called with
    (t_tex, t_sem); has the label table LatentSampler checks for the null class."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.nn.Parameter(torch.randn(5, 5, generator=g) * 0.4)
        self.y_embedder = torch.nn.Module()
        self.y_embedder.embedding_table = torch.nn.Embedding(11, 5)
        with torch.no_grad():
            self.y_embedder.embedding_table.weight.copy_(torch.randn(11, 5, generator=g))

    def forward(self, x, t, y):
        t_tex, t_sem = t
        times = torch.cat([t_tex[:, None].expand(-1, 3), t_sem[:, None].expand(-1, 2)], 1)[:, :, None, None]
        h = torch.einsum("dc,nc...->nd...", self.mix, torch.tanh(x))
        return h * (1 + times) + self.y_embedder.embedding_table(y)[:, :, None, None] * times


@pytest.mark.parametrize("kind", ["cfg", "auto"])
def test_sfd_sampling_equals_a_direct_statement(kind):
    """Euler over tau in [0, 1 + delta] with SFD's phase masks and per-part guidance (spec §4.1-4.2
    written out here) equals LatentSampler on the same stand-in networks."""
    cfg = load_config(CONFIG, ["model.in_chans=5", "model.semantic_chans=2", "model.semfirst_delta_t=0.3",
                               "sample.num_sampling_steps=14", "sample.timestep_shift=0.0", "sample.cfg_scale=2.5",
                               "sample.cfg_scale_sem=1.5", "sample.cfg_interval_start=0.2",
                               f"sample.autoguidance={kind == 'auto'}"])
    net, guide = SFDStandIn(0), SFDStandIn(1)
    z, y = torch.randn(2, 5, 2, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 7])
    sampler = LatentSampler(cfg, net, guide=guide if kind == "auto" else None)
    with torch.no_grad():
        out = sampler(z, y)
        x = z
        grid = torch.linspace(0, 1.3, 14)
        for tau, nxt in zip(grid[:-1].tolist(), grid[1:].tolist()):
            t32 = torch.tensor(tau, dtype=torch.float32)
            t_tex, t_sem = (t32 - 0.3).clamp(min=0.0), t32.clamp(max=1.0)
            t = (t_tex.expand(2), t_sem.expand(2))
            if kind == "cfg":
                both = net(torch.cat([x, x]), (t_tex.expand(4), t_sem.expand(4)), torch.tensor([3, 7, 10, 10]))
                main, ref = both[:2], both[2:]
            else:
                main, ref = net(x, t, y), guide(x, t, y)
            tex = main[:, :3] if t_tex < 0.2 else ref[:, :3] + 2.5 * (main[:, :3] - ref[:, :3])
            sem = main[:, 3:] if t_sem < 0.2 else ref[:, 3:] + 1.5 * (main[:, 3:] - ref[:, 3:])
            mask = torch.tensor([float(tau >= 0.3)] * 3 + [float(tau <= 1.0)] * 2).reshape(1, 5, 1, 1)
            x = x + (nxt - tau) * torch.cat([tex, sem], 1) * mask
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)
    assert sampler.num_cond_only == 3  # tau = 0, 0.1, 0.2: both parts below the start


def test_sfd_with_the_sde_is_refused_at_the_door():
    cfg = load_config(CONFIG, ["model.in_chans=5", "model.semantic_chans=2", "model.semfirst_delta_t=0.3",
                               "sample.mode=SDE", "sample.sampling_method=Euler"])
    with pytest.raises(ValueError, match="sample.mode=SDE needs one time for every channel group"):
        check_sampling_settings(cfg)

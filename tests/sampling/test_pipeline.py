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

"""DiT's DDPM objective and sampler (transport/ddpm.py, transport/ddpm_sampler.py) against closed
forms computed independently here in float64: the schedule anchors, q(x_t | x_0), the posterior by
direct Bayes, the Gaussian KL, the discretized decoder likelihood, the hybrid loss, the respacing,
and the ancestral sampler on Gaussian data with the optimal predictor."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from configs.schema import load_config
from datasets.order import step_noise
from datasets.tiny_latents import write_tiny_latents
from models.build import build_model
from sampling import LatentSampler
from transport import build_transport
from transport.ddpm import (GaussianDiffusion, approx_standard_normal_cdf, create_ddpm,
                            discretized_gaussian_log_likelihood, linear_betas, normal_kl)
from transport.ddpm_sampler import DDPMSampler, respace, space_timesteps

F64 = torch.float64


@pytest.fixture(scope="module")
def ddpm():
    return create_ddpm(1000, learn_sigma=True)


def abar_direct(t: int) -> float:
    """prod_{s <= t} (1 - beta_s) with the betas written out by hand."""
    betas = [1e-4 + (0.02 - 1e-4) * s / 999 for s in range(1000)]
    return math.prod(1 - b for b in betas[: t + 1])


# ---------------------------------------------------------------------------------- schedule

def test_linear_betas_and_derived_anchors(ddpm):
    tab = ddpm.tables
    assert tab["betas"].dtype == F64 and tab["betas"][0] == 1e-4 and tab["betas"][-1] == 0.02
    assert math.isclose(tab["betas"][1].item(), 1.1991992e-4, rel_tol=1e-7)
    for t in (0, 1, 499, 999):
        assert math.isclose(tab["alphas_cumprod"][t].item(), abar_direct(t), rel_tol=1e-12)
    assert math.isclose(tab["alphas_cumprod"][499].item(), 0.07858724, rel_tol=1e-7)
    assert math.isclose(tab["alphas_cumprod"][999].item(), 4.0358298e-5, rel_tol=1e-7)
    assert tab["posterior_variance"][0] == 0.0
    assert math.isclose(tab["posterior_variance"][1].item(), 5.4531877e-5, rel_tol=1e-7)
    clipped = tab["posterior_log_variance_clipped"]
    assert clipped[0] == clipped[1] and math.isclose(clipped[0].item(), -9.8167251, rel_tol=1e-7)
    assert math.isclose(clipped[999].item(), -3.9120238, rel_tol=1e-7)
    assert math.isclose(tab["posterior_mean_coef1"][999].item(), 1.2835149e-4, rel_tol=1e-7)
    assert math.isclose(tab["posterior_mean_coef2"][999].item(), 0.98994868, rel_tol=1e-7)
    assert math.isclose(tab["posterior_mean_coef1"][0].item(), 1.0, rel_tol=1e-12) and tab["posterior_mean_coef2"][0] == 0.0
    # the 1000 / T endpoint scaling of shorter chains
    assert torch.allclose(linear_betas(500)[[0, -1]], torch.tensor([2e-4, 0.04], dtype=F64))


def test_coefficients_are_applied_in_float32(ddpm):
    t = torch.tensor([3, 999])
    x = torch.ones(2, 4, 2, 2)
    c = ddpm.coef("sqrt_alphas_cumprod", t, x)
    assert c.dtype == torch.float32 and c.shape == (2, 1, 1, 1)
    assert torch.equal(c.flatten(), ddpm.tables["sqrt_alphas_cumprod"][t].float())
    assert ddpm.coef("sqrt_alphas_cumprod", t, x.double()).dtype == F64


# ---------------------------------------------------------------------------------- q(x_t | x_0)

def test_q_sample_moments_closed_form_and_monte_carlo(ddpm):
    x0 = torch.tensor([1.5, -0.7, 0.0, 2.0], dtype=F64).reshape(1, 4, 1, 1)
    for t_int in (0, 250, 999):
        t = torch.full((1,), t_int)
        mean, var, logvar = ddpm.q_mean_variance(x0, t)
        abar = abar_direct(t_int)
        assert torch.allclose(mean, math.sqrt(abar) * x0, rtol=1e-12, atol=0)
        assert math.isclose(var.item(), 1 - abar, rel_tol=1e-12) and math.isclose(logvar.item(), math.log(1 - abar), rel_tol=1e-12)
        n = 200_000
        g = torch.Generator().manual_seed(t_int)
        noise = torch.randn(n, 4, 1, 1, generator=g, dtype=F64)
        xt = ddpm.q_sample(x0.expand(n, -1, -1, -1), torch.full((n,), t_int), noise)
        se = math.sqrt((1 - abar) / n)
        assert (xt.mean(0) - mean[0]).abs().max() < 5 * se
        assert (xt.var(0) / (1 - abar) - 1).abs().max() < 5 * math.sqrt(2 / n)


# ---------------------------------------------------------------------------------- posterior

@pytest.mark.parametrize("t_int", [1, 500, 999])
def test_posterior_equals_direct_bayes(ddpm, t_int):
    """q(x_{t-1} | x_t, x_0) from prior N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}) times the likelihood
    N(x_t; sqrt(alpha_t) x_{t-1}, beta_t), in float64."""
    beta = 1e-4 + (0.02 - 1e-4) * t_int / 999
    abar_prev = abar_direct(t_int - 1)
    x0 = torch.tensor([0.3, -1.2], dtype=F64).reshape(2, 1, 1, 1)
    xt = torch.tensor([-0.4, 0.9], dtype=F64).reshape(2, 1, 1, 1)
    precision = 1 / (1 - abar_prev) + (1 - beta) / beta
    var = 1 / precision
    mean = var * (math.sqrt(abar_prev) * x0 / (1 - abar_prev) + math.sqrt(1 - beta) * xt / beta)
    got_mean, got_var, got_logvar = ddpm.q_posterior_mean_variance(x0, xt, torch.full((2,), t_int))
    assert torch.allclose(got_mean, mean, rtol=1e-9, atol=1e-12)
    assert torch.allclose(got_var.flatten(), torch.full((2,), var, dtype=F64), rtol=1e-9)
    assert torch.allclose(got_logvar.flatten(), torch.full((2,), math.log(var), dtype=F64), rtol=1e-9)


def test_eps_and_x0_conversions_invert(ddpm):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 2, 2, generator=g, dtype=F64), torch.randn(3, 4, 2, 2, generator=g, dtype=F64)
    t = torch.tensor([0, 400, 999])
    assert torch.allclose(ddpm.predict_xstart_from_eps(ddpm.q_sample(x0, t, eps), t, eps), x0, atol=1e-9)


# ---------------------------------------------------------------------------------- KL and decoder NLL

def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    m1, m2 = torch.randn(50, generator=g, dtype=F64), torch.randn(50, generator=g, dtype=F64)
    l1, l2 = torch.randn(50, generator=g, dtype=F64), torch.randn(50, generator=g, dtype=F64)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * l1).exp()),
                                            torch.distributions.Normal(m2, (0.5 * l2).exp()))
    assert torch.allclose(normal_kl(m1, l1, m2, l2), ref, rtol=1e-12, atol=1e-12)
    one = torch.tensor(1.0, dtype=F64)
    assert math.isclose(normal_kl(one, 0 * one, 0 * one, math.log(2) * one).item(), 0.5 * math.log(2), rel_tol=1e-12)


def test_discretized_likelihood_anchors_bins_and_erf():
    z = torch.zeros(3, dtype=F64)
    logp = discretized_gaussian_log_likelihood(torch.tensor([0.0, 1.0, -1.0], dtype=F64), z, z)
    assert torch.allclose(logp, torch.tensor([-5.767057, -1.834095, -1.834095], dtype=F64), atol=1e-6)
    # the 256 bins of 8-bit data partition the line: probabilities sum to one
    x = torch.arange(256, dtype=F64) / 127.5 - 1
    for mu, log_scale in ((0.1, -1.0), (-0.6, 0.3), (0.95, -3.0)):
        p = discretized_gaussian_log_likelihood(x, torch.full_like(x, mu), torch.full_like(x, log_scale)).exp()
        assert math.isclose(p.sum().item(), 1.0, abs_tol=1e-9)
    # an interior bin against the exact (erf) Gaussian mass: the tanh CDF is within 2e-4
    u = torch.linspace(-4, 4, 81, dtype=F64)
    assert (approx_standard_normal_cdf(u) - 0.5 * (1 + torch.erf(u / math.sqrt(2)))).abs().max() < 2e-4
    sigma, xv = 0.05, torch.tensor([0.02], dtype=F64)
    exact = 0.5 * (torch.erf((xv + 1 / 255) / (sigma * math.sqrt(2))) - torch.erf((xv - 1 / 255) / (sigma * math.sqrt(2))))
    got = discretized_gaussian_log_likelihood(xv, torch.zeros_like(xv), torch.full_like(xv, math.log(sigma))).exp()
    assert torch.allclose(got, exact, rtol=2e-3)


# ---------------------------------------------------------------------------------- variance and loss

def test_learned_range_endpoints(ddpm):
    t = torch.tensor([0, 1, 700])
    x = torch.zeros(3, 2, 1, 1, dtype=F64)
    logvar_hi = ddpm.model_log_variance(torch.ones_like(x), t, x).flatten(1)[:, 0]
    logvar_lo = ddpm.model_log_variance(-torch.ones_like(x), t, x).flatten(1)[:, 0]
    assert torch.allclose(logvar_hi, ddpm.tables["betas"][t].log())
    assert torch.allclose(logvar_lo, ddpm.tables["posterior_log_variance_clipped"][t])
    mid = ddpm.model_log_variance(3 * torch.ones_like(x), t, x).flatten(1)[:, 0]  # extrapolates (no clamp)
    assert torch.allclose(mid, 2 * logvar_hi - logvar_lo)


class ConstantOutput(torch.nn.Module):
    """A 'network' whose output is one trainable tensor (B, 2C, H, W)."""

    def __init__(self, out):
        super().__init__()
        self.out = torch.nn.Parameter(out.clone())
        self.seen_t = None

    def forward(self, x, t, y=None, return_sigma=False):
        assert return_sigma
        self.seen_t = t
        return self.out


def hybrid_loss_by_hand(x0, eps, out, t_int):
    """One sample's MSE + L_vb in float64 from the formulas, independent of the module."""
    betas = [1e-4 + (0.02 - 1e-4) * s / 999 for s in range(1000)]
    abar = abar_direct(t_int)
    abar_prev = abar_direct(t_int - 1) if t_int > 0 else 1.0
    beta = betas[t_int]
    c = x0.shape[0]
    eps_hat, v = out[:c], out[c:]
    xt = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
    x0_hat = (xt - math.sqrt(1 - abar) * eps_hat) / math.sqrt(abar)

    def posterior_mean(start):
        return (beta * math.sqrt(abar_prev) * start + (1 - abar_prev) * math.sqrt(1 - beta) * xt) / (1 - abar)

    post_var_1 = betas[1] * (1 - abar_direct(0)) / (1 - abar_direct(1))
    post_var = beta * (1 - abar_prev) / (1 - abar) if t_int > 0 else 0.0
    clipped = math.log(post_var if t_int > 0 else post_var_1)
    model_logvar = (v + 1) / 2 * math.log(beta) + (1 - (v + 1) / 2) * clipped
    model_mean = posterior_mean(x0_hat)
    mse = ((eps - eps_hat) ** 2).mean()
    if t_int > 0:
        true_mean = posterior_mean(x0)
        kl = 0.5 * (-1 + model_logvar - clipped + torch.exp(clipped - model_logvar)
                    + (true_mean - model_mean) ** 2 * torch.exp(-model_logvar))
        vb = kl.mean() / math.log(2)
    else:  # the 8-bit decoder with the exact tanh-CDF formula written out
        def cdf(u):
            return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
        s = torch.exp(0.5 * model_logvar)
        plus, minus = cdf((x0 - model_mean + 1 / 255) / s), cdf((x0 - model_mean - 1 / 255) / s)
        p = torch.where(x0 < -0.999, plus, torch.where(x0 > 0.999, 1 - minus, plus - minus))
        vb = -torch.log(p.clamp(min=1e-12)).mean() / math.log(2)
    return mse, vb


@pytest.mark.parametrize("t_int", [0, 37, 998])
def test_hybrid_loss_equals_hand_computation(ddpm, t_int):
    g = torch.Generator().manual_seed(t_int)
    x0 = torch.randn(4, 3, 3, generator=g, dtype=F64) * 0.8
    x0[0, 0, 0], x0[1, 1, 1] = 1.2, -1.3  # edge bins of the decoder term
    eps = torch.randn(4, 3, 3, generator=g, dtype=F64)
    out = torch.randn(8, 3, 3, generator=g, dtype=F64) * 0.5
    model = ConstantOutput(out[None])
    terms = ddpm.training_losses(model, x0[None], {}, t=torch.tensor([t_int]), x0=eps[None])
    mse, vb = hybrid_loss_by_hand(x0, eps, out, t_int)
    assert torch.equal(model.seen_t, torch.tensor([t_int]))
    assert math.isclose(terms["mse"].item(), mse.item(), rel_tol=1e-10)
    assert math.isclose(terms["vb"].item(), vb.item(), rel_tol=1e-7)
    assert math.isclose(terms["loss"].item(), (mse + vb).item(), rel_tol=1e-7)


def test_vb_gradient_reaches_only_the_variance(ddpm):
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(2, 4, 2, 2, generator=g), torch.randn(2, 4, 2, 2, generator=g)
    model = ConstantOutput(torch.randn(2, 8, 2, 2, generator=g))
    terms = ddpm.training_losses(model, x0, {}, t=torch.tensor([5, 600]), x0=eps)
    terms["vb"].sum().backward()
    assert torch.all(model.out.grad[:, :4] == 0) and model.out.grad[:, 4:].abs().min() > 0
    model.out.grad = None
    terms = ddpm.training_losses(model, x0, {}, t=torch.tensor([5, 600]), x0=eps)
    terms["mse"].sum().backward()
    assert torch.all(model.out.grad[:, 4:] == 0) and model.out.grad[:, :4].abs().max() > 0


def test_fixed_variance_without_learned_sigma():
    d = create_ddpm(1000, learn_sigma=False)
    x = torch.zeros(2, 4, 1, 1)
    lv = d.model_log_variance(None, torch.tensor([0, 10]), x)[:, 0, 0, 0].double()
    assert torch.allclose(lv, torch.tensor([math.log(d.tables["posterior_variance"][1].item()),
                                            math.log(d.tables["betas"][10].item())], dtype=F64), rtol=1e-6)
    terms = d.training_losses(lambda x, t, **kw: torch.zeros_like(x), x, {}, t=torch.tensor([3, 4]), x0=torch.ones_like(x))
    assert torch.equal(terms["loss"], torch.ones(2)) and torch.equal(terms["vb"], torch.zeros(2))
    with pytest.raises(ValueError, match="channels"):
        create_ddpm().training_losses(lambda x, t, **kw: x, x, {}, t=torch.tensor([3, 4]), x0=x)


def test_trainer_interface(ddpm):
    """step_noise draws int64 steps in [0, T) from the step generator; float (validation) t maps
    to floor(t T); lognorm never active."""
    noise = step_noise(ddpm, 0, 7, (64, 4, 2, 2), 0, 1, torch.device("cpu"), 0.1)
    assert noise["t"].dtype == torch.int64 and 0 <= noise["t"].min() and noise["t"].max() < 1000
    assert len(set(noise["t"].tolist())) > 50
    half = step_noise(ddpm, 0, 7, (32, 4, 2, 2), 1, 2, torch.device("cpu"), 0.1)
    assert torch.equal(half["t"], noise["t"][32:]) and torch.equal(half["x0"], noise["x0"][32:])
    assert torch.equal(ddpm.timesteps(torch.tensor([0.0, 0.4995, 0.9999])), torch.tensor([0, 499, 999]))
    assert ddpm.lognorm_active(0) is False and ddpm.lognorm_active(None) is False


# ---------------------------------------------------------------------------------- respacing

def test_space_timesteps_250_of_1000():
    kept = sorted(space_timesteps(1000, "250"))
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999
    gaps = [(a, b) for a, b in zip(kept, kept[1:]) if b - a != 4]
    assert gaps == [(164, 169), (497, 502), (830, 835)]
    assert space_timesteps(1000, "1000") == set(range(1000))
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert sorted(space_timesteps(10, "3,2")) == [0, 2, 4, 5, 9]  # sections of 5: strides 2 and 4
    assert sorted(space_timesteps(10, [1, 1])) == [0, 5]
    with pytest.raises(ValueError):
        space_timesteps(10, "6,1")
    with pytest.raises(ValueError):
        space_timesteps(1000, "ddim999")  # strides 1 and 2 give 1000 and 500


def test_respaced_chain_reproduces_alpha_bar(ddpm):
    kept = sorted(space_timesteps(1000, "250"))
    spaced = respace(ddpm, set(kept))
    assert spaced.num_timesteps == 250 and torch.equal(spaced.timestep_map, torch.tensor(kept))
    assert torch.allclose(spaced.tables["alphas_cumprod"], ddpm.tables["alphas_cumprod"][kept], rtol=1e-12, atol=0)
    b = spaced.tables["betas"]
    for i, value in ((0, 1e-4), (1, 5.990656e-4), (2, 9.176030e-4), (248, 0.0772193), (249, 0.0775193)):
        assert math.isclose(b[i].item(), value, rel_tol=1e-6)
    assert b.argmax().item() == 208 and math.isclose(b.max().item(), 0.0807259, rel_tol=1e-6)
    assert math.isclose(spaced.tables["posterior_log_variance_clipped"][0].item(), -9.364628, rel_tol=1e-6)
    identity = respace(ddpm, set(range(1000)))
    assert torch.allclose(identity.tables["betas"], ddpm.tables["betas"], rtol=0, atol=2e-16)


# ---------------------------------------------------------------------------------- sampler on Gaussian data

class OptimalGaussianModel:
    """The exact eps predictor and reverse variance for data x_0 ~ N(m_c, s_c^2) per channel.

    eps_hat = E[eps | x_t] = b (x - a m) / (a^2 s^2 + b^2), a = sqrt(abar_t), b = sqrt(1 - abar_t)
    (t the original step the network sees). v makes exp(log Sigma) the true reverse variance of
    the *respaced* chain: sigma~'^2 + coef1'^2 Var[x_0 | x_t].
    """

    def __init__(self, train: GaussianDiffusion, spaced: GaussianDiffusion, m, s):
        self.abar = train.tables["alphas_cumprod"]
        self.m, self.s = torch.tensor(m, dtype=F64), torch.tensor(s, dtype=F64)
        self.index = torch.full((train.num_timesteps,), -1, dtype=torch.long)
        self.index[spaced.timestep_map] = torch.arange(spaced.num_timesteps)  # tau -> respaced step
        tab = spaced.tables
        self.lo, self.hi = tab["posterior_log_variance_clipped"], tab["log_betas"]
        self.post_var, self.coef1 = tab["posterior_variance"], tab["posterior_mean_coef1"]
        self.labels = []

    def __call__(self, x, t, y, return_sigma=False):
        assert return_sigma and t.dtype == torch.int64
        self.labels.append(y)
        a, b2 = self.abar[t].sqrt().reshape(-1, 1, 1, 1), (1 - self.abar[t]).reshape(-1, 1, 1, 1)
        m, s2 = self.m.reshape(1, -1, 1, 1), (self.s ** 2).reshape(1, -1, 1, 1)
        eps = b2.sqrt() * (x.double() - a * m) / (a ** 2 * s2 + b2)
        i = self.index[t]
        var_x0 = s2 * b2 / (a ** 2 * s2 + b2)
        true_var = self.post_var[i].reshape(-1, 1, 1, 1) + self.coef1[i].reshape(-1, 1, 1, 1) ** 2 * var_x0
        lo, hi = self.lo[i].reshape(-1, 1, 1, 1), self.hi[i].reshape(-1, 1, 1, 1)
        v = 2 * (true_var.log() - lo) / (hi - lo) - 1
        return torch.cat([eps, v.expand_as(eps)], dim=1).to(x.dtype)


def model_denoiser(model, sampler, y):
    """denoiser(x, i) of an unguided network called with the original timestep of step i."""
    return lambda x, i: model(x, torch.full((x.shape[0],), sampler.timestep_map[i], dtype=torch.long), y,
                              return_sigma=True)


def test_ancestral_sampler_reproduces_gaussian_data(ddpm):
    m, s = [1.5, -0.5, 0.0, 0.8], [0.5, 1.0, 0.2, 1.4]
    sampler = DDPMSampler(ddpm, 250)
    assert sampler.timestep_map[:3] == [0, 4, 8] and sampler.timestep_map[-1] == 999 and sampler.learn_sigma
    model = OptimalGaussianModel(ddpm, sampler.diffusion, m, s)
    n = 2000
    z = torch.randn(n, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(n, dtype=torch.long)
    steps = []
    denoiser = model_denoiser(model, sampler, y)
    x = sampler(z, lambda x_, i: steps.append(i) or denoiser(x_, i), generator=torch.Generator().manual_seed(1))
    assert sampler.num_calls == 250 and len(model.labels) == 250 and steps == list(range(249, -1, -1))
    flat = x.double().transpose(0, 1).reshape(4, -1)
    assert torch.allclose(flat.mean(1), torch.tensor(m, dtype=F64), atol=0.03)
    assert torch.allclose(flat.std(1) / torch.tensor(s, dtype=F64), torch.ones(4, dtype=F64), atol=0.02)
    # seeded: the same generators give the same samples, another noise seed others
    few = model_denoiser(model, sampler, y[:8])
    again = sampler(z[:8], few, generator=torch.Generator().manual_seed(1))
    other = sampler(z[:8], few, generator=torch.Generator().manual_seed(2))
    assert torch.equal(again, sampler(z[:8], few, generator=torch.Generator().manual_seed(1)))
    assert not torch.allclose(again, other)


def test_training_terms_are_named_and_repa_is_refused(ddpm):
    x1 = torch.randn(3, 4, 2, 2)
    model = lambda x, t, return_sigma=False: torch.cat([x, torch.zeros_like(x)], dim=1) * 0.5
    terms = ddpm.training_losses(model, x1, t=torch.tensor([0, 10, 999]), x0=torch.randn_like(x1))
    assert set(terms) == {"pred", "loss", "mse", "vb"}
    assert [k for k in terms if k.endswith("loss")] == ["loss"]  # mse and vb are log-only
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    with pytest.raises(ValueError, match="use_repa"):
        ddpm.training_losses(model, x1, repa_target=torch.zeros(3, 8, 2, 2))


# ---------------------------------------------------------------------------------- with LightningDiT

REPO = Path(__file__).resolve().parents[2]
BASELINE = str(REPO / "configs/reproductions/table1_00_dit_baseline.yaml")
TINY = ["model.hidden_size=32", "model.depth=2", "model.num_heads=2", "data.image_size=8",
        "vae.downsample_ratio=2", f"vae.config_path={REPO / 'tests/datasets/tiny_vavae.yaml'}",
        "data.num_classes=10", "data.num_workers=0"]


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_baseline_config_is_dits_recipe():
    cfg = load_config(BASELINE)
    assert cfg.transport.objective == "ddpm" and cfg.transport.diffusion_steps == 1000
    assert cfg.model.learn_sigma and cfg.model.model_type == "LightningDiT-XL/2"
    assert not (cfg.model.use_swiglu or cfg.model.use_rope or cfg.model.use_rmsnorm or cfg.model.use_qknorm)
    assert (cfg.optimizer.lr, cfg.optimizer.beta2, cfg.train.global_batch_size) == (1e-4, 0.999, 256)
    assert cfg.train.max_steps * cfg.train.global_batch_size == 102_400_000  # 80 epochs
    assert not (cfg.transport.use_lognorm or cfg.transport.use_cosine_loss)
    assert (cfg.sample.num_sampling_steps, cfg.sample.cfg_scale) == (250, 1.0)
    assert (cfg.data.latent_norm, cfg.data.latent_multiplier, cfg.vae.downsample_ratio) == (False, 0.18215, 8)
    diffusion = build_transport(cfg)
    assert isinstance(diffusion, GaussianDiffusion) and diffusion.learn_sigma and diffusion.num_timesteps == 1000
    with pytest.raises(ValueError, match="use_cosine_loss"):
        build_transport(load_config(BASELINE, ["transport.use_cosine_loss=true"]))
    with pytest.raises(ValueError, match="transport.objective"):
        load_config(BASELINE, ["transport.objective=edm"])


def test_a_few_steps_of_a_tiny_model_reduce_the_loss(one_thread):
    cfg = load_config(BASELINE, TINY)
    torch.manual_seed(0)
    model = build_model(cfg, training=True)
    diffusion = build_transport(cfg)
    g = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([0.8, -0.4, 0.0, 0.3]).reshape(1, 4, 1, 1), torch.tensor([0.3, 0.5, 0.2, 0.4]).reshape(1, 4, 1, 1)

    def batch(n):
        return mean + std * torch.randn(n, 4, 4, 4, generator=g), torch.randint(10, (n,), generator=g)

    x_eval, y_eval = batch(64)
    t_eval, noise_eval = torch.arange(64) * 15 + 7, torch.randn(64, 4, 4, 4, generator=g)

    def eval_loss():
        with torch.no_grad():
            terms = diffusion.training_losses(model, x_eval, dict(y=y_eval), t=t_eval, x0=noise_eval)
        return terms["loss"].mean().item(), terms["mse"].mean().item()

    before = eval_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0)
    for _ in range(30):
        x, y = batch(32)
        loss = diffusion.training_losses(model, x, dict(y=y), t=diffusion.sample_t(32, generator=g),
                                         x0=torch.randn(x.shape, generator=g))["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert math.isclose(before[1], noise_eval.pow(2).mean().item(), rel_tol=1e-5)  # zero-init output: eps_hat = 0
    assert after[0] < 0.8 * before[0] and after[1] < 0.8 * before[1]


def test_latent_sampler_runs_the_ddpm_chain(one_thread):
    cfg = load_config(BASELINE, TINY + ["sample.num_sampling_steps=20", "sample.cfg_scale=2.0"])
    torch.manual_seed(0)
    model = build_model(cfg, training=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    z, y = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2, 3])
    out = LatentSampler(cfg, model)(z, y, sde_seed=5)
    direct = DDPMSampler(build_transport(cfg), 20)

    def guided(x, i):  # DiT's forward_with_cfg: one pass on [x; x], the first 3 eps channels guided
        t = torch.full((6,), direct.timestep_map[i])
        both = model(torch.cat([x, x]), t, torch.cat([y, torch.full_like(y, 10)]), return_sigma=True)
        cond, uncond = both[:3], both[3:]
        return torch.cat([uncond[:, :3] + 2.0 * (cond[:, :3] - uncond[:, :3]), cond[:, 3:]], dim=1)

    expected = direct(z, guided, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, expected) and torch.isfinite(out).all()
    assert not torch.allclose(out, LatentSampler(cfg, model)(z, y, sde_seed=6))


def test_baseline_config_trains_and_samples_to_npz(tmp_path, one_thread):
    """table1_00 with test-sized overrides: train.main for a few steps, then inference.main
    from its checkpoint to the .npz (random tiny tokenizer for the decode)."""
    import inference
    import train
    data = write_tiny_latents(str(tmp_path / "latents"), num_items=32, shape=(4, 4, 4), num_classes=10)
    valid = write_tiny_latents(str(tmp_path / "valid"), num_items=8, shape=(4, 4, 4), num_classes=10, seed=1)
    common = TINY + [f"data.data_path={data}", f"train.output_dir={tmp_path / 'out'}"]
    train.main([BASELINE, *common, "train.global_batch_size=8", "train.max_steps=4", "train.log_every=2",
                "train.ckpt_every=4", f"data.valid_path={valid}", "train.valid_every=4", "train.num_valid_batches=1"])
    run = tmp_path / "out" / "table1_00_dit_baseline"
    ckpt = run / "checkpoints" / "0000004.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["config"]["transport"]["objective"] == "ddpm" and state["t_sampling"]["lognorm_active"] is False
    valid_losses = [row["valid_loss"] for row in state["log_history"] if "valid_loss" in row]
    assert len(valid_losses) == 1 and 0 < valid_losses[0] < 10  # fixed validation t in [0, 1) -> floor(t T)
    assert state["ema"]["final_layer.linear.weight"].shape[0] == 2 * 2 * 8  # patch 2, learn_sigma: 2 x 4 channels
    folder = inference.main([BASELINE, *common, f"ckpt_path={ckpt}", "sample.fid_num=4",
                             "sample.per_proc_batch_size=2", "sample.num_sampling_steps=10", "--vae-random-init"])
    images = np.load(f"{folder}.npz")["arr_0"]
    assert images.shape == (4, 8, 8, 3) and images.dtype == np.uint8


def test_return_sigma_keeps_the_variance_half():
    cfg = load_config(BASELINE, TINY)
    torch.manual_seed(0)
    model = build_model(cfg, training=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        x, t, y = torch.randn(2, 4, 4, 4), torch.tensor([3, 900]), torch.tensor([0, 10])
        full = model(x, t, y, return_sigma=True)
        assert full.shape == (2, 8, 4, 4)
        assert torch.equal(full[:, :4], model(x, t, y)) and full[:, 4:].abs().max() > 0

"""Samplers: grids, solver stepping, closed-form Gaussian transport, SDE moments, likelihood."""
import math

import pytest
import torch

from transport import Sampler, create_transport

from conftest import GaussianLinearFlow, as_denoiser

M, S = 1.5, 0.5


def test_shifted_grid_matches_reference_values():
    grid = Sampler(create_transport()).ode_grid(250, 0.3)
    assert grid.dtype == torch.float32 and grid.shape == (250,)
    assert grid[0].item() == 0.0 and grid[-1].item() == 1.0
    assert grid[1].item() == pytest.approx(0.001208, abs=5e-7)
    assert grid[2].item() == pytest.approx(0.002423, abs=5e-7)
    assert grid[3].item() == pytest.approx(0.003645, abs=5e-7)
    assert grid[-3].item() == pytest.approx(0.97372, abs=5e-6)
    assert grid[-2].item() == pytest.approx(0.98674, abs=5e-6)
    # bit-identical to the reference's element-wise construction from 0-d float32 tensors
    s = 0.3
    plain = torch.tensor([s * ts / (1 + (s - 1) * ts) for ts in torch.linspace(0, 1, 250)])
    assert torch.equal(grid, plain)
    # no shift: plain float32 linspace; reverse: flipped
    assert torch.equal(Sampler(create_transport()).ode_grid(7), torch.linspace(0, 1, 7))
    assert torch.equal(Sampler(create_transport()).ode_grid(7, 0.3, reverse=True), Sampler(create_transport()).ode_grid(7, 0.3).flip(0))


def test_euler_makes_n_minus_1_calls_and_steps_exactly():
    n = 10
    sampler = Sampler(create_transport())
    grid = sampler.ode_grid(n, 0.3)
    calls = []

    def model(x, t):
        calls.append(t.clone())
        return torch.sin(3 * x) + t[:, None]

    x0 = torch.randn(3, 2)
    traj = sampler.sample_ode("euler", num_steps=n, timestep_shift=0.3)(x0, as_denoiser(model))
    assert traj.shape == (n, 3, 2)
    assert len(calls) == n - 1
    assert torch.equal(torch.stack([c[0] for c in calls]), grid[:-1])  # never evaluated at t = 1
    assert all(torch.equal(c, c[0].expand(3)) for c in calls)
    x = x0
    for i in range(n - 1):  # x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i)
        x = x + (grid[i + 1] - grid[i]) * (torch.sin(3 * x) + grid[i])
        assert torch.equal(traj[i + 1], x)


@pytest.mark.parametrize("method,per_step", [("midpoint", 2), ("heun2", 2), ("rk4", 4)])
def test_fixed_grid_methods_step_between_grid_points(method, per_step):
    n = 6
    sampler = Sampler(create_transport())
    grid = sampler.ode_grid(n, 0.3)
    times = []

    def model(x, t):
        times.append(t[0].item())
        return -x

    x0 = torch.ones(2, 1, dtype=torch.float64)
    traj = sampler.sample_ode(method, num_steps=n, timestep_shift=0.3)(x0, as_denoiser(model))
    assert len(times) == per_step * (n - 1)
    starts = times[::per_step]
    assert starts == pytest.approx(grid[:-1].tolist(), abs=0)
    # a linear ODE dx/dt = -x: each step is the method's stability polynomial in h = dt
    dt = (grid[1:] - grid[:-1]).double()
    if method == "rk4":
        factor = 1 - dt + dt ** 2 / 2 - dt ** 3 / 6 + dt ** 4 / 24
    else:
        factor = 1 - dt + dt ** 2 / 2
    torch.testing.assert_close(traj[:, 0, 0], torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(factor, 0)]))


@pytest.mark.parametrize("method,tol", [("dopri5", 1e-3), ("euler", 0.1), ("heun2", 2e-3)])
def test_gaussian_ode_transport_forward_and_reverse(method, tol):
    """The Linear-path flow of N(m, s^2) maps z to m + s z; reverse maps it back."""
    flow = GaussianLinearFlow(M, S)
    sampler = Sampler(create_transport())
    z = torch.randn(2000, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    kw = dict(num_steps=100, timestep_shift=0.3, atol=1e-7, rtol=1e-5)
    x = sampler.sample_ode(method, **kw)(z, as_denoiser(flow.velocity))[-1]
    torch.testing.assert_close(x, M + S * z, atol=tol, rtol=0)
    assert x.mean().item() == pytest.approx(M + S * z.mean().item(), abs=tol)
    assert x.std().item() == pytest.approx(S * z.std().item(), abs=tol)
    back = sampler.sample_ode(method, reverse=True, **kw)(M + S * z, as_denoiser(flow.velocity))
    assert back.shape[0] == 100
    torch.testing.assert_close(back[-1], z, atol=tol / S, rtol=0)


def test_dopri5_honours_tolerances():
    flow = GaussianLinearFlow(M, S)
    sampler = Sampler(create_transport())
    z = torch.randn(500, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loose = sampler.sample_ode("dopri5", num_steps=2, atol=1e-3, rtol=1e-3)(z, as_denoiser(flow.velocity))[-1]
    tight = sampler.sample_ode("dopri5", num_steps=2, atol=1e-9, rtol=1e-9)(z, as_denoiser(flow.velocity))[-1]
    err_loose = (loose - (M + S * z)).abs().max().item()
    err_tight = (tight - (M + S * z)).abs().max().item()
    assert err_tight < 1e-7 and err_tight < err_loose


@pytest.mark.parametrize("prediction", ["noise", "score"])
def test_noise_and_score_models_sample_through_the_drift(prediction):
    flow = GaussianLinearFlow(M, S)
    tr = create_transport("Linear", prediction)
    model = flow.noise if prediction == "noise" else flow.score
    z = torch.randn(1000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = Sampler(tr).sample_ode("dopri5", num_steps=2, atol=1e-8, rtol=1e-8)(z, as_denoiser(model))[-1]
    # the grid stops at 1 - 1e-3, so the map is m + s z only up to O(1e-3)
    torch.testing.assert_close(x, M + S * z, atol=5e-3, rtol=0)


@pytest.mark.parametrize("method", ["Euler", "Heun"])
@pytest.mark.parametrize("last_step", ["Mean", "Tweedie"])
def test_sde_gaussian_moments(method, last_step):
    """Upstream returns NaN here (t0 = 0); samples must be finite with the data moments."""
    flow = GaussianLinearFlow(M, S)
    sampler = Sampler(create_transport())
    g = torch.Generator().manual_seed(0)
    fn = sampler.sample_sde(sampling_method=method, last_step=last_step, num_steps=100, generator=g)
    z = torch.randn(4000, 1, generator=g)
    states = fn(z, as_denoiser(flow.velocity))
    assert states.shape == (100, 4000, 1) and torch.isfinite(states).all()
    x = states[-1]
    assert x.mean().item() == pytest.approx(M, abs=0.03)
    assert x.std().item() == pytest.approx(S, abs=0.03)
    # reproducible from the generator
    g2 = torch.Generator().manual_seed(0)
    fn2 = sampler.sample_sde(sampling_method=method, last_step=last_step, num_steps=100, generator=g2)
    assert torch.equal(fn2(torch.randn(4000, 1, generator=g2), as_denoiser(flow.velocity))[-1], x)


def test_sde_rejects_unknown_options():
    sampler = Sampler(create_transport())
    with pytest.raises(ValueError, match="Bogus"):
        sampler.sample_sde(last_step="Bogus")
    with pytest.raises(ValueError, match="RK"):
        sampler.sample_sde(sampling_method="RK", num_steps=3)(torch.zeros(1, 1), lambda x, s: x)
    with pytest.raises(ValueError, match="rk45"):
        sampler.sample_ode("rk45")


def _gaussian_logpdf(x, m, s):
    d = x[0].numel()
    return (-0.5 * d * math.log(2 * math.pi * s ** 2) - 0.5 * ((x - m) / s).flatten(1).pow(2).sum(1))


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_likelihood_identity_flow(divergence):
    """Data N(0, I) on the Linear path: the flow map is the identity, log p = log N(x; 0, I)."""
    flow = GaussianLinearFlow(0.0, 1.0)
    x = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fn = Sampler(create_transport()).sample_ode_likelihood(atol=1e-9, rtol=1e-9, divergence=divergence,
                                                           generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # must work from a no-grad context
        logp, z = fn(x, as_denoiser(flow.velocity))
    assert logp.shape == (64,)
    torch.testing.assert_close(z, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(logp, _gaussian_logpdf(x, 0.0, 1.0), atol=1e-6, rtol=0)


def test_likelihood_general_gaussian_and_nonisotropic_field():
    flow = GaussianLinearFlow(M, S)
    x = M + S * torch.randn(32, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    logp, z = Sampler(create_transport()).sample_ode_likelihood(atol=1e-9, rtol=1e-9, divergence="exact")(x, as_denoiser(flow.velocity))
    torch.testing.assert_close(z, (x - M) / S, atol=1e-6, rtol=0)
    torch.testing.assert_close(logp, _gaussian_logpdf(x, M, S), atol=1e-6, rtol=0)
    # a per-dimension scale field v = a x (Jacobian diag(a)): exact divergence sum(a)
    a = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    x = torch.randn(8, 3, dtype=torch.float64)
    logp, z = Sampler(create_transport()).sample_ode_likelihood(atol=1e-10, rtol=1e-10, divergence="exact")(x, lambda x_, s: a * x_)
    torch.testing.assert_close(z, x * torch.exp(-a), atol=1e-7, rtol=0)
    torch.testing.assert_close(logp, _gaussian_logpdf(z, 0.0, 1.0) - a.sum(), atol=1e-7, rtol=0)


class RandomField:
    """A random nonlinear time-dependent field f(x, t) = tanh(x W) (1 + t) - x t^2 (B, D)."""

    def __init__(self, dim=6, seed=0):
        self.w = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed))

    def __call__(self, x, t):
        t = t.to(x.dtype)[:, None]
        return torch.tanh(x @ self.w.to(x.dtype)) * (1 + t) - x * t ** 2


@pytest.mark.parametrize("method", ["euler", "heun2"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fixed_grid_steppers_are_torchdiffeq_bit_for_bit(method, reverse, dtype):
    """Our euler / heun2 against torchdiffeq.odeint on random fields: the same states and the same
    evaluation times, forward and on the flipped grid, in the state's dtype."""
    from torchdiffeq import odeint
    field = RandomField(seed=len(method) + int(reverse))
    sampler = Sampler(create_transport())
    for shift in (0.0, 0.3):
        grid = sampler.ode_grid(23, shift, reverse=reverse)
        x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1)).to(dtype)
        ref_times, our_times = [], []
        ref = odeint(lambda t, x_: ref_times.append(t.item()) or field(x_, torch.ones(5) * t), x, grid, method=method)
        ours = sampler.sample_ode(method, num_steps=23, timestep_shift=shift, reverse=reverse)(
            x, lambda x_, s: our_times.append(s) or field(x_, torch.full((5,), s)))
        assert torch.equal(ours, ref) and our_times == ref_times
        assert all(type(s) is float for s in our_times)


def test_denoiser_gets_host_floats_for_every_method():
    sampler = Sampler(create_transport())
    seen = []
    field = RandomField()
    for method in ("dopri5", "rk4", "euler_phase"):
        sampler.sample_ode(method, num_steps=5)(torch.randn(2, 6), lambda x, s: seen.append(s) or field(x, torch.full((2,), s)))
    g = torch.Generator().manual_seed(0)
    sampler.sample_sde(sampling_method="Heun", num_steps=5, generator=g)(torch.randn(2, 6), lambda x, s: seen.append(s) or -x)
    assert len(seen) > 20 and all(type(s) is float for s in seen)

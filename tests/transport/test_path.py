"""Path coefficients against their formulas, finite-difference derivatives and conversions."""
import math

import pytest
import torch

from transport.path import GVPCPlan, ICPlan, VPCPlan

from conftest import GaussianLinearFlow

T = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)


def vp_reference(t, smin=0.1, smax=20.0):
    lmc = -0.25 * (1 - t) ** 2 * (smax - smin) - 0.5 * (1 - t) * smin
    alpha = torch.exp(lmc)
    return alpha, torch.sqrt(1 - alpha ** 2)


@pytest.mark.parametrize("plan,alpha_fn,sigma_fn", [
    (ICPlan(), lambda t: t, lambda t: 1 - t),
    (GVPCPlan(), lambda t: torch.sin(math.pi * t / 2), lambda t: torch.cos(math.pi * t / 2)),
    (VPCPlan(), lambda t: vp_reference(t)[0], lambda t: vp_reference(t)[1]),
])
def test_coefficients_match_formulas_and_finite_differences(plan, alpha_fn, sigma_fn):
    alpha, d_alpha = plan.compute_alpha_t(T)
    sigma, d_sigma = plan.compute_sigma_t(T)
    torch.testing.assert_close(alpha, alpha_fn(T))
    torch.testing.assert_close(sigma, sigma_fn(T))
    h = 1e-6
    torch.testing.assert_close(d_alpha, (alpha_fn(T + h) - alpha_fn(T - h)) / (2 * h), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(d_sigma, (sigma_fn(T + h) - sigma_fn(T - h)) / (2 * h), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(plan.compute_d_alpha_alpha_ratio_t(T), d_alpha / alpha)


def test_linear_closed_forms():
    plan = ICPlan()
    x = torch.randn(19, 3, dtype=torch.float64)
    mean, var = plan.compute_drift(x, T)
    torch.testing.assert_close(mean, -x / T[:, None])
    torch.testing.assert_close(var, ((1 - T) / T)[:, None])
    v = torch.randn_like(x)
    torch.testing.assert_close(plan.get_score_from_velocity(v, x, T), (T[:, None] * v - x) / (1 - T[:, None]))
    torch.testing.assert_close(plan.compute_diffusion(x, T, form="SBDM", norm=2.0), 2 * (1 - T[:, None]) / T[:, None])
    torch.testing.assert_close(plan.compute_diffusion(x, T, form="sigma"), (1 - T[:, None]))
    torch.testing.assert_close(plan.compute_diffusion(x, T, form="linear", norm=0.5), 0.5 * (1 - T[:, None]))
    torch.testing.assert_close(plan.compute_diffusion(x, T, form="decreasing", norm=1.0),
                               0.25 * (torch.cos(math.pi * T[:, None]) + 1) ** 2)
    torch.testing.assert_close(plan.compute_diffusion(x, T, form="inccreasing-decreasing"),
                               torch.sin(math.pi * T[:, None]) ** 2)
    with pytest.raises(ValueError, match="bogus"):
        plan.compute_diffusion(x, T, form="bogus")


def test_vp_drift_formula():
    x = torch.randn(19, 2, dtype=torch.float64)
    beta = 0.1 + (1 - T) * (20 - 0.1)
    mean, var = VPCPlan().compute_drift(x, T)
    torch.testing.assert_close(mean, -0.5 * beta[:, None] * x)
    torch.testing.assert_close(var, beta[:, None] / 2)


@pytest.mark.parametrize("plan", [ICPlan(), GVPCPlan(), VPCPlan()])
def test_plan_interpolant_and_target(plan):
    x0, x1 = torch.randn(19, 3, dtype=torch.float64), torch.randn(19, 3, dtype=torch.float64)
    t, xt, ut = plan.plan(T, x0, x1)
    a, da = plan.compute_alpha_t(T[:, None])
    s, ds = plan.compute_sigma_t(T[:, None])
    torch.testing.assert_close(xt, a * x1 + s * x0)
    torch.testing.assert_close(ut, da * x1 + ds * x0)
    # u_t is d x_t / dt for fixed (x0, x1)
    h = 1e-6
    fd = (plan.compute_xt(T + h, x0, x1) - plan.compute_xt(T - h, x0, x1)) / (2 * h)
    torch.testing.assert_close(ut, fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("plan", [ICPlan(), GVPCPlan(), VPCPlan()])
def test_score_noise_velocity_conversions_are_consistent(plan):
    """For fixed (x0, x1), v = u_t and x0 are consistent; conversions must round-trip."""
    x0, x1 = torch.randn(19, 3, dtype=torch.float64), torch.randn(19, 3, dtype=torch.float64)
    _, xt, ut = plan.plan(T, x0, x1)
    torch.testing.assert_close(plan.get_noise_from_velocity(ut, xt, T), x0)
    s = plan.compute_sigma_t(T[:, None])[0]
    score = plan.get_score_from_velocity(ut, xt, T)
    torch.testing.assert_close(score, -x0 / s)
    torch.testing.assert_close(plan.get_velocity_from_score(score, xt, T), ut)


def test_gaussian_velocity_matches_score_drift():
    """On Gaussian data, velocity = -drift_mean + drift_var * exact score (Linear path)."""
    flow = GaussianLinearFlow(0.7, 1.8)
    x = torch.randn(19, 4, dtype=torch.float64)
    torch.testing.assert_close(ICPlan().get_velocity_from_score(flow.score(x, T), x, T), flow.velocity(x, T))

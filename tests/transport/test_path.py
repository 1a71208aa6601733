"""Path coefficients against their formulas, finite-difference derivatives and conversions."""
import math

import pytest
import torch

from transport.path import GVPCPlan, ICPlan, VPCPlan

from conftest import GaussianLinearFlow

T = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
TB = T[:, None]  # broadcast against (19, 3) states, as callers pass times


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
    mean, var = plan.compute_drift(x, TB)
    torch.testing.assert_close(mean, -x / TB)
    torch.testing.assert_close(var, ((1 - T) / T)[:, None])
    v = torch.randn_like(x)
    torch.testing.assert_close(plan.get_score_from_velocity(v, x, TB), (TB * v - x) / (1 - TB))
    torch.testing.assert_close(plan.compute_diffusion(x, TB, form="SBDM", norm=2.0), 2 * (1 - TB) / TB)
    torch.testing.assert_close(plan.compute_diffusion(x, TB, form="sigma"), (1 - TB))
    torch.testing.assert_close(plan.compute_diffusion(x, TB, form="linear", norm=0.5), 0.5 * (1 - TB))
    torch.testing.assert_close(plan.compute_diffusion(x, TB, form="decreasing", norm=1.0),
                               0.25 * (torch.cos(math.pi * TB) + 1) ** 2)
    torch.testing.assert_close(plan.compute_diffusion(x, TB, form="inccreasing-decreasing"),
                               torch.sin(math.pi * TB) ** 2)
    with pytest.raises(ValueError, match="bogus"):
        plan.compute_diffusion(x, TB, form="bogus")


def test_vp_drift_formula():
    x = torch.randn(19, 2, dtype=torch.float64)
    beta = 0.1 + (1 - T) * (20 - 0.1)
    mean, var = VPCPlan().compute_drift(x, TB)
    torch.testing.assert_close(mean, -0.5 * beta[:, None] * x)
    torch.testing.assert_close(var, beta[:, None] / 2)


@pytest.mark.parametrize("plan", [ICPlan(), GVPCPlan(), VPCPlan()])
def test_plan_interpolant_and_target(plan):
    x0, x1 = torch.randn(19, 3, dtype=torch.float64), torch.randn(19, 3, dtype=torch.float64)
    xt, ut = plan.plan(TB, x0, x1)
    a, da = plan.compute_alpha_t(TB)
    s, ds = plan.compute_sigma_t(TB)
    torch.testing.assert_close(xt, a * x1 + s * x0)
    torch.testing.assert_close(ut, da * x1 + ds * x0)
    # u_t is d x_t / dt for fixed (x0, x1)
    h = 1e-6
    fd = (plan.compute_xt(TB + h, x0, x1) - plan.compute_xt(TB - h, x0, x1)) / (2 * h)
    torch.testing.assert_close(ut, fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("plan", [ICPlan(), GVPCPlan(), VPCPlan()])
def test_score_velocity_conversions_are_consistent(plan):
    """For fixed (x0, x1), v = u_t and the score -x0 / sigma_t are consistent; conversions round-trip."""
    x0, x1 = torch.randn(19, 3, dtype=torch.float64), torch.randn(19, 3, dtype=torch.float64)
    xt, ut = plan.plan(TB, x0, x1)
    s = plan.compute_sigma_t(TB)[0]
    score = plan.get_score_from_velocity(ut, xt, TB)
    torch.testing.assert_close(score, -x0 / s)
    torch.testing.assert_close(plan.get_velocity_from_score(score, xt, TB), ut)


def test_per_channel_times_equal_per_group_plans():
    """(B, C, 1) times: each channel follows its own time, as separate plans per channel group."""
    plan = ICPlan()
    x0, x1 = torch.randn(4, 5, 3), torch.randn(4, 5, 3)
    ta, tb = torch.rand(4), torch.rand(4)
    t = torch.cat([ta[:, None].expand(-1, 3), tb[:, None].expand(-1, 2)], dim=1)[..., None]
    xt, ut = plan.plan(t, x0, x1)
    xa, ua = plan.plan(ta[:, None, None], x0[:, :3], x1[:, :3])
    xb, ub = plan.plan(tb[:, None, None], x0[:, 3:], x1[:, 3:])
    assert torch.equal(xt, torch.cat([xa, xb], 1)) and torch.equal(ut, torch.cat([ua, ub], 1))


def test_gaussian_velocity_matches_score_drift():
    """On Gaussian data, velocity = -drift_mean + drift_var * exact score (Linear path)."""
    flow = GaussianLinearFlow(0.7, 1.8)
    x = torch.randn(19, 4, dtype=torch.float64)
    torch.testing.assert_close(ICPlan().get_velocity_from_score(flow.score(x, T), x, TB), flow.velocity(x, T))

"""create_transport rules and the training objective."""
import pytest
import torch
from scipy import stats

from transport import create_transport
from transport.transport import ModelType, PathType, WeightType

from conftest import GaussianLinearFlow


def test_eps_rules():
    t = create_transport("Linear", "velocity", None, 0.1, 0.2)
    assert (t.train_eps, t.sample_eps) == (0.0, 0.0)  # forced, faithful
    t = create_transport("GVP", "velocity", None, 0.1, 0.2)
    assert (t.train_eps, t.sample_eps) == (0.0, 0.0)
    t = create_transport("VP", "velocity")
    assert (t.train_eps, t.sample_eps) == (1e-5, 1e-3)  # upstream leaves sample_eps None here
    t = create_transport("VP", "velocity", None, 1e-4, 2e-3)
    assert (t.train_eps, t.sample_eps) == (1e-4, 2e-3)
    t = create_transport("Linear", "noise")
    assert (t.train_eps, t.sample_eps) == (1e-3, 1e-3)
    t = create_transport("GVP", "score", "likelihood", 1e-2)
    assert (t.train_eps, t.sample_eps) == (1e-2, 1e-3)
    assert (t.model_type, t.path_type, t.loss_type) == (ModelType.SCORE, PathType.GVP, WeightType.LIKELIHOOD)


def test_check_interval():
    lin = create_transport()
    assert lin.check_interval(eval=True) == (0.0, 1.0)
    assert lin.check_interval(sde=True, eval=True, last_step_size=0.04) == (1e-3, 0.96)
    noise = create_transport("Linear", "noise")
    assert noise.check_interval() == (1e-3, 1 - 1e-3)
    vp = create_transport("VP")
    assert vp.check_interval(eval=True) == (0.0, 1 - 1e-3)
    assert vp.check_interval() == (0.0, 1 - 1e-5)  # training uses train_eps
    assert create_transport("Linear", "noise", train_eps=0.1, sample_eps=0.2).check_interval(eval=True) == (0.2, 0.8)


@pytest.mark.parametrize("kwargs,name", [({"path_type": "Cosine"}, "Cosine"),
                                         ({"prediction": "x0"}, "x0"),
                                         ({"loss_weight": "snr"}, "snr")])
def test_unknown_values_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        create_transport(**kwargs)


@pytest.mark.parametrize("path_type", ["Linear", "GVP", "VP"])
@pytest.mark.parametrize("prediction", ["velocity", "noise", "score"])
@pytest.mark.parametrize("loss_weight", [None, "velocity", "likelihood"])
def test_loss_of_exact_target_is_zero(path_type, prediction, loss_weight):
    tr = create_transport(path_type, prediction, loss_weight, use_cosine_loss=True)
    x1 = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    x0 = torch.randn_like(x1)
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.95], dtype=torch.float64)
    ps = tr.path_sampler
    tb = t[:, None, None, None]
    xt, ut = ps.plan(tb, x0, x1)
    sigma = ps.compute_sigma_t(tb)[0]
    target = {"velocity": ut, "noise": x0, "score": -x0 / sigma}[prediction]
    out = tr.training_losses(lambda x, t_: target, x1, t=t, x0=x0)
    torch.testing.assert_close(out["loss"], torch.zeros(6, dtype=torch.float64), atol=1e-20, rtol=0)
    assert out["pred"] is target
    # a wrong prediction gives a positive loss for every sample
    wrong = tr.training_losses(lambda x, t_: target + 0.1, x1, t=t, x0=x0)
    assert (wrong["loss"] > 0).all()
    if prediction == "velocity":
        torch.testing.assert_close(out["cos_loss"], torch.zeros(6, dtype=torch.float64), atol=1e-12, rtol=0)


def test_velocity_loss_and_cosine_loss_values():
    tr = create_transport(use_cosine_loss=True)
    x1, x0 = torch.randn(3, 5, 4, 4), torch.randn(3, 5, 4, 4)
    t = torch.tensor([0.2, 0.5, 0.8])
    pred = torch.randn(3, 5, 4, 4)
    out = tr.training_losses(lambda x, t_, **kw: pred, x1, t=t, x0=x0)
    u = x1 - x0
    torch.testing.assert_close(out["loss"], ((pred - u) ** 2).mean(dim=(1, 2, 3)))
    cos = (pred * u).sum(1) / (pred.norm(dim=1) * u.norm(dim=1)).clamp_min(1e-8)
    torch.testing.assert_close(out["cos_loss"], (1 - cos).mean(dim=(1, 2)))
    assert "cos_loss" not in create_transport().training_losses(lambda x, t_: pred, x1, t=t, x0=x0)


def test_model_sees_interpolant_and_kwargs():
    tr = create_transport()
    x1, x0, t = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2), torch.tensor([0.25, 0.75])
    seen = {}

    def model(x, t_, y):
        seen.update(x=x, t=t_, y=y)
        return torch.zeros_like(x)

    tr.training_losses(model, x1, model_kwargs={"y": torch.tensor([1, 2])}, t=t, x0=x0)
    torch.testing.assert_close(seen["x"], t[:, None, None, None] * x1 + (1 - t[:, None, None, None]) * x0)
    torch.testing.assert_close(seen["t"], t)
    assert seen["y"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="shape"):
        tr.training_losses(lambda x, t_: x[:, :1], x1, t=t, x0=x0)


def test_lognorm_draws_match_distribution_and_are_seeded():
    tr = create_transport(use_lognorm=True)
    t = tr.sample_t(20000, generator=torch.Generator().manual_seed(1))
    assert t.dtype == torch.float32 and 0 < t.min() and t.max() < 1
    logit = torch.logit(t.double()).numpy()
    assert stats.kstest(logit, "norm").pvalue > 1e-3
    assert stats.kstest(t.double().numpy(), "uniform").pvalue < 1e-6
    t2 = tr.sample_t(20000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(t, t2)
    # mean / std of the normal are honoured
    tr2 = create_transport(use_lognorm=True, lognorm_mean=0.5, lognorm_std=2.0)
    logit = torch.logit(tr2.sample_t(20000, generator=torch.Generator().manual_seed(2)).double()).numpy()
    assert stats.kstest(logit, "norm", args=(0.5, 2.0)).pvalue > 1e-3
    # the global torch RNG is used by default, so torch.manual_seed makes draws reproducible
    torch.manual_seed(3)
    a = tr.sample_t(8)
    torch.manual_seed(3)
    assert torch.equal(a, tr.sample_t(8))


def test_uniform_draws_and_lognorm_switch_off():
    tr = create_transport(use_lognorm=True, lognorm_until_step=100)
    g = torch.Generator().manual_seed(0)
    assert tr.lognorm_active(99) and not tr.lognorm_active(100) and tr.lognorm_active(None)
    t = tr.sample_t(20000, generator=g, step=100)
    assert stats.kstest(t.double().numpy(), "uniform").pvalue > 1e-3
    t = tr.sample_t(20000, generator=g, step=99)
    assert stats.kstest(torch.logit(t.double()).numpy(), "norm").pvalue > 1e-3
    tr.use_lognorm = False  # the mutable switch
    assert not tr.lognorm_active(0)
    # noise-prediction training times lie in (train_eps, 1 - train_eps)
    tr = create_transport("Linear", "noise", train_eps=0.1)
    t = tr.sample_t(1000, generator=g)
    assert t.min() >= 0.1 and t.max() <= 0.9


def test_training_losses_seeded_draws():
    tr = create_transport(use_lognorm=True)
    x1 = torch.randn(4, 3, 2, 2)
    model = lambda x, t: x * t[:, None, None, None]
    a = tr.training_losses(model, x1, generator=torch.Generator().manual_seed(5))
    b = tr.training_losses(model, x1, generator=torch.Generator().manual_seed(5))
    c = tr.training_losses(model, x1, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a["loss"], b["loss"]) and not torch.equal(a["loss"], c["loss"])


def test_gaussian_velocity_minimises_the_loss():
    """The analytic E[u_t | x_t] attains a lower loss than perturbed fields (sanity of the target)."""
    flow = GaussianLinearFlow(1.0, 0.5)
    tr = create_transport()
    g = torch.Generator().manual_seed(0)
    x1 = 1.0 + 0.5 * torch.randn(4000, 1, 1, 1, generator=g, dtype=torch.float64)
    x0 = torch.randn(4000, 1, 1, 1, generator=g, dtype=torch.float64)
    t = torch.rand(4000, generator=g, dtype=torch.float64)
    best = tr.training_losses(flow.velocity, x1, t=t, x0=x0)["loss"].mean()
    for d in (-0.1, 0.1):
        worse = tr.training_losses(lambda x, t_: flow.velocity(x, t_) + d, x1, t=t, x0=x0)["loss"].mean()
        assert worse > best

"""VA-VAE objective (tokenizer/losses.py) against hand-computed values and plain re-implementations."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenizer.distributions import DiagonalGaussianDistribution
from tokenizer.losses import (LPIPSWithDiscriminator, adaptive_disc_weight, adaptive_vf_weight,
                              adopt_weight, hinge_d_loss, vanilla_d_loss, vf_loss)



def _two_token_case():
    # z tokens (1,0), (0,1); f tokens (1,0), (1,1)/sqrt2 -> Gz = I, Gf off-diagonal 1/sqrt2,
    # cos per token (1, 1/sqrt2). Layout (B=1, C=2, H=1, W=2).
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)
    f = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)
    return z, f


def test_vf_loss_hand_computed_no_margin():
    z, f = _two_token_case()
    r = 1 / math.sqrt(2)
    mdms = 2 * r / 4                      # mean over all 4 Gram entries: the diagonal is included
    mcos = (0.0 + (1 - r)) / 2
    assert vf_loss(z, f).item() == pytest.approx(mdms + mcos, abs=1e-6)
    assert vf_loss(z, f).item() == pytest.approx(0.5, abs=1e-6)
    # weights scale the two terms separately
    assert vf_loss(z, f, distmat_weight=2.0, cos_weight=0.0).item() == pytest.approx(2 * mdms, abs=1e-6)
    assert vf_loss(z, f, distmat_weight=0.0, cos_weight=3.0).item() == pytest.approx(3 * mcos, abs=1e-6)


def test_vf_loss_hand_computed_margins():
    z, f = _two_token_case()
    r = 1 / math.sqrt(2)
    mdms = 2 * max(r - 0.5, 0) / 4
    mcos = (max(1 - 0.2 - 1.0, 0) + max(1 - 0.2 - r, 0)) / 2
    got = vf_loss(z, f, distmat_margin=0.5, cos_margin=0.2).item()
    assert got == pytest.approx(mdms + mcos, abs=1e-6)
    assert vf_loss(z, f, distmat_margin=0.8, cos_margin=0.3).item() == pytest.approx(0.0, abs=1e-7)


def _plain_vf_loss(z, f, m2, m1):
    """Loop implementation of docs/reference_behaviour.md §6.6 (independent of the vectorised one)."""
    B, C, H, W = z.shape
    tz = z.reshape(B, C, H * W)
    tf = f.reshape(B, C, H * W)
    mdms, mcos = [], []
    for b in range(B):
        for i in range(H * W):
            zi, fi = tz[b, :, i], tf[b, :, i]
            mcos.append(max(1 - m1 - float(zi @ fi / (zi.norm() * fi.norm())), 0.0))
            for j in range(H * W):
                zj, fj = tz[b, :, j], tf[b, :, j]
                gz = float(zi @ zj / (zi.norm() * zj.norm()))
                gf = float(fi @ fj / (fi.norm() * fj.norm()))
                mdms.append(max(abs(gz - gf) - m2, 0.0))
    return sum(mdms) / len(mdms) + sum(mcos) / len(mcos)


@pytest.mark.parametrize("m2,m1", [(0.0, 0.0), (0.25, 0.5)])
def test_vf_loss_matches_loop_implementation(m2, m1):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 5, 3, 3, generator=g, dtype=torch.float64)
    f = torch.randn(2, 5, 3, 3, generator=g, dtype=torch.float64)
    got = vf_loss(z, f, distmat_margin=m2, cos_margin=m1).item()
    assert got == pytest.approx(_plain_vf_loss(z, f, m2, m1), abs=1e-5)


def test_vf_loss_zero_for_positive_rescaling():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(2, 8, 4, 4, generator=g)
    scale = torch.rand(2, 1, 4, 4, generator=g) * 5 + 0.1   # per-token positive scale
    assert vf_loss(f * scale, f).item() == pytest.approx(0.0, abs=1e-5)
    assert vf_loss(-f, f).item() > 1.0                     # a negative scale is not aligned


def test_adaptive_vf_weight_against_hand_gradients():
    g = torch.Generator().manual_seed(2)
    W = nn.Parameter(torch.randn(3, 4, generator=g))
    x = torch.randn(4, generator=g)
    A = torch.randn(3, 4, generator=g)
    nll = ((W @ x) ** 2).sum()                 # d/dW = 2 (W x) x^T
    vf = (W * A).sum() + 0.0 * nll             # d/dW = A
    grad_nll = 2 * torch.outer((W @ x).detach(), x)
    expected = grad_nll.norm() / (A.norm() + 1e-4) * 0.1
    w = adaptive_vf_weight(nll, vf, W, vf_weight=0.1)
    assert not w.requires_grad
    assert w.item() == pytest.approx(expected.item(), rel=1e-5)
    # the same rule with the GAN clamp (1e4) and a tiny denominator gradient clamps
    g_loss = (W * 1e-9).sum()
    d = adaptive_disc_weight(nll, g_loss, W, disc_weight=0.5)
    assert d.item() == pytest.approx(min(grad_nll.norm().item() / (1e-9 * math.sqrt(12) + 1e-4), 1e4) * 0.5,
                                     rel=1e-5)
    assert adaptive_vf_weight(nll, g_loss, W, 1.0, max_weight=3.0).item() == pytest.approx(3.0)


def test_adaptive_weight_zero_without_graph():
    W = nn.Parameter(torch.ones(2, 2))
    with torch.no_grad():
        nll, vf = (W ** 2).sum(), W.sum()
    assert adaptive_vf_weight(nll, vf, W, 0.1).item() == 0.0


def test_discriminator_losses_closed_form():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.5])
    hinge = 0.5 * ((0 + 0.5 + 2.0) / 3 + (0 + 1.0 + 2.5) / 3)
    assert hinge_d_loss(real, fake).item() == pytest.approx(hinge)
    sp = lambda v: math.log1p(math.exp(v))
    vanilla = 0.5 * (sum(sp(-r) for r in real.tolist()) / 3 + sum(sp(f) for f in fake.tolist()) / 3)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(vanilla, rel=1e-6)
    assert adopt_weight(1.0, 4, threshold=5) == 0.0 and adopt_weight(1.0, 5, threshold=5) == 1.0


class _MSEPerceptual(nn.Module):
    """Stand-in perceptual distance (B, 1, 1, 1), to check the broadcast and weighting."""

    def forward(self, x, y):
        return ((x - y) ** 2).mean(dim=(1, 2, 3), keepdim=True)


def _setup(seed=0, B=2, R=16, C=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, R, R, generator=g) * 2 - 1
    h = torch.randn(B, 8, R, R, generator=g)
    dec_w = nn.Parameter(torch.randn(3, 8, 3, 3, generator=g) * 0.1)
    enc_w = nn.Parameter(torch.randn(2 * C, 3, 3, 3, generator=g) * 0.1)
    moments = F.conv2d(x, enc_w, padding=1)[:, :, ::4, ::4]
    post = DiagonalGaussianDistribution(moments)
    z = post.mode()
    rec = F.conv2d(h + z.mean(1, keepdim=True).repeat_interleave(4, 2).repeat_interleave(4, 3), dec_w, padding=1)
    aux = torch.randn(z.shape, generator=g)
    return x, rec, post, z, aux, dec_w, enc_w


def _loss(**kw):
    torch.manual_seed(0)
    base = dict(disc_start=3, kl_weight=1e-3, disc_weight=0.5, perceptual_weight=0.7,
                vf_weight=0.1, adaptive_vf=True, disc_ndf=8, disc_num_layers=2,
                perceptual_loss=_MSEPerceptual())
    base.update(kw)
    return LPIPSWithDiscriminator(**base)


def test_nll_and_kl_reductions():
    x, rec, post, z, aux, dec_w, enc_w = _setup()
    loss = _loss()
    total, log = loss.generator_loss(x, rec, post, step=0, last_layer=dec_w, enc_last_layer=enc_w)
    per_pixel = (x - rec).abs() + 0.7 * ((x - rec) ** 2).mean(dim=(1, 2, 3), keepdim=True)
    assert log["train/nll_loss"].item() == pytest.approx(per_pixel.sum().item() / 2, rel=1e-5)
    assert log["train/rec_loss"].item() == pytest.approx(per_pixel.mean().item(), rel=1e-5)
    kl = 0.5 * (post.mean ** 2 + post.var - 1 - post.logvar).sum() / 2
    assert log["train/kl_loss"].item() == pytest.approx(kl.item(), rel=1e-5)
    # before disc_start, without VF: nll + kl_weight * kl; d_weight is still computed (> 0)
    assert log["train/disc_factor"].item() == 0.0 and log["train/d_weight"].item() > 0
    assert total.item() == pytest.approx((per_pixel.sum() / 2 + 1e-3 * kl).item(), rel=1e-5)
    assert "train/vf_loss" not in log


@pytest.mark.parametrize("gan_on", [False, True])
@pytest.mark.parametrize("vf_mode", ["off", "fixed", "adaptive"])
def test_total_loss_assembly(gan_on, vf_mode):
    x, rec, post, z, aux, dec_w, enc_w = _setup(seed=3)
    loss = _loss(adaptive_vf=vf_mode == "adaptive")
    step = 5 if gan_on else 0
    vf_args = dict(z=z, aux_feature=aux) if vf_mode != "off" else {}
    total, log = loss.generator_loss(x, rec, post, step=step, last_layer=dec_w, enc_last_layer=enc_w, **vf_args)
    # independent pieces
    nll = ((x - rec).abs() + 0.7 * ((x - rec) ** 2).mean(dim=(1, 2, 3), keepdim=True)).sum() / 2
    kl = post.kl().sum() / 2
    g_loss = -loss.discriminator(rec).mean()
    gn = torch.autograd.grad(nll, dec_w, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g_loss, dec_w, retain_graph=True)[0].norm()
    d_weight = torch.clamp(gn / (gg + 1e-4), 0, 1e4) * 0.5
    assert log["train/d_weight"].item() == pytest.approx(d_weight.item(), rel=1e-4)
    expected = nll + 1e-3 * kl + (d_weight * g_loss if gan_on else 0.0)
    if vf_mode != "off":
        vf = vf_loss(z, aux)
        if vf_mode == "adaptive":
            en = torch.autograd.grad(nll, enc_w, retain_graph=True)[0].norm()
            ev = torch.autograd.grad(vf, enc_w, retain_graph=True)[0].norm()
            w = torch.clamp(en / (ev + 1e-4), 0, 1e8) * 0.1
        else:
            w = torch.tensor(0.1)
        assert log["train/vf_weight"].item() == pytest.approx(w.item(), rel=1e-4)
        assert log["train/vf_loss"].item() == pytest.approx(vf.item(), rel=1e-5)
        expected = expected + w * vf
    assert log["train/disc_factor"].item() == (1.0 if gan_on else 0.0)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    # gradients reach both last layers; D gets none from the generator step
    total.backward()
    assert dec_w.grad is not None and enc_w.grad is not None
    assert all(p.grad is None and p.requires_grad for p in loss.discriminator.parameters())


def test_perceptual_weight_zero_and_disc_loss_gate():
    x, rec, post, z, aux, dec_w, enc_w = _setup(seed=4)
    loss = _loss(perceptual_weight=0.0, perceptual_loss=None, disc_loss="vanilla")
    assert loss.perceptual_loss is None
    _, log = loss.generator_loss(x, rec, post, step=0, last_layer=dec_w)
    assert log["train/rec_loss"].item() == pytest.approx((x - rec).abs().mean().item(), rel=1e-6)
    d0, _ = loss.discriminator_loss(x, rec, step=2)
    d1, logd = loss.discriminator_loss(x, rec, step=3)
    assert d0.item() == 0.0
    real, fake = loss.discriminator(x), loss.discriminator(rec.detach())
    assert d1.item() == pytest.approx(vanilla_d_loss(real, fake).item(), rel=1e-5)
    assert logd["train/logits_real"].item() == pytest.approx(real.mean().item(), rel=1e-5)


def test_disc_start_counting_modes():
    x, rec, post, z, aux, dec_w, enc_w = _setup(seed=5)
    batches = _loss(disc_start=5001)
    lightning = _loss(disc_start=5001, disc_start_counts_optimizer_steps=True)
    gate = lambda lf, step: (lf.generator_loss(x, rec, post, step)[1]["train/disc_factor"].item(),
                             lf.discriminator_loss(x, rec, step)[0].item() != 0.0)
    assert gate(batches, 5000) == (0.0, False) and gate(batches, 5001) == (1.0, True)
    # Lightning's global_step: 2b before the generator step of batch b, 2b + 1 before the D step
    assert gate(lightning, 2499) == (0.0, False)
    assert gate(lightning, 2500) == (0.0, True)
    assert gate(lightning, 2501) == (1.0, True)


def test_no_grad_validation_path_and_options():
    x, rec, post, z, aux, dec_w, enc_w = _setup(seed=6)
    loss = _loss()
    with torch.no_grad():
        _, log = loss.generator_loss(x, rec, post, step=10, last_layer=dec_w, enc_last_layer=enc_w,
                                     z=z, aux_feature=aux, split="val")
    assert log["val/d_weight"].item() == 0.0 and log["val/vf_weight"].item() == 0.0
    with pytest.raises(ValueError, match="disc_loss"):
        _loss(disc_loss="wgan")
    with pytest.raises(ValueError, match="pp_style"):
        _loss(pp_style=True)
    assert loss.logvar.item() == 0.0 and not loss.logvar.requires_grad

"""AutoencoderKL (tokenizer/autoencoder.py, tokenizer/distributions.py) against closed forms and a
plain re-statement of the LDM blocks (docs/reference_behaviour.md §5.2-5.3, §11.2)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokenizer.autoencoder import (VAVAE_F16D32_DDCONFIG, AttnBlock, AutoencoderKL, Downsample,
                                   ResnetBlock, Upsample, check_ddconfig)
from tokenizer.distributions import DiagonalGaussianDistribution

TINY = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32,
            ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[16], dropout=0.0)


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (GroupNorm affine included) so every parameter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.dim() > 1 else 0.5))
    return module


# ----------------------------------------------------------------------------- plain formulation
def gn(x, sd, p):
    return F.group_norm(x, 32, sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)


def conv(x, sd, p, stride=1, padding=0):
    return F.conv2d(x, sd[p + ".weight"], sd[p + ".bias"], stride=stride, padding=padding)


def plain_resnet(x, sd, p):
    h = conv(F.silu(gn(x, sd, p + ".norm1")), sd, p + ".conv1", padding=1)
    h = conv(F.silu(gn(h, sd, p + ".norm2")), sd, p + ".conv2", padding=1)
    skip = conv(x, sd, p + ".nin_shortcut") if p + ".nin_shortcut.weight" in sd else x
    return skip + h


def plain_attn(x, sd, p):
    """LDM's bmm formulation: w = softmax(q^T k * C^-0.5) over keys, out = v w^T."""
    b, c, hh, ww = x.shape
    h = gn(x, sd, p + ".norm")
    q = conv(h, sd, p + ".q").reshape(b, c, hh * ww).permute(0, 2, 1)   # b, hw, c
    k = conv(h, sd, p + ".k").reshape(b, c, hh * ww)                     # b, c, hw
    w = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)         # b, hw(q), hw(k)
    v = conv(h, sd, p + ".v").reshape(b, c, hh * ww)
    out = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
    return x + conv(out, sd, p + ".proj_out")


def plain_encoder(x, sd, cfg):
    h = conv(x, sd, "encoder.conv_in", padding=1)
    for lvl in range(len(cfg["ch_mult"])):
        for j in range(cfg["num_res_blocks"]):
            h = plain_resnet(h, sd, f"encoder.down.{lvl}.block.{j}")
            if f"encoder.down.{lvl}.attn.{j}.q.weight" in sd:
                h = plain_attn(h, sd, f"encoder.down.{lvl}.attn.{j}")
        if f"encoder.down.{lvl}.downsample.conv.weight" in sd:
            h = conv(F.pad(h, (0, 1, 0, 1)), sd, f"encoder.down.{lvl}.downsample.conv", stride=2)
    h = plain_resnet(h, sd, "encoder.mid.block_1")
    h = plain_attn(h, sd, "encoder.mid.attn_1")
    h = plain_resnet(h, sd, "encoder.mid.block_2")
    h = conv(F.silu(gn(h, sd, "encoder.norm_out")), sd, "encoder.conv_out", padding=1)
    return conv(h, sd, "quant_conv")


def plain_decoder(z, sd, cfg):
    h = conv(conv(z, sd, "post_quant_conv"), sd, "decoder.conv_in", padding=1)
    h = plain_resnet(h, sd, "decoder.mid.block_1")
    h = plain_attn(h, sd, "decoder.mid.attn_1")
    h = plain_resnet(h, sd, "decoder.mid.block_2")
    for lvl in reversed(range(len(cfg["ch_mult"]))):
        for j in range(cfg["num_res_blocks"] + 1):
            h = plain_resnet(h, sd, f"decoder.up.{lvl}.block.{j}")
            if f"decoder.up.{lvl}.attn.{j}.q.weight" in sd:
                h = plain_attn(h, sd, f"decoder.up.{lvl}.attn.{j}")
        if lvl != 0:
            h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), sd,
                     f"decoder.up.{lvl}.upsample.conv", padding=1)
    return conv(F.silu(gn(h, sd, "decoder.norm_out")), sd, "decoder.conv_out", padding=1)


# ----------------------------------------------------------------------------- blocks
def test_attn_block_matches_bmm_formulation():
    blk = randomize_(AttnBlock(64), 1)
    x = torch.randn(2, 64, 5, 7, generator=torch.Generator().manual_seed(2))
    sd = {"a." + k: v for k, v in blk.state_dict().items()}
    diff = (blk(x) - plain_attn(x, sd, "a")).abs().max().item()
    assert diff <= 1e-4
    assert (blk(x) - x).abs().max() > 1e-2  # the attention branch does something


@pytest.mark.parametrize("cin,cout", [(32, 32), (32, 64)])
def test_resnet_block_matches_plain(cin, cout):
    blk = randomize_(ResnetBlock(cin, cout), 3)
    assert hasattr(blk, "nin_shortcut") == (cin != cout)
    x = torch.randn(2, cin, 6, 6, generator=torch.Generator().manual_seed(4))
    sd = {"r." + k: v for k, v in blk.state_dict().items()}
    assert (blk(x) - plain_resnet(x, sd, "r")).abs().max().item() <= 1e-4


def test_downsample_geometry_pad_right_bottom():
    """Output (i, j) sees input rows 2i..2i+2, cols 2j..2j+2, with a zero row/col past the end."""
    ds = randomize_(Downsample(1), 5)
    x = torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(6))
    y = ds(x)
    assert y.shape == (1, 1, 3, 3)
    w, b = ds.conv.weight[0, 0].detach().numpy(), ds.conv.bias.item()
    xp = np.zeros((7, 7))
    xp[:6, :6] = x[0, 0].numpy()  # zero padding on the right and bottom only
    expect = np.array([[(xp[2 * i: 2 * i + 3, 2 * j: 2 * j + 3] * w).sum() + b for j in range(3)]
                       for i in range(3)])
    np.testing.assert_allclose(y[0, 0].detach().numpy(), expect, atol=1e-5)


def test_upsample_nearest_then_conv():
    up = Upsample(1)
    with torch.no_grad():
        up.conv.weight.zero_()
        up.conv.weight[0, 0, 1, 1] = 1.0  # identity conv
        up.conv.bias.zero_()
    x = torch.arange(4.0).reshape(1, 1, 2, 2)
    expect = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3.0]])
    assert torch.equal(up(x)[0, 0], expect)


# ----------------------------------------------------------------------------- whole model
def test_encode_decode_match_plain_formulation():
    torch.manual_seed(0)
    model = randomize_(AutoencoderKL(TINY, embed_dim=4), 7).eval()
    sd = model.state_dict()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(8)) * 2 - 1
    with torch.no_grad():
        post = model.encode(x)
        moments = plain_encoder(x, sd, TINY)
        assert post.mean.shape == (2, 4, 16, 16)  # f2 with ch_mult [1, 2]
        assert (post.parameters - moments).abs().max().item() <= 1e-4 * max(1.0, moments.abs().max().item())
        z = post.mode()
        dec, ref = model.decode(z), plain_decoder(z, sd, TINY)
        assert dec.shape == (2, 3, 32, 32)
        assert (dec - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_f16_shape_contract_256px():
    cfg = dict(TINY, resolution=256, ch_mult=[1, 1, 1, 1, 1], ch=32, z_channels=8)
    model = AutoencoderKL(cfg, embed_dim=8).eval()
    assert model.downsample_factor == 16
    with torch.no_grad():
        post = model.encode(torch.zeros(1, 3, 256, 256))
        assert post.mean.shape == post.logvar.shape == (1, 8, 16, 16)
        assert model.decode(post.mode()).shape == (1, 3, 256, 256)


def expected_f16d32_table(E=32, mar=False):
    """Key -> shape from the formulas of docs/reference_behaviour.md §11.2."""
    c = (128, 128, 256, 256, 512)
    c_in = (128, 128, 128, 256, 256)
    t = {}

    def gn_(p, ch):
        t[p + ".weight"] = (ch,)
        t[p + ".bias"] = (ch,)

    def conv_(p, o, i, k):
        t[p + ".weight"] = (o, i, k, k)
        t[p + ".bias"] = (o,)

    def res(p, i, o):
        gn_(p + ".norm1", i); conv_(p + ".conv1", o, i, 3); gn_(p + ".norm2", o); conv_(p + ".conv2", o, o, 3)
        if i != o:
            conv_(p + ".nin_shortcut", o, i, 1)

    def attn(p, ch):
        gn_(p + ".norm", ch)
        for n in ("q", "k", "v", "proj_out"):
            conv_(f"{p}.{n}", ch, ch, 1)

    conv_("encoder.conv_in", 128, 3, 3)
    for lvl in range(5):
        for j in range(2):
            res(f"encoder.down.{lvl}.block.{j}", c_in[lvl] if j == 0 else c[lvl], c[lvl])
            if lvl == 4:
                attn(f"encoder.down.4.attn.{j}", 512)
        if lvl < 4:
            conv_(f"encoder.down.{lvl}.downsample.conv", c[lvl], c[lvl], 3)
    for side in ("encoder", "decoder"):
        res(f"{side}.mid.block_1", 512, 512); attn(f"{side}.mid.attn_1", 512); res(f"{side}.mid.block_2", 512, 512)
    gn_("encoder.norm_out", 512)
    conv_("encoder.conv_out", 2 * E, 512, 3)
    conv_("quant_conv", 2 * E, 2 * E, 1)
    conv_("post_quant_conv", E, E, 1)
    conv_("decoder.conv_in", 512, E, 3)
    for lvl in range(5):
        cin = 512 if lvl == 4 else c[lvl + 1]
        for j in range(3):
            res(f"decoder.up.{lvl}.block.{j}", cin if j == 0 else c[lvl], c[lvl])
            if lvl == 4 and not mar:
                attn(f"decoder.up.4.attn.{j}", 512)
        if lvl > 0:
            conv_(f"decoder.up.{lvl}.upsample.conv", c[lvl], c[lvl], 3)
    gn_("decoder.norm_out", 128)
    conv_("decoder.conv_out", 3, 128, 3)
    return t


def test_f16d32_key_table_on_meta():
    with torch.device("meta"):
        model = AutoencoderKL(VAVAE_F16D32_DDCONFIG, embed_dim=32)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_f16d32_table()
    assert len(got) == 342
    assert sum(p.numel() for p in model.parameters()) == 69_836_067
    assert sum(p.numel() for p in model.encoder.parameters()) == 28_413_248
    assert sum(p.numel() for p in model.decoder.parameters()) == 41_417_603


def test_mar_kl16_key_table_on_meta():
    cfg = dict(VAVAE_F16D32_DDCONFIG, z_channels=16)
    with torch.device("meta"):
        model = AutoencoderKL(cfg, embed_dim=16, decoder_attn_resolutions=())
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(got) == 312
    assert got == expected_f16d32_table(E=16, mar=True)
    assert "encoder.down.4.attn.0.q.weight" in got and "decoder.mid.attn_1.q.weight" in got


def test_ddconfig_validation():
    with pytest.raises(ValueError, match="missing keys \\['ch'\\]"):
        check_ddconfig({k: v for k, v in TINY.items() if k != "ch"})
    with pytest.raises(ValueError, match="unknown keys \\['chh'\\]"):
        check_ddconfig(dict(TINY, chh=1))
    with pytest.raises(ValueError, match="double_z"):
        AutoencoderKL(dict(TINY, double_z=False), embed_dim=4)


# ----------------------------------------------------------------------------- posterior math
def make_posterior(seed=0, shape=(3, 4, 5, 5)):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(shape, generator=g, dtype=torch.float64)
    logvar = torch.randn(shape, generator=g, dtype=torch.float64)
    return DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1)), mean, logvar


def test_kl_and_nll_against_torch_distributions():
    post, mean, logvar = make_posterior(0)
    std = torch.exp(0.5 * logvar)
    q = torch.distributions.Normal(mean, std)
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(post.kl(), torch.distributions.kl_divergence(q, prior).sum((1, 2, 3)))
    other, m2, lv2 = make_posterior(1)
    p2 = torch.distributions.Normal(m2, torch.exp(0.5 * lv2))
    torch.testing.assert_close(post.kl(other), torch.distributions.kl_divergence(q, p2).sum((1, 2, 3)))
    x = torch.randn(mean.shape, dtype=torch.float64)
    torch.testing.assert_close(post.nll(x), -q.log_prob(x).sum((1, 2, 3)))
    assert post.kl().shape == (3,)
    assert torch.equal(post.mode(), mean)
    torch.testing.assert_close(post.std, std)
    torch.testing.assert_close(post.var, torch.exp(logvar))


def test_logvar_is_clamped():
    params = torch.zeros(1, 2, 1, 3)
    params[0, 1, 0] = torch.tensor([-100.0, 0.5, 100.0])
    post = DiagonalGaussianDistribution(params)
    assert post.logvar.flatten().tolist() == [-30.0, 0.5, 20.0]
    assert post.std.flatten()[2].item() == pytest.approx(math.exp(10.0))


def test_sample_statistics_and_generators():
    mean = torch.tensor([1.5, -2.0]).view(1, 2, 1, 1).expand(1, 2, 200, 200)
    logvar = torch.log(torch.tensor([0.25, 4.0])).view(1, 2, 1, 1).expand(1, 2, 200, 200)
    post = DiagonalGaussianDistribution(torch.cat([mean, logvar], 1))
    s = post.sample(torch.Generator().manual_seed(0))
    assert s.shape == (1, 2, 200, 200)
    torch.testing.assert_close(s.mean((0, 2, 3)), torch.tensor([1.5, -2.0]), atol=0.03, rtol=0)
    torch.testing.assert_close(s.std((0, 2, 3)), torch.tensor([0.5, 2.0]), atol=0.03, rtol=0)
    # Same generator seed -> same sample; generator=None uses the CPU global RNG like the reference.
    assert torch.equal(s, post.sample(torch.Generator().manual_seed(0)))
    torch.manual_seed(3)
    s_global = post.sample()
    torch.manual_seed(3)
    eps = torch.randn(mean.shape)
    assert torch.equal(s_global, mean + torch.exp(0.5 * logvar) * eps)


def test_deterministic_posterior():
    post, mean, _ = make_posterior(0)
    det = DiagonalGaussianDistribution(post.parameters, deterministic=True)
    assert torch.equal(det.sample(), mean)
    assert torch.equal(det.kl(), torch.zeros(3, dtype=mean.dtype))

"""Tests for models/lightningdit.py against closed forms, invariants and an independent plain
formulation written here from docs/reference_behaviour.md §1 (einops RoPE, explicit softmax attention,
written-out RMSNorm, rearrange unpatchify) and SFD's model (two time embedders, REPA projector),
reading the weights from the state dict only. The network runs both as the plain modules and with
the CPU-kernel variants of models/kernels.py (parameter `kernels`)."""
import copy
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from models.attention import cpu_attention
from models.kernels import use_cpu_kernels
from models.lightningdit import (LightningDiT, LightningDiT_models, TimestepEmbedder, VisionRotaryEmbedding,
                                 get_2d_sincos_pos_embed, rotate_half)


RELEASED = dict(input_size=16, in_channels=32, use_swiglu=True, use_rope=True, use_rmsnorm=True)


# ----------------------------------------------------------------------------------------------
# Expected state-dict table (docs/reference_behaviour.md §11.1), written from the formulas
# ----------------------------------------------------------------------------------------------

def expected_shapes(D, depth, heads, p, C=32, input_size=16, learn_sigma=False, use_qknorm=False,
                    use_swiglu=False, use_rope=False, use_rmsnorm=False, wo_shift=False,
                    class_dropout_prob=0.1, num_classes=1000, mlp_ratio=4.0):
    G = input_size // p
    N, dh = G * G, D // heads
    c_out = 2 * C if learn_sigma else C
    K = num_classes + (1 if class_dropout_prob > 0 else 0)
    s = {
        "pos_embed": (1, N, D),
        "x_embedder.proj.weight": (D, C, p, p), "x_embedder.proj.bias": (D,),
        "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.0.bias": (D,),
        "t_embedder.mlp.2.weight": (D, D), "t_embedder.mlp.2.bias": (D,),
        "y_embedder.embedding_table.weight": (K, D),
        "final_layer.linear.weight": (p * p * c_out, D), "final_layer.linear.bias": (p * p * c_out,),
        "final_layer.adaLN_modulation.1.weight": (2 * D, D), "final_layer.adaLN_modulation.1.bias": (2 * D,),
    }
    if use_rope:
        s["feat_rope.freqs_cos"] = s["feat_rope.freqs_sin"] = (N, dh)
    if use_rmsnorm:
        s["final_layer.norm_final.weight"] = (D,)
    for i in range(depth):
        b = f"blocks.{i}."
        if use_rmsnorm:
            s[b + "norm1.weight"] = s[b + "norm2.weight"] = (D,)
        s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"] = (3 * D, D), (3 * D,)
        if use_qknorm:
            s[b + "attn.q_norm.weight"] = s[b + "attn.k_norm.weight"] = (dh,)
            if not use_rmsnorm:
                s[b + "attn.q_norm.bias"] = s[b + "attn.k_norm.bias"] = (dh,)
        s[b + "attn.proj.weight"], s[b + "attn.proj.bias"] = (D, D), (D,)
        if use_swiglu:
            Fh = int(2 / 3 * int(D * mlp_ratio))
            s[b + "mlp.w12.weight"], s[b + "mlp.w12.bias"] = (2 * Fh, D), (2 * Fh,)
            s[b + "mlp.w3.weight"], s[b + "mlp.w3.bias"] = (D, Fh), (D,)
        else:
            M = int(D * mlp_ratio)
            s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"] = (M, D), (M,)
            s[b + "mlp.fc2.weight"], s[b + "mlp.fc2.bias"] = (D, M), (D,)
        n_mod = 4 if wo_shift else 6
        s[b + "adaLN_modulation.1.weight"], s[b + "adaLN_modulation.1.bias"] = (n_mod * D, D), (n_mod * D,)
    return s


def meta_model(name, **kw):
    with torch.device("meta"):
        return LightningDiT_models[name](**kw)


def test_xl1_released_key_count_and_parameters():
    m = meta_model("LightningDiT-XL/1", **RELEASED)
    sd = m.state_dict()
    assert len(sd) == 351
    assert sum(p.numel() for p in m.parameters()) == 675_256_736
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 674_961_824
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_shapes(1152, 28, 16, 1, **{
        k: v for k, v in RELEASED.items() if k != "in_channels"})
    # No non-persistent buffers: every buffer is in the state dict (docs/reference_behaviour.md §1.3).
    assert {n for n, _ in m.named_buffers()} == {"feat_rope.freqs_cos", "feat_rope.freqs_sin"}
    assert all(v.dtype == torch.float32 for v in sd.values())


@pytest.mark.parametrize("change", [
    dict(use_rmsnorm=False), dict(use_swiglu=False), dict(use_qknorm=True), dict(use_qknorm=True, use_rmsnorm=False),
    dict(use_rope=False), dict(class_dropout_prob=0.0), dict(wo_shift=True), dict(learn_sigma=True), dict(patch=2),
])
def test_state_dict_table_variants(change):
    change = dict(change)
    p = change.pop("patch", 1)
    kw = {**RELEASED, **change}
    m = meta_model(f"LightningDiT-XL/{p}", **kw)
    exp = expected_shapes(1152, 28, 16, p, **{k: v for k, v in kw.items() if k != "in_channels"})
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == exp
    assert {n for n, _ in m.named_buffers()} <= set(got)


def test_registry_sizes():
    # (depth, hidden, patch, heads) fixed by the registry; params (M) from docs/reference_behaviour.md §1.1,
    # and for SFD's additions (S/1, S/2, L/1: its models/lightningdit.py) from the shape table.
    table = {"B/1": (12, 768, 1, 12, 130.56), "B/2": (12, 768, 2, 12, 130.56), "L/2": (24, 1024, 2, 16, 458.15),
             "XL/1": (28, 1152, 1, 16, 675.26), "XL/2": (28, 1152, 2, 16, 675.26),
             "1p0B/1": (24, 1536, 1, 24, 1029.40), "1p0B/2": (24, 1536, 2, 24, 1029.40),
             "1p6B/1": (28, 1792, 1, 28, 1631.77), "1p6B/2": (28, 1792, 2, 28, 1631.77),
             "S/1": (12, 384, 1, 6, None), "S/2": (12, 384, 2, 6, None), "L/1": (24, 1024, 1, 16, None)}
    assert set(LightningDiT_models) == {f"LightningDiT-{k}" for k in table}
    for k, (depth, D, p, h, mparams) in table.items():
        m = meta_model(f"LightningDiT-{k}", **RELEASED)
        assert len(m.blocks) == depth and m.pos_embed.shape[-1] == D and m.patch_size == p
        assert m.blocks[0].attn.num_heads == h
        shapes = expected_shapes(D, depth, h, p, **{k: v for k, v in RELEASED.items() if k != "in_channels"})
        assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == shapes
        n = sum(q.numel() for q in m.parameters())
        assert n == sum(math.prod(s) for name, s in shapes.items() if not name.startswith("feat_rope"))
        if mparams is not None:
            assert round(n / 1e6, 2) == mparams


def test_constructor_defaults():
    with torch.device("meta"):
        m = LightningDiT()
    assert m.pos_embed.shape == (1, 256, 1152) and len(m.blocks) == 28 and m.patch_size == 2
    assert m.in_channels == 32 and m.blocks[0].attn.num_heads == 16 and m.feat_rope is None


# ----------------------------------------------------------------------------------------------
# Closed forms: sin-cos table, timestep embedding, RoPE
# ----------------------------------------------------------------------------------------------

def test_pos_embed_formula():
    D, G = 16, 4
    table = get_2d_sincos_pos_embed(D, G)
    E = D // 2
    direct = np.zeros((G * G, D))
    for row in range(G):
        for col in range(G):
            n = row * G + col
            for half, pos in ((0, col), (1, row)):  # w (column) first, then h (row)
                for k in range(E // 2):
                    omega = 1.0 / 10000 ** (k / (E / 2))
                    direct[n, half * E + k] = math.sin(pos * omega)  # sin first
                    direct[n, half * E + E // 2 + k] = math.cos(pos * omega)
    np.testing.assert_allclose(table, direct, rtol=0, atol=1e-12)
    m = LightningDiT(input_size=8, patch_size=2, in_channels=4, hidden_size=D, depth=1, num_heads=2)
    torch.testing.assert_close(m.pos_embed[0], torch.tensor(direct, dtype=torch.float32), rtol=0, atol=0)
    assert not m.pos_embed.requires_grad


def test_timestep_embedding_cos_first_no_scaling():
    t = torch.tensor([0.0, 0.25, 1.0])
    emb = TimestepEmbedder.timestep_embedding(t, 256)
    k = torch.arange(128, dtype=torch.float64)
    f = torch.exp(-math.log(10000) * k / 128)
    ang = t.double()[:, None] * f
    torch.testing.assert_close(emb.double(), torch.cat([ang.cos(), ang.sin()], 1), rtol=0, atol=1e-6)
    assert torch.all(emb[0, :128] == 1) and torch.all(emb[0, 128:] == 0)  # t=0: cos 1, sin 0


def test_rotate_half_example():
    out = rotate_half(torch.arange(6.0))
    assert out.tolist() == [-1, 0, -3, 2, -5, 4]


def rope_tables(dh, G, theta=10000.0):
    """Independent table: angle(n, j) with n = h*G + w; dims < dh/2 use h, the rest w; pairs share."""
    half = dh // 2
    cos = np.zeros((G * G, dh)); sin = np.zeros((G * G, dh))
    for h in range(G):
        for w in range(G):
            for j in range(dh):
                axis_pos, jj = (h, j) if j < half else (w, j - half)
                freq = 1.0 / theta ** ((2 * (jj // 2)) / half)
                cos[h * G + w, j] = math.cos(axis_pos * freq)
                sin[h * G + w, j] = math.sin(axis_pos * freq)
    return torch.tensor(cos, dtype=torch.float32), torch.tensor(sin, dtype=torch.float32)


def test_rope_tables_formula():
    rope = VisionRotaryEmbedding(dim=8, pt_seq_len=4)
    cos, sin = rope_tables(16, 4)
    torch.testing.assert_close(rope.freqs_cos, cos, rtol=0, atol=2e-6)
    torch.testing.assert_close(rope.freqs_sin, sin, rtol=0, atol=2e-6)


def test_rope_is_relative_rotation():
    torch.manual_seed(0)
    G, dh = 4, 16
    rope = VisionRotaryEmbedding(dim=dh // 2, pt_seq_len=G)
    x = torch.randn(2, 3, G * G, dh)
    r = rope(x)
    torch.testing.assert_close(r.norm(dim=-1), x.norm(dim=-1))  # norm preserving
    pair_norm = lambda z: z.unflatten(-1, (-1, 2)).norm(dim=-1)
    torch.testing.assert_close(pair_norm(r), pair_norm(x))  # each pair is rotated
    # Same q and k vectors at every position: q(i).k(j) depends only on (dh_i - dh_j, dw_i - dw_j).
    q = torch.randn(dh).expand(1, 1, G * G, dh)
    k = torch.randn(dh).expand(1, 1, G * G, dh)
    dots = (rope(q)[0, 0] @ rope(k)[0, 0].T)  # (N, N)
    by_delta = {}
    for i, j in itertools.product(range(G * G), repeat=2):
        delta = (i // G - j // G, i % G - j % G)
        by_delta.setdefault(delta, []).append(dots[i, j])
    for vals in by_delta.values():
        torch.testing.assert_close(torch.stack(vals), vals[0].expand(len(vals)), rtol=0, atol=1e-5)
    assert len({round(v[0].item(), 4) for v in by_delta.values()}) > 10  # not trivially constant


# ----------------------------------------------------------------------------------------------
# Plain reference formulation (functional, from the state dict)
# ----------------------------------------------------------------------------------------------

def plain_rmsnorm(x, w, eps=1e-6):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * w


def plain_rotate_half(x):
    x = rearrange(x, "... (d r) -> ... d r", r=2)
    x1, x2 = x.unbind(-1)
    return rearrange(torch.stack((-x2, x1), dim=-1), "... d r -> ... (d r)")


def plain_forward(sd, cfg, x, t, y, drop=None, attention=None, contiguous=False, repa_depth=None):
    """cfg: dict with hidden, heads, patch, C and the flags; drop: bool mask of dropped labels;
    attention: an attention kernel (q, k, v) -> o, else the softmax formula written out.
    contiguous=False keeps the reference's transposed token layout after the patch embedding.
    SFD: with `t_embedder_sem/tex` in sd, t is (t_tex, t_sem); with repa_depth, returns (out,
    REPA MLP on the hidden states after that block)."""
    D, H, p, C = cfg["hidden"], cfg["heads"], cfg["patch"], cfg["C"]
    dh = D // H
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    lin = lambda z, name: F.linear(z, sd[name + ".weight"], sd[name + ".bias"])

    def norm(z, name):
        return plain_rmsnorm(z, sd[name + ".weight"]) if cfg["use_rmsnorm"] else F.layer_norm(z, (D,), eps=1e-6)

    def mod(z, shift, scale):
        z = z * (1 + scale.unsqueeze(1))
        return z if shift is None else z + shift.unsqueeze(1)

    B = x.shape[0]
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=p)
    h = rearrange(h, "b d gh gw -> b (gh gw) d")
    h = (h.contiguous() if contiguous else h) + sd["pos_embed"]
    def time_mlp(tt, name):
        freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
        ang = tt[:, None].float() * freqs[None]
        return lin(F.silu(lin(torch.cat([ang.cos(), ang.sin()], -1), name + ".mlp.0")), name + ".mlp.2")

    if "t_embedder_sem.mlp.0.weight" in sd:  # SFD: semantic half first
        temb = torch.cat([time_mlp(t[1], "t_embedder_sem"), time_mlp(t[0], "t_embedder_tex")], dim=1)
    else:
        temb = time_mlp(t, "t_embedder")
    if drop is not None:
        y = torch.where(drop, cfg["num_classes"], y)
    c = temb + sd["y_embedder.embedding_table.weight"][y]
    for i in range(depth):
        b = f"blocks.{i}."
        m = lin(F.silu(c), b + "adaLN_modulation.1")
        if cfg["wo_shift"]:
            sc1, g1, sc2, g2 = m.chunk(4, dim=1)
            sh1 = sh2 = None
        else:
            sh1, sc1, g1, sh2, sc2, g2 = m.chunk(6, dim=1)
        a = mod(norm(h, b + "norm1"), sh1, sc1)
        qkv = lin(a, b + "attn.qkv").reshape(B, -1, 3, H, dh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if cfg["use_qknorm"]:
            if cfg["use_rmsnorm"]:
                q, k = plain_rmsnorm(q, sd[b + "attn.q_norm.weight"]), plain_rmsnorm(k, sd[b + "attn.k_norm.weight"])
            else:
                q = F.layer_norm(q, (dh,), sd[b + "attn.q_norm.weight"], sd[b + "attn.q_norm.bias"], eps=1e-5)
                k = F.layer_norm(k, (dh,), sd[b + "attn.k_norm.weight"], sd[b + "attn.k_norm.bias"], eps=1e-5)
        if cfg["use_rope"]:
            cos, sin = sd["feat_rope.freqs_cos"], sd["feat_rope.freqs_sin"]
            q = q * cos + plain_rotate_half(q) * sin
            k = k * cos + plain_rotate_half(k) * sin
        if attention is not None:
            o = attention(q, k, v)
        else:
            o = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1) @ v
        o = lin(rearrange(o, "b h n d -> b n (h d)"), b + "attn.proj")
        h = h + g1.unsqueeze(1) * o
        a = mod(norm(h, b + "norm2"), sh2, sc2)
        if cfg["use_swiglu"]:
            x1, x2 = lin(a, b + "mlp.w12").chunk(2, dim=-1)
            a = lin(F.silu(x1) * x2, b + "mlp.w3")
        else:
            a = lin(F.gelu(lin(a, b + "mlp.fc1"), approximate="tanh"), b + "mlp.fc2")
        h = h + g2.unsqueeze(1) * a
        if i + 1 == repa_depth:
            feats = lin(F.silu(lin(F.silu(lin(h, "repa_projector.0")), "repa_projector.2")), "repa_projector.4")
    shift, scale = lin(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    out = lin(mod(norm(h, "final_layer.norm_final"), shift, scale), "final_layer.linear")
    G = int(out.shape[1] ** 0.5)
    out = rearrange(out, "b (gh gw) (p q c) -> b c (gh p) (gw q)", gh=G, p=p, q=p)
    out = out[:, :C] if cfg["learn_sigma"] else out
    return out if repa_depth is None else (out, feats)


def tiny(seed=0, patch=1, hidden=32, heads=2, depth=2, C=4, input_size=8, randomize=True, kernels="plain", **flags):
    torch.manual_seed(seed)
    m = LightningDiT(input_size=input_size, patch_size=patch, in_channels=C, hidden_size=hidden, depth=depth,
                     num_heads=heads, num_classes=10, **flags)
    if kernels == "cpu":
        use_cpu_kernels(m)
    if randomize:  # init zeroes adaLN and the output layer; give every weight a random value
        with torch.no_grad():  # fan-in scaled, so activations stay O(1) and tolerances are absolute
            for name, prm in m.named_parameters():
                if name == "pos_embed":
                    continue
                if "norm" in name:
                    prm.copy_(1 + 0.2 * torch.randn_like(prm))
                elif prm.dim() == 1 or "embedding" in name:
                    prm.copy_(0.2 * torch.randn_like(prm))
                else:
                    prm.copy_(torch.randn_like(prm) / math.sqrt(prm[0].numel()))
    cfg = dict(hidden=hidden, heads=heads, patch=patch, C=C, num_classes=10,
               **{k: flags.get(k, False) for k in ("use_rmsnorm", "use_qknorm", "use_rope", "use_swiglu",
                                                   "wo_shift", "learn_sigma")})
    return m, cfg


def inputs(B=3, C=4, S=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, C, S, S, generator=g), torch.rand(B, generator=g), torch.randint(0, 10, (B,), generator=g))


FLAG_NAMES = ("use_qknorm", "use_swiglu", "use_rope", "use_rmsnorm", "wo_shift")
KERNELS = ("plain", "cpu")
# The attention kernel that the reference formulation uses to match each path's bf16 roundings.
ATTENTION = {"plain": F.scaled_dot_product_attention, "cpu": cpu_attention}


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("bits", list(itertools.product([False, True], repeat=len(FLAG_NAMES))),
                         ids=lambda b: "".join("1" if v else "0" for v in b))
def test_matches_plain_formulation_all_flags(bits, kernels):
    flags = dict(zip(FLAG_NAMES, bits))
    for patch, learn_sigma, dropout in itertools.product([1, 2], [False, True], [0.0, 0.1]):
        m, cfg = tiny(patch=patch, learn_sigma=learn_sigma, class_dropout_prob=dropout, kernels=kernels, **flags)
        sd = m.state_dict()
        x, t, y = inputs()
        for train in (False, True):
            m.train(train)
            torch.manual_seed(123)
            with torch.no_grad():
                out = m(x, t, y)
            torch.manual_seed(123)  # the same draw as the model's label dropout
            drop = torch.rand(len(y)) < dropout if (train and dropout > 0) else None
            ref = plain_forward(sd, cfg, x, t, y, drop=drop)
            assert out.shape == (3, 4, 8, 8)
            assert ref.abs().max() > 0.1
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-5,
                                       msg=lambda s: f"{flags} patch={patch} ls={learn_sigma} train={train}: {s}")


@pytest.mark.parametrize("flags", [dict(use_rope=True, use_rmsnorm=True, use_swiglu=True),
                                   dict(use_rope=True, use_rmsnorm=True, use_swiglu=True, use_qknorm=True),
                                   dict(use_qknorm=True, wo_shift=True)])
@pytest.mark.parametrize("kernels", KERNELS)
def test_bf16_autocast_same_rounding_points(flags, kernels):
    """Under bf16 autocast both paths round where the reference rounds: the plain formulation
    with the same attention kernel and token layout gives the same bf16 output. (The CPU bf16
    attention kernel itself is checked against float32 attention in test_attention.py.)"""
    m, cfg = tiny(kernels=kernels, **flags)
    x, t, y = inputs()
    m.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, t, y)
        ref = plain_forward(m.state_dict(), cfg, x, t, y, attention=ATTENTION[kernels], contiguous=True)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("flags", [dict(use_rope=True, use_rmsnorm=True, use_swiglu=True),
                                   dict(use_rope=True, use_rmsnorm=True, use_swiglu=True, use_qknorm=True, wo_shift=True),
                                   dict()])
@pytest.mark.parametrize("kernels", KERNELS)
def test_gradients_match_plain_formulation(flags, autocast, kernels):
    """Both paths, including the hand-written backward passes of the CPU kernels (fused
    norm/modulate, SiLU gate, bf16 attention), give autograd's gradients of the plain formulation
    for every parameter: to float rounding in float32, to bf16 rounding under autocast (the plain
    side then uses the same attention kernel)."""
    m, cfg = tiny(kernels=kernels, **flags)
    x, t, y = inputs()
    m.eval()
    sd = {k: v.detach().clone().requires_grad_(v.is_floating_point() and k != "pos_embed")
          for k, v in m.state_dict().items()}
    grad = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = m(x, t, y)
        ref = plain_forward(sd, cfg, x, t, y, contiguous=True,
                            attention=ATTENTION[kernels] if autocast else None)
    out.float().backward(grad)
    ref.float().backward(grad)
    tol = dict(rtol=0.05, atol=0.05) if autocast else dict(rtol=1e-4, atol=1e-5)
    for name, prm in m.named_parameters():
        if prm.requires_grad:
            scale = sd[name].grad.abs().max().clamp_min(1.0)  # relative to the largest gradient
            torch.testing.assert_close(prm.grad / scale, sd[name].grad / scale, **tol, msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("contiguous", [True, False])
def test_rmsnorm_equals_written_formula(contiguous, kernels):
    from models.lightningdit import RMSNorm
    torch.manual_seed(0)
    norm = RMSNorm(48)
    if kernels == "cpu":
        use_cpu_kernels(norm)  # F.rms_norm where it gives the formula's roundings
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(48))
    x = 3 * torch.randn(2, 48, 20).transpose(1, 2)  # (2, 20, 48), transposed layout
    x = x.contiguous() if contiguous else x
    exact = dict(rtol=0, atol=0) if contiguous else dict(rtol=0, atol=1e-6)
    for ctx in (torch.autocast("cpu", enabled=False), torch.autocast("cpu", dtype=torch.bfloat16)):
        with ctx:
            for inp in (x, x.bfloat16()):
                out, ref = norm(inp), plain_rmsnorm(inp, norm.weight)
                assert out.dtype == ref.dtype  # bf16 input: normalised in fp32, rounded, times fp32 weight
                torch.testing.assert_close(out, ref, **(exact if inp.dtype == torch.float32 else dict(rtol=0, atol=0)))
    xd = x.double()  # other dtypes take the written-out path (fp32 compute, cast back)
    torch.testing.assert_close(norm(xd), plain_rmsnorm(xd, norm.weight), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Behaviour: init, CFG, learn_sigma, checkpointing
# ----------------------------------------------------------------------------------------------

def test_zero_output_at_init():
    m, _ = tiny(randomize=False, use_rope=True, use_rmsnorm=True, use_swiglu=True)
    x, t, y = inputs()
    assert torch.count_nonzero(m(x, t, y)) == 0
    for blk in m.blocks:
        assert torch.count_nonzero(blk.adaLN_modulation[-1].weight) == 0
        assert torch.all(blk.norm1.weight == 1)
        assert torch.count_nonzero(blk.attn.qkv.bias) == 0 and torch.count_nonzero(blk.attn.qkv.weight) > 0
    assert m.y_embedder.embedding_table.weight.std().item() == pytest.approx(0.02, rel=0.2)
    # xavier_uniform on the full (3D, D) qkv matrix: bound sqrt(6 / (D + 3D))
    w = m.blocks[0].attn.qkv.weight
    assert w.abs().max() <= math.sqrt(6 / (32 + 96)) and w.abs().max() > 0.8 * math.sqrt(6 / (32 + 96))


def cfg_setup(**flags):
    m, _ = tiny(use_rope=True, use_rmsnorm=True, use_swiglu=True, **flags)
    m.eval()
    z, _, labels = inputs(B=2)
    x = torch.cat([z, torch.randn_like(z)])  # the second half is ignored by forward_with_cfg
    t = torch.full((4,), 0.3)
    y = torch.cat([labels, torch.full((2,), 10)])
    with torch.no_grad():
        raw = m(torch.cat([z, z]), t, y)
    return m, x, t, y, raw[:2], raw[2:]


def test_cfg_scale_one_is_conditional():
    m, x, t, y, cond, uncond = cfg_setup()
    with torch.no_grad():
        out = m.forward_with_cfg(x, t, y, 1.0, cfg_channels=None)
    torch.testing.assert_close(out[:2], cond, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[2:], cond, rtol=0, atol=1e-6)


def test_cfg_channels_none_vs_three():
    m, x, t, y, cond, uncond = cfg_setup()
    s = 4.0
    guided = uncond + s * (cond - uncond)
    assert (cond - uncond).abs().max() > 1e-3
    with torch.no_grad():
        full = m.forward_with_cfg(x, t, y, s, cfg_channels=None)
        three = m.forward_with_cfg(x, t, y, s)  # the reference default
        two = m.forward_with_cfg(x, t, y, s, cfg_channels=2)
    torch.testing.assert_close(full, torch.cat([guided, guided]), rtol=0, atol=1e-6)
    torch.testing.assert_close(three[:, :3], torch.cat([guided, guided])[:, :3], rtol=0, atol=1e-6)
    torch.testing.assert_close(three[:2, 3:], cond[:, 3:], rtol=0, atol=0)  # first half: conditional
    torch.testing.assert_close(three[2:, 3:], uncond[:, 3:], rtol=0, atol=0)  # second half: unconditional
    torch.testing.assert_close(two[:2, 2:], cond[:, 2:], rtol=0, atol=0)
    with pytest.raises(ValueError):
        m.forward_with_cfg(x, t, y, s, cfg_channels=5)


def test_cfg_interval_switch():
    m, x, t, y, cond, uncond = cfg_setup()
    guided = uncond + 4.0 * (cond - uncond)
    with torch.no_grad():
        before = m.forward_with_cfg(x, t, y, 4.0, cfg_interval=True, cfg_interval_start=0.5, cfg_channels=None)
        after = m.forward_with_cfg(x, t, y, 4.0, cfg_interval=True, cfg_interval_start=0.2, cfg_channels=None)
        off = m.forward_with_cfg(x, t, y, 4.0, cfg_interval=False, cfg_interval_start=0.5, cfg_channels=None)
        ref_default = m.forward_with_cfg(x, t, y, 4.0, cfg_interval=True, cfg_interval_start=0.5)
    torch.testing.assert_close(before, torch.cat([cond, cond]), rtol=0, atol=0)  # t=0.3 < 0.5: no guidance
    torch.testing.assert_close(after, torch.cat([guided, guided]), rtol=0, atol=1e-6)
    torch.testing.assert_close(off, torch.cat([guided, guided]), rtol=0, atol=1e-6)
    torch.testing.assert_close(ref_default[2:, 3:], uncond[:, 3:], rtol=0, atol=0)
    with pytest.raises(ValueError):
        m.forward_with_cfg(x, t, y, 4.0, cfg_interval="True")


def test_learn_sigma_returns_in_channels():
    m, _ = tiny(learn_sigma=True, patch=2)
    assert m.out_channels == 8 and m.final_layer.linear.out_features == 4 * 8
    x, t, y = inputs()
    assert m(x, t, y).shape == x.shape


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("flags", [dict(use_rope=True, use_rmsnorm=True, use_swiglu=True), dict(wo_shift=True)])
def test_gradient_checkpointing_identical(flags, kernels):
    m, _ = tiny(kernels=kernels, **flags)
    m2, _ = tiny(use_checkpoint=True, kernels=kernels, **flags)
    m2.load_state_dict(m.state_dict())
    x, t, y = inputs()
    for model in (m, m2):
        model.train()
        torch.manual_seed(5)
        model(x, t, y).square().mean().backward()
    for (name, p1), (_, p2) in zip(m.named_parameters(), m2.named_parameters()):
        if p1.requires_grad:
            assert p1.grad is not None and p1.grad.abs().max() > 0, name
            torch.testing.assert_close(p2.grad, p1.grad, rtol=0, atol=1e-7, msg=name)


def test_compile_blocks_keeps_state_dict_keys():
    m, _ = tiny(use_rope=True, use_rmsnorm=True, use_swiglu=True)
    keys = list(m.state_dict())
    m.compile_blocks()
    assert list(m.state_dict()) == keys


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("bf16", [False, True])
def test_block_traces_as_one_graph(bf16, kernels):
    """compile_blocks must not fall back to eager inside a block (a graph break costs the fusion);
    a CPU-kernel variant traced by mistake runs its plain forward."""
    m, _ = tiny(use_rope=True, use_rmsnorm=True, use_swiglu=True, use_qknorm=True, kernels=kernels)
    block = m.blocks[0]
    n_tokens, dim = m.pos_embed.shape[1:]
    x, c = torch.randn(2, n_tokens, dim), torch.randn(2, dim)
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        explanation = torch._dynamo.explain(block)(x, c, m.feat_rope)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_compile_blocks_same_output():
    m, _ = tiny(use_rope=True, use_rmsnorm=True, use_swiglu=True)
    x, t, y = inputs()
    m.eval()
    with torch.no_grad():
        ref = m(x, t, y)
        out = m.compile_blocks()(x, t, y)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True])
def test_compile_blocks_same_gradients(bf16):
    """The compiled blocks (plain formulas, fused by inductor) train like the eager ones."""
    m, _ = tiny(use_rope=True, use_rmsnorm=True, use_swiglu=True)
    compiled = copy.deepcopy(m).compile_blocks()
    x, t, y = inputs()
    for model in (m, compiled):
        model.train()
        torch.manual_seed(5)  # the same label dropout
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x, t, y)
        out.float().square().mean().backward()
    tol = 2e-2 if bf16 else 1e-5
    for (name, p1), (_, p2) in zip(m.named_parameters(), compiled.named_parameters()):
        if p1.requires_grad:
            scale = p1.grad.abs().max().item()
            torch.testing.assert_close(p2.grad, p1.grad, rtol=0, atol=tol * max(scale, 1e-3), msg=name)


# ----------------------------------------------------------------------------------------------
# SFD: two time embedders (texture, semantic) and the REPA projector (SFD's models/lightningdit.py)
# ----------------------------------------------------------------------------------------------

SFD = dict(use_rope=True, use_rmsnorm=True, use_swiglu=True, use_qknorm=True, semantic_chans=2, semfirst_delta_t=0.3)
REPA = dict(use_repa=True, repa_dino_version="dinov2_vits14", repa_depth=1, repa_projector_dim=24)


def sfd_times(t, delta=0.3):
    """SFD's training draw: tau = (1 + delta) t, t_sem = min(tau, 1), t_tex = max(tau - delta, 0)."""
    tau = t * (1 + delta)
    return (tau - delta).clamp(min=0), tau.clamp(max=1)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_sfd_matches_plain_formulation(kernels, learn_sigma):
    """cat[e_sem(t_sem), e_tex(t_tex)] conditioning and, in training mode, the REPA MLP on the
    hidden states after block repa_depth, against the formulation written from the state dict."""
    m, cfg = tiny(depth=3, kernels=kernels, learn_sigma=learn_sigma, **SFD, **{**REPA, "repa_depth": 2})
    x, t, y = inputs()
    t2 = sfd_times(t)
    assert not torch.equal(*t2)
    ref, ref_feats = plain_forward(m.state_dict(), cfg, x, t2, y, repa_depth=2)
    m.eval()
    with torch.no_grad():
        out = m(x, t2, y)  # eval: the velocity only, as SFD
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    m.train()
    m.y_embedder.dropout_prob = 0.0
    out, feats = m(x, t2, y)
    assert feats.shape == (3, 64, 384)  # (B, N, DINOv2-S width)
    assert out.shape == x.shape and ref_feats.abs().max() > 0.1
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(feats, ref_feats, rtol=0, atol=1e-5)
    sigma, _ = m(x, t2, y, return_sigma=True)
    assert sigma.shape[1] == (8 if learn_sigma else 4)


def test_sfd_time_forms():
    """t as SFD's tuple (t_tex, t_sem), as a (B, 2) tensor in channel-group order, or (B,) for
    both; the semantic embedding is the first half of the conditioning."""
    m, _ = tiny(**SFD)
    x, t, y = inputs()
    t_tex, t_sem = sfd_times(t)
    m.eval()
    with torch.no_grad():
        c = m.embed_time((t_tex, t_sem))
        torch.testing.assert_close(c[:, :16], m.t_embedder_sem(t_sem), rtol=0, atol=0)
        torch.testing.assert_close(c[:, 16:], m.t_embedder_tex(t_tex), rtol=0, atol=0)
        assert not torch.allclose(c, m.embed_time((t_sem, t_tex)))
        out = m(x, (t_tex, t_sem), y)
        assert torch.equal(m(x, torch.stack([t_tex, t_sem], dim=1), y), out)
        assert torch.equal(m(x, t, y), m(x, (t, t), y))
    single, _ = tiny(**{**SFD, "semfirst_delta_t": 0.0})  # one embedder
    single.eval()
    with torch.no_grad():
        assert torch.equal(single(x, (t, t), y), single(x, t, y))  # one time for both groups
        with pytest.raises(ValueError, match="one time embedder"):
            single(x, (t_tex, t_sem), y)


@pytest.mark.parametrize("change", [dict(semantic_chans=16), dict(semfirst_delta_t=0.3), dict()])
def test_without_delta_or_semantic_channels_is_lightningdit(change):
    """With semfirst_delta_t = 0 (or no semantic channels) the network is LightningDiT's: the same
    keys and, from the same seed, the same weights and outputs."""
    kw = dict(input_size=16, patch_size=2, in_channels=32, hidden_size=64, depth=2, num_heads=2,
              num_classes=10, use_rope=True, use_rmsnorm=True, use_swiglu=True)
    torch.manual_seed(0)
    ours = LightningDiT(**kw, **change)
    torch.manual_seed(0)
    base = LightningDiT(**kw)
    sd, ref = ours.state_dict(), base.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_shapes(64, 2, 2, 2, use_rope=True, use_rmsnorm=True,
                                                                          use_swiglu=True, num_classes=10)
    assert all(torch.equal(sd[k], v) for k, v in ref.items())
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours.load_state_dict(base.state_dict())
    x, t, y = torch.randn(2, 32, 16, 16), torch.rand(2), torch.tensor([1, 2])
    ours.eval(), base.eval()
    assert torch.equal(ours(x, t, y), base(x, t, y))


@pytest.mark.parametrize("kernels", KERNELS)
def test_repa_with_gradient_checkpointing_identical(kernels):
    m, _ = tiny(kernels=kernels, **SFD, **REPA)
    m2, _ = tiny(kernels=kernels, use_checkpoint=True, **SFD, **REPA)
    m2.load_state_dict(m.state_dict())
    x, t, y = inputs()
    for model in (m, m2):
        model.train()
        torch.manual_seed(5)
        out, feats = model(x, sfd_times(t), y)
        (out.square().mean() + feats.square().mean()).backward()
    for (name, p1), (_, p2) in zip(m.named_parameters(), m2.named_parameters()):
        if p1.requires_grad:
            assert p1.grad is not None and p1.grad.abs().max() > 0, name
            torch.testing.assert_close(p2.grad, p1.grad, rtol=0, atol=1e-7, msg=name)


def test_sfd_initialisation():
    """As SFD initialises its parts: the REPA Linears by the xavier pass (zero bias), both time
    embedders' Linears N(0, 0.02); the output is still exactly 0."""
    torch.manual_seed(0)
    m = LightningDiT(input_size=8, patch_size=1, in_channels=6, hidden_size=256, depth=2, num_heads=2,
                     use_rope=True, use_rmsnorm=True, use_swiglu=True, semantic_chans=2, semfirst_delta_t=0.3,
                     use_repa=True, repa_dino_version="dinov2_vitb14_reg", repa_depth=2)
    for i, (fan_in, fan_out) in zip((0, 2, 4), ((256, 2048), (2048, 2048), (2048, 768))):
        lin = m.repa_projector[i]
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert lin.weight.shape == (fan_out, fan_in) and torch.count_nonzero(lin.bias) == 0
        assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.9 * bound
    for emb in (m.t_embedder_sem, m.t_embedder_tex):
        for lin in (emb.mlp[0], emb.mlp[2]):
            assert lin.weight.shape[0] == 128 and lin.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert not hasattr(m, "t_embedder")
    x = torch.randn(2, 6, 8, 8)
    out, feats = m(x, (torch.rand(2), torch.rand(2)), torch.tensor([1, 2]))
    assert torch.count_nonzero(out) == 0 and feats.shape == (2, 64, 768)


@pytest.mark.parametrize("change, match", [
    (dict(use_repa=True, repa_depth=1), "model.repa_dino_version"),
    (dict(use_repa=True, repa_dino_version="dinov3", repa_depth=1), "'dinov3'"),
    (dict(use_repa=True, repa_dino_version="dinov2_vitb14_reg"), "model.repa_feat_depth"),
    (dict(use_repa=True, repa_dino_version="dinov2_vitb14_reg", repa_depth=3), r"in \[1, 2\].*got 3"),
    (dict(semantic_chans=4), "model.semantic_chans"),
    (dict(semantic_chans=2, semfirst_delta_t=0.3, hidden_size=33, num_heads=3), "even hidden_size"),
])
def test_sfd_bad_arguments_name_the_key(change, match):
    kw = {**dict(input_size=4, patch_size=1, in_channels=4, hidden_size=32, depth=2, num_heads=2), **change}
    with pytest.raises(ValueError, match=match):
        LightningDiT(**kw)


@pytest.mark.parametrize("name, without_repa, with_repa", [
    ("LightningDiT-B/1", 130.3, 137.6), ("LightningDiT-XL/1", 674.6, 682.8), ("LightningDiT-1p0B/1", 1028.3, 1037.2)])
def test_sfd_parameter_counts(name, without_repa, with_repa):
    """SFD's released sizes (48 channels, qk-norm, split time embedders), in millions, without and
    with the REPA projector to DINOv2-B (the counts SFD's model tree implies)."""
    kw = dict(RELEASED, in_channels=48, use_qknorm=True, semantic_chans=16, semfirst_delta_t=0.3,
              repa_dino_version="dinov2_vitb14_reg", repa_depth=2)
    for use_repa, expected in ((False, without_repa), (True, with_repa)):
        m = meta_model(name, **kw, use_repa=use_repa)
        assert round(sum(p.numel() for p in m.parameters()) / 1e6, 1) == expected


def test_build_model_passes_sfd_keys():
    """models/build.py: SFD's keys reach the network; a bad combination names the key."""
    from configs.schema import load_config
    from models.build import build_model

    tiny_yaml = "configs/tiny/lightningdit_tiny.yaml"
    sfd = ["model.in_chans=6", "model.semantic_chans=2", "model.semfirst_delta_t=0.3", "model.use_repa=true",
           "model.repa_dino_version=dinov2_vitb14_reg", "model.repa_feat_depth=2"]
    m = build_model(load_config(tiny_yaml, sfd))
    assert m.use_semantic_first and m.repa_depth == 2 and m.repa_projector[-1].out_features == 768
    assert m.t_embedder_sem.mlp[0].out_features == 32 and m.in_channels == 6
    with pytest.raises(ValueError, match="model.repa_feat_depth"):
        build_model(load_config(tiny_yaml, sfd[:-1] + ["model.repa_feat_depth=3"]))  # the tiny model has 2 blocks
    with pytest.raises(ValueError, match="model.repa_dino_version"):
        build_model(load_config(tiny_yaml, sfd[:4] + ["model.repa_feat_depth=1"]))

"""The CPU bf16 attention kernel (models/attention.py) against float32 attention and torch's SDPA."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.attention import ShiftedBF16Attention, cpu_attention
from models.kernels import CPURotaryEmbedding
from models.lightningdit import rotate_half


def exact_attention(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v


def reference_rope(rope, x):
    """The reference's RoPE formula on the module's tables."""
    return x * rope.freqs_cos + rotate_half(x) * rope.freqs_sin


def naive_bf16_attention(q, k, v):
    """bf16 matmuls with the logits rounded to bf16: what the shift trick avoids."""
    return torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1) @ v


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("head_dim", [16, 24])
def test_backward_formula_is_exact_in_float64(head_dim):
    """The kernel is dtype-generic: in float64 it is exact attention, and gradcheck validates the
    hand-written backward (P * (dP - D), with D entering the contraction as hi + lo columns)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 7, head_dim, dtype=torch.float64, requires_grad=True) for _ in range(3))
    torch.testing.assert_close(ShiftedBF16Attention.apply(q, k, v), exact_attention(q, k, v), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(ShiftedBF16Attention.apply, (q, k, v))


def attention_errors(fn, head_dim, logit_std):
    """Relative errors of fn's output and q/k/v gradients against float32 attention on the same
    bf16 inputs."""
    torch.manual_seed(1)
    a = logit_std ** 0.5
    q, k = ((a * torch.randn(2, 3, 128, head_dim)).bfloat16().requires_grad_() for _ in range(2))
    v = torch.randn(2, 3, 128, head_dim).bfloat16().requires_grad_()
    grad = torch.randn(2, 3, 128, head_dim).bfloat16()
    ref_in = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = exact_attention(*ref_in)
    ref.backward(grad.float())
    out = fn(q, k, v)
    out.backward(grad)
    assert out.dtype == torch.bfloat16
    return [rel_err(out, ref)] + [rel_err(t.grad, r.grad) for t, r in zip((q, k, v), ref_in)]


@pytest.mark.parametrize("head_dim", [64, 72])  # power-of-two scale folded into q, and not
@pytest.mark.parametrize("logit_std", [1.0, 10.0])
def test_bf16_accuracy_matches_flash_attention(head_dim, logit_std):
    ours = attention_errors(ShiftedBF16Attention.apply, head_dim, logit_std)
    flash = attention_errors(F.scaled_dot_product_attention, head_dim, logit_std)
    naive = attention_errors(naive_bf16_attention, head_dim, logit_std)
    for name, e_ours, e_flash, e_naive in zip(("out", "dq", "dk", "dv"), ours, flash, naive):
        assert e_ours < 2.0 * e_flash, (name, ours, flash)
        if logit_std >= 10:  # large logits: rounding them to bf16 costs accuracy; the shift does not
            assert e_ours < 0.5 * e_naive, (name, ours, naive)


def test_dispatch():
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 2, 16, 8) for _ in range(3))
    # float32: torch's kernel, bit for bit
    assert torch.equal(cpu_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    # bf16 autocast on float32 inputs: cast to bf16 (as autocast does for SDPA), then the bf16 kernel
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cpu_attention(q, k, v)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ShiftedBF16Attention.apply(q.bfloat16(), k.bfloat16(), v.bfloat16()))
    # bf16 tensors without autocast: the bf16 kernel too
    assert torch.equal(cpu_attention(q.bfloat16(), k.bfloat16(), v.bfloat16()), out)
    # other devices: torch's kernel (meta tensors stand in for a GPU's)
    qm, km, vm = (t.bfloat16().to("meta") for t in (q, k, v))
    assert cpu_attention(qm, km, vm).is_meta


def test_fused_rotation_is_exact_in_float64():
    """With a RoPE table, the kernel is attention on rope(q), rope(k); gradcheck covers the
    backward rotation of dq and dk."""
    torch.manual_seed(3)
    rope = CPURotaryEmbedding(4, pt_seq_len=3).double()  # head_dim 8, 9 tokens
    q, k, v = (torch.randn(2, 2, 9, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    rotation = rope.rotation(q)
    assert rotation.dtype == torch.complex128
    expected = exact_attention(reference_rope(rope, q), reference_rope(rope, k), v)
    torch.testing.assert_close(ShiftedBF16Attention.apply(q, k, v, rotation), expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda q, k, v: ShiftedBF16Attention.apply(q, k, v, rotation), (q, k, v))


def test_dispatch_with_rope():
    torch.manual_seed(4)
    rope = CPURotaryEmbedding(8, pt_seq_len=4)  # head_dim 16, 16 tokens, float32 tables
    q, k, v = (torch.randn(2, 2, 16, 16) for _ in range(3))
    # float32: RoPE, then torch's kernel, bit for bit
    assert torch.equal(cpu_attention(q, k, v, rope.rotation(q)),
                       F.scaled_dot_product_attention(rope(q), rope(k), v))
    # bf16 autocast on bf16 q/k (a Linear's output): RoPE in float32 as the reference does, rounded
    # once to bf16 inside the kernel, so the forward equals the unfused kernel on rope(q), rope(k)
    qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = cpu_attention(qb, kb, vb, rope.rotation(qb))
    ref_in = [t.detach().clone().requires_grad_() for t in (qb, kb, vb)]
    unfused = ShiftedBF16Attention.apply(reference_rope(rope, ref_in[0]).bfloat16(),
                                         reference_rope(rope, ref_in[1]).bfloat16(), ref_in[2])
    assert fused.dtype == torch.bfloat16 and torch.equal(fused, unfused)
    grad = torch.randn_like(q).bfloat16()
    fused.backward(grad)
    unfused.backward(grad)
    for t, r in zip((qb, kb, vb), ref_in):
        assert t.grad.dtype == torch.bfloat16
        # the fused backward rounds dq, dk once; the unfused chain rounds each RoPE branch
        torch.testing.assert_close(t.grad.float(), r.grad.float(), rtol=2 ** -7, atol=1e-3 * r.grad.abs().max().item())


@pytest.mark.parametrize("logit_std", [1.0, 10.0])
def test_fused_rotation_accuracy_matches_flash_attention(logit_std):
    """bf16 q, k, v with RoPE on a 16 x 16 grid: errors against float32 attention on the float32
    rotation stay within 2x of torch's flash kernel on the bf16-rounded rotation."""
    rope = CPURotaryEmbedding(32, pt_seq_len=16)  # head_dim 64, 256 tokens

    def fused(q, k, v):
        return ShiftedBF16Attention.apply(q, k, v, rope.rotation(q))

    def flash(q, k, v):
        return F.scaled_dot_product_attention(rope(q).bfloat16(), rope(k).bfloat16(), v)

    def errors(fn):
        torch.manual_seed(5)
        a = logit_std ** 0.5
        q, k = ((a * torch.randn(1, 2, 256, 64)).bfloat16().requires_grad_() for _ in range(2))
        v = torch.randn(1, 2, 256, 64).bfloat16().requires_grad_()
        grad = torch.randn(1, 2, 256, 64).bfloat16()
        ref_in = [t.detach().float().requires_grad_() for t in (q, k, v)]
        ref = exact_attention(rope(ref_in[0]), rope(ref_in[1]), ref_in[2])
        ref.backward(grad.float())
        out = fn(q, k, v)
        out.backward(grad)
        return [rel_err(out, ref)] + [rel_err(t.grad, r.grad) for t, r in zip((q, k, v), ref_in)]

    ours, theirs = errors(fused), errors(flash)
    for name, e_ours, e_flash in zip(("out", "dq", "dk", "dv"), ours, theirs):
        assert e_ours < 2.0 * e_flash, (name, ours, theirs)

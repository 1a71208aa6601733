"""The CPU bf16 attention kernel (models/attention.py) against float32 attention and torch's SDPA."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.attention import ShiftedBF16Attention, scaled_dot_product_attention


def exact_attention(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v


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
    assert torch.equal(scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    # bf16 autocast on float32 inputs: cast to bf16 (as autocast does for SDPA), then the bf16 kernel
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = scaled_dot_product_attention(q, k, v)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ShiftedBF16Attention.apply(q.bfloat16(), k.bfloat16(), v.bfloat16()))
    # bf16 tensors without autocast: the bf16 kernel too
    assert torch.equal(scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16()), out)

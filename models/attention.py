"""Scaled dot-product attention with a fast, flash-accurate bf16 path on CPU.

GPUs use F.scaled_dot_product_attention (flash / memory-efficient kernels). On CPU, torch's bf16
flash kernel is slow (its backward especially), and the obvious replacement, bf16 matmuls plus a
softmax, rounds every attention logit to bf16: with logits of a few units that is an absolute
error of ~1e-2 in the exponent, and the output error grows with the logit scale.

`ShiftedBF16Attention` keeps the speed of bf16 matmuls and the accuracy of flash attention, which
accumulates logits in float32. Softmax is invariant to a per-row shift, and only logits near the
row maximum carry weight, so the shift is folded into the contraction:

    [q, -m] . [k, 1] = q.k - m          (accumulated in float32 inside the matmul)

with m the row maximum of a first bf16 pass. The output is rounded to bf16 only after the
subtraction, so the logits that matter (q.k - m near 0) keep float32-level precision. The backward
pass uses the same trick for dP - D, with D = rowsum(dO * O) split into two bf16 parts
(hi + lo) so that it enters the contraction with ~16 significant bits. Errors against float32
attention are within ~1.5x of torch's flash kernel at every logit scale (tests/models/
test_attention.py), and the forward + backward is ~2x faster than it on this CPU.
"""
import math

import torch
import torch.nn.functional as F


class ShiftedBF16Attention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d)) v for bf16 (B, heads, N, d) tensors, without a mask or dropout.

    Saves P (B, heads, N, N) in bf16 for the backward pass instead of recomputing it."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scale = q.shape[-1] ** -0.5
        row_max = torch.matmul(q, k.transpose(-1, -2)).amax(-1, keepdim=True)  # (B, h, N, 1), bf16
        q_shift = torch.cat([q, row_max.neg_()], -1)
        k_shift = torch.cat([k, k.new_ones(k.shape[:-1] + (1,))], -1)
        # A power-of-two scale (head_dim 4, 16, 64, 256) is exact on q; any other would round q,
        # so it goes on the (N x N) logits instead.
        scale_on_q = math.frexp(scale)[0] == 0.5
        if scale_on_q:
            q_shift.mul_(scale)
        logits = torch.matmul(q_shift, k_shift.transpose(-1, -2))
        if not scale_on_q:
            logits.mul_(scale)
        p = torch.softmax(logits, dim=-1)  # bf16 in, float32 inside, bf16 out
        out = torch.matmul(p, v)
        ctx.save_for_backward(q, k, v, p, out)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, p, out = ctx.saved_tensors
        scale = q.shape[-1] ** -0.5
        grad_v = torch.matmul(p.transpose(-1, -2), grad_out)
        # dS = P * (dP - D), D_i = sum_j P_ij dP_ij = dO_i . O_i; subtract D inside the contraction.
        d = (grad_out.float() * out.float()).sum(-1, keepdim=True)
        d_hi = d.to(grad_out.dtype)
        d_lo = (d - d_hi.float()).to(grad_out.dtype)
        ones = v.new_ones(v.shape[:-1] + (1,))
        grad_s = torch.matmul(torch.cat([grad_out, d_hi.neg_(), d_lo.neg_()], -1),
                              torch.cat([v, ones, ones], -1).transpose(-1, -2))
        grad_s.mul_(p)
        grad_q = torch.matmul(grad_s, k).mul_(scale)
        grad_k = torch.matmul(grad_s.transpose(-1, -2), q).mul_(scale)
        return grad_q, grad_k, grad_v


def _compute_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.dtype:
    """The dtype F.scaled_dot_product_attention would compute in: the autocast dtype when autocast
    is on for the device (SDPA is on its lower-precision list), else the inputs' common dtype."""
    if torch.is_autocast_enabled(q.device.type):
        return torch.get_autocast_dtype(q.device.type)
    return torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """F.scaled_dot_product_attention(q, k, v) (default scale, no mask, no dropout), routed to
    ShiftedBF16Attention for bf16 on CPU; every other case is torch's kernel."""
    if q.device.type != "cpu" or _compute_dtype(q, k, v) != torch.bfloat16:
        return F.scaled_dot_product_attention(q, k, v)
    q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    with torch.autocast("cpu", enabled=False):
        return ShiftedBF16Attention.apply(q, k, v)

"""Scaled dot-product attention with a fast, flash-accurate bf16 path on CPU.

GPUs use F.scaled_dot_product_attention (flash / memory-efficient kernels; models/kernels.py
decides which modules run which kernels). On CPU, torch's bf16 flash kernel is slow (its
backward especially), and the obvious replacement, bf16 matmuls plus a softmax, rounds every
attention logit to bf16: with logits of a few units that is an absolute error of ~1e-2 in the
exponent, and the output error grows with the logit scale.

`ShiftedBF16Attention` keeps the speed of bf16 matmuls and the accuracy of flash attention, which
accumulates logits in float32. Softmax is invariant to a per-row shift, and only logits near the
row maximum carry weight, so the shift is folded into the contraction:

    [q, -m] . [k, 1] = q.k - m          (accumulated in float32 inside the matmul)

with m the row maximum of a first bf16 pass. The output is rounded to bf16 only after the
subtraction, so the logits that matter (q.k - m near 0) keep float32-level precision. The backward
pass uses the same trick for dP - D, with D = rowsum(dO * O) split into two bf16 parts
(hi + lo) so that it enters the contraction with ~16 significant bits. Errors against float32
attention are within ~1.5x of torch's flash kernel at every logit scale (tests/models/
test_attention.py); its speed against that kernel is in docs/benchmarks.md.

RoPE on q and k is fused into the same kernel: the rotation is computed in float32 (as the
reference's x*cos + rotate_half(x)*sin under autocast) and rounded to bf16 directly into the
shifted operands, which saves the float32 intermediates, the casts and the concatenation.
"""
import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F


class ShiftedBF16Attention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d)) v for (B, heads, N, d) tensors, without a mask or dropout,
    computed in v's dtype (bf16 in the model; the float64 path is exact, for tests).

    rotation: optional (N, d/2) complex table of a pair-interleaved RoPE. q and k are then
    rotated in the table's precision (q (x) rotation, the reference's float32 x*cos +
    rotate_half(x)*sin) and rounded once to v's dtype straight into the shifted operands, which
    is where the reference's autocast SDPA rounds them; the backward rotates their gradients back.
    Saves P (B, heads, N, N) for the backward pass instead of recomputing it."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                rotation: Optional[torch.Tensor] = None) -> torch.Tensor:
        d = q.shape[-1]
        scale = d ** -0.5
        # [q, -m] and [k, 1]: the operands of the shifted contraction, built in place.
        q_shift = v.new_empty(q.shape[:-1] + (d + 1,))
        k_shift = v.new_empty(k.shape[:-1] + (d + 1,))
        q_rot, k_rot = q_shift[..., :d], k_shift[..., :d]
        q_rot.copy_(q if rotation is None else rotate_pairs(q, rotation))
        k_rot.copy_(k if rotation is None else rotate_pairs(k, rotation))
        k_shift[..., d].fill_(1)
        q_shift[..., d].copy_(torch.matmul(q_rot, k_rot.transpose(-1, -2)).amax(-1).neg_())  # -row max
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
        ctx.save_for_backward(q_shift, k_shift, v, p, out, rotation)
        ctx.scale_on_q = scale_on_q
        ctx.in_dtypes = (q.dtype, k.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q_shift, k_shift, v, p, out, rotation = ctx.saved_tensors
        d = v.shape[-1]
        scale = d ** -0.5
        grad_v = torch.matmul(p.transpose(-1, -2), grad_out)
        # dS = P * (dP - D), D_i = sum_j P_ij dP_ij = dO_i . O_i; subtract D inside the contraction.
        dd = (grad_out.float() * out.float()).sum(-1, keepdim=True)
        d_hi = dd.to(grad_out.dtype)
        d_lo = (dd - d_hi.float()).to(grad_out.dtype)
        ones = v.new_ones(v.shape[:-1] + (1,))
        grad_s = torch.matmul(torch.cat([grad_out, d_hi.neg_(), d_lo.neg_()], -1),
                              torch.cat([v, ones, ones], -1).transpose(-1, -2))
        grad_s.mul_(p)
        grad_q = torch.matmul(grad_s, k_shift[..., :d]).mul_(scale)
        grad_k = torch.matmul(grad_s.transpose(-1, -2), q_shift[..., :d])  # q_shift holds scale * q
        if not ctx.scale_on_q:
            grad_k.mul_(scale)
        if rotation is not None:  # rope(x) = x (x) rotation, so dx = d rope(x) (x) conj(rotation)
            rotation = rotation.conj()
            grad_q, grad_k = rotate_pairs(grad_q, rotation), rotate_pairs(grad_k, rotation)
        q_dtype, k_dtype = ctx.in_dtypes
        return grad_q.to(q_dtype), grad_k.to(k_dtype), grad_v, None


def rotate_pairs(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """x (..., N, d) as d/2 complex pairs (x_2i + i x_2i+1) times rotation (N, d/2), computed in
    rotation's precision: pair-interleaved RoPE in one pass."""
    x = torch.view_as_complex(x.to(rotation.real.dtype).unflatten(-1, (-1, 2)))
    return torch.view_as_real(x * rotation).flatten(-2)


def _compute_dtype(device_type: str, *dtypes: torch.dtype) -> torch.dtype:
    """The dtype F.scaled_dot_product_attention computes in for inputs of these dtypes: the
    autocast dtype when autocast is on for the device (SDPA is on its lower-precision list), else
    the inputs' common dtype."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return functools.reduce(torch.promote_types, dtypes)


def cpu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  rotation: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.scaled_dot_product_attention(rope(q), rope(k), v) (default scale, no mask, no dropout),
    rope(x) = rotate_pairs(x, rotation) when a RoPE table is given.

    Where SDPA would compute in bf16 on the CPU in eager mode this is ShiftedBF16Attention, with
    the rotation fused in; everywhere else (other dtypes, other devices, torch.compile) torch's
    kernel."""
    qk_dtype = rotation.real.dtype if rotation is not None else None
    if (q.device.type != "cpu" or torch.compiler.is_compiling()
            or _compute_dtype("cpu", qk_dtype or q.dtype, qk_dtype or k.dtype, v.dtype) != torch.bfloat16):
        if rotation is not None:
            q, k = rotate_pairs(q, rotation), rotate_pairs(k, rotation)
        return F.scaled_dot_product_attention(q, k, v)
    with torch.autocast("cpu", enabled=False):
        return ShiftedBF16Attention.apply(q, k, v.to(torch.bfloat16), rotation)

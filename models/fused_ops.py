"""Elementwise chains of the LightningDiT block as autograd Functions with hand-written backward.

Autograd differentiates RMSNorm -> adaLN modulation and SiLU-gating op by op: under bf16
autocast that is a dozen passes over the activations per call, half of them mixing bf16 and
float32 operands, plus dtype-cast and concatenation copies. On a CPU, where these passes are
memory-bound, that costs as much as the matmuls they sit between. The Functions here compute the
forward with the reference's formulas in the reference's order (bit-identical float32 results,
the same rounding points under autocast) and the backward in a few fused passes, equal to
autograd's gradients to float rounding (tests/models/test_fused_ops.py).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


class RMSNormModulate(torch.autograd.Function):
    """y = rmsnorm(x) * weight * (1 + scale) + shift for x (B, N, D) and weight (D,) of one dtype
    (float32 in the model) and scale/shift (B, D) of any float dtype (shift may be None: the
    wo_shift variant).

    (1 + scale) is formed in scale's dtype, as the reference does. The result is float32, or the
    autocast dtype when autocast is on: the only consumer is a Linear, which would cast it anyway,
    and casting here saves a pass and gives the Linear's bf16 gradient straight back to us."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, shift: Optional[torch.Tensor],
                scale: torch.Tensor, eps: float, out_dtype: Optional[torch.dtype]) -> torch.Tensor:
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))  # (B, N, 1)
        x_hat = x * rstd
        scale1 = (1 + scale).to(x.dtype).unsqueeze(1)  # (B, 1, D), rounded in scale's dtype
        y = (x_hat * weight).mul_(scale1)
        if shift is not None:
            y.add_(shift.to(x.dtype).unsqueeze(1))
        ctx.save_for_backward(x_hat, rstd, weight, scale1)
        ctx.scale_dtype = scale.dtype
        ctx.shift_dtype = None if shift is None else shift.dtype
        return y if out_dtype is None else y.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x_hat, rstd, weight, scale1 = ctx.saved_tensors
        g = grad_y.to(x_hat.dtype)
        grad_shift = None if ctx.shift_dtype is None else g.sum(1).to(ctx.shift_dtype)
        grad_wscale = (g * x_hat).sum(1)  # (B, D): d loss / d (weight * (1 + scale))
        grad_scale = (grad_wscale * weight).to(ctx.scale_dtype)
        grad_weight = (grad_wscale * scale1.squeeze(1)).sum(0)
        g_hat = g * (scale1 * weight)  # d loss / d x_hat
        # d x_hat / d x: rstd * (g_hat - x_hat * mean(g_hat * x_hat))
        proj = torch.linalg.vecdot(g_hat, x_hat).unsqueeze(-1).div_(x_hat.shape[-1])
        grad_x = g_hat.addcmul_(x_hat, proj, value=-1).mul_(rstd)
        return grad_x, grad_weight, grad_shift, grad_scale, None, None


def rms_norm_modulate(x: torch.Tensor, weight: torch.Tensor, eps: float, shift: Optional[torch.Tensor],
                      scale: torch.Tensor) -> torch.Tensor:
    """RMSNormModulate for the shapes above; see its docstring."""
    return RMSNormModulate.apply(x, weight, shift, scale, eps, _autocast_dtype(x.device.type))


class SiLUGate(torch.autograd.Function):
    """silu(h[..., :H]) * h[..., H:] for the fused SwiGLU projection h = w12(x) of width 2H.

    Same ops (and so the same bf16 roundings) as the reference's chunk / silu / multiply; the
    backward writes both halves of dL/dh into one buffer instead of concatenating them."""

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        gate, value = h.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(h, act)
        return act * value

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> Tuple[torch.Tensor]:
        h, act = ctx.saved_tensors
        gate, value = h.chunk(2, dim=-1)
        grad_h = torch.empty_like(h)
        grad_gate, grad_value = grad_h.chunk(2, dim=-1)
        torch.mul(grad_out, act, out=grad_value)
        torch.ops.aten.silu_backward(grad_out * value, gate, grad_input=grad_gate)
        return grad_h


def silu_gate(h: torch.Tensor) -> torch.Tensor:
    return SiLUGate.apply(h)

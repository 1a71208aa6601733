"""Which kernels a LightningDiT runs: the one place that decides.

models/lightningdit.py is the plain formulation (the reference's formulas, torch's SDPA): it runs
on CUDA and every other device and in compiled models (autograd differentiates it, inductor fuses
it). On a CPU in eager mode hand-written kernels are faster: RMSNorm -> modulate and the SwiGLU
gate as Functions with fused backward passes (models/fused_ops.py), RoPE as one complex multiply,
and in bf16 the flash-accurate attention with RoPE fused in (models/attention.py).

`select_kernels(model)` (call it after moving or compiling a model) swaps modules for the CPU
variants below when the weights are on the CPU and nothing is compiled, and back otherwise. A
variant is a subclass that only replaces `forward`, so parameters, buffers and state_dict keys
are the plain module's. Variants give the reference's numbers (tests/models/test_kernels.py) and
fall back to the plain forward on a non-CPU tensor or under torch.compile, so the hand-written
backward passes (tested on CPU only) never run elsewhere.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.attention import cpu_attention
from models.fused_ops import rms_norm_modulate, silu_gate
from models.lightningdit import (Attention, FinalLayer, LightningDiTBlock, RMSNorm, SwiGLUFFN,
                                 VisionRotaryEmbedding, modulate)

logger = logging.getLogger(__name__)

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _eager_cpu(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def norm_modulate(norm: nn.Module, x: torch.Tensor, shift: Optional[torch.Tensor],
                  scale: torch.Tensor) -> torch.Tensor:
    """modulate(norm(x), shift, scale), as one fused Function for a float32 RMSNorm."""
    if isinstance(norm, RMSNorm) and x.dtype == norm.weight.dtype == torch.float32:
        return rms_norm_modulate(x, norm.weight, norm.eps, shift, scale)
    return modulate(norm(x), shift, scale)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate[:, None] * y. addcmul saves a pass but skips rounding the product to its dtype,
    so it is used only when all three dtypes agree; under bf16 autocast the bf16 product is kept."""
    gate = gate.unsqueeze(1)
    if x.dtype == gate.dtype == y.dtype:
        return torch.addcmul(x, gate, y)
    return x + gate * y


class CPURMSNorm(RMSNorm):
    """F.rms_norm, one pass: bit-identical to the formula for float32 x and weight; for bf16/fp16 x
    the weight-free kernel computes in float32 and rounds to x.dtype before the weight multiply,
    where the reference rounds. Other dtype pairs use the formula."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _eager_cpu(x):
            return super().forward(x)
        shape = (x.shape[-1],)
        if x.dtype == self.weight.dtype == torch.float32:
            return F.rms_norm(x, shape, self.weight, self.eps)
        if x.dtype in _LOW_PRECISION:  # .to(x.dtype): a no-op unless autocast upcast the output
            return F.rms_norm(x, shape, None, self.eps).to(x.dtype) * self.weight
        return super().forward(x)


class CPUSwiGLUFFN(SwiGLUFFN):
    """The gate as one Function whose backward writes both halves of dL/dh into one buffer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _eager_cpu(x):
            return super().forward(x)
        return self.w3(silu_gate(self.w12(x)))


class CPURotaryEmbedding(VisionRotaryEmbedding):
    """Gives CPUAttention RoPE as the complex product of the pairs (x_2i + i x_2i+1) with
    exp(i angle_i): cos and sin are equal within each pair, so that is x*cos + rotate_half(x)*sin
    in one pass with the same float32 roundings. Tables without that pair structure (checked
    whenever the buffers change) keep the formula."""

    def paired(self) -> bool:
        c, s = self.freqs_cos, self.freqs_sin
        key = (c.data_ptr(), c._version, s.data_ptr(), s._version)  # changes on load / .to()
        cached = self.__dict__.get("_paired")
        if cached is None or cached[0] != key:
            ok = bool(torch.equal(c[:, 0::2], c[:, 1::2]) and torch.equal(s[:, 0::2], s[:, 1::2]))
            if not ok:
                logger.warning("RoPE tables are not pair-interleaved; using the unfused RoPE formula")
            self._paired = cached = (key, ok)
        return cached[1]

    def rotation(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The (N, head_dim/2) complex table with rope(x) = x (x) table over interleaved pairs, in
        the dtype the formula computes x in (float32/float64); None where the product does not
        apply (non-CPU or compiled, odd head_dim, half-precision tables, unpaired tables)."""
        if not _eager_cpu(x) or x.shape[-1] % 2:
            return None
        dtype = torch.result_type(x, self.freqs_cos)
        if dtype not in (torch.float32, torch.float64) or not self.paired():
            return None
        return torch.complex(self.freqs_cos[:, 0::2].to(dtype), self.freqs_sin[:, 0::2].to(dtype))


class CPUAttention(Attention):
    """RoPE and attention through models/attention.py (in bf16 the flash-accurate kernel with the
    rotation fused in), no einops re-layouts."""

    def forward(self, x: torch.Tensor, rope: Optional[VisionRotaryEmbedding] = None) -> torch.Tensor:
        if not _eager_cpu(x):
            return super().forward(x, rope)
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, h, N, d_h) each
        q, k = self.q_norm(q), self.k_norm(k)
        rotation = rope.rotation(q) if isinstance(rope, CPURotaryEmbedding) else None
        if rope is not None and rotation is None:
            q, k = rope(q), rope(k)
        x = cpu_attention(q, k, v, rotation)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class CPULightningDiTBlock(LightningDiTBlock):
    """The block with the fused RMSNorm -> modulate and addcmul residuals."""

    def forward(self, x: torch.Tensor, c: torch.Tensor,
                feat_rope: Optional[VisionRotaryEmbedding] = None) -> torch.Tensor:
        if not _eager_cpu(x):
            return super().forward(x, c, feat_rope)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        x = gated_residual(x, gate_msa, self.attn(norm_modulate(self.norm1, x, shift_msa, scale_msa), rope=feat_rope))
        x = gated_residual(x, gate_mlp, self.mlp(norm_modulate(self.norm2, x, shift_mlp, scale_mlp)))
        return x


class CPUFinalLayer(FinalLayer):
    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if not _eager_cpu(x):
            return super().forward(x, c)
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(norm_modulate(self.norm_final, x, shift, scale))


CPU_VARIANTS: Dict[type, type] = {
    RMSNorm: CPURMSNorm, SwiGLUFFN: CPUSwiGLUFFN, VisionRotaryEmbedding: CPURotaryEmbedding,
    Attention: CPUAttention, LightningDiTBlock: CPULightningDiTBlock, FinalLayer: CPUFinalLayer,
}
PLAIN_MODULES: Dict[type, type] = {cpu: plain for plain, cpu in CPU_VARIANTS.items()}


def _swap(model: nn.Module, classes: Dict[type, type]) -> nn.Module:
    for module in model.modules():
        new = classes.get(type(module))
        if new is not None:
            module.__class__ = new  # same attributes, so the same parameters, buffers and keys
    return model


def use_cpu_kernels(model: nn.Module) -> nn.Module:
    """Swap in the CPU-kernel variants, in place; returns model."""
    return _swap(model, CPU_VARIANTS)


def use_plain_modules(model: nn.Module) -> nn.Module:
    """Swap the CPU-kernel variants back to the plain modules, in place; returns model."""
    return _swap(model, PLAIN_MODULES)


def uses_cpu_kernels(model: nn.Module) -> bool:
    return any(type(m) in PLAIN_MODULES for m in model.modules())


def select_kernels(model: nn.Module) -> nn.Module:
    """The decision: CPU kernels for an eager model whose weights are on the CPU; the plain modules
    on every other device and once any part is compiled in place (nn.Module.compile, as
    compile_blocks does). In place; returns model."""
    param = next(model.parameters(), None)
    compiled = any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())
    if param is not None and param.device.type == "cpu" and not compiled:
        return use_cpu_kernels(model)
    return use_plain_modules(model)

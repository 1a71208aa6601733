"""Which kernels the LightningDiT block runs on which device: the one switch.

Two formulations compute the same numbers (tests/models/test_kernels.py):

- "plain": the reference's formulas (RMSNorm then modulate, chunk / silu / multiply for SwiGLU,
  RoPE as x*cos + rotate_half(x)*sin) and torch's F.scaled_dot_product_attention (flash /
  memory-efficient kernels on a GPU). Autograd differentiates them; torch.compile fuses them.
  This runs on CUDA (and every non-CPU device) and under torch.compile everywhere.
- "cpu": the hand-written kernels tuned for a CPU's memory system: the fused RMSNorm->modulate
  and SiLU-gate autograd Functions (models/fused_ops.py), RoPE as one complex multiply, and the
  flash-accurate bf16 attention with RoPE fused in (models/attention.py ShiftedBF16Attention).
  Their backward passes are written by hand and tested on CPU only, so they never run on a GPU.

`kernel_path(device)` decides; every call site in models/ asks it (through `use_cpu_kernels`).
`forced_kernel_path("plain")` overrides the choice (tests run the CUDA selection on CPU with it).
The glibc allocator tuning (utils/runtime.tune_cpu_allocator) is the other CPU-only setting; it is
applied by setup_runtime only when no CUDA device is present.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Union

import torch

PLAIN, CPU = "plain", "cpu"
KERNEL_PATHS = (PLAIN, CPU)

_forced: Optional[str] = None


def kernel_path(device: Union[str, torch.device]) -> str:
    """"cpu" for the CPU device, "plain" for CUDA and every other device, unless forced."""
    if _forced is not None:
        return _forced
    return CPU if torch.device(device).type == "cpu" else PLAIN


def use_cpu_kernels(x: torch.Tensor) -> bool:
    """True where the hand-written CPU kernels should compute on x: the "cpu" path, in eager mode
    (under torch.compile the plain formulas are traced and fused by inductor instead)."""
    return kernel_path(x.device) == CPU and not torch.compiler.is_compiling()


@contextlib.contextmanager
def forced_kernel_path(path: Optional[str]) -> Iterator[None]:
    """Run the model with `path` ("plain" or "cpu") on any device; None restores the automatic
    choice. Not thread-safe (a process-wide switch, meant for tests and benchmarks)."""
    global _forced
    if path is not None and path not in KERNEL_PATHS:
        raise ValueError(f"unknown kernel path {path!r}; expected one of {KERNEL_PATHS}")
    previous, _forced = _forced, path
    try:
        yield
    finally:
        _forced = previous

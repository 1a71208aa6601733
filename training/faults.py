"""Fault injection for the resume and NaN-guard tests: one call per training step.

`LIGHTNINGDIT_FAULT=sigkill@N` kills the process (SIGKILL, no cleanup) at step N, before that
step's update is applied; `nan@N` turns the loss of step N into NaN; `spike@N` multiplies it
by 100 (the loss-spike warning test). Unset: a no-op.
"""
from __future__ import annotations

import os
import signal

import torch

ENV_VAR = "LIGHTNINGDIT_FAULT"


def inject_fault(step: int, loss: torch.Tensor) -> torch.Tensor:
    """Return `loss`, or act out the fault configured for `step` (see the module docstring)."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return loss
    kind, _, at = spec.partition("@")
    if kind not in ("sigkill", "nan", "spike") or not at.isdigit():
        raise ValueError(f"{ENV_VAR}={spec!r}: expected 'sigkill@N', 'nan@N' or 'spike@N'")
    if int(at) != step:
        return loss
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    return loss * (100.0 if kind == "spike" else float("nan"))

"""Exponential moving average of the weights, as the reference keeps it."""
from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float = 0.9999) -> None:
    """ema_p <- decay * ema_p + (1 - decay) * p for every named parameter (docs/reference_behaviour.md §3.4).

    Includes frozen ones (pos_embed) as the reference; buffers are not averaged. decay=0 makes
    an exact copy. `model` must be the unwrapped module (same parameter names as `ema`).
    """
    ema_params = dict(ema.named_parameters())
    model_params = dict(model.named_parameters())
    if ema_params.keys() != model_params.keys():
        raise ValueError("EMA and model parameter names differ: "
                         f"{sorted(set(ema_params) ^ set(model_params))[:5]}")
    names = list(ema_params)
    dst = [ema_params[n] for n in names]
    src = [model_params[n].detach() for n in names]
    if decay == 0.0:
        torch._foreach_copy_(dst, src)
        return
    torch._foreach_mul_(dst, decay)
    torch._foreach_add_(dst, src, alpha=1.0 - decay)

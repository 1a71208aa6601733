"""Helpers the benchmark scripts share: device sync, a best-of timer, and weights that make an
untrained LightningDiT compute something."""
import time
from typing import Callable

import torch
import torch.nn as nn


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    """Seconds of the fastest of `iters` timed calls of fn, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def randomize_zero_init(model: nn.Module, std: float = 0.02) -> nn.Module:
    """Give every all-zero trainable parameter N(0, std) values, in place. The DiT init zeroes
    adaLN and the output layer, so an untrained model outputs 0 and comparisons of its outputs,
    or of the work behind them, would be vacuous."""
    with torch.no_grad():
        for prm in model.parameters():
            if prm.requires_grad and not prm.any():
                prm.normal_(0.0, std)
    return model

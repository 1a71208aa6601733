"""Learning-rate schedules as pure functions of the optimizer step (so a resumed run sets exactly
the LR an uninterrupted one had: nothing to save but the step).

`warmup_constant_decay` is the general form: a linear warm-up from `warmup_start` x lr to lr over
`warmup_steps`, lr held until `decay_start`, then a cosine (or linear) decay to `final` x lr at
`total_steps` (held after). SFD's Semantic VAE uses warm-up 500 from 0.01 x lr, constant to
800,500, cosine to 0.1 x lr at 1,000,000; a constant LR is `warmup_steps=0, decay_start=None`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

DECAYS = ("cosine", "linear")


@dataclass(frozen=True)
class LRSchedule:
    """Multiplier of the base LR at each step (`factor(step)`); see the module docstring."""
    warmup_steps: int = 0
    warmup_start: float = 0.0
    decay_start: Optional[int] = None     # None: no decay (constant after the warm-up)
    total_steps: Optional[int] = None     # end of the decay
    final: float = 0.0
    decay: str = "cosine"

    def __post_init__(self):
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.warmup_start <= 1.0 or not 0.0 <= self.final <= 1.0:
            raise ValueError("warmup_start and final are fractions of the base LR, in [0, 1]")
        if self.decay not in DECAYS:
            raise ValueError(f"unknown decay {self.decay!r}; expected one of {DECAYS}")
        if self.decay_start is not None:
            if self.total_steps is None or self.total_steps <= self.decay_start:
                raise ValueError(f"a decay starting at step {self.decay_start} needs total_steps > it, "
                                 f"got {self.total_steps}")
            if self.decay_start < self.warmup_steps:
                raise ValueError(f"decay_start {self.decay_start} falls inside the warm-up "
                                 f"({self.warmup_steps} steps)")

    def factor(self, step: int) -> float:
        """LR multiplier for optimizer step `step` (0-based: the update that step performs)."""
        if step < self.warmup_steps:
            return self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps
        if self.decay_start is None or step < self.decay_start:
            return 1.0
        progress = min(1.0, (step - self.decay_start) / (self.total_steps - self.decay_start))
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.decay == "cosine" else 1.0 - progress
        return self.final + (1.0 - self.final) * shape


def set_lr(optimizer, base_lr: float, schedule: Optional[LRSchedule], step: int) -> float:
    """Write base_lr x schedule.factor(step) into every param group; returns it (None: base_lr)."""
    lr = base_lr if schedule is None else base_lr * schedule.factor(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr

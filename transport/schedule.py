"""The one time schedule of training and sampling: channel groups that run at their own times.

A latent's channels are split into consecutive groups. LightningDiT has one group (every channel
at time t). SFD (docs/reference_behaviour.md §12.3.1) has two: the texture channels, then the
semantic channels, which run `delta` ahead. Each group g has a *lead*; with D = the largest lead
and lag_g = D - lead_g, one base time tau in [0, 1 + D] drives every group:

    t_g(tau) = clip(tau - lag_g, 0, 1)          (t = 0 noise, t = 1 data)

so the leading group reaches the data first and the others follow at the same speed. Training
draws a time t in [0, 1] (uniform or logit-normal) and stretches it, tau = (1 + D) t (SFD's
draw). Sampling integrates over tau in [0, 1 + D]; group g moves only while its time is unclipped,
lag_g <= tau <= lag_g + 1 (SFD's three phases for two groups). When every lead is 0 (one group, or
SFD with delta = 0) every map here is the identity, the network gets one time (B,), and the code
paths reduce to LightningDiT's, bit for bit.

The clips and the phase tests use the same float operations as SFD's code, so its released
networks see the very same times: the stretch multiplies by (1 + D), a lagging group subtracts its
lag and clips at 0 only, the leading group clips at 1 only, and each phase test is one comparison
in float32 (texture moves iff tau >= delta, semantics iff tau <= 1, as SFD compares its float32
time tensor with Python floats).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

Times = Union[Tensor, Tuple[Tensor, ...]]


def _f32(value: float) -> float:
    """`value` rounded to float32: the threshold a float32 tensor comparison uses."""
    return float(np.float32(value))


@dataclass(frozen=True)
class TimeSchedule:
    """Channel groups (in channel order) with their sizes, leads and names.

    `single(C)` is LightningDiT's schedule; `semantic_first(C_tex, C_sem, delta)` is SFD's. A size
    of 0 is allowed for a lone group only and means "every channel, whatever the latent's width".
    """
    channels: Tuple[int, ...]
    leads: Tuple[float, ...]
    names: Tuple[str, ...]

    def __post_init__(self):
        if not (len(self.channels) == len(self.leads) == len(self.names)) or not self.channels:
            raise ValueError("a time schedule needs one size, lead and name per channel group")
        if any(c < 0 for c in self.channels) or (len(self.channels) > 1 and 0 in self.channels):
            raise ValueError(f"channel group sizes must be positive, got {self.channels}")
        if any(not 0.0 <= lead <= 1.0 for lead in self.leads):   # 1: one group after the other (SFD's ablation end)
            raise ValueError(f"group leads must lie in [0, 1], got {self.leads}")

    @classmethod
    def single(cls, channels: int = 0) -> "TimeSchedule":
        """One group: every channel at the same time (LightningDiT); 0 = any number of channels."""
        return cls((int(channels),), (0.0,), ("all",))

    @classmethod
    def semantic_first(cls, texture_channels: int, semantic_channels: int, delta: float) -> "TimeSchedule":
        """SFD: texture channels first, the last `semantic_channels` channels `delta` ahead
        (delta = 0: both groups at one time, still two groups for the loss weights and guidance)."""
        return cls((int(texture_channels), int(semantic_channels)), (0.0, float(delta)), ("tex", "sem"))

    # ------------------------------------------------------------------ shape of the schedule

    @property
    def num_groups(self) -> int:
        return len(self.channels)

    @property
    def num_channels(self) -> int:
        return sum(self.channels)

    @property
    def max_lead(self) -> float:
        return max(self.leads)

    @property
    def lags(self) -> Tuple[float, ...]:
        """How far each group trails the leading one (D - lead_g)."""
        return tuple(self.max_lead - lead for lead in self.leads)

    @property
    def synchronous(self) -> bool:
        """Every group at the same time (one group, or equal leads): no stretch, no phases."""
        return self.max_lead == 0.0

    def slices(self) -> Tuple[slice, ...]:
        """The channel range of each group (a lone group: every channel)."""
        if self.num_groups == 1:
            return (slice(None),)
        out, start = [], 0
        for c in self.channels:
            out.append(slice(start, start + c))
            start += c
        return tuple(out)

    def group(self, name: str) -> int:
        """Index of the group called `name`."""
        if name not in self.names:
            raise ValueError(f"no channel group {name!r} (groups: {self.names})")
        return self.names.index(name)

    def check_channels(self, x: Tensor) -> None:
        """One-line ValueError when x (B, C, ...) does not have the schedule's channel count."""
        if self.num_groups > 1 and x.shape[1] != self.num_channels:
            raise ValueError(f"latent has {x.shape[1]} channels, the time schedule {self.num_channels} "
                             f"({' + '.join(f'{c} {n}' for c, n in zip(self.channels, self.names))})")

    # ------------------------------------------------------------------ times

    def span(self, t0: float = 0.0, t1: float = 1.0) -> Tuple[float, float]:
        """The base-time interval that takes every group from t0 to t1: (t0, t1 + D)."""
        return t0, t1 + self.max_lead

    def stretch(self, t: Tensor) -> Tensor:
        """Base time of a training draw t in [0, 1]: tau = (1 + D) t (identity when synchronous)."""
        return t if self.synchronous else t * (1 + self.max_lead)

    def group_times(self, tau: Tensor) -> Tuple[Tensor, ...]:
        """Each group's time at base time tau (B,): a tuple of G tensors (B,), in channel order."""
        if self.synchronous:
            return (tau,) * self.num_groups
        top = self.max_lead
        out = []
        for lag in self.lags:
            t = tau - lag if lag > 0 else tau
            if lag > 0:
                t = t.clamp(min=0.0)
            if lag < top:
                t = t.clamp(max=1.0)
            out.append(t)
        return tuple(out)

    def model_times(self, times: Sequence[Tensor]) -> Times:
        """What the network is called with: t (B,) when synchronous, else the tuple
        (t_0, ..., t_G-1) in channel order (SFD's `(t_tex, t_sem)`)."""
        return times[0] if self.synchronous else tuple(times)

    def times_at(self, s: float, batch_size: int, device: Union[str, torch.device, None] = None) -> Times:
        """The network's time input at base time s (a host number) for a batch: model_times of the
        group times of `torch.full((B,), s)` in float32 (the reference's `ones(B) * t`)."""
        tau = torch.full((batch_size,), s, dtype=torch.float32, device=device)
        return self.model_times(self.group_times(tau))

    def channel_times(self, times: Sequence[Tensor], x: Tensor) -> Tensor:
        """The group times broadcast against x (B, C, ...): (B, 1, 1, ...) when synchronous, else
        (B, C, 1, ...) with each channel at its group's time."""
        if len(times) != self.num_groups:
            raise ValueError(f"{len(times)} group times for {self.num_groups} channel groups")
        self.check_channels(x)
        tail = [1] * (x.ndim - 2)
        if self.synchronous:
            return times[0].reshape(times[0].shape[0], 1, *tail)
        per_channel = torch.cat([t[:, None].expand(-1, c) for t, c in zip(times, self.channels)], dim=1)
        return per_channel.reshape(*per_channel.shape, *tail)  # (B, C, 1, ...)

    # ------------------------------------------------------------------ phases

    def active(self, tau: float) -> Tuple[bool, ...]:
        """Which groups move at base time tau (a host number): lag_g <= tau <= lag_g + 1, each
        bound tested only where it can fail, in float32 (tau and bound rounded), as SFD tests its
        float32 time tensor against Python floats."""
        top, tau = self.max_lead, _f32(tau)
        out = []
        for lag in self.lags:
            ok = True
            if lag > 0:
                ok = ok and tau >= _f32(lag)
            if lag < top:
                ok = ok and tau <= _f32(lag + 1.0)
            out.append(bool(ok))
        return tuple(out)

    def group_mask(self, flags: Sequence[bool], x: Tensor) -> Tensor:
        """(1, C, 1, ...) in x's dtype and device: 1 on the channels of the groups flagged True,
        0 elsewhere (built by fills, no host-to-device copy)."""
        self.check_channels(x)
        mask = torch.zeros(1, x.shape[1], *([1] * (x.ndim - 2)), dtype=x.dtype, device=x.device)
        for sl, on in zip(self.slices(), flags):
            if on:
                mask[:, sl] = 1
        return mask

    def channel_mask(self, tau: Tensor, x: Tensor) -> Optional[Tensor]:
        """The drift mask at base times tau (B,) as x's dtype, broadcast like x (B, C, 1, ...):
        1 where a channel's group moves, 0 where it is frozen. None when nothing is ever frozen
        (synchronous schedules), so callers skip the multiply."""
        if self.synchronous:
            return None
        top = self.max_lead
        masks = []
        for lag in self.lags:
            m = torch.ones_like(tau, dtype=torch.bool)
            if lag > 0:
                m = m & (tau >= lag)
            if lag < top:
                m = m & (tau <= lag + 1.0)
            masks.append(m.to(x.dtype))
        return self.channel_times(masks, x)

    def breakpoints(self) -> Tuple[float, ...]:
        """Base times inside (0, 1 + D) where a group starts or stops moving: the drift's
        discontinuities (SFD: delta and 1). Empty when synchronous."""
        if self.synchronous:
            return ()
        end = 1.0 + self.max_lead
        points = {p for lag in self.lags for p in (lag, lag + 1.0) if 0.0 < p < end}
        return tuple(sorted(points))

"""Guidance, in one place: the denoiser every sampler integrates.

`Denoiser(net, y, times, guidance)` is called as `denoiser(x, s)` with the states x (n, C, ...)
and the sampler's time s, a host number: the base time (a Python float) for the flow samplers,
the respaced step index (an int) for DDPM's chain. It returns the raw network output, guided:

- unguided: `net(x, t, y)`;
- classifier-free guidance (CFG): ONE network call on the doubled batch [x; x] with labels
  [y; null], exactly as the authors' `forward_with_cfg` runs it (docs/reference_behaviour.md
  §1.10), then per guided part `uncond + w (cond - uncond)`; every other channel is conditional;
- AutoGuidance (SFD, docs/reference_behaviour.md §12.4.3): the main network and a weaker
  guide network of the same latent space, both called with the TRUE labels, then per part
  `guide + w (main - guide)`; every other channel comes from the main network.

The guided parts are the time schedule's channel groups (transport/schedule.py: one group for
LightningDiT, texture then semantics for SFD), each with its own scale w (sample.cfg_scale, or
sample.cfg_scale_tex / cfg_scale_sem per SFD part). One exception keeps LightningDiT's published
numbers: CFG of a one-group model guides only the first `sample.cfg_channels` channels (3, the
reference's quirk, §1.10; 'all' is the fix). The interval: a part is not guided (its output is
the conditional / main one) while its group's own time is below `cfg_interval_start`; for SFD,
`model.semfirst_infer_interval_mode` (tex / sem / both) says which parts the interval applies to.
When no part is guided at s and `skip_uncond` is on, the denoiser makes one conditional call on
the n rows instead (same numbers up to float rounding). Every decision reads the host time s, so
deciding costs no device sync.

Float operations follow the authors' code, so the no-skip CFG output equals forward_with_cfg's
first half bit for bit, and SFD's forward_with_cfg / forward_with_autoguidance likewise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from transport.schedule import TimeSchedule

Time = Union[float, int]                 # what a sampler passes: base time (flow) or step index (DDPM)
Network = Callable[..., Tensor]          # net(x, t, y) -> raw output

# Which SFD parts the CFG interval applies to (`model.semfirst_infer_interval_mode`).
INTERVAL_MODES = {"tex": ("tex",), "sem": ("sem",), "both": ("tex", "sem")}
LEGACY_CFG_CHANNELS = "3"                # sample.cfg_channels' default: the reference's quirk


def parse_cfg_channels(value: str) -> Optional[int]:
    """`sample.cfg_channels` as a channel count: a positive integer, or None for 'all'."""
    if value == "all":
        return None
    if not (isinstance(value, str) and value.isdigit() and int(value) > 0):
        raise ValueError(f"bad value for 'sample.cfg_channels': {value!r} (expected a positive integer or 'all')")
    return int(value)


def combine(main: Tensor, reference: Tensor, parts: Sequence[slice], scales: Sequence[float],
            guided: Sequence[bool]) -> Tensor:
    """`reference + w (main - reference)` on each guided channel range of `parts` (in channel
    order, contiguous from channel 0), `main` on unguided parts and on every channel after them.
    main, reference: (n, C', ...) with C' >= the parts' end (e.g. DDPM's variance channels)."""
    pieces = [reference[:, p] + w * (main[:, p] - reference[:, p]) if g else main[:, p]
              for p, w, g in zip(parts, scales, guided)]
    end = parts[-1].stop
    if end is not None and end < main.shape[1]:
        pieces.append(main[:, end:])
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)


def cfg_combine(cond: Tensor, uncond: Tensor, scale: float, channels: Optional[int] = None) -> Tensor:
    """Classifier-free guidance of one group: `uncond + scale (cond - uncond)` on the first
    `channels` channels (all when None), `cond` on the others (n, C, ...). The combine of
    `forward_with_cfg` (its first half), with the same float operations."""
    if channels is not None and not 0 < channels <= cond.shape[1]:
        raise ValueError(f"cfg_channels must be None or in [1, {cond.shape[1]}], got {channels!r}")
    return combine(cond, uncond, (slice(0, channels),), (scale,), (True,))


@dataclass(frozen=True)
class Guidance:
    """How a sampling run guides: `kind` none | cfg | auto (AutoGuidance), and per guided part
    (channel range, aligned with the time schedule's groups) its scale and whether the interval
    applies to it. `interval_start` None: guided at every time. Build with `from_config`."""
    kind: str = "none"
    parts: Tuple[slice, ...] = ()
    scales: Tuple[float, ...] = ()
    interval_parts: Tuple[bool, ...] = ()
    interval_start: Optional[float] = None
    skip_uncond: bool = True

    def __post_init__(self):
        if self.kind not in ("none", "cfg", "auto"):
            raise ValueError(f"unknown guidance kind {self.kind!r}")
        if self.kind != "none" and not (len(self.parts) == len(self.scales) == len(self.interval_parts) > 0):
            raise ValueError("guidance needs one channel range, scale and interval flag per part")

    @property
    def active(self) -> bool:
        return self.kind != "none"

    @classmethod
    def from_config(cls, cfg, schedule: TimeSchedule, *, cfg_scale: Optional[float] = None,
                    interval: bool = True, interval_start: Optional[float] = None,
                    skip_uncond: Optional[bool] = None) -> "Guidance":
        """The config's guidance (`sample.*`, `model.semfirst_infer_interval_mode`); the keyword
        arguments override the config (the demo grid, evaluation during training). Guidance is
        active only when the scale is above 1 (as the reference and SFD). Settings that cannot
        apply raise a one-line ValueError naming the key."""
        s = cfg.sample
        scale = s.cfg_scale if cfg_scale is None else cfg_scale
        if scale <= 1.0:
            return cls()
        kind = "auto" if s.autoguidance else "cfg"
        channels = parse_cfg_channels(s.cfg_channels)
        mode = cfg.model.semfirst_infer_interval_mode
        if schedule.num_groups == 1:
            per_part = [k for k in ("cfg_scale_tex", "cfg_scale_sem") if getattr(s, k) is not None]
            if per_part:
                raise ValueError(f"sample.{per_part[0]} scales one SFD part, but the model has one channel "
                                 "group (set model.semantic_chans and model.semfirst_delta_t, or unset it)")
            if mode != "both":
                raise ValueError(f"model.semfirst_infer_interval_mode={mode!r} picks an SFD part, but the model "
                                 "has one channel group (leave it at 'both')")
            if kind == "auto":
                _require_every_channel(s.cfg_channels, "AutoGuidance")
                channels = None
            if channels is not None and channels > schedule.num_channels:
                raise ValueError(f"sample.cfg_channels={channels} exceeds the latent's {schedule.num_channels} "
                                 "channels (model.in_chans)")
            parts, scales, in_interval = (slice(0, channels or schedule.num_channels),), (scale,), (True,)
        else:
            _require_every_channel(s.cfg_channels, "SFD's guidance")
            parts = schedule.slices()
            scales = tuple(_part_scale(s, name, scale) for name in schedule.names)
            in_interval = tuple(name in INTERVAL_MODES[mode] for name in schedule.names)
        start = s.cfg_interval_start if interval_start is None else interval_start
        skip = s.skip_uncond_outside_interval if skip_uncond is None else skip_uncond
        # start <= 0 never fires (times are >= 0): no interval tests at all
        return cls(kind, parts, tuple(float(w) for w in scales), in_interval,
                   float(start) if interval and start > 0 else None, bool(skip))


def _require_every_channel(value: str, what: str) -> None:
    """sample.cfg_channels picks channels only for CFG of one group; elsewhere an explicit count is
    refused rather than ignored (the default '3' stands for the reference's behaviour: all here)."""
    if value not in (LEGACY_CFG_CHANNELS, "all"):
        raise ValueError(f"sample.cfg_channels={value!r} selects guided channels for classifier-free guidance "
                         f"of a one-group model only; {what} guides every channel (set 'all' or leave the default)")


def _part_scale(s, name: str, default: float) -> float:
    """SFD's per-part scale sample.cfg_scale_{tex,sem}, else sample.cfg_scale."""
    value = getattr(s, f"cfg_scale_{name}", None)
    return default if value is None else value


class FlowTimes:
    """The flow samplers' base time s (a host float) -> the network's time argument (the time
    schedule's model times: (rows,) float32 for one group, equal to the reference's
    `torch.ones(rows) * t`; SFD's tuple (t_tex, t_sem)) and each group's time on the host."""

    def __init__(self, schedule: TimeSchedule):
        self.schedule = schedule

    def network(self, s: float, rows: int, device: torch.device):
        return self.schedule.times_at(s, rows, device)

    def below(self, s: float, start: float) -> Tuple[bool, ...]:
        """Per group: its time at s is below `start`, compared in float32 as the reference's
        `t[0] < cfg_interval_start` (computed on a one-element CPU tensor: no device sync)."""
        times = self.schedule.group_times(torch.tensor([s], dtype=torch.float32))
        return tuple(bool(t[0] < start) for t in times)


class DDPMTimes:
    """DDPM's respaced step index i (a host int) -> the original timestep the network sees
    (int64, DiT's timestep_map). The interval does not apply to the discrete chain."""

    def __init__(self, timestep_map: Sequence[int]):
        self.timestep_map = [int(v) for v in timestep_map]

    def network(self, i: int, rows: int, device: torch.device) -> Tensor:
        return torch.full((rows,), self.timestep_map[i], dtype=torch.long, device=device)

    def below(self, i: int, start: float) -> Tuple[bool, ...]:
        return (False,)


class Denoiser:
    """`denoiser(x, s)` -> the guided raw output of `net` for the states x (n, C, ...) at time s.

    net (and guide): called as net(x, t, y). y (n,): labels. times: `FlowTimes` or `DDPMTimes`.
    guide: AutoGuidance's guide network (guidance.kind 'auto'); null_class: CFG's null label.
    Counts evaluations in `calls`, those with one conditional call on n rows in `cond_only`.
    """

    def __init__(self, net: Network, y: Tensor, times, guidance: Guidance = Guidance(), *,
                 guide: Optional[Network] = None, null_class: Optional[int] = None):
        if guidance.kind == "auto" and guide is None:
            raise ValueError("AutoGuidance needs a guide network")
        if guidance.kind == "cfg" and null_class is None:
            raise ValueError("classifier-free guidance needs the null class label")
        self.net, self.guide, self.y, self.times, self.guidance = net, guide, y, times, guidance
        self.y_cfg = torch.cat([y, torch.full_like(y, null_class)]) if guidance.kind == "cfg" else None
        self.calls = self.cond_only = 0

    def guided_parts(self, s: Time) -> Tuple[bool, ...]:
        """Which parts are guided at s (host decision)."""
        g = self.guidance
        if g.interval_start is None:
            return (True,) * len(g.parts)
        below = self.times.below(s, g.interval_start)
        return tuple(not (applies and low) for applies, low in zip(g.interval_parts, below))

    def __call__(self, x: Tensor, s: Time) -> Tensor:
        self.calls += 1
        g, n = self.guidance, x.shape[0]
        if not g.active:
            return self.net(x, self.times.network(s, n, x.device), self.y)
        guided = self.guided_parts(s)
        if g.skip_uncond and not any(guided):
            self.cond_only += 1
            return self.net(x, self.times.network(s, n, x.device), self.y)
        if g.kind == "cfg":
            out = self.net(torch.cat([x, x]), self.times.network(s, 2 * n, x.device), self.y_cfg)
            main, reference = out[:n], out[n:]
        else:
            t = self.times.network(s, n, x.device)
            main, reference = self.net(x, t, self.y), self.guide(x, t, self.y)
        return combine(main, reference, g.parts, g.scales, guided)

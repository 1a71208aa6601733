"""The one map between tokenizer latents and the model's latent space, used by the dataset, the
validation loss and the decoder (docs/reference_behaviour.md §4.4; SFD's composite, spec §1.4/§2.3):

    x = multiplier * [ (z - mean) / std ; d ; (s - sv_mean) / sv_std ]       (channels)

z are the texture latents (the tokenizer's, always first), d optional ReDi-style DINO PCA
channels (never standardised) and s optional SFD semantic latents (last). A part without stats
passes through unchanged; `denormalize` returns the texture part only, z = x * std / multiplier
+ mean (or x / multiplier without stats), which is what the tokenizer decodes.

The maths only: `datasets.img_latent_dataset.load_normalizer` builds one from the stats files.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _channel_column(stat: Tensor, name: str) -> Tensor:
    """(1, C, 1, 1) or (C, 1, 1) -> float32 (C, 1, 1), broadcastable over (..., C, H, W)."""
    if stat.dim() == 4 and stat.shape[0] == 1:
        stat = stat[0]
    if stat.dim() != 3 or stat.shape[1:] != (1, 1):
        raise ValueError(f"{name}: shape {tuple(stat.shape)}, expected (1, C, 1, 1)")
    return stat.float()


class LatentNormalizer:
    """Per-channel affine map of the composite latent (module docstring).

    `channels` is the model's channel count (texture + DINO + semantic), `texture_chans` the
    texture part's; `mean`/`std` standardise the texture channels and `sv_mean`/`sv_std` the last
    sv_mean.shape[1] channels (either pair may be None: not standardised).
    """

    def __init__(self, mean: Optional[Tensor], std: Optional[Tensor], multiplier: float = 1.0,
                 sv_mean: Optional[Tensor] = None, sv_std: Optional[Tensor] = None, *,
                 channels: int, texture_chans: int):
        if (mean is None) != (std is None) or (sv_mean is None) != (sv_std is None):
            raise ValueError("LatentNormalizer: mean and std (and sv_mean and sv_std) come in pairs")
        self.multiplier = float(multiplier)
        self.channels, self.texture_chans = int(channels), int(texture_chans)
        self.mean = None if mean is None else _channel_column(mean, "mean")
        self.std = None if std is None else _channel_column(std, "std")
        self.sv_mean = None if sv_mean is None else _channel_column(sv_mean, "sv_mean")
        self.sv_std = None if sv_std is None else _channel_column(sv_std, "sv_std")
        sv_chans = 0 if self.sv_mean is None else self.sv_mean.shape[0]
        if self.mean is not None and (self.mean.shape != self.std.shape or self.mean.shape[0] != texture_chans):
            raise ValueError(f"LatentNormalizer: texture stats of shape {tuple(self.mean.shape)}/"
                             f"{tuple(self.std.shape)} for {texture_chans} texture channels")
        if self.sv_mean is not None and self.sv_mean.shape != self.sv_std.shape:
            raise ValueError(f"LatentNormalizer: sv_mean {tuple(self.sv_mean.shape)} and sv_std "
                             f"{tuple(self.sv_std.shape)} differ")
        if texture_chans <= 0 or texture_chans + sv_chans > channels:
            raise ValueError(f"LatentNormalizer: {texture_chans} texture + {sv_chans} semantic "
                             f"channels do not fit in {channels}")
        # One (C, 1, 1) shift/scale over all channels: 0 / 1 where a part is not standardised,
        # which is exact ((x - 0) / 1 == x), so one elementwise pass does every part.
        self.shift = self.scale = None
        if self.mean is not None or self.sv_mean is not None:
            device = (self.mean if self.mean is not None else self.sv_mean).device
            self.shift = torch.zeros(channels, 1, 1, device=device)
            self.scale = torch.ones(channels, 1, 1, device=device)
            if self.mean is not None:
                self.shift[:texture_chans], self.scale[:texture_chans] = self.mean, self.std
            if self.sv_mean is not None:
                self.shift[channels - sv_chans:], self.scale[channels - sv_chans:] = self.sv_mean, self.sv_std

    @property
    def sv_chans(self) -> int:
        """How many trailing channels `sv_mean`/`sv_std` standardise (0: none)."""
        return 0 if self.sv_mean is None else self.sv_mean.shape[0]

    def normalize(self, x: Tensor) -> Tensor:
        """Composite tokenizer latents (..., channels, H, W) -> model space (same shape)."""
        self._check(x, self.channels)
        if self.shift is not None:
            x = (x - self.shift) / self.scale
        return x * self.multiplier

    def denormalize(self, x: Tensor) -> Tensor:
        """Model-space latents (..., channels, H, W) -> the texture latents the tokenizer decodes
        (..., texture_chans, H, W), with the texture stats only (SFD drops the semantic part)."""
        self._check(x, self.channels)
        z = x if self.texture_chans == self.channels else x.narrow(-3, 0, self.texture_chans)
        return z * self.std / self.multiplier + self.mean if self.mean is not None else z / self.multiplier

    def to(self, device) -> "LatentNormalizer":
        """A copy with the stats on `device`."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return LatentNormalizer(move(self.mean), move(self.std), self.multiplier, move(self.sv_mean),
                                move(self.sv_std), channels=self.channels, texture_chans=self.texture_chans)

    def _check(self, x: Tensor, channels: int) -> None:
        if x.dim() < 3 or x.shape[-3] != channels:
            raise ValueError(f"latents of shape {tuple(x.shape)}: expected {channels} channels "
                             f"at dim -3 ({self.texture_chans} texture first)")

    def __repr__(self) -> str:
        return (f"LatentNormalizer(channels={self.channels}, texture_chans={self.texture_chans}, "
                f"texture stats={self.mean is not None}, semantic stats on the last {self.sv_chans}, "
                f"multiplier={self.multiplier})")

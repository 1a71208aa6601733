"""KL autoencoder of VA-VAE: the LDM ("VQGAN-KL") Encoder / Decoder and `AutoencoderKL`.

Follows docs/reference_behaviour.md §5.2-5.3 and §11.2 (hustvl/LightningDiT `tokenizer/autoencoder.py`, which is
the LDM `ldm/modules/diffusionmodules/model.py` network). Module and parameter names are frozen:
the released `vavae-imagenet256-f16d32-dinov2.pt` loads unchanged (342 keys, 69,836,067 params).

Differences from the reference, none numerical:
- built from the LDM `ddconfig` dict of the YAML (the reference hard-codes all but embed_dim);
- attention uses `F.scaled_dot_product_attention` (single head, scale C^-0.5), which computes the
  reference's bmm/softmax/bmm formulation (tests compare against a plain implementation);
- checkpoint loading lives in `tokenizer/checkpoint.py` and is strict.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenizer.distributions import DiagonalGaussianDistribution

# Keys of an LDM ddconfig. `resamp_with_conv` (always True in VA-VAE) is accepted for completeness.
DDCONFIG_KEYS = ("double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult",
                 "num_res_blocks", "attn_resolutions", "dropout")
_OPTIONAL_DDCONFIG_KEYS = ("resamp_with_conv",)


def Normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


#################################################################################
#                                 Building blocks                               #
#################################################################################

class ResnetBlock(nn.Module):
    """x_skip + conv2(drop(swish(norm2(conv1(swish(norm1(x))))))); 1x1 `nin_shortcut` if in != out."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions (1x1-conv q, k, v, proj_out) + residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        # (B, C, H, W) -> (B, 1, HW, C): one head of width C, scale C^-0.5 (SDPA's default).
        q, k, v = (t.reshape(B, 1, C, H * W).transpose(2, 3) for t in (self.q(h), self.k(h), self.v(h)))
        h = F.scaled_dot_product_attention(q, k, v)                  # (B, 1, HW, C)
        h = h.transpose(2, 3).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Zero pad (left 0, right 1, top 0, bottom 1), then 3x3 conv, stride 2, no padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest x2, then 3x3 conv (padding 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block` (ResnetBlocks), `attn` (possibly empty), optional resampler."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


#################################################################################
#                                Encoder / Decoder                              #
#################################################################################

class Encoder(nn.Module):
    """(B, in_channels, R, R) -> (B, 2*z_channels if double_z else z_channels, R/f, R/f),
    f = 2**(len(ch_mult) - 1). Attention after each ResnetBlock at resolutions in attn_resolutions."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], in_channels: int, resolution: int, z_channels: int,
                 double_z: bool = True, dropout: float = 0.0, **unused: Any):
        super().__init__()
        in_ch_mult = (1,) + tuple(ch_mult)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, stride=1, padding=1)
        self.down = nn.ModuleList()
        res = resolution
        block_in = ch
        for level, mult in enumerate(ch_mult):
            block_in, block_out = ch * in_ch_mult[level], ch * mult
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    attns.append(AttnBlock(block_in))
            down = _Level(blocks, attns)
            if level != len(ch_mult) - 1:
                down.downsample = Downsample(block_in)
                res //= 2
            self.down.append(down)
        self.mid = _Mid(block_in, dropout)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for down in self.down:
            h = down.run_blocks(h)
            if hasattr(down, "downsample"):
                h = down.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z_channels, r, r) -> (B, out_ch, r*f, r*f). `up[i]` runs from i = len(ch_mult)-1 down to 0,
    each with num_res_blocks + 1 ResnetBlocks. Output is unclamped (no tanh)."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], resolution: int, z_channels: int,
                 dropout: float = 0.0, **unused: Any):
        super().__init__()
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, stride=1, padding=1)
        self.mid = _Mid(block_in, dropout)
        ups: list[_Level] = []
        for level in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[level]
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    attns.append(AttnBlock(block_in))
            up = _Level(blocks, attns)
            if level != 0:
                up.upsample = Upsample(block_in)
                res *= 2
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for up in reversed(self.up):
            h = up.run_blocks(h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


#################################################################################
#                                  AutoencoderKL                                #
#################################################################################

def check_ddconfig(ddconfig: Mapping[str, Any]) -> dict[str, Any]:
    """Return ddconfig as a plain dict; raise ValueError naming missing / unknown / bad keys."""
    cfg = dict(ddconfig)
    missing = [k for k in DDCONFIG_KEYS if k not in cfg]
    unknown = [k for k in cfg if k not in DDCONFIG_KEYS + _OPTIONAL_DDCONFIG_KEYS]
    if missing or unknown:
        raise ValueError(f"bad ddconfig: missing keys {missing}, unknown keys {unknown}")
    if not cfg["double_z"]:
        raise ValueError("ddconfig.double_z must be true for a KL autoencoder (mean and logvar)")
    if not cfg.get("resamp_with_conv", True):
        raise ValueError("ddconfig.resamp_with_conv=false (pooling resamplers) is not supported")
    cfg["ch_mult"] = tuple(cfg["ch_mult"])
    cfg["attn_resolutions"] = tuple(cfg["attn_resolutions"])
    return cfg


class AutoencoderKL(nn.Module):
    """KL autoencoder: `encode` (B, 3, R, R) -> posterior over (B, embed_dim, R/f, R/f);
    `decode` (B, embed_dim, R/f, R/f) -> (B, 3, R, R), roughly in [-1, 1] but unclamped.

    `ddconfig`: the LDM dict (`DDCONFIG_KEYS`). `decoder_attn_resolutions` overrides the decoder's
    attention resolutions (MAR's KL-16 VAE uses () there; its encoder keeps ddconfig's).
    """

    def __init__(self, ddconfig: Mapping[str, Any], embed_dim: int, *,
                 decoder_attn_resolutions: Sequence[int] | None = None):
        super().__init__()
        cfg = check_ddconfig(ddconfig)
        self.ddconfig, self.embed_dim = cfg, int(embed_dim)
        dec_cfg = dict(cfg)
        if decoder_attn_resolutions is not None:
            dec_cfg["attn_resolutions"] = tuple(decoder_attn_resolutions)
        self.encoder = Encoder(**cfg)
        self.decoder = Decoder(**dec_cfg)
        z = cfg["z_channels"]
        self.quant_conv = nn.Conv2d(2 * z, 2 * self.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(self.embed_dim, z, 1)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ddconfig["ch_mult"]) - 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """x: (B, 3, R, R) in [-1, 1] -> posterior with mean/logvar (B, embed_dim, R/f, R/f)."""
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, embed_dim, r, r) -> images (B, out_ch, r*f, r*f), unclamped."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        """Reconstruction (B, 3, R, R) and the posterior (LDM `AutoencoderKL.forward` semantics)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior


# The released VA-VAE f16d32 configuration (docs/reference_behaviour.md §5.3); MAR KL-16 differs in z/embed = 16
# and has no attention in the decoder's up path.
VAVAE_F16D32_DDCONFIG = dict(double_z=True, z_channels=32, resolution=256, in_channels=3, out_ch=3,
                             ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                             attn_resolutions=(16,), dropout=0.0)

"""LightningDiT: the class-conditional latent diffusion transformer of "Reconstruction vs.
Generation" (hustvl/LightningDiT), in the layout of facebookresearch/DiT's models.py, with the
additions of SFD ("Semantic-First Diffusion", yuemingPAN/SFD models/lightningdit.py): two
half-width time embedders for the texture and semantic channel groups, and a REPA projector.

One plain formulation: the reference's formulas (docs/reference_behaviour.md §1); models/kernels.py
swaps in CPU-kernel variants of some modules. State_dict keys, shapes and persistence are the
reference's for every flag combination, so released checkpoints load with strict=True.

Quirks the published numbers depend on are kept as defaults (docs/reference_behaviour.md §9.1):
- t in [0, 1] enters the sinusoidal embedder as is (no x1000), cos half first.
- The absolute sin-cos pos_embed (w index first) is added even when RoPE (h index first) is on.
- RoPE buffers are persistent and cover the full head dim with interleaved pairs.
- forward_with_cfg guides only the first 3 channels (cfg_channels=3); cfg_channels=None is the fix.
"""
import functools
import math
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed
from torch.utils.checkpoint import checkpoint

# Width of the REPA target features per encoder name (SFD's table).
REPA_FEATURE_DIMS: Dict[str, int] = {
    "dinov2_vits14": 384, "dinov2_vits14_reg": 384, "dinov2_vitb14": 768, "dinov2_vitb14_reg": 768,
    "dinov2_vitl14": 1024, "dinov2_vitl14_reg": 1024, "mae_base": 768, "mae_large": 1024,
    "clip_vit_base_patch16": 768, "clip_vit_large_patch14": 1024, "siglip_base_patch16_224": 768,
    "toy_classifier": 64,   # ours: the demo's download-free encoder (tokenizer/composite.py: ToyFeatureEncoder)
}

Times = Union[torch.Tensor, Sequence[torch.Tensor]]


def modulate(x: torch.Tensor, shift: Optional[torch.Tensor], scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift; x (B, N, D), shift/scale (B, D); no shift: wo_shift."""
    if shift is None:
        return x * (1 + scale.unsqueeze(1))
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


#################################################################################
#                Embedding layers for timesteps and class labels                #
#################################################################################

class TimestepEmbedder(nn.Module):
    """Embeds scalar timesteps t in [0, 1] into vectors: sinusoids then a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size, bias=True), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size, bias=True))
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """(B,) -> (B, dim): [cos(t * f_k), sin(t * f_k)], f_k = max_period^(-k / half), cos first.
        t is used as given, not multiplied by 1000 (docs/reference_behaviour.md §1.5 step 2, 9.1 item 2)."""
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device) / half
        )
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Embeds class labels; in training, drops each label to the null class `num_classes` with
    probability dropout_prob (for classifier-free guidance)."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, force_drop_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(self, labels: torch.Tensor, train: bool,
                force_drop_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


#################################################################################
#                       Norm, feed-forward and rotary layers                    #
#################################################################################

class RMSNorm(nn.Module):
    """y = (x_f32 * rsqrt(mean(x_f32^2) + eps)).to(x.dtype) * weight (docs/reference_behaviour.md §1.8)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class SwiGLUFFN(nn.Module):
    """w3(silu(gate) * value) with one fused input projection w12 = [gate; value]
    (docs/reference_behaviour.md §1.9: hidden = int(2/3 * 4D), no rounding to a multiple of 8)."""

    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.w12 = nn.Linear(in_features, 2 * hidden_features, bias=True)
        self.w3 = nn.Linear(hidden_features, in_features, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Interleaved-pair rotation: (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    x = x.unflatten(-1, (-1, 2))
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).flatten(-2)


class VisionRotaryEmbedding(nn.Module):
    """2-D RoPE over the token grid, EVA-02 "Fast" variant (docs/reference_behaviour.md §1.7).

    freqs_cos / freqs_sin (N, head_dim) are persistent buffers (they are in released
    checkpoints). Dims [0, head_dim/2) rotate with the row (h) index, the rest with the column
    (w) index; each frequency fills an adjacent pair of dims."""

    def __init__(self, dim: int, pt_seq_len: int, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))  # (dim/2,)
        pos = torch.arange(pt_seq_len) / pt_seq_len * pt_seq_len  # ft_seq_len == pt_seq_len
        angles = (pos[:, None] * freqs[None, :]).repeat_interleave(2, dim=-1)  # (G, dim) f0 f0 f1 f1..
        grid = torch.cat(  # (G, G, 2*dim): row-index angles first, then column-index angles
            [angles[:, None, :].expand(-1, pt_seq_len, -1), angles[None, :, :].expand(pt_seq_len, -1, -1)],
            dim=-1,
        )
        grid = grid.reshape(pt_seq_len * pt_seq_len, 2 * dim)  # token n = h * G + w
        self.register_buffer("freqs_cos", grid.cos())
        self.register_buffer("freqs_sin", grid.sin())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, heads, N, head_dim) -> same shape, dtype promoted with the tables' (as the reference)."""
        return x * self.freqs_cos + rotate_half(x) * self.freqs_sin


#################################################################################
#                                 Core DiT Model                                #
#################################################################################

class Attention(nn.Module):
    """Multi-head self-attention: fused qkv, optional per-head qk-norm, RoPE on q and k, then
    scaled dot-product attention (scale 1/sqrt(head_dim), no mask; attn_drop is 0 in the reference)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_norm: bool = False,
                 norm_layer: Callable[..., nn.Module] = nn.LayerNorm):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: Optional[VisionRotaryEmbedding] = None) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, h, N, d_h) each
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class LightningDiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (6 modulation vectors, 4 with wo_shift)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, use_qknorm: bool = False,
                 use_swiglu: bool = False, use_rmsnorm: bool = False, wo_shift: bool = False):
        super().__init__()
        if use_rmsnorm:
            self.norm1 = RMSNorm(hidden_size, eps=1e-6)
            self.norm2 = RMSNorm(hidden_size, eps=1e-6)
        else:
            self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        # qk-norm: RMSNorm(eps 1e-6) with rmsnorm, else an affine LayerNorm with torch's eps 1e-5.
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True, qk_norm=use_qknorm,
                              norm_layer=RMSNorm if use_rmsnorm else nn.LayerNorm)
        mlp_hidden_dim = int(hidden_size * mlp_ratio)
        if use_swiglu:
            self.mlp = SwiGLUFFN(hidden_size, int(2 / 3 * mlp_hidden_dim))
        else:
            self.mlp = Mlp(in_features=hidden_size, hidden_features=mlp_hidden_dim,
                           act_layer=lambda: nn.GELU(approximate="tanh"), drop=0)
        self.wo_shift = wo_shift
        n_mod = 4 if wo_shift else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, n_mod * hidden_size, bias=True))

    def modulation(self, c: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        """(shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp), each (B, D); the
        shifts are None with wo_shift."""
        if self.wo_shift:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(4, dim=1)
            return None, scale_msa, gate_msa, None, scale_mlp, gate_mlp
        return self.adaLN_modulation(c).chunk(6, dim=1)

    def forward(self, x: torch.Tensor, c: torch.Tensor,
                feat_rope: Optional[VisionRotaryEmbedding] = None) -> torch.Tensor:
        """x (B, N, D), c (B, D) -> (B, N, D)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope=feat_rope)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN (shift, scale; always 2D, even with wo_shift) then a linear map to p*p*C_out."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, use_rmsnorm: bool = False):
        super().__init__()
        if use_rmsnorm:
            self.norm_final = RMSNorm(hidden_size, eps=1e-6)
        else:
            self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class LightningDiT(nn.Module):
    """Diffusion transformer on (B, in_channels, input_size, input_size) latents.

    input_size is the latent side (image_size / VAE downsample, 16 for 256 px). The defaults are
    the reference's; the released model is LightningDiT-XL/1 with in_channels=32, input_size=16,
    use_swiglu/use_rope/use_rmsnorm=True.

    SFD (its argument names): the last `semantic_chans` input channels are the semantic group;
    with semfirst_delta_t > 0 as well, the time embedding is cat[t_embedder_sem(t_sem),
    t_embedder_tex(t_tex)] (two embedders of width D/2) instead of t_embedder(t). use_repa adds
    `repa_projector` on the output of block `repa_depth` (1-based), whose width is that of the
    `repa_dino_version` features; in training mode forward then returns (output, projected tokens).
    """

    def __init__(self, input_size: int = 32, patch_size: int = 2, in_channels: int = 32, hidden_size: int = 1152,
                 depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0, class_dropout_prob: float = 0.1,
                 num_classes: int = 1000, learn_sigma: bool = False, use_qknorm: bool = False,
                 use_swiglu: bool = False, use_rope: bool = False, use_rmsnorm: bool = False,
                 wo_shift: bool = False, use_checkpoint: bool = False,
                 use_repa: bool = False, repa_dino_version: Optional[str] = None, repa_depth: Optional[int] = None,
                 repa_projector_dim: int = 2048, semantic_chans: int = 0, semfirst_delta_t: float = 0.0):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        if not 0 <= semantic_chans < in_channels:
            raise ValueError(f"semantic_chans (model.semantic_chans) must be in [0, {in_channels}), "
                             f"got {semantic_chans}")
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.use_rope = use_rope
        self.use_checkpoint = use_checkpoint
        self.semantic_chans = semantic_chans
        self.semfirst_delta_t = semfirst_delta_t
        self.use_semantic_first = semfirst_delta_t > 0 and semantic_chans > 0
        self.use_repa = use_repa
        self.repa_depth = repa_depth if use_repa else None
        if self.use_semantic_first and hidden_size % 2:
            raise ValueError(f"two half-width time embedders (model.semfirst_delta_t > 0) need an even "
                             f"hidden_size, got {hidden_size}")
        if use_repa:
            if repa_dino_version not in REPA_FEATURE_DIMS:
                raise ValueError(f"use_repa needs a known repa_dino_version (model.repa_dino_version), got "
                                 f"{repa_dino_version!r}; expected one of {sorted(REPA_FEATURE_DIMS)}")
            if repa_depth is None or not 1 <= repa_depth <= depth:
                raise ValueError(f"use_repa needs repa_depth (model.repa_feat_depth) in [1, {depth}] "
                                 f"(the model's blocks), got {repa_depth!r}")

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        if self.use_semantic_first:
            self.t_embedder_sem = TimestepEmbedder(hidden_size // 2)
            self.t_embedder_tex = TimestepEmbedder(hidden_size // 2)
        else:
            self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        # Frozen sin-cos table, but a Parameter: it is in the state_dict, parameters() and EMA.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)

        if use_rope:
            half_head_dim = hidden_size // num_heads // 2
            self.feat_rope = VisionRotaryEmbedding(half_head_dim, pt_seq_len=input_size // patch_size)
        else:
            self.feat_rope = None

        self.blocks = nn.ModuleList([
            LightningDiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio, use_qknorm=use_qknorm,
                              use_swiglu=use_swiglu, use_rmsnorm=use_rmsnorm, wo_shift=wo_shift)
            for _ in range(depth)
        ])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, use_rmsnorm=use_rmsnorm)
        if use_repa:  # token-wise MLP, created last as SFD does (so seeded inits match its)
            width = repa_projector_dim
            self.repa_projector = nn.Sequential(nn.Linear(hidden_size, width), nn.SiLU(), nn.Linear(width, width),
                                                nn.SiLU(), nn.Linear(width, REPA_FEATURE_DIMS[repa_dino_version]))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """docs/reference_behaviour.md §1.4, in its order (SFD's parts as SFD initialises them: the
        REPA projector by the xavier pass, each time embedder like the one it replaces); the model
        outputs exactly 0 afterwards."""
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        self.apply(_basic_init)

        grid_size = int(self.x_embedder.num_patches ** 0.5)
        pos_embed = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], grid_size)
        self.pos_embed.data.copy_(torch.from_numpy(pos_embed).float().unsqueeze(0))

        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)

        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        t_embedders = (self.t_embedder_sem, self.t_embedder_tex) if self.use_semantic_first else (self.t_embedder,)
        for embedder in t_embedders:
            nn.init.normal_(embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(embedder.mlp[2].weight, std=0.02)

        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def embed_time(self, t: Times) -> torch.Tensor:
        """Time conditioning (B, D). t: (B,) one time for every channel, SFD's tuple (t_tex, t_sem),
        or a (B, 2) tensor [t_tex, t_sem] (channel-group order). A model with one embedder takes
        a tuple only when every entry is the same tensor (one time for all groups)."""
        if isinstance(t, torch.Tensor) and t.dim() == 2:
            t = tuple(t.unbind(1))
        if not self.use_semantic_first:
            if isinstance(t, torch.Tensor):
                return self.t_embedder(t)
            if any(ti is not t[0] for ti in t):
                raise ValueError("this LightningDiT has one time embedder (semfirst_delta_t = 0) but "
                                 f"was given {len(t)} different group times")
            return self.t_embedder(t[0])
        t_tex, t_sem = (t, t) if isinstance(t, torch.Tensor) else t
        return torch.cat([self.t_embedder_sem(t_sem), self.t_embedder_tex(t_tex)], dim=1)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) with per-token order (p_row, p_col, channel) -> (B, C, H, W)."""
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: Times, y: torch.Tensor,
                return_sigma: bool = False) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """x (B, C, H, W) latents, t in [0, 1] (0 = noise, 1 = data; forms as in embed_time),
        y (B,) int64 labels (num_classes = null class) -> (B, in_channels, H, W) velocity (sigma
        half dropped). With use_repa in training mode, SFD's pair (velocity, projected hidden
        states (B, N, repa width)). return_sigma (ours, for the DDPM objective of
        transport/ddpm.py): with learn_sigma keep the second half, giving (B, 2 * in_channels,
        H, W); t is then the integer DDPM step."""
        # (B, N, D); fp32 pos_embed promotes under autocast. PatchEmbed returns a transposed view;
        # a contiguous residual stream saves a re-layout copy in every Linear (same values).
        x = self.x_embedder(x).contiguous() + self.pos_embed
        c = self.embed_time(t) + self.y_embedder(y, self.training)  # (B, D)
        repa_depth = self.repa_depth if self.training else None  # SFD returns the features in training only
        for depth, block in enumerate(self.blocks, start=1):
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, c, self.feat_rope, use_reentrant=True)
            else:
                x = block(x, c, self.feat_rope)
            if depth == repa_depth:
                repa_features = self.repa_projector(x)  # (B, N, repa width)
        x = self.final_layer(x, c)  # (B, N, p*p*C_out)
        x = self.unpatchify(x)  # (B, C_out, H, W)
        if self.learn_sigma and not return_sigma:
            x, _ = x.chunk(2, dim=1)
        return x if repa_depth is None else (x, repa_features)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale,
                         cfg_interval: bool = False, cfg_interval_start: float = 0.0,
                         cfg_channels: Optional[int] = 3) -> torch.Tensor:
        """Classifier-free guidance on a doubled batch (docs/reference_behaviour.md §1.10).

        x (2n, C, H, W) whose first half is used for both halves, t (2n,), y (2n,) = [labels, null].
        Guided = uncond + cfg_scale * (cond - uncond) on the first `cfg_channels` channels; the
        result is cat([guided, guided]) on those channels, while the remaining channels keep the
        raw model output (conditional in the first half, unconditional in the second).
        cfg_channels=3 is the reference's behaviour, under which the published FIDs were measured
        (9.1 item 1); cfg_channels=None guides every channel. With cfg_interval=True and
        t[0] < cfg_interval_start the conditional output is used unguided."""
        if cfg_interval is None:  # the reference's default
            cfg_interval = False
        if not isinstance(cfg_interval, bool):
            raise ValueError(f"cfg_interval must be a bool, got {cfg_interval!r}")
        from sampling.guidance import cfg_combine  # the one guidance module (no import cycle at call time)

        half = x[: len(x) // 2]
        model_out = self.forward(torch.cat([half, half], dim=0), t, y)
        cond, uncond = model_out.chunk(2, dim=0)
        k = None if cfg_channels is None else int(cfg_channels)
        first = cfg_combine(cond, uncond, cfg_scale, k)
        if cfg_interval:
            # torch.where instead of `if t[0] < start`: same result, no host sync.
            first = torch.where(t[0] < cfg_interval_start, cond, first)
        k = model_out.shape[1] if k is None else k
        second = torch.cat([first[:, :k], uncond[:, k:]], dim=1)  # raw unconditional output beyond k
        return torch.cat([first, second], dim=0)

    def compile_blocks(self, **compile_kwargs) -> "LightningDiT":
        """torch.compile each block and the final layer in place (nn.Module.compile), as the
        reference decorates them (1.11); inductor fuses the plain formulas' elementwise chains.
        state_dict keys are unchanged; compilation happens lazily on the first call. Returns self."""
        for block in self.blocks:
            block.compile(**compile_kwargs)
        self.final_layer.compile(**compile_kwargs)
        return self


#################################################################################
#                   Sine/Cosine Positional Embedding Functions                  #
#################################################################################

def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """(grid_size**2, embed_dim), MAE / DiT style in float64: the first half encodes the column
    (w) index, the second half the row (h) index, each as [sin(pos * omega), cos(pos * omega)]
    with omega_k = 10000^(-k / (embed_dim / 4)); token n = row * grid_size + col."""
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4, got {embed_dim}")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4.0))
    rows, cols = np.meshgrid(*[np.arange(grid_size, dtype=np.float32)] * 2, indexing="ij")

    def embed(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)  # (G*G, D/4)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    return np.concatenate([embed(cols), embed(rows)], axis=1)


#################################################################################
#                            LightningDiT Configs                               #
#################################################################################

# name -> (depth, hidden_size, patch_size, num_heads); S/1, S/2 and L/1 are SFD's additions.
LightningDiT_sizes: Dict[str, Dict[str, int]] = {
    f"LightningDiT-{name}": dict(depth=depth, hidden_size=hidden, patch_size=patch, num_heads=heads)
    for name, (depth, hidden, patch, heads) in {
        "S/1": (12, 384, 1, 6), "S/2": (12, 384, 2, 6),
        "B/1": (12, 768, 1, 12), "B/2": (12, 768, 2, 12),
        "L/1": (24, 1024, 1, 16), "L/2": (24, 1024, 2, 16),
        "XL/1": (28, 1152, 1, 16), "XL/2": (28, 1152, 2, 16),
        "1p0B/1": (24, 1536, 1, 24), "1p0B/2": (24, 1536, 2, 24),
        "1p6B/1": (28, 1792, 1, 28), "1p6B/2": (28, 1792, 2, 28),
    }.items()
}

LightningDiT_models: Dict[str, Callable[..., LightningDiT]] = {
    name: functools.partial(LightningDiT, **size) for name, size in LightningDiT_sizes.items()}

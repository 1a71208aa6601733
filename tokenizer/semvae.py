"""SFD's Semantic VAE: compresses frozen DINOv2 patch tokens (B, L, D) token-wise to (B, L, b).

Follows docs/reference_behaviour.md, §12.1.2-12.1.3 (SFD `tokenizer/semvae/models/vae.py`,
`tokenizer/semvae/train.py`). The released model (`configs/tokenizer/semvae_train/ch16.yaml`) is
the variational `transformer` arch: D = 768 DINOv2-B/14-reg tokens, hidden 768, 6 heads, 4 + 4
pre-LN blocks, bottleneck b = 16; no positional embedding (the tokens carry their positions).

    encoder: Linear(D, h) -> blocks -> LayerNorm(h) -> Linear(h, 2b)    (mean | logvar per token)
    decoder: Linear(b, h) -> blocks -> LayerNorm(h) -> Linear(h, D)

The modules are `nn.Sequential`s named and ordered as SFD's (`encoder.0` ... `decoder.6`, each
block `norm1, attn (nn.MultiheadAttention), norm2, mlp.0, mlp.2`), so SFD's `semantic_ae_final.pt`
loads strictly and our checkpoints load in SFD's code. The ablation archs of SFD's factory
(`linear`, `mlp` with SwiGLU layers, `resnet`) and the plain autoencoder (`variational: false`)
are built the same way.

Posterior (diffusers' `DiagonalGaussianDistribution`, as SFD uses it): the 2b outputs of each token
are viewed channel-first (B, 2b, L), split into mean and logvar, logvar clamped to [-30, 20],
z = mean + exp(logvar / 2) * eps with eps drawn in the moments' dtype and shape (B, b, L) (under
bf16 autocast the noise is bf16, as in SFD), KL = 1/2 sum(mean^2 + var - 1 - logvar) over (b, L).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.state_dict import load_strict

ARCHS = ("linear", "mlp", "resnet", "transformer")
COS_AXES = ("token", "feature")    # training.loss.cos_axis (see semvae_loss)
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
# What SFD's trainer writes into every checkpoint (semantic_ae_final.pt included).
SFD_CHECKPOINT_KEYS = ("iteration", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict",
                       "loss", "loss_averages", "config", "input_dim", "bottleneck_dim")


#################################################################################
#                                 Building blocks                               #
#################################################################################

class SwiGLU(nn.Module):
    """silu(gate(x)) * up(x): the hidden layers of SFD's `mlp` and `resnet` archs."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.gate = nn.Linear(dim_in, dim_out)
        self.up = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.gate(x)) * self.up(x)


class ResBlock(nn.Module):
    """x + MLP(LN(x)) with a 4x GELU MLP (SFD's `resnet` arch)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class TransformerBlock(nn.Module):
    """Pre-LN block: x + MHA(LN(x)), then x + MLP(LN(x)); exact GELU, 4x MLP, no dropout."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=0.0, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (B, L, dim)
        h = self.norm1(x)
        # need_weights=True (torch's default, as SFD calls it) keeps SFD's attention kernel: the
        # explicit softmax(QK^T)V path rather than the fused one, whose float order differs.
        x = x + self.attn(h, h, h, need_weights=True)[0]
        return x + self.mlp(self.norm2(x))


def _swiglu_stack(dims) -> list:
    """SwiGLU between consecutive dims, a plain Linear for the last pair (SFD's MLP stacks)."""
    return [SwiGLU(a, b) if i < len(dims) - 2 else nn.Linear(a, b)
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))]


def _build(arch: str, d_in: int, d_out: int, hidden_dim: int, num_layers: int, num_res_blocks: int,
           heads: int, blocks: int, encoder: bool) -> nn.Sequential:
    """One half of the autoencoder, in SFD's module order (its state-dict indices)."""
    if arch == "linear":
        return nn.Sequential(nn.Linear(d_in, d_out))
    if arch == "mlp":
        return nn.Sequential(*_swiglu_stack([d_in] + [hidden_dim] * (num_layers - 1) + [d_out]))
    if arch == "resnet":
        res = [ResBlock(hidden_dim) for _ in range(num_res_blocks)]
        if encoder:
            return nn.Sequential(nn.Linear(d_in, hidden_dim), *res,
                                 *_swiglu_stack([hidden_dim] * num_layers + [d_out]))
        ups = [SwiGLU(a, b) for a, b in zip([d_in] + [hidden_dim] * (num_layers - 1), [hidden_dim] * num_layers)]
        return nn.Sequential(*ups, *res, nn.Linear(hidden_dim, d_out))
    if arch == "transformer":
        return nn.Sequential(nn.Linear(d_in, hidden_dim), *[TransformerBlock(hidden_dim, heads) for _ in range(blocks)],
                             nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, d_out))
    raise ValueError(f"unknown Semantic VAE arch {arch!r} (expected one of {ARCHS})")


#################################################################################
#                                  Semantic VAE                                 #
#################################################################################

class SemanticVAE(nn.Module):
    """Token-wise (variational) autoencoder of foundation-model patch tokens.

    Constructor defaults are SFD's (`SemanticVariationalAutoEncoder`); the YAML's `model.params`
    (tokenizer/semvae_config.py) feeds them. `variational=False` is SFD's `SemanticAutoEncoder`
    (the encoder outputs b channels, z is deterministic, KL is zero).
    """

    def __init__(self, input_dim: int, bottleneck_dim: int, arch: str = "transformer", variational: bool = True,
                 hidden_dim: int = 512, num_layers: int = 2, num_res_blocks: int = 2,
                 transformer_heads: int = 6, transformer_blocks: int = 12):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown Semantic VAE arch {arch!r} (expected one of {ARCHS})")
        if arch == "transformer" and hidden_dim % transformer_heads:
            raise ValueError(f"Semantic VAE: hidden_dim {hidden_dim} is not divisible by "
                             f"transformer_heads {transformer_heads}")
        self.input_dim, self.bottleneck_dim = input_dim, bottleneck_dim
        self.arch, self.variational = arch, variational
        args = (hidden_dim, num_layers, num_res_blocks, transformer_heads, transformer_blocks)
        enc_out = 2 * bottleneck_dim if variational else bottleneck_dim
        self.encoder = _build(arch, input_dim, enc_out, *args, encoder=True)
        self.decoder = _build(arch, bottleneck_dim, input_dim, *args, encoder=False)

    # -- posterior ------------------------------------------------------------------------------
    def moments(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean, clamped logvar), each (B, b, L): the channel-first view SFD's posterior uses."""
        if not self.variational:
            raise ValueError("moments() needs a variational Semantic VAE (model.variational: true)")
        params = self.encoder(features).transpose(1, 2)           # (B, 2b, L)
        mean, logvar = params.chunk(2, dim=1)
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def encode(self, features: torch.Tensor, noise: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """features (B, L, D) -> (z (B, L, b), kl (B,)): a posterior sample and its KL to N(0, I).

        `noise` (B, L, b) makes the sample deterministic (z = mean + std * noise). Otherwise eps is
        drawn as (B, b, L) in the moments' dtype from `generator` (or the global RNG, as SFD): the
        same values SFD's `posterior.sample()` draws for the same RNG state. The plain autoencoder
        returns its code and a zero KL.
        """
        if not self.variational:
            z = self.encoder(features)
            return z, z.new_zeros(z.shape[0])
        mean, logvar = self.moments(features)
        std, var = torch.exp(0.5 * logvar), torch.exp(logvar)
        if noise is None:
            device = generator.device if generator is not None else mean.device
            eps = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype).to(mean.device)
        else:
            if noise.shape != (mean.shape[0], mean.shape[2], mean.shape[1]):
                raise ValueError(f"noise shape {tuple(noise.shape)} != latent shape "
                                 f"{(mean.shape[0], mean.shape[2], mean.shape[1])}")
            eps = noise.transpose(1, 2)
        z = mean + std * eps                                     # (B, b, L)
        kl = 0.5 * torch.sum(mean.pow(2) + var - 1.0 - logvar, dim=[1, 2])
        return z.transpose(1, 2), kl

    def mode(self, features: torch.Tensor) -> torch.Tensor:
        """The posterior mean (B, L, b) (the code itself for the plain autoencoder)."""
        if not self.variational:
            return self.encoder(features)
        return self.moments(features)[0].transpose(1, 2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L, b) -> reconstructed tokens (B, L, D)."""
        return self.decoder(z)

    def forward(self, features: torch.Tensor, noise: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction (B, L, D), z (B, L, b), kl (B,)), SFD's VAE forward."""
        z, kl = self.encode(features, noise, generator)
        return self.decode(z), z, kl


_PARAM_NAMES = ("hidden_dim", "num_layers", "num_res_blocks", "transformer_heads", "transformer_blocks")


def build_semantic_vae(model_cfg: Mapping[str, Any], input_dim: int) -> SemanticVAE:
    """The Semantic VAE of a YAML `model:` section ({variational, bottleneck_dim, arch, params})."""
    params = {k: v for k, v in dict(model_cfg.get("params") or {}).items() if k in _PARAM_NAMES}
    return SemanticVAE(input_dim, int(model_cfg["bottleneck_dim"]), arch=model_cfg["arch"],
                       variational=bool(model_cfg["variational"]), **params)


def _model_section(yaml_text: str, source: str) -> Dict[str, Any]:
    """The resolved `model:` section of a Semantic VAE training YAML (text)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.to_container(OmegaConf.create(yaml_text), resolve=True)
    except (OmegaConfBaseException, ValueError) as err:
        raise ValueError(f"{source}: unreadable Semantic VAE config ({str(err).splitlines()[0]})") from None
    model = cfg.get("model") if isinstance(cfg, dict) else None
    missing = [k for k in ("variational", "bottleneck_dim", "arch") if not isinstance(model, dict) or k not in model]
    if missing:
        raise ValueError(f"{source}: the Semantic VAE config has no model.{missing[0]}")
    return model


def load_semantic_vae(path: str, config: Optional[str] = None) -> SemanticVAE:
    """A trained Semantic VAE from a checkpoint in SFD's layout (SFD's `semantic_ae_final.pt`, or
    any checkpoint of ours), loaded strictly, in eval mode, on the CPU.

    The architecture comes from the YAML `config` file when given (what SFD's extraction passes
    as `semvae_config`), else from the YAML string the checkpoint stores; the input width from the
    checkpoint's `input_dim`.
    """
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Semantic VAE checkpoint not found: {path} (train one with "
                                "run_train_semvae.sh, or download semantic_vae/* of the Hugging Face "
                                "repo SFD-Project/SFD)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, text file: all mean "not readable"
        raise ValueError(f"{path}: not a readable checkpoint ({str(err).strip().splitlines()[0][:200]})") from None
    missing = [k for k in ("model_state_dict", "input_dim") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a Semantic VAE checkpoint (no {missing[0]} entry)")
    if config is not None:
        if not os.path.isfile(config):
            raise FileNotFoundError(f"Semantic VAE config not found: {config}")
        with open(config) as f:
            model_cfg = _model_section(f.read(), config)
    elif isinstance(ckpt.get("config"), str):
        model_cfg = _model_section(ckpt["config"], f"{path} (its stored config)")
    else:
        raise ValueError(f"{path} stores no config; pass the training YAML it was trained with")
    model = build_semantic_vae(model_cfg, int(ckpt["input_dim"]))
    load_strict(model, ckpt["model_state_dict"], path, "the Semantic VAE")
    return model.eval()


#################################################################################
#                                      Loss                                     #
#################################################################################

@dataclass(frozen=True)
class LossWeights:
    """`training.loss` of SFD's YAML (its keys and the released values)."""
    mse_weight: float = 1.0
    cos_weight: float = 1.0
    l1_weight: float = 0.0
    kl_weight: float = 1e-7
    classification_weight: float = 0.0
    cos_axis: str = "token"

    def __post_init__(self):
        if self.cos_axis not in COS_AXES:
            raise ValueError(f"bad value for 'training.loss.cos_axis': {self.cos_axis!r} (expected one of {COS_AXES})")


def semvae_loss(recon: torch.Tensor, target: torch.Tensor, kl: torch.Tensor, weights: LossWeights,
                logits: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None
                ) -> Dict[str, torch.Tensor]:
    """SFD's objective on tokens (B, L, D): the terms under SFD's names and their weighted `total`.

    - mse, l1: means over all elements;
    - cos_loss = 1 - mean(cos): `cos_axis="token"` (SFD, faithful default) compares along dim 1,
      i.e. each feature channel's L-vector across tokens, as SFD's `F.cosine_similarity(a, b)`
      default does for (B, L, D); `"feature"` compares each token's D-vector (the per-token cosine
      SFD's evaluation reports, presumably what was meant);
    - kl_loss = mean over the batch of the per-sample KL summed over the latent (no per-pixel
      division);
    - classification_loss = cross-entropy of `logits` (a linear head on the mean-pooled z), or 0.
    Summed in SFD's order: mse, l1, cos, kl, classification.
    """
    mse = F.mse_loss(recon, target)
    l1 = F.l1_loss(recon, target)
    cos = 1 - F.cosine_similarity(recon, target, dim=1 if weights.cos_axis == "token" else -1).mean()
    kl_loss = kl.mean()
    cls = F.cross_entropy(logits, labels) if logits is not None else torch.zeros((), device=recon.device)
    total = (weights.mse_weight * mse + weights.l1_weight * l1 + weights.cos_weight * cos
             + weights.kl_weight * kl_loss + weights.classification_weight * cls)
    return {"mse": mse, "l1": l1, "cos_loss": cos, "kl_loss": kl_loss, "classification_loss": cls, "total": total}


def token_cosine(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the cosine over features (SFD's evaluation metric), per sample (B,)."""
    return F.cosine_similarity(recon.float(), target.float(), dim=-1).mean(dim=1)

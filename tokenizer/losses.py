"""VA-VAE training objective: VF alignment loss, adaptive weights, and the LPIPS + PatchGAN loss.

Follows docs/reference_behaviour.md §6.6 (hustvl/LightningDiT `vavae/ldm/modules/losses/contperceptual.py`
`LPIPSWithDiscriminator`, released non-pp_style path) term by term:
- rec = |x - x_rec| + perceptual_weight * LPIPS(x, x_rec), the (B,1,1,1) LPIPS broadcast to every
  pixel; nll = rec / exp(logvar) + logvar with logvar fixed at 0; nll_loss = sum / B (per-image sum,
  so losses are ~1e4); kl_loss = sum_B KL / B;
- generator: g_loss = -mean D(x_rec); d_weight = clamp(|grad nll| / (|grad g| + 1e-4), 0, 1e4) at
  decoder.conv_out.weight, times disc_weight, computed at every step (also before disc_start);
- VF loss (paper eq. 2-4): marginal distance-matrix + marginal cosine similarity, weighted by the
  adaptive VF weight at encoder.conv_out.weight; active from step 0;
- total = nll + kl_weight * kl + d_weight * disc_factor * g_loss + w_vf * vf_loss;
- discriminator: disc_factor * hinge (or vanilla) on D(x) and D(x_rec) (two separate BatchNorm
  batches, as the reference's two calls).
`disc_start` gating counts batches by default; `disc_start_counts_optimizer_steps=True` counts as
Lightning did (two optimizer steps per batch: the generator step of batch b sees 2b, the
discriminator step 2b + 1), which reproduces the reference configs' `disc_start` exactly.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenizer.discriminator import NLayerDiscriminator

logger = logging.getLogger(__name__)

Log = Dict[str, torch.Tensor]


#################################################################################
#                           VF loss and adaptive weights                        #
#################################################################################

def vf_loss(z: torch.Tensor, aux_feature: torch.Tensor, distmat_margin: float = 0.0,
            cos_margin: float = 0.0, distmat_weight: float = 1.0, cos_weight: float = 1.0) -> torch.Tensor:
    """Vision-foundation alignment loss (docs/reference_behaviour.md §6.6). Scalar.

    z: projected latent (B, C, H, W); aux_feature: foundation features (B, C, H, W).
    L_mdms = mean_{b,i,j} ReLU(|Gz_ij - Gf_ij| - distmat_margin), G = token cosine Gram matrix
    (N x N, N = H*W, diagonal included, L2 eps 1e-12); L_mcos = mean_{b,h,w} ReLU(1 - cos_margin -
    cos(f_hw, z_hw)) with the cosine along channels (eps 1e-8). Computed in float32.
    Returns distmat_weight * L_mdms + cos_weight * L_mcos: the paper's Table 5 variants are
    distmat_weight = 0 ("mcos only"), cos_weight = 0 ("mdms only") and zero margins (the margin ablation).
    """
    if z.shape != aux_feature.shape:
        raise ValueError(f"vf_loss: z {tuple(z.shape)} and aux_feature {tuple(aux_feature.shape)} differ")
    with torch.autocast(device_type=z.device.type, enabled=False):
        z, f = z.float(), aux_feature.float()
        zn = F.normalize(z.flatten(2), dim=1, eps=1e-12)            # (B, C, N)
        fn = F.normalize(f.flatten(2), dim=1, eps=1e-12)
        gram_z = zn.transpose(1, 2) @ zn                            # (B, N, N)
        gram_f = fn.transpose(1, 2) @ fn
        l_mdms = F.relu((gram_z - gram_f).abs() - distmat_margin).mean()
        cos = F.cosine_similarity(f, z, dim=1, eps=1e-8)            # (B, H, W)
        l_mcos = F.relu(1.0 - cos_margin - cos).mean()
    return distmat_weight * l_mdms + cos_weight * l_mcos


def _grad_norm_ratio(numerator: torch.Tensor, denominator: torch.Tensor, last_layer: torch.Tensor,
                     max_weight: float) -> torch.Tensor:
    """clamp(|d numerator / d W| / (|d denominator / d W| + 1e-4), 0, max_weight), detached.

    Zero when no graph exists (validation under no_grad), as the reference's RuntimeError fallback.
    """
    if not (torch.is_grad_enabled() and numerator.requires_grad and denominator.requires_grad):
        return torch.zeros((), device=last_layer.device)
    g_num = torch.autograd.grad(numerator, last_layer, retain_graph=True)[0]
    g_den = torch.autograd.grad(denominator, last_layer, retain_graph=True)[0]
    weight = torch.norm(g_num) / (torch.norm(g_den) + 1e-4)
    return torch.clamp(weight, 0.0, max_weight).detach()


def adaptive_vf_weight(nll_loss: torch.Tensor, vf_loss: torch.Tensor, last_layer: torch.Tensor,
                       vf_weight: float, max_weight: float = 1e8) -> torch.Tensor:
    """Adaptive VF weight (paper eq. 5): gradient-norm ratio at the encoder's last layer
    (`encoder.conv_out.weight`), clamped to [0, max_weight], detached, times vf_weight."""
    return _grad_norm_ratio(nll_loss, vf_loss, last_layer, max_weight) * vf_weight


def adaptive_disc_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                         disc_weight: float, max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN adaptive GAN weight at the decoder's last layer (`decoder.conv_out.weight`)."""
    return _grad_norm_ratio(nll_loss, g_loss, last_layer, max_weight) * disc_weight


#################################################################################
#                             Discriminator losses                              #
#################################################################################

def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean ReLU(1 - real) + mean ReLU(1 + fake))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean softplus(-real) + mean softplus(fake))."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


DISC_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}   # `disc_loss` -> function


def adopt_weight(weight: float, step: int, threshold: int = 0, value: float = 0.0) -> float:
    """`value` while step < threshold, else `weight` (taming)."""
    return value if step < threshold else weight


@contextlib.contextmanager
def _no_param_grads(module: nn.Module) -> Iterator[None]:
    """Run `module` without computing gradients for its parameters (inputs still get them).

    The reference lets the generator step fill D's .grad and then zeroes it before the D step;
    skipping that work changes no number.
    """
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


#################################################################################
#                             LPIPSWithDiscriminator                            #
#################################################################################

class LPIPSWithDiscriminator(nn.Module):
    """The VA-VAE loss module (reference constructor defaults; `*` arguments are ours).

    Submodules keep the reference names, so state_dict keys read `loss.logvar`,
    `loss.perceptual_loss.*` and `loss.discriminator.main.*` inside the training model.
    `perceptual_loss`: an LPIPS module to use (tests); else `tokenizer.lpips.LPIPSLoss` is built
    from `lpips_vgg_weights` when perceptual_weight > 0. `lpips_train_mode=True` keeps the
    reference's LPIPS dropout active in training (docs/reference_behaviour.md §9.3); False keeps LPIPS in eval.
    `pixelloss_weight` is accepted and unused, as in the reference (which stores it, never reads it).
    """

    def __init__(self, disc_start: int, logvar_init: float = 0.0, kl_weight: float = 1.0,
                 pixelloss_weight: float = 1.0, disc_num_layers: int = 3, disc_in_channels: int = 3,
                 disc_factor: float = 1.0, disc_weight: float = 1.0, perceptual_weight: float = 1.0,
                 use_actnorm: bool = False, disc_conditional: bool = False, disc_loss: str = "hinge",
                 pp_style: bool = False, vf_weight: float = 1e2, adaptive_vf: bool = False,
                 cos_margin: float = 0.0, distmat_margin: float = 0.0, distmat_weight: float = 1.0,
                 cos_weight: float = 1.0, *, disc_ndf: int = 64,
                 disc_start_counts_optimizer_steps: bool = False, lpips_vgg_weights: Optional[str] = None,
                 lpips_random_init: bool = False, lpips_train_mode: bool = True,
                 perceptual_loss: Optional[nn.Module] = None):
        super().__init__()
        if disc_loss not in DISC_LOSSES:
            raise ValueError(f"disc_loss must be one of {tuple(DISC_LOSSES)}, got {disc_loss!r}")
        if pp_style:
            raise ValueError("pp_style=true (the unused mean-reduced variant) is not supported")
        if disc_conditional:
            raise ValueError("disc_conditional=true is not supported (the reference uses false)")
        self.disc_start = int(disc_start)
        self.disc_start_counts_optimizer_steps = disc_start_counts_optimizer_steps
        self.kl_weight = kl_weight
        self.perceptual_weight = perceptual_weight
        self.disc_factor = disc_factor
        self.discriminator_weight = disc_weight
        self.disc_loss = DISC_LOSSES[disc_loss]
        self.vf_weight, self.adaptive_vf = vf_weight, adaptive_vf
        self.vf_kwargs = dict(distmat_margin=distmat_margin, cos_margin=cos_margin,
                              distmat_weight=distmat_weight, cos_weight=cos_weight)
        self.lpips_train_mode = lpips_train_mode
        # logvar is a Parameter in the reference but in no optimizer, so it stays at its init.
        self.logvar = nn.Parameter(torch.full((), float(logvar_init)), requires_grad=False)
        if perceptual_loss is None and perceptual_weight > 0:
            from tokenizer.lpips import LPIPSLoss
            perceptual_loss = LPIPSLoss(vgg_weights=lpips_vgg_weights, random_init=lpips_random_init)
        self.perceptual_loss = perceptual_loss
        self.discriminator = NLayerDiscriminator(disc_in_channels, disc_ndf, disc_num_layers, use_actnorm)

    def train(self, mode: bool = True) -> "LPIPSWithDiscriminator":
        super().train(mode)
        if self.perceptual_loss is not None and not self.lpips_train_mode:
            self.perceptual_loss.eval()
        return self

    # ------------------------------------------------------------------ helpers
    def disc_steps(self, step: int) -> Tuple[int, int]:
        """The step counts the generator and discriminator gates see at batch `step`."""
        if self.disc_start_counts_optimizer_steps:
            return 2 * step, 2 * step + 1
        return step, step

    def reconstruction_terms(self, inputs: torch.Tensor, reconstructions: torch.Tensor
                             ) -> Tuple[torch.Tensor, torch.Tensor]:
        """rec (B, 3, H, W) = |x - x_rec| + perceptual_weight * LPIPS (broadcast); nll_loss scalar."""
        inputs, reconstructions = inputs.float(), reconstructions.float()
        rec = (inputs.contiguous() - reconstructions.contiguous()).abs()
        if self.perceptual_weight > 0:
            p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous()).float()
            rec = rec + self.perceptual_weight * p_loss
        nll = rec / torch.exp(self.logvar) + self.logvar
        nll_loss = nll.sum() / nll.shape[0]
        return rec, nll_loss

    # ------------------------------------------------------------------ losses
    def generator_loss(self, inputs: torch.Tensor, reconstructions: torch.Tensor, posteriors,
                       step: int, last_layer: Optional[torch.Tensor] = None,
                       enc_last_layer: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                       aux_feature: Optional[torch.Tensor] = None, split: str = "train"
                       ) -> Tuple[torch.Tensor, Log]:
        """Generator (autoencoder) loss of batch `step` (reference optimizer_idx 0).

        inputs, reconstructions: (B, 3, H, W); posteriors: the encoder's DiagonalGaussian;
        z, aux_feature: projected latent and foundation features (B, C, h, w), or None (no VF).
        Returns the scalar total loss and a dict of detached scalars named as the reference logs.
        """
        g_step, _ = self.disc_steps(step)
        rec, nll_loss = self.reconstruction_terms(inputs, reconstructions)
        kl_loss = posteriors.kl().float().sum() / rec.shape[0]

        with _no_param_grads(self.discriminator):
            logits_fake = self.discriminator(reconstructions.contiguous())
        g_loss = -logits_fake.float().mean()
        if self.disc_factor > 0.0 and last_layer is not None:
            d_weight = adaptive_disc_weight(nll_loss, g_loss, last_layer, self.discriminator_weight)
        else:
            d_weight = torch.zeros((), device=rec.device)
        disc_factor = adopt_weight(self.disc_factor, g_step, threshold=self.disc_start)
        loss = nll_loss + self.kl_weight * kl_loss + d_weight * disc_factor * g_loss

        log: Log = {}
        if z is not None and aux_feature is not None:
            vf = vf_loss(z, aux_feature, **self.vf_kwargs)
            if self.adaptive_vf and enc_last_layer is not None:
                vf_w = adaptive_vf_weight(nll_loss, vf, enc_last_layer, self.vf_weight)
            elif self.adaptive_vf:
                vf_w = torch.zeros((), device=rec.device)
            else:
                vf_w = torch.full((), float(self.vf_weight), device=rec.device)
            loss = loss + vf_w * vf
            log[f"{split}/vf_loss"] = vf.detach()
            log[f"{split}/vf_weight"] = vf_w.detach()
            # ours: the alignment the paper optimises, mean cos(z'_hw, f_hw) (not a loss term)
            log[f"{split}/vf_cos"] = F.cosine_similarity(
                aux_feature.detach().float(), z.detach().float(), dim=1, eps=1e-8).mean()
        log.update({
            f"{split}/total_loss": loss.detach(),
            f"{split}/logvar": self.logvar.detach(),
            f"{split}/kl_loss": kl_loss.detach(),
            f"{split}/nll_loss": nll_loss.detach(),
            f"{split}/rec_loss": rec.detach().mean(),
            f"{split}/d_weight": d_weight.detach(),
            f"{split}/disc_factor": torch.full((), float(disc_factor), device=rec.device),
            f"{split}/g_loss": g_loss.detach(),
        })
        return loss, log

    def discriminator_loss(self, inputs: torch.Tensor, reconstructions: torch.Tensor, step: int,
                           discriminator: Optional[nn.Module] = None, split: str = "train"
                           ) -> Tuple[torch.Tensor, Log]:
        """Discriminator loss of batch `step` (reference optimizer_idx 1). Inputs are detached.

        `discriminator`: the module to call (e.g. its DDP wrapper); default `self.discriminator`.
        """
        disc = discriminator if discriminator is not None else self.discriminator
        _, d_step = self.disc_steps(step)
        logits_real = disc(inputs.contiguous().detach())
        logits_fake = disc(reconstructions.contiguous().detach())
        disc_factor = adopt_weight(self.disc_factor, d_step, threshold=self.disc_start)
        d_loss = disc_factor * self.disc_loss(logits_real.float(), logits_fake.float())
        return d_loss, {
            f"{split}/disc_loss": d_loss.detach(),
            f"{split}/logits_real": logits_real.detach().float().mean(),
            f"{split}/logits_fake": logits_fake.detach().float().mean(),
        }

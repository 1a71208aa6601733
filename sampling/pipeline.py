"""From noise to images with a trained LightningDiT: the configured sampler integrating the guided
denoiser (`LatentSampler`), then denormalisation and tokenizer decoding (`Decoder`).

Shared by `inference.py` (FID sampling, the demo grid), evaluation during training and the
benchmarks, so every path samples and decodes the same way.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from datasets.img_latent_dataset import normalizer_from_config
from sampling.guidance import DDPMTimes, Denoiser, FlowTimes, Guidance
from sampling.networks import load_guide
from tokenizer.factory import load_tokenizer
from tokenizer.factory import tokenizer_config_path as _tokenizer_yaml
from transport import Sampler, build_transport
from transport.ddpm_sampler import DDPMSampler
from transport.schedule import TimeSchedule

logger = logging.getLogger("inference")

def tokenizer_config_path(cfg) -> Path:
    """`vae.config_path`, else `configs/tokenizer/{vae.model_name}.yaml` of this repository
    (tokenizer/factory.py: SFD's `sdvae_f16d32` and the authors' `tokenizer/configs/` paths)."""
    return _tokenizer_yaml(cfg.vae.model_name, cfg.vae.config_path)


def time_schedule(transport, cfg) -> TimeSchedule:
    """The channel groups the sampler integrates (the transport's; one group for DDPM's chain)."""
    return transport.schedule if cfg.transport.objective != "ddpm" else TimeSchedule.single(cfg.model.in_chans)


def check_sampling_settings(cfg) -> None:
    """What cannot apply is refused rather than ignored (one-line ValueError): `sample.reverse`
    (data -> noise) outside the ODE sampler, the guidance settings `Guidance.from_config`
    refuses, and what the SDE sampler refuses."""
    s, ddpm = cfg.sample, cfg.transport.objective == "ddpm"
    if s.reverse and (ddpm or s.mode != "ODE"):
        sampler = "DDPM's ancestral chain" if ddpm else "the SDE sampler"
        raise ValueError(f"sample.reverse=true: {sampler} runs noise -> data only (reverse needs sample.mode=ODE)")
    transport = build_transport(cfg)
    Guidance.from_config(cfg, time_schedule(transport, cfg))
    if s.mode == "SDE" and not ddpm:  # what the SDE cannot sample (e.g. SFD's schedule), before any network
        Sampler(transport).sample_sde(s.sampling_method, s.diffusion_form, s.diffusion_norm, s.last_step,
                                      s.last_step_size, s.num_sampling_steps)


class LatentSampler:
    """Turns noise z (n, C, H, W) and labels y (n,) into latents: the configured sampler (ODE, SDE,
    or DDPM's chain) integrating the guided denoiser of sampling/guidance.py.

    `cfg_scale`, `interval`, `interval_start`, `shift` and `skip_uncond` override the config (the
    demo grid, evaluation during training). With AutoGuidance the guide network is `guide`, else
    loaded from `sample.autoguidance_config` (sampling/networks.py). After each call,
    `num_calls` / `num_cond_only` count the denoiser's evaluations and those that skipped the
    unconditional half (cumulative).
    """

    def __init__(self, cfg, model: torch.nn.Module, *, guide: Optional[torch.nn.Module] = None,
                 cfg_scale: Optional[float] = None, interval: bool = True, interval_start: Optional[float] = None,
                 shift: Optional[float] = None, skip_uncond: Optional[bool] = None):
        check_sampling_settings(cfg)
        s = cfg.sample
        transport = build_transport(cfg)
        self.mode = "DDPM" if cfg.transport.objective == "ddpm" else s.mode
        if self.mode == "DDPM" and interval and s.cfg_interval_start > 0:
            logger.warning("sample.cfg_interval_start=%g does not apply to DDPM's chain (guided at every step)",
                           s.cfg_interval_start)
        schedule = time_schedule(transport, cfg)
        self.guidance = Guidance.from_config(cfg, schedule, cfg_scale=cfg_scale, interval=interval and self.mode != "DDPM",
                                             interval_start=interval_start, skip_uncond=skip_uncond)
        self.null_class = cfg.data.num_classes
        if self.guidance.kind == "cfg" and model.y_embedder.embedding_table.num_embeddings <= self.null_class:
            raise ValueError("sample.cfg_scale > 1 needs a null class: the model was built with "
                             "model.class_dropout_prob = 0")
        self.guide = None
        if self.guidance.kind == "auto":
            self.guide = guide if guide is not None else load_guide(cfg, next(model.parameters()).device)
        self.net = model
        if self.mode == "DDPM":
            # DiT's ancestral chain respaced to num_sampling_steps; method, shift and the CFG
            # interval are flow-sampler settings (the interval is logged as not applying).
            chain = DDPMSampler(transport, s.num_sampling_steps)
            self.times = DDPMTimes(chain.timestep_map)
            if chain.learn_sigma:
                self.net = _with_sigma(model)
                self.guide = _with_sigma(self.guide) if self.guide is not None else None
            self.integrate = lambda z, denoiser, generator: chain(z, denoiser, generator=generator)
        else:
            self.times = FlowTimes(schedule)
            sampler = Sampler(transport)
            if self.mode == "ODE":
                ode = sampler.sample_ode(s.sampling_method, s.num_sampling_steps, s.atol, s.rtol, s.reverse,
                                         s.timestep_shift if shift is None else shift)
                self.integrate = lambda z, denoiser, generator: ode(z, denoiser)[-1]
            else:
                def sde(z, denoiser, generator):
                    fn = sampler.sample_sde(s.sampling_method, s.diffusion_form, s.diffusion_norm, s.last_step,
                                            s.last_step_size, s.num_sampling_steps, generator=generator)
                    if self.guidance.kind == "cfg":
                        return _doubled_noise(fn, z, denoiser)
                    return fn(z, denoiser)[-1]
                self.integrate = sde
        self.num_calls = self.num_cond_only = 0

    def denoiser(self, y: torch.Tensor) -> Denoiser:
        """The guided denoiser for labels y (sampling/guidance.py)."""
        return Denoiser(self.net, y, self.times, self.guidance, guide=self.guide, null_class=self.null_class)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, y: torch.Tensor, sde_seed: int = 0) -> torch.Tensor:
        """Latents (n, C, H, W) from noise z and labels y; the SDE's and DDPM's per-step noise comes
        from a generator seeded with `sde_seed` (on z's device)."""
        denoiser = self.denoiser(y)
        out = self.integrate(z, denoiser, torch.Generator(device=z.device).manual_seed(sde_seed))
        self.num_calls += denoiser.calls
        self.num_cond_only += denoiser.cond_only
        return out


def _doubled_noise(sde, z: torch.Tensor, denoiser: Denoiser) -> torch.Tensor:
    """The SDE under CFG integrates [z; z] and keeps the first half, so it draws its noise for 2n
    rows as it did when the guided network ran on the doubled state: the same samples for a seed
    as before. The denoiser still runs once per evaluation, on the first half."""
    n = z.shape[0]

    def doubled(x, s):
        out = denoiser(x[:n], s)
        return torch.cat([out, out])

    return sde(torch.cat([z, z]), doubled)[-1][:n]


def _with_sigma(net):
    """DDPM with a learned variance: the network returns [eps; v] (return_sigma)."""
    return lambda x, t, y: net(x, t, y, return_sigma=True)


class Decoder:
    """Latents in model space -> uint8 NHWC images: the texture channels de-normalised,
    z = x * std / multiplier + mean (datasets/latent_norm.py), then tokenizer decode (VA-VAE,
    MAR-VAE or SD-VAE, as the tokenizer YAML's `tokenizer:` key says; tokenizer/factory.py).

    SFD (model.semantic_chans > 0): the last semantic channels are dropped and only the texture
    channels are de-normalised with the texture stats (latents_stats.pt) and decoded; the semantic
    stats (latents_sv_stats.pt, data.latent_sv_norm) are loaded too, so a sampling run is bound
    to both files (sampling/protocol.py). With data.latent_norm false the inverse of training is
    z = x / multiplier (the reference applies the dataset stats regardless,
    docs/reference_behaviour.md §9.2, which mis-scales such models).
    """

    def __init__(self, cfg, device: torch.device, random_init: bool = False):
        self.normalizer = normalizer_from_config(cfg).to(device)
        config_path = tokenizer_config_path(cfg)
        # fp16=False: the reference decodes in fp32. Seeded so a random-init tokenizer (tests) is
        # the same on every rank.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.global_seed)
            self.vae = load_tokenizer(config_path, img_size=cfg.data.image_size, fp16=False,
                                      device=device, random_init=random_init)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return self.vae.decode_to_images(self.normalizer.denormalize(x.float()))

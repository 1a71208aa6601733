"""From noise to images with a trained LightningDiT: the configured sampler with guidance
(`LatentSampler`), then denormalisation and tokenizer decoding (`Decoder`).

Shared by `inference.py` (FID sampling, the demo grid), evaluation during training and the
benchmarks, so every path samples and decodes the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from configs.schema import cfg_channels_value
from datasets.img_latent_dataset import load_latent_stats
from tokenizer.factory import load_tokenizer
from transport import Sampler, build_transport, make_guided_sampler
from transport.ddpm_sampler import DDPMSampler

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "tokenizer"


def tokenizer_config_path(cfg) -> Path:
    """`vae.config_path`, else `configs/tokenizer/{vae.model_name}.yaml` of this repository."""
    return Path(cfg.vae.config_path) if cfg.vae.config_path else CONFIG_DIR / f"{cfg.vae.model_name}.yaml"


class LatentSampler:
    """Turns noise z (n, C, H, W) and labels y (n,) into latents with the configured sampler and
    guidance. `cfg_scale`, `interval_start` and `shift` may be overridden (demo mode)."""

    def __init__(self, cfg, model: torch.nn.Module, *, cfg_scale: Optional[float] = None,
                 interval: bool = True, interval_start: Optional[float] = None,
                 shift: Optional[float] = None, skip_uncond: Optional[bool] = None):
        s = cfg.sample
        self.model = model
        self.mode = s.mode
        self.cfg_scale = s.cfg_scale if cfg_scale is None else cfg_scale
        self.interval = interval
        self.interval_start = s.cfg_interval_start if interval_start is None else interval_start
        self.shift = s.timestep_shift if shift is None else shift
        self.cfg_channels = cfg_channels_value(cfg)
        self.null_class = cfg.data.num_classes
        self.num_calls = self.num_cond_only = 0
        if self.cfg_scale > 1.0 and model.y_embedder.embedding_table.num_embeddings <= self.null_class:
            raise ValueError("sample.cfg_scale > 1 needs a null class: the model was built with "
                             "model.class_dropout_prob = 0")
        self.ddpm = None
        if cfg.transport.objective == "ddpm":
            # DiT's ancestral chain respaced to num_sampling_steps; mode, method, shift and the
            # CFG interval are flow-sampler settings and do not apply.
            self.ddpm = DDPMSampler(build_transport(cfg), s.num_sampling_steps)
            return
        sampler = Sampler(build_transport(cfg))
        self.schedule = sampler.schedule
        skip = s.skip_uncond_outside_interval if skip_uncond is None else skip_uncond
        if s.mode == "ODE":
            self.ode = sampler.sample_ode(s.sampling_method, s.num_sampling_steps, s.atol, s.rtol,
                                          s.reverse, self.shift)
            self.guided = make_guided_sampler(sampler, sampling_method=s.sampling_method,
                                              num_steps=s.num_sampling_steps, atol=s.atol, rtol=s.rtol,
                                              timestep_shift=self.shift, skip_uncond=skip)
        else:
            self.sde_kwargs = dict(sampling_method=s.sampling_method, diffusion_form=s.diffusion_form,
                                   diffusion_norm=s.diffusion_norm, last_step=s.last_step,
                                   last_step_size=s.last_step_size, num_steps=s.num_sampling_steps)
            self.sampler = sampler

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, y: torch.Tensor, sde_seed: int = 0) -> torch.Tensor:
        n, guided = z.shape[0], self.cfg_scale > 1.0
        if self.ddpm is not None:  # per-step noise seeded by sde_seed, as the SDE sampler
            return self.ddpm(z, self._ddpm_denoiser(y), generator=torch.Generator(device=z.device).manual_seed(sde_seed))
        forward = self.model.forward
        times = self.schedule.times_at
        if self.mode == "ODE":
            if guided:
                out = self.guided(z, self.model, y, self.cfg_scale, cfg_interval=self.interval,
                                  cfg_interval_start=self.interval_start, cfg_channels=self.cfg_channels,
                                  null_class=self.null_class)[-1]
                self.num_calls += self.guided.num_calls
                self.num_cond_only += self.guided.num_cond_only
                return out
            return self.ode(z, lambda x, s: forward(x, times(s, n, x.device), y))[-1]
        # SDE (ours; the reference raises NotImplementedError): reference-style doubled batch.
        g = torch.Generator(device=z.device).manual_seed(sde_seed)
        fn = self.sampler.sample_sde(**self.sde_kwargs, generator=g)
        if not guided:
            return fn(z, lambda x, s: forward(x, times(s, n, x.device), y))[-1]
        y2 = torch.cat([y, torch.full_like(y, self.null_class)])
        out = fn(torch.cat([z, z]), lambda x, s: self.model.forward_with_cfg(
            x, times(s, 2 * n, x.device), y2, cfg_scale=self.cfg_scale, cfg_interval=self.interval,
            cfg_interval_start=self.interval_start, cfg_channels=self.cfg_channels))[-1]
        return out[:n]

    def _ddpm_denoiser(self, y: torch.Tensor):
        """denoiser(x, i) for DDPMSampler: DiT's forward_with_cfg convention (one pass on [x; x]
        with labels [y; null], the first cfg_channels eps channels guided)."""
        model, ddpm, scale = self.model, self.ddpm, self.cfg_scale
        kwargs = {"return_sigma": True} if ddpm.learn_sigma else {}

        def denoiser(x: torch.Tensor, i: int) -> torch.Tensor:
            n = x.shape[0]
            t = torch.full((n,), ddpm.timestep_map[i], dtype=torch.long, device=x.device)
            if scale <= 1.0:
                return model(x, t, y, **kwargs)
            k = x.shape[1] if self.cfg_channels is None else self.cfg_channels
            out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, self.null_class)]),
                        **kwargs)
            cond, uncond = out[:n], out[n:]
            return torch.cat([uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k]), cond[:, k:]], dim=1)

        return denoiser


class Decoder:
    """Latents in model space -> uint8 NHWC images: z = x * std / multiplier + mean, tokenizer decode
    (VA-VAE, MAR-VAE or SD-VAE, as the tokenizer YAML's `tokenizer:` key says; tokenizer/factory.py).

    With data.latent_norm false the inverse of training is z = x / multiplier (the reference
    applies the dataset stats regardless, docs/reference_behaviour.md §9.2, which mis-scales such models).
    """

    def __init__(self, cfg, device: torch.device, random_init: bool = False):
        self.multiplier = cfg.data.latent_multiplier
        self.mean = self.std = None
        if cfg.data.latent_norm:
            mean, std = load_latent_stats(cfg.data.data_path, cfg.model.in_chans, "model.in_chans")
            self.mean, self.std = mean.to(device), std.to(device)
        config_path = tokenizer_config_path(cfg)
        # fp16=False: the reference decodes in fp32. Seeded so a random-init tokenizer (tests) is
        # the same on every rank.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.global_seed)
            self.vae = load_tokenizer(config_path, img_size=cfg.data.image_size, fp16=False,
                                      device=device, random_init=random_init)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        x = x.float()
        z = x * self.std / self.multiplier + self.mean if self.mean is not None else x / self.multiplier
        return self.vae.decode_to_images(z)

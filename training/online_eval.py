"""Evaluation during training (`train.eval_every`): sample a fixed set with the EMA model, write
a grid PNG and, when possible, FID / sFID / IS against `data.fid_reference_file`.

The set is the same at every evaluation and for any number of processes, so the curve compares
like with like: image i (i < train.eval_num) has the noise `datasets.order.sample_noise` gives it
for seed `train.global_seed` and the i-th label of a seeded class-balanced permutation
(`sample_labels(..., "balanced")`). Rank r samples images r, r + W, ... with the cheap sampler
`train.eval_steps` Euler steps and guidance `train.eval_cfg_scale`; the main process gathers them.

The images come from the sampling loop of FID sampling (sampling/loop.py: the same noise and
labels per index, the network under `sample.precision`). Guidance is `train.eval_cfg_scale` on
every part: classifier-free, or AutoGuidance with the guide of `sample.autoguidance_config` when
the config turns `sample.autoguidance` on (SFD's per-part scales are inference settings). An SFD
model is sampled with its semantic-first schedule (Euler over [0, 1 + delta] with the phase masks).

What needs files is optional: without tokenizer weights the grid shows latent channels 0-2 and
there is no FID; without `data.fid_reference_file` or Inception weights ($ADM_INCEPTION_WEIGHTS)
there is no FID. What is skipped is logged once. The metrics are ADM's (evaluation/adm.py),
but over `train.eval_num` images: compare runs at equal eval_num, not with the 50k-image FID.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from omegaconf import OmegaConf

from datasets.order import sample_labels, sample_noise
from models.build import latent_size
from sampling.loop import generate
from sampling.pipeline import Decoder, LatentSampler
from training.metrics import MetricsSink
from utils.fileio import atomic_write

logger = logging.getLogger("train")

EVAL_CURVES = (("eval_fid", "FID of the EMA model (train.eval_num images)"),)
EVAL_TAGS = {"eval_fid": "Eval/fid", "eval_sfid": "Eval/sfid", "eval_inception_score": "Eval/inception_score"}
GRID_IMAGES = 64  # at most this many images in the grid (the first ones of the fixed set)


def eval_set(cfg, rank: int, world_size: int) -> Tuple[List[int], torch.Tensor, torch.Tensor]:
    """This rank's image indices, noise (n, C, H, W) and labels (n,) of the evaluation set."""
    total = cfg.train.eval_num
    indices = list(range(rank, total, world_size))
    size = latent_size(cfg)
    noise = sample_noise(indices, (cfg.model.in_chans, size, size), cfg.train.global_seed)
    labels = sample_labels(indices, cfg.data.num_classes, cfg.train.global_seed, "balanced", total=total)
    return indices, noise, labels


def eval_sampling_config(cfg):
    """`cfg` with the cheap evaluation sampler: ODE, Euler, `train.eval_steps` steps, forward, and
    guidance at `train.eval_cfg_scale` on every part (AutoGuidance when `sample.autoguidance` is on,
    else classifier-free)."""
    return OmegaConf.merge(cfg, {"sample": {"mode": "ODE", "sampling_method": "euler", "reverse": False,
                                            "num_sampling_steps": cfg.train.eval_steps,
                                            "cfg_scale": cfg.train.eval_cfg_scale,
                                            "cfg_scale_tex": None, "cfg_scale_sem": None}})


def image_grid(images: np.ndarray, cols: int = 8) -> np.ndarray:
    """uint8 (N, H, W, 3) -> one uint8 (rows*H, cols*W, 3) image; empty cells stay black."""
    n, h, w, c = images.shape
    rows = -(-n // cols)
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[r * h:(r + 1) * h, k * w:(k + 1) * w] = images[i]
    return grid


def latents_to_images(x: torch.Tensor) -> np.ndarray:
    """Channels 0-2 of latents (N, C, H, W), min-max scaled over the batch, as uint8 NHWC (a
    picture of the latents when no tokenizer weights are available)."""
    x = x[:, :3].float()
    if x.shape[1] < 3:
        x = torch.cat([x, x[:, :1].expand(-1, 3 - x.shape[1], -1, -1)], dim=1)
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class OnlineEvaluator:
    """`evaluator(step)` samples the fixed set with `ema`, then (main process) writes
    `{run_dir}/eval/{step:07d}.png`, the metrics row and `fid_curve.png`.
    `random_init` builds random tokenizer and Inception weights (tests only: not a real FID)."""

    def __init__(self, cfg, rt, ema: torch.nn.Module, sink: MetricsSink, run_dir: Path,
                 random_init: bool = False):
        self.cfg, self.rt, self.ema, self.sink = cfg, rt, ema, sink
        self.out_dir = Path(run_dir) / "eval"
        self.sampling_cfg = eval_sampling_config(cfg)
        self.sampler = LatentSampler(self.sampling_cfg, ema)
        self.indices = eval_set(cfg, rt.rank, rt.world_size)[0]
        skipped = []
        self.decoder = self.extractor = self.ref_stats = None
        try:
            self.decoder = Decoder(cfg, rt.device, random_init=random_init)
        except (ValueError, FileNotFoundError) as err:
            skipped.append(f"decoding and FID (no tokenizer: {err})")
        if self.decoder is not None and rt.is_main:
            skipped += self._load_fid_reference(random_init)
        if rt.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            logger.info("evaluation every %d steps: %d images, %d Euler steps, %s scale %g%s",
                        cfg.train.eval_every, cfg.train.eval_num, cfg.train.eval_steps,
                        "AutoGuidance" if self.sampler.guidance.kind == "auto" else "cfg",
                        cfg.train.eval_cfg_scale, "".join(f"; skipping {s}" for s in skipped))

    def _load_fid_reference(self, random_init: bool) -> List[str]:
        """Inception network and reference statistics, once; returns what is skipped."""
        from evaluation.adm import reference_statistics
        from evaluation.inception import InceptionFeatureExtractor

        ref = self.cfg.data.fid_reference_file
        if not ref:
            return ["FID (data.fid_reference_file is not set)"]
        if not Path(ref).is_file():
            return [f"FID (data.fid_reference_file not found: {ref})"]
        try:
            self.extractor = InceptionFeatureExtractor(None, self.rt.device, random_init=random_init)
        except FileNotFoundError as err:
            return [f"FID ({err})"]
        self.ref_stats = reference_statistics(ref, self.extractor)
        return []

    @torch.no_grad()
    def generate(self) -> torch.Tensor:
        """This rank's images (uint8 NHWC) or, without a tokenizer, latents (float32 NCHW): the
        images of `eval_set`, through the sampling loop of FID sampling."""
        b = self.cfg.train.eval_batch_size
        batches = [self.indices[lo: lo + b] for lo in range(0, len(self.indices), b)]
        out = [torch.from_numpy(images) if self.decoder is not None else images.float().cpu()
               for _, images in generate(self.sampling_cfg, self.sampler, self.decoder, batches, self.rt.device,
                                         total=self.cfg.train.eval_num, labels="balanced")]
        return torch.cat(out)

    def gather(self, images: torch.Tensor) -> torch.Tensor:
        """All ranks' images in set order (image j*W + r is rank r's j-th)."""
        world, total = self.rt.world_size, self.cfg.train.eval_num
        if world == 1:
            return images
        per_rank = -(-total // world)
        padded = torch.zeros((per_rank, *images.shape[1:]), dtype=images.dtype)
        padded[: len(images)] = images
        every = self.rt.accelerator.gather(padded.to(self.rt.device)).cpu()
        return every.view(world, per_rank, *images.shape[1:]).transpose(0, 1).reshape(
            world * per_rank, *images.shape[1:])[:total]

    def __call__(self, step: int) -> Optional[dict]:
        images = self.gather(self.generate())  # the EMA model is always in eval mode
        # without a tokenizer: one scaling for the whole set (not per rank)
        images = images.numpy() if self.decoder is not None else latents_to_images(images)
        row = None
        if self.rt.is_main:
            grid = image_grid(images[:GRID_IMAGES])
            path = self.out_dir / f"{step:07d}.png"
            atomic_write(path, lambda tmp: _save_png(grid, tmp))
            self.sink.log_image("Eval/samples", grid, step)
            row = {"step": step, "eval_num": len(images)}
            if self.extractor is not None:
                from evaluation.adm import image_metrics
                row.update({f"eval_{k}": v for k, v in image_metrics(images, self.extractor, self.ref_stats).items()})
            self.sink.log(row)
            if "eval_fid" in row:
                self.sink.plot("fid_curve.png", EVAL_CURVES, ylabel="FID", log_scale=False)
            logger.info(f"(step={step:07d}) Eval: {path}" + "".join(
                f", {k[5:]}: {v:.4f}" for k, v in row.items() if k.startswith("eval_") and k != "eval_num"))
        self.rt.accelerator.wait_for_everyone()
        return row


def _save_png(image: np.ndarray, path) -> None:
    from PIL import Image
    Image.fromarray(image).save(path, format="png")

"""Sample LightningDiT for FID-50K, or the 8-class demo grid (hustvl/LightningDiT `inference.py`,
DiT `sample_ddp.py` layout).

    bash run_inference.sh configs/reproductions/lightningdit_xl_vavae_f16d32_800ep_cfg.yaml [--fid]
    bash run_fast_inference.sh configs/lightningdit_xl_vavae_f16d32.yaml      # demo grid

FID mode (docs/reference_behaviour.md §7.1): every process draws per-process batches, samples the transport ODE
(Euler, 250 points, timestep shift) with classifier-free guidance inside the interval on the
first `sample.cfg_channels` channels (3 = the reference's quirk, under which the published FIDs
were measured), denormalises z = x * std / multiplier + mean, decodes with VA-VAE and writes
`{index:06d}.png` into `{output_dir}/{exp_name}/{folder}` (the reference's folder name), then
`{folder}.npz` (uint8 NHWC `arr_0`, labels `arr_1`) for the ADM evaluator. Sampling is fp32 (TF32
on GPU) by default, as the reference; `sample.precision=bf16` autocasts the network.

Ours: the noise and label of image i depend only on (train.global_seed, i), so a restarted run
writes only the missing images and ends with the same set as an uninterrupted one; exactly
`sample.fid_num` images are written; `sample.label_mode=balanced` (or SFD's
`sample.balanced_sampling`) gives fid_num / num_classes images per class; outside the guidance
interval the unconditional half is skipped (`sample.skip_uncond_outside_interval`, same samples
up to float rounding); `protocol.json` in the folder records every setting and input an FID
depends on (a resumed run must match it). With `sample.autoguidance` the guide network of
`sample.autoguidance_config` replaces the unconditional half (SFD's AutoGuidance).

This file is the command line only: the networks (sampling/networks.py), the guided sampler
(sampling/pipeline.py, sampling/guidance.py), the protocol and folder (sampling/protocol.py) and
the batch loop (sampling/loop.py) are library code shared with evaluation during training.

Demo mode (`--demo`): rank 0 samples the reference's classes [975, 3, 207, 387, 388, 88, 979, 279]
with the reference's overrides (cfg 9.0, no interval, no shift; logged, not silent) into a 2x4
grid, `demo_images/demo_samples.png` by default (`--demo-out`). An SFD config (model.semantic_chans
> 0) gets SFD's demo instead: classes [106, 22, 279, 975, 388, 15, 36, 979], w 1.5 on both parts
(AutoGuidance when the YAML turns it on, else CFG), no interval, no shift (docs/sfd.md).

SFD (docs/sfd.md): its YAMLs run unchanged; the 48-channel noise comes from the same per-image
rule, the guide of `sample.autoguidance_config` (checkpoint `sample.autoguidance_ckpt_iter`) guides
with `sample.cfg_scale` > 1, and only the texture channels are de-normalised and decoded.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from omegaconf import OmegaConf

from configs.schema import parse_cli
from datasets.order import STREAM_DEMO, sample_noise
from models.build import latent_size
from sampling.inputs import check_sampling_inputs, is_sfd
from sampling.loop import precision_context, sample_fid_folder, save_png
from sampling.networks import autoguidance_active, guide_config, load_guide, load_model
from sampling.pipeline import Decoder, LatentSampler
from sampling.protocol import claim_sample_folder, input_digests, protocol, sample_folder
from training.rundir import decide_on_main
from utils.fileio import WriteError
from utils.runtime import setup_runtime
from utils.seeding import derive_seed

logger = logging.getLogger("inference")

# The reference demo's classes (docs/reference_behaviour.md §7.1): 975 lakeside, 3 tiger shark, 207 golden
# retriever, 387 lesser panda, 388 giant panda, 88 macaw, 979 valley, 279 arctic fox.
DEMO_LABELS = (975, 3, 207, 387, 388, 88, 979, 279)
# Demo overrides of the reference (docs/reference_behaviour.md §7.1): cfg 9.0, no interval, no shift.
DEMO_CFG_SCALE, DEMO_INTERVAL_START, DEMO_SHIFT = 9.0, 0.0, 0.0
# SFD's demo (docs/reference_behaviour.md §12.4.5): its classes, w 1.5 (per-part
# scales unset), no interval, no shift.
SFD_DEMO_LABELS = (106, 22, 279, 975, 388, 15, 36, 979)
SFD_DEMO_CFG_SCALE = 1.5


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demo", action="store_true", help="8-class demo grid instead of FID sampling")
    parser.add_argument("--demo-out", default="demo_images/demo_samples.png", help="demo grid PNG path")
    parser.add_argument("--fid", action="store_true",
                        help="run tools/adm_evaluator.py on the .npz when data.fid_reference_file exists")
    parser.add_argument("--class-names", default=None, help="text file, one class name per line (demo log)")
    parser.add_argument("--demo-classes", default=None,
                        help="comma-separated 8 class indices for the demo grid (default: the reference's)")
    parser.add_argument("--demo-config-sampling", action="store_true",
                        help="demo grid with the config's cfg/interval/shift instead of the reference's "
                             "demo overrides (cfg 9.0, no interval, no shift)")
    parser.add_argument("--vae-random-init", action="store_true",
                        help="random tokenizer weights (tests only: the images mean nothing)")


#################################################################################
#                                   Demo grid                                   #
#################################################################################

def demo_labels(num_classes: int, sfd: bool = False) -> Tuple[List[int], bool]:
    """The reference's 8 demo classes (SFD's with `sfd`); with fewer than 1000 classes each is
    taken modulo num_classes. Returns (labels, remapped)."""
    classes = list(SFD_DEMO_LABELS if sfd else DEMO_LABELS)
    labels = [c % num_classes for c in classes]
    return labels, labels != classes


def demo_config(cfg, args) -> Tuple[object, str]:
    """The demo's config, the reference's (or SFD's) sampling overrides applied, and the line that
    states them (logged once logging is set up); the config unchanged with --demo-config-sampling."""
    s = cfg.sample
    if args.demo_config_sampling:
        return cfg, "demo grid with the config's sampling settings (--demo-config-sampling)"
    sfd = is_sfd(cfg)
    scale = SFD_DEMO_CFG_SCALE if sfd else DEMO_CFG_SCALE
    line = (f"demo mode uses {'SFD' if sfd else 'the reference'}'s overrides: cfg_scale {s.cfg_scale:.2f} -> "
            f"{scale:.1f}{' on both parts (per-part scales ignored)' if sfd else ''}, cfg interval off (start "
            f"{s.cfg_interval_start:.3f} ignored), timestep_shift {s.timestep_shift:.2f} -> {DEMO_SHIFT:.1f}")
    overrides = {"cfg_scale": scale, "cfg_interval_start": DEMO_INTERVAL_START, "timestep_shift": DEMO_SHIFT}
    if sfd:
        overrides.update(cfg_scale_sem=None, cfg_scale_tex=None)
    return OmegaConf.merge(cfg, {"sample": overrides}), line


def class_names(num_classes: int, path: Optional[str] = None) -> Optional[List[str]]:
    """Class names: one per line from `path`, else torchvision's ImageNet-1k list (offline
    metadata) when num_classes == 1000, else None."""
    if path is not None:
        names = Path(path).read_text().splitlines()
        if len(names) < num_classes:
            raise ValueError(f"{path}: {len(names)} class names for {num_classes} classes")
        return names
    if num_classes == 1000:
        try:
            from torchvision.models import ResNet50_Weights
            return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
        except (ImportError, AttributeError, KeyError):
            return None
    return None


def image_grid(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows*cols, H, W, 3) uint8 -> (rows*H, cols*W, 3) row-major grid."""
    n, h, w, c = images.shape
    if n != rows * cols:
        raise ValueError(f"{n} images do not fill a {rows}x{cols} grid")
    return images.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


#################################################################################
#                                     Modes                                     #
#################################################################################

def run_demo(cfg, args, rt, model, decoder, guide=None) -> Path:
    """The demo grid with the settings of `demo_config` (cfg is already the demo's config)."""
    if args.demo_classes:
        labels = [int(c) for c in args.demo_classes.split(",")]
        if len(labels) != 8 or not all(0 <= c < cfg.data.num_classes for c in labels):
            raise SystemExit(f"error: --demo-classes needs 8 indices in [0, {cfg.data.num_classes}), "
                             f"got {args.demo_classes!r}")
    else:
        labels, remapped = demo_labels(cfg.data.num_classes, is_sfd(cfg))
        if remapped:
            logger.warning("data.num_classes = %d < 1000: demo classes taken modulo num_classes -> %s",
                           cfg.data.num_classes, labels)
    names = class_names(cfg.data.num_classes, args.class_names)
    for i, c in enumerate(labels):
        logger.info("demo image %d: class %d%s", i, c, f" ({names[c]})" if names else "")
    sampler = LatentSampler(cfg, model, guide=guide, interval=args.demo_config_sampling)
    c, h = cfg.model.in_chans, latent_size(cfg)
    z = sample_noise(range(len(labels)), (c, h, h), cfg.train.global_seed, stream=STREAM_DEMO).to(rt.device)
    y = torch.tensor(labels, device=rt.device)
    with precision_context(cfg, rt.device):
        x = sampler(z, y, sde_seed=derive_seed(cfg.train.global_seed, STREAM_DEMO))
    grid = image_grid(decoder(x), rows=2, cols=4)
    out = Path(args.demo_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(grid, out)
    logger.info("saved demo grid %s (%dx%d)", out, grid.shape[1], grid.shape[0])
    return out


def run_fid_sampling(cfg, args, rt, model, decoder, guide=None) -> Path:
    """Claim the sample folder the protocol names, write fid_num PNGs (resumable), then
    `{folder}.npz` (arr_0 images, arr_1 labels) and, with --fid, the ADM evaluation."""
    proto = protocol(cfg, rt.world_size, rt.device, input_digests(model, decoder, guide) if rt.is_main else None)
    folder = sample_folder(cfg, proto)
    decide_on_main(rt.accelerator, lambda: claim_sample_folder(cfg, folder, proto))
    rt.accelerator.wait_for_everyone()
    sampler = LatentSampler(cfg, model, guide=guide)
    return sample_fid_folder(cfg, rt, sampler, decoder, folder, on_complete=lambda npz: fid_step(cfg, args, npz))


def check_fid_inputs(cfg) -> None:
    """--fid's files, before 50k images are sampled: the reference batch and the Inception weights."""
    from evaluation.inception import resolve_weights_path

    ref = cfg.data.fid_reference_file
    if not ref:
        raise ValueError("--fid needs data.fid_reference_file (the ADM reference batch, "
                         "VIRTUAL_imagenet256_labeled.npz: python tools/fetch_weights.py adm-ref-imagenet256)")
    if not Path(ref).is_file():
        raise FileNotFoundError(f"--fid: reference batch not found: {ref} (data.fid_reference_file; "
                                "python tools/fetch_weights.py adm-ref-imagenet256)")
    resolve_weights_path(None)


def fid_step(cfg, args, npz: Path) -> None:
    """Run the ADM evaluator (`--fid`) when the reference batch exists, else print the command."""
    ref = cfg.data.fid_reference_file
    command = f"python tools/adm_evaluator.py {ref or 'VIRTUAL_imagenet256_labeled.npz'} {npz}"
    if args.fid and ref and Path(ref).is_file():
        from evaluation.adm import evaluate_files
        results = evaluate_files(ref, str(npz))
        logger.info("ADM evaluator: %s", results)
    else:
        if args.fid:
            logger.warning("--fid: data.fid_reference_file %r not found", ref)
        logger.info("FID-50K (ADM evaluator): %s", command)


def main(argv: Optional[List[str]] = None):
    cfg, args = parse_cli(argv, description="LightningDiT sampling: FID PNGs + .npz, or --demo grid.",
                          extra_args=add_args)
    demo_line = None
    if args.demo:
        cfg, demo_line = demo_config(cfg, args)
    try:  # every named input, before any process group, network or output folder exists
        check_sampling_inputs(cfg, tokenizer_weights=not args.vae_random_init)
        if args.fid and not args.demo:
            check_fid_inputs(cfg)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    # The reference's seed rule: torch.manual_seed(global_seed * world_size + rank). Our images
    # use per-image generators on top of that (datasets/order.py).
    rt = setup_runtime(run_dir=None, seed=cfg.train.global_seed, name="inference")
    if args.demo and not rt.is_main:
        return None
    if demo_line:
        (logger.info if args.demo_config_sampling else logger.warning)(demo_line)
    with torch.no_grad():  # scoped, not global: main() is also called in-process (tests)
        return _sample(cfg, args, rt)


def _sample(cfg, args, rt):
    """Build model, guide and decoder, then run demo or FID sampling (called under no_grad)."""
    model = load_model(cfg, rt.device)
    guide = load_guide(cfg, rt.device) if autoguidance_active(cfg) else None
    decoder = Decoder(cfg, rt.device, random_init=args.vae_random_init)
    logger.info("model %s from %s, sampler %s %s x%d, cfg %.2f (interval from %.3f, channels %s), "
                "shift %.2f, precision %s, processes %d", cfg.model.model_type, cfg.ckpt_path,
                cfg.sample.mode, cfg.sample.sampling_method, cfg.sample.num_sampling_steps,
                cfg.sample.cfg_scale, cfg.sample.cfg_interval_start, cfg.sample.cfg_channels,
                cfg.sample.timestep_shift, cfg.sample.precision, rt.world_size)
    if is_sfd(cfg):
        m = cfg.model
        logger.info("SFD: %d texture + %d semantic channels, semantics ahead by %.2f; decoding the texture "
                    "channels with %s", m.in_chans - m.semantic_chans, m.semantic_chans, m.semfirst_delta_t,
                    decoder.vae.config_path)
    if guide is not None:
        guide_cfg = guide_config(cfg)
        logger.info("AutoGuidance: guide %s from %s (%s), scale %.2f (texture %s, semantics %s)",
                    guide_cfg.model.model_type, guide_cfg.ckpt_path, cfg.sample.autoguidance_config,
                    cfg.sample.cfg_scale, cfg.sample.cfg_scale_tex, cfg.sample.cfg_scale_sem)
    if args.demo:
        return run_demo(cfg, args, rt, model, decoder, guide)
    return run_fid_sampling(cfg, args, rt, model, decoder, guide)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, WriteError) as err:  # bad input, folder in use or made from
        raise SystemExit(f"error: {err}") from None               # other inputs, disk full: one line

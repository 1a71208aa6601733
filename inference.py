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
`sample.fid_num` images are written; `sample.label_mode=balanced` gives fid_num / num_classes
images per class; outside the guidance interval the unconditional half is skipped
(`sample.skip_uncond_outside_interval`, same samples up to float rounding); `protocol.json` in
the folder records every setting an FID depends on (a resumed run must match it).

Demo mode (`--demo`): rank 0 samples the reference's classes [975, 3, 207, 387, 388, 88, 979, 279]
with the reference's overrides (cfg 9.0, no interval, no shift; logged, not silent) into a 2x4
grid, `demo_images/demo_samples.png` by default (`--demo-out`).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from configs.schema import SampleConfig, TrainConfig, TransportConfig, parse_cli
from datasets.order import STREAM_DEMO, STREAM_SDE, sample_labels, sample_noise, work_plan
from models.build import build_model, latent_size, should_compile
from models.kernels import select_kernels
from sampling import Decoder, LatentSampler
from sampling.inputs import check_sampling_inputs
from training.rundir import RunLock, decide_on_main, move_aside, release_run_dir, timestamp
from utils.digest import module_digest, tensors_digest
from utils.fileio import WriteError, atomic_write, atomic_write_json
from utils.runtime import setup_runtime
from utils.seeding import derive_seed

logger = logging.getLogger("inference")

# Protocol entries a resumed run may change without changing any image.
_PROTOCOL_FREE = ("world_size", "per_proc_batch_size", "torch_version", "device")
# Where the checkpoint lives: free when the folder records the weights' content hash.
_PROTOCOL_LOCATION = ("ckpt_path", "ckpt_bytes")
# Content hashes of the inputs (input_digests) and what each names in an error.
_INPUT_DIGESTS = {"ckpt_sha256": "checkpoint weights", "vae_sha256": "tokenizer weights",
                  "latent_stats_sha256": "latent stats"}

# The reference demo's classes (docs/reference_behaviour.md §7.1): 975 lakeside, 3 tiger shark, 207 golden
# retriever, 387 lesser panda, 388 giant panda, 88 macaw, 979 valley, 279 arctic fox.
DEMO_LABELS = (975, 3, 207, 387, 388, 88, 979, 279)
# Demo overrides of the reference (docs/reference_behaviour.md §7.1): cfg 9.0, no interval, no shift.
DEMO_CFG_SCALE, DEMO_INTERVAL_START, DEMO_SHIFT = 9.0, 0.0, 0.0


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
#                                   Sampling                                    #
#################################################################################

def sample_folder_name(cfg) -> str:
    """The reference's folder name, plus suffixes for non-reference settings.

    `{model_type /->-}-ckpt-{ckpt stem}-{sampling_method}-{steps}` lower-cased, with
    `-interval{start:.2f}-cfg{scale:.2f}-shift{shift:.2f}` when cfg_scale > 1; the other suffixes
    name the settings that differ from the schema defaults (the reference's behaviour).
    """
    s, ref = cfg.sample, SampleConfig()
    ckpt = Path(cfg.ckpt_path).stem if cfg.ckpt_path else "none"
    name = f"{cfg.model.model_type.replace('/', '-')}-ckpt-{ckpt}-{s.sampling_method}-{s.num_sampling_steps}".lower()
    if s.cfg_scale > 1.0:
        name += f"-interval{s.cfg_interval_start:.2f}-cfg{s.cfg_scale:.2f}-shift{s.timestep_shift:.2f}"
    if s.mode != ref.mode:
        name += f"-{s.mode.lower()}"
    if cfg.transport.objective != TransportConfig().objective:
        name += f"-{cfg.transport.objective}"
    if s.cfg_channels != ref.cfg_channels and s.cfg_scale > 1.0:
        name += f"-cfgch{s.cfg_channels}"
    if s.label_mode != ref.label_mode:
        name += f"-{s.label_mode}"
    if s.precision != ref.precision:
        name += f"-{s.precision}"
    if cfg.train.global_seed != TrainConfig().global_seed:
        name += f"-seed{cfg.train.global_seed}"
    return name


def demo_labels(num_classes: int) -> Tuple[List[int], bool]:
    """The reference's 8 demo classes; with fewer than 1000 classes each is taken modulo
    num_classes. Returns (labels, remapped)."""
    labels = [c % num_classes for c in DEMO_LABELS]
    return labels, labels != list(DEMO_LABELS)


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


def save_png(image: np.ndarray, path: Path) -> None:
    """uint8 (H, W, 3) -> PNG, atomically (a killed run never leaves a truncated PNG)."""
    atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


class PNGWriter:
    """Writes a batch's PNGs on background threads while the next batch samples (encoding one
    256 px PNG took 124 ms on a loaded 2-core VM: for a GPU that samples tens of images per
    second this is as long as the sampling itself). At most one batch
    is in flight: `submit` first waits for the previous one, so memory stays bounded and a write
    error surfaces at the next batch (or at `close`)."""

    def __init__(self, workers: int = 2):
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="png")
        self.pending: List[Future] = []

    def submit(self, images: Sequence[np.ndarray], paths: Sequence[Path]) -> None:
        self.wait()
        self.pending = [self.pool.submit(save_png, image, path) for image, path in zip(images, paths)]

    def wait(self) -> None:
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.pool.shutdown(wait=True)

    def __enter__(self) -> "PNGWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_model(cfg, device: torch.device) -> torch.nn.Module:
    from models.checkpoint import load_lightningdit_checkpoint

    model = build_model(cfg, training=False)  # ckpt_path was checked by check_sampling_inputs
    load_lightningdit_checkpoint(cfg.ckpt_path, model, prefer_ema=True)  # strict, EMA preferred
    model = model.to(device).eval()
    if should_compile(cfg, device):  # model.compile: auto compiles on CUDA (as the reference)
        model.compile_blocks()
    return select_kernels(model)  # CPU kernels only for an eager model on the CPU


def input_digests(model: torch.nn.Module, decoder) -> dict:
    """Content hashes of what the images are made from (utils/digest.py): the weights actually
    loaded into the model, the tokenizer's weights and the latent stats (None when unused)."""
    vae = getattr(decoder.vae, "model", decoder.vae)
    return {
        "ckpt_sha256": module_digest(model),
        "vae_sha256": module_digest(vae) if isinstance(vae, torch.nn.Module) else None,
        "latent_stats_sha256": tensors_digest({"mean": decoder.mean, "std": decoder.std})
        if decoder.mean is not None else None,
    }


def protocol(cfg, world_size: int, device: torch.device, digests: Optional[dict] = None) -> dict:
    """Every setting the samples depend on; `digests` (input_digests) binds them to the inputs."""
    s = cfg.sample
    ckpt = Path(cfg.ckpt_path)
    return {
        "ckpt_path": str(ckpt.resolve()), "ckpt_bytes": ckpt.stat().st_size,
        "model_type": cfg.model.model_type, "objective": cfg.transport.objective, "mode": s.mode,
        "sampler": s.sampling_method,
        "steps": s.num_sampling_steps, "atol": s.atol, "rtol": s.rtol,
        "cfg_scale": s.cfg_scale, "cfg_interval": s.cfg_scale > 1.0,
        "cfg_interval_start": s.cfg_interval_start, "timestep_shift": s.timestep_shift,
        "cfg_channels": s.cfg_channels, "label_mode": s.label_mode, "seed": cfg.train.global_seed,
        "fid_num": s.fid_num, "precision": s.precision, "skip_uncond_outside_interval": s.skip_uncond_outside_interval,
        "latent_norm": cfg.data.latent_norm, "latent_multiplier": cfg.data.latent_multiplier,
        "latent_stats": str(Path(cfg.data.data_path) / "latents_stats.pt") if cfg.data.latent_norm else None,
        "vae": cfg.vae.config_path or cfg.vae.model_name,
        "world_size": world_size, "per_proc_batch_size": s.per_proc_batch_size,
        "torch_version": torch.__version__, "device": device.type,
        **(digests or {}),
    }


def check_protocol(path: Path, new: dict) -> None:
    """Refuse to resume into a folder sampled with different settings or different inputs (by
    content: weights and stats, not file names or sizes)."""
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    changed = [k for k in _INPUT_DIGESTS if k in new and k in old and old[k] != new[k]]
    if changed:
        what = ", ".join(f"{_INPUT_DIGESTS[k]} ({_input_name(new, k)}: sha256 {str(old[k])[:12]} -> "
                         f"{str(new[k])[:12]})" for k in changed)
        raise ValueError(f"{path.parent}: changed since these samples were made: {what}; use another "
                         "train.exp_name, or train.overwrite=true to move the old samples aside")
    unverified = [k for k in _INPUT_DIGESTS if k in new and k not in old]
    if unverified:
        logger.warning("%s predates content hashes: %s not verified (only paths and sizes are compared)",
                       path, ", ".join(_INPUT_DIGESTS[k] for k in unverified))
    free = _PROTOCOL_FREE + (_PROTOCOL_LOCATION if "ckpt_sha256" in old else ()) + tuple(_INPUT_DIGESTS)
    old.setdefault("objective", TransportConfig().objective)  # folders sampled before the key existed
    diff = [k for k in new if k not in free and old.get(k) != new[k]]
    if diff:
        raise ValueError(f"{path}: existing samples were made with different settings "
                         f"({', '.join(f'{k}: {old.get(k)!r} -> {new[k]!r}' for k in diff)}); "
                         "use another train.exp_name, or train.overwrite=true to move the old samples aside")
    changed = [k for k in _PROTOCOL_FREE if old.get(k) != new[k]]
    if changed:
        logger.warning("resuming with changed %s: images already written stay, new ones may differ "
                       "in float rounding from an uninterrupted run", ", ".join(changed))


def _input_name(proto: dict, key: str) -> str:
    return {"ckpt_sha256": proto.get("ckpt_path"), "vae_sha256": proto.get("vae"),
            "latent_stats_sha256": proto.get("latent_stats")}[key]


def claim_sample_folder(cfg, folder: Path, proto: dict) -> None:
    """Lock the folder, move it aside first with `train.overwrite`, refuse a protocol mismatch,
    record the protocol (main process; training/rundir.py)."""
    RunLock(folder).acquire()
    try:
        if cfg.train.overwrite and (folder / "protocol.json").is_file():
            stamp = timestamp()
            release_run_dir(folder)
            for old in (folder, Path(f"{folder}.npz"), Path(f"{folder}_adm_eval.json")):
                move_aside(old, stamp)
            RunLock(folder).acquire()
        check_protocol(folder / "protocol.json", proto)
    except ValueError:
        release_run_dir(folder)
        raise
    atomic_write_json(proto, folder / "protocol.json")
    logger.info("sampling protocol: %s", json.dumps(proto))


#################################################################################
#                                     Modes                                     #
#################################################################################

def run_demo(cfg, args, rt, model, decoder) -> Path:
    """The reference's demo grid, with its overrides stated loudly (or the config's settings)."""
    s = cfg.sample
    if args.demo_config_sampling:
        cfg_scale, interval, start, shift = s.cfg_scale, True, s.cfg_interval_start, s.timestep_shift
        logger.info("demo grid with the config's sampling settings (--demo-config-sampling)")
    else:
        cfg_scale, interval, start, shift = DEMO_CFG_SCALE, False, DEMO_INTERVAL_START, DEMO_SHIFT
        logger.warning("demo mode uses the reference's overrides: cfg_scale %.2f -> %.1f, cfg interval "
                       "off (start %.3f ignored), timestep_shift %.2f -> %.1f", s.cfg_scale, DEMO_CFG_SCALE,
                       s.cfg_interval_start, s.timestep_shift, DEMO_SHIFT)
    if args.demo_classes:
        labels = [int(c) for c in args.demo_classes.split(",")]
        if len(labels) != 8 or not all(0 <= c < cfg.data.num_classes for c in labels):
            raise SystemExit(f"error: --demo-classes needs 8 indices in [0, {cfg.data.num_classes}), "
                             f"got {args.demo_classes!r}")
    else:
        labels, remapped = demo_labels(cfg.data.num_classes)
        if remapped:
            logger.warning("data.num_classes = %d < 1000: demo classes taken modulo num_classes -> %s",
                           cfg.data.num_classes, labels)
    names = class_names(cfg.data.num_classes, args.class_names)
    for i, c in enumerate(labels):
        logger.info("demo image %d: class %d%s", i, c, f" ({names[c]})" if names else "")
    sampler = LatentSampler(cfg, model, cfg_scale=cfg_scale, interval=interval,
                            interval_start=start, shift=shift)
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


def precision_context(cfg, device: torch.device):
    if cfg.sample.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def run_fid_sampling(cfg, args, rt, model, decoder) -> Path:
    """Write fid_num PNGs (resumable), then `{folder}.npz` (arr_0 images, arr_1 labels)."""
    s, seed = cfg.sample, cfg.train.global_seed
    exp_name = cfg.train.exp_name or cfg.model.model_type.replace("/", "-")
    folder = Path(cfg.train.output_dir) / exp_name / sample_folder_name(cfg)
    proto = protocol(cfg, rt.world_size, rt.device, input_digests(model, decoder) if rt.is_main else None)
    decide_on_main(rt.accelerator, lambda: claim_sample_folder(cfg, folder, proto))
    rt.accelerator.wait_for_everyone()

    total = s.fid_num
    plan = work_plan(total, s.per_proc_batch_size, rt.world_size, rt.rank)
    c, h = cfg.model.in_chans, latent_size(cfg)
    sampler = LatentSampler(cfg, model)
    done_before = sum(all((folder / f"{i:06d}.png").is_file() for i in ids) for ids in plan)
    logger.info("writing %d images to %s: %d iterations of %d x %d processes (%d already done on rank 0)",
                total, folder, len(plan), s.per_proc_batch_size, rt.world_size, done_before)
    from tqdm import tqdm
    tic, written = time.time(), 0
    with PNGWriter() as writer:  # PNGs of batch k are written while batch k + 1 samples
        for k, ids in enumerate(tqdm(plan, disable=not rt.is_main, desc="sampling", dynamic_ncols=True)):
            if not ids or all((folder / f"{i:06d}.png").is_file() for i in ids):
                continue
            z = sample_noise(ids, (c, h, h), seed).to(rt.device)
            y = sample_labels(ids, cfg.data.num_classes, seed, s.label_mode, total).to(rt.device)
            with precision_context(cfg, rt.device):
                x = sampler(z, y, sde_seed=derive_seed(seed, STREAM_SDE, ids[0]))
            writer.submit(decoder(x), [folder / f"{i:06d}.png" for i in ids])
            written += len(ids)
    elapsed = time.time() - tic
    logger.info("rank %d wrote %d images in %.1f s (%.2f images/s)%s", rt.rank, written, elapsed,
                written / max(elapsed, 1e-9),
                f"; {sampler.num_cond_only}/{sampler.num_calls} evaluations skipped the unconditional half"
                if sampler.num_calls else "")
    rt.accelerator.wait_for_everyone()

    npz = Path(f"{folder}.npz")
    if rt.is_main:
        from evaluation.npz import create_npz_from_sample_folder
        labels = sample_labels(range(total), cfg.data.num_classes, seed, s.label_mode, total).numpy()
        atomic_write(folder / "labels.npy", lambda tmp: _save_npy(tmp, labels))
        create_npz_from_sample_folder(str(folder), total)
        logger.info("saved %s (arr_0 %d images, arr_1 labels)", npz, total)
        fid_step(cfg, args, npz)
        release_run_dir(folder)
    rt.accelerator.wait_for_everyone()
    return folder


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save(str) would append ".npy"
        np.save(f, array)


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
    try:  # every named input, before any process group, network or output folder exists
        check_sampling_inputs(cfg)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    # The reference's seed rule: torch.manual_seed(global_seed * world_size + rank). Our images
    # use per-image generators on top of that (datasets/order.py).
    rt = setup_runtime(run_dir=None, seed=cfg.train.global_seed, name="inference")
    if args.demo and not rt.is_main:
        return None
    with torch.no_grad():  # scoped, not global: main() is also called in-process (tests)
        return _sample(cfg, args, rt)


def _sample(cfg, args, rt):
    """Build model and decoder, then run demo or FID sampling (called under no_grad)."""
    model = load_model(cfg, rt.device)
    decoder = Decoder(cfg, rt.device, random_init=args.vae_random_init)
    logger.info("model %s from %s, sampler %s %s x%d, cfg %.2f (interval from %.3f, channels %s), "
                "shift %.2f, precision %s, processes %d", cfg.model.model_type, cfg.ckpt_path,
                cfg.sample.mode, cfg.sample.sampling_method, cfg.sample.num_sampling_steps,
                cfg.sample.cfg_scale, cfg.sample.cfg_interval_start, cfg.sample.cfg_channels,
                cfg.sample.timestep_shift, cfg.sample.precision, rt.world_size)
    if args.demo:
        return run_demo(cfg, args, rt, model, decoder)
    return run_fid_sampling(cfg, args, rt, model, decoder)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, WriteError) as err:  # bad input, folder in use or made from
        raise SystemExit(f"error: {err}") from None               # other inputs, disk full: one line

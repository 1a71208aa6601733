"""The FID sampling protocol: every setting and input the images of a sample folder depend on.

`protocol(cfg, ...)` is the dict written to `{folder}/protocol.json`; the folder's name
(`folder_name`) and the resume check (`check_protocol`) are derived from that dict alone, so
what names a folder and what a resumed run must match cannot drift apart. Inputs are bound by
content (`input_digests`: sha256 of the weights as loaded and of the latent stats, utils/digest.py),
not by file name or size; a guide network (AutoGuidance) and SFD's second stats file have their
own entries.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

import torch

from sampling.loop import adaptive_method, label_mode
from sampling.networks import autoguidance_active, guide_config, guide_config_path
from training.rundir import RunLock, move_aside, release_run_dir, timestamp
from utils.digest import module_digest, tensors_digest
from utils.fileio import atomic_write_json

logger = logging.getLogger("inference")

# Entries a resumed run may change without changing any image (beyond float rounding; with an
# adaptive ODE solver a changed batch size moves the images within its tolerance: sampling/loop.py).
FREE = ("world_size", "per_proc_batch_size", "torch_version", "device")
# Content hashes of the inputs: what each names in an error, the entry that locates the input,
# and the location entries that may change when the hash is recorded (same weights, other file).
INPUT_DIGESTS = {
    "ckpt_sha256": ("checkpoint weights", "ckpt_path", ("ckpt_path", "ckpt_bytes")),
    "vae_sha256": ("tokenizer weights", "vae", ()),
    "latent_stats_sha256": ("latent stats", "latent_stats", ()),
    "latent_sv_stats_sha256": ("semantic latent stats", "latent_sv_stats", ()),
    "guide_sha256": ("guide weights", "guide_ckpt_path", ("guide_ckpt_path", "guide_config")),
}
# Entries added after the first folders were written, with the value those folders were sampled with.
ADDED = {"objective": "rectified_flow", "reverse": False, "autoguidance": False, "guide_config": None,
         "guide_ckpt_path": None, "guide_model_type": None, "cfg_scale_tex": None, "cfg_scale_sem": None,
         "interval_mode": "both", "semantic_chans": 0, "semfirst_delta_t": 0.0, "latent_sv_norm": False,
         "latent_sv_stats": None, "diffusion_form": "SBDM", "diffusion_norm": 1.0, "last_step": "Mean",
         "last_step_size": 0.04}
# The reference's settings: a folder name gets a suffix for each entry that differs.
REFERENCE = {"mode": "ODE", "objective": "rectified_flow", "label_mode": "uniform", "precision": "fp32",
             "seed": 0, "cfg_channels": "3", "interval_mode": "both"}


def settings(cfg) -> dict:
    """The config's part of the protocol: every setting the images depend on."""
    s, m = cfg.sample, cfg.model
    guided = s.cfg_scale > 1.0
    auto = autoguidance_active(cfg)
    guide = guide_config(cfg) if auto else None
    stats = Path(cfg.data.data_path)
    return {
        "ckpt_path": _absolute(cfg.ckpt_path) if cfg.ckpt_path else None,
        "model_type": m.model_type, "objective": cfg.transport.objective, "mode": s.mode,
        "sampler": s.sampling_method, "steps": s.num_sampling_steps, "atol": s.atol, "rtol": s.rtol,
        "reverse": s.reverse, "cfg_scale": s.cfg_scale, "cfg_interval": guided,
        "cfg_interval_start": s.cfg_interval_start, "timestep_shift": s.timestep_shift,
        "cfg_channels": s.cfg_channels, "cfg_scale_tex": s.cfg_scale_tex, "cfg_scale_sem": s.cfg_scale_sem,
        "interval_mode": m.semfirst_infer_interval_mode, "semantic_chans": m.semantic_chans,
        "semfirst_delta_t": m.semfirst_delta_t, "autoguidance": auto,
        "guide_config": _absolute(guide_config_path(s.autoguidance_config)) if auto else None,
        "guide_ckpt_path": _absolute(guide.ckpt_path) if auto else None,
        "guide_model_type": guide.model.model_type if auto else None,
        "label_mode": label_mode(cfg), "seed": cfg.train.global_seed, "fid_num": s.fid_num,
        "precision": s.precision, "skip_uncond_outside_interval": s.skip_uncond_outside_interval,
        "diffusion_form": s.diffusion_form, "diffusion_norm": s.diffusion_norm, "last_step": s.last_step,
        "last_step_size": s.last_step_size,
        "latent_norm": cfg.data.latent_norm, "latent_multiplier": cfg.data.latent_multiplier,
        "latent_stats": str(stats / "latents_stats.pt") if cfg.data.latent_norm else None,
        "latent_sv_norm": cfg.data.latent_sv_norm,
        "latent_sv_stats": str(stats / "latents_sv_stats.pt") if cfg.data.latent_sv_norm else None,
        "vae": cfg.vae.config_path or cfg.vae.model_name,
    }


def _absolute(path) -> str:
    """The absolute path as named, symlinks kept: the checkpoint's own name (SFD's 4000000.pt linked
    to a shared file) names the folder, not its target's."""
    return os.path.abspath(path)


def protocol(cfg, world_size: int, device: torch.device, digests: Optional[dict] = None) -> dict:
    """`settings(cfg)`, the run's shape and versions, and the inputs' content hashes
    (`input_digests`)."""
    ckpt = Path(cfg.ckpt_path)
    return {**settings(cfg), "ckpt_bytes": ckpt.stat().st_size, "world_size": world_size,
            "per_proc_batch_size": cfg.sample.per_proc_batch_size, "torch_version": torch.__version__,
            "device": device.type, **(digests or {})}


def input_digests(model: torch.nn.Module, decoder, guide: Optional[torch.nn.Module] = None) -> dict:
    """Content hashes of what the images are made from: the weights actually loaded into the
    model (and the guide), the tokenizer's weights and both latent stats files, texture and
    semantic (SFD; None when unused)."""
    vae = getattr(decoder.vae, "model", decoder.vae)
    norm = decoder.normalizer
    out = {
        "ckpt_sha256": module_digest(model),
        "vae_sha256": module_digest(vae) if isinstance(vae, torch.nn.Module) else None,
        "latent_stats_sha256": _stats_digest(norm.mean, norm.std),
    }
    if norm.sv_mean is not None:
        out["latent_sv_stats_sha256"] = _stats_digest(norm.sv_mean, norm.sv_std)
    if guide is not None:
        out["guide_sha256"] = module_digest(guide)
    return out


def _stats_digest(mean: Optional[torch.Tensor], std: Optional[torch.Tensor]) -> Optional[str]:
    """The hash of a stats file's {'mean', 'std'} as stored, (1, C, 1, 1) float32 (the normalizer
    keeps (C, 1, 1)): the same value folders sampled before the normalizer recorded."""
    if mean is None:
        return None
    return tensors_digest({"mean": mean.unsqueeze(0), "std": std.unsqueeze(0)})


def folder_name(proto: dict) -> str:
    """The reference's folder name, plus a suffix for each setting that differs from the
    reference's (REFERENCE) or that the reference lacks.

    `{model_type /->-}-ckpt-{ckpt stem}-{sampler}-{steps}` lower-cased, with
    `-interval{start:.2f}-cfg{scale:.2f}-shift{shift:.2f}` when cfg_scale > 1 (the reference's);
    AutoGuidance adds `-ag{guide ckpt stem}`, per-part scales `-cfgsem{w:.2f}-cfgtex{w:.2f}` and the
    interval mode `-cfgmode{mode}` (SFD's suffixes).
    """
    p = {**ADDED, **proto}
    ckpt = Path(p["ckpt_path"]).stem if p["ckpt_path"] else "none"
    guided = p["cfg_scale"] > 1.0
    name = f"{p['model_type'].replace('/', '-')}-ckpt-{ckpt}-{p['sampler']}-{p['steps']}".lower()
    if guided:
        name += f"-interval{p['cfg_interval_start']:.2f}-cfg{p['cfg_scale']:.2f}-shift{p['timestep_shift']:.2f}"
        if p["interval_mode"] != REFERENCE["interval_mode"]:
            name += f"-cfgmode{p['interval_mode']}"
        if p["autoguidance"]:
            name += f"-ag{Path(p['guide_ckpt_path']).stem}"
        if p["cfg_scale_tex"] is not None or p["cfg_scale_sem"] is not None:
            sem, tex = (p[k] if p[k] is not None else p["cfg_scale"] for k in ("cfg_scale_sem", "cfg_scale_tex"))
            name += f"-cfgsem{sem:.2f}-cfgtex{tex:.2f}"
    if p["mode"] != REFERENCE["mode"]:
        name += f"-{p['mode'].lower()}"
    if p["reverse"]:
        name += "-reverse"
    if p["objective"] != REFERENCE["objective"]:
        name += f"-{p['objective']}"
    if p["cfg_channels"] != REFERENCE["cfg_channels"] and guided:
        name += f"-cfgch{p['cfg_channels']}"
    if p["label_mode"] != REFERENCE["label_mode"]:
        name += f"-{p['label_mode']}"
    if p["precision"] != REFERENCE["precision"]:
        name += f"-{p['precision']}"
    if p["seed"] != REFERENCE["seed"]:
        name += f"-seed{p['seed']}"
    return name


def sample_folder(cfg, proto: dict) -> Path:
    """`{train.output_dir}/{train.exp_name or model type}/{folder_name(proto)}`."""
    exp_name = cfg.train.exp_name or cfg.model.model_type.replace("/", "-")
    return Path(cfg.train.output_dir) / exp_name / folder_name(proto)


def check_protocol(path: Path, new: dict) -> None:
    """Refuse to resume into a folder sampled with different settings or different inputs (by
    content: weights and stats, not file names or sizes)."""
    if not path.is_file():
        return
    old = {**ADDED, **json.loads(path.read_text())}  # folders written before an entry existed
    changed = [k for k in INPUT_DIGESTS if k in new and k in old and old[k] != new[k]]
    if changed:
        what = ", ".join(f"{INPUT_DIGESTS[k][0]} ({new.get(INPUT_DIGESTS[k][1])}: sha256 {str(old[k])[:12]} -> "
                         f"{str(new[k])[:12]})" for k in changed)
        raise ValueError(f"{path.parent}: changed since these samples were made: {what}; use another "
                         "train.exp_name, or train.overwrite=true to move the old samples aside")
    unverified = [k for k in INPUT_DIGESTS if k in new and k not in old]
    if unverified:
        logger.warning("%s predates content hashes: %s not verified (only paths and sizes are compared)",
                       path, ", ".join(INPUT_DIGESTS[k][0] for k in unverified))
    free = FREE + tuple(INPUT_DIGESTS) + tuple(e for k, (_, _, located) in INPUT_DIGESTS.items()
                                               if k in old for e in located)
    diff = [k for k in new if k not in free and old.get(k) != new[k]]
    if diff:
        raise ValueError(f"{path}: existing samples were made with different settings "
                         f"({', '.join(f'{k}: {old.get(k)!r} -> {new[k]!r}' for k in diff)}); "
                         "use another train.exp_name, or train.overwrite=true to move the old samples aside")
    changed = [k for k in FREE if old.get(k) != new[k]]
    if changed:
        batch = "per_proc_batch_size" in changed and adaptive_method(new["mode"], new["sampler"], new["objective"])
        logger.warning("resuming with changed %s: images already written stay, new ones may differ %s from an "
                       "uninterrupted run", ", ".join(changed),
                       f"within {new['sampler']}'s tolerance (its step sizes depend on the batch)" if batch
                       else "in float rounding")


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

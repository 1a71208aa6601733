"""ADM's `evaluator.py REF SAMPLE` (openai/guided-diffusion, commit 22e0df8) in PyTorch/NumPy:
Inception activations of both batches, then IS, FID, sFID, precision and recall.

The protocol is described in docs/adm_evaluation.md; the metric arithmetic is in
`evaluation.adm_metrics`, the Inception network in `evaluation.inception`.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from evaluation.adm_metrics import compute_statistics, frechet_distance, inception_score, precision_recall
from evaluation.inception import InceptionFeatureExtractor, compute_activations
from evaluation.npz import read_batch_images, read_batch_statistics
from utils.fileio import atomic_write_json

logger = logging.getLogger(__name__)

PR_NEIGHBOURS = 3  # ADM's k of the precision / recall manifolds
MIN_IMAGES = {"FID/sFID (covariance)": 2, "precision/recall (k=3 neighbours)": PR_NEIGHBOURS + 1}


def check_batches(ref_path: str, sample_path: str, allow_mismatch: bool = False) -> list[str]:
    """Compare the two batches' headers (nothing else is read) against the protocol: uint8
    images, the same image size, enough images for every metric. The headers themselves are
    checked against the files first (evaluation/npz.py: a batch cannot declare more than it holds).

    A mismatch raises a one-line ValueError; with `allow_mismatch` it is logged as a loud warning
    and returned (the evaluator records the list in its JSON). Fewer than 2 images (no covariance)
    always raises.
    """
    readers = {"reference": read_batch_images(ref_path, any_dtype=True),
               "sample": read_batch_images(sample_path, any_dtype=True)}
    problems = []
    for name, r in readers.items():
        if len(r) < MIN_IMAGES["FID/sFID (covariance)"]:
            raise ValueError(f"{name} batch {r.path}: {len(r)} image(s); FID needs at least 2")
        if r.dtype is not None and r.dtype != np.uint8:
            problems.append(f"{name} batch {r.path}: arr_0 is {r.dtype}, not uint8 images in 0..255 "
                            "(values are rounded and clipped to uint8)")
        for metric, need in MIN_IMAGES.items():
            if len(r) < need:
                problems.append(f"{name} batch {r.path}: {len(r)} images, {metric} needs at least {need} "
                                "(not computed)")
    ref, smp = readers["reference"], readers["sample"]
    if tuple(ref.shape[1:3]) != tuple(smp.shape[1:3]):
        problems.append(f"image sizes differ: reference {ref.shape[1]}x{ref.shape[2]} ({ref.path}) vs "
                        f"samples {smp.shape[1]}x{smp.shape[2]} ({smp.path})")
    if problems and not allow_mismatch:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(f"protocol mismatch: {problems[0]}{more}; pass --allow-mismatch to evaluate anyway")
    for problem in problems:
        logger.warning("PROTOCOL MISMATCH (evaluating anyway: --allow-mismatch): %s", problem)
    return problems


def _as_uint8(batches):
    """Batches of another dtype rounded and clipped to uint8 (only under --allow-mismatch)."""
    for batch in batches:
        yield batch if batch.dtype == np.uint8 else np.clip(np.rint(batch), 0, 255).astype(np.uint8)


def statistics(acts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ADM's FID and sFID statistics of Inception activations: mu, sigma of the pool features and
    mu_s, sigma_s of the spatial ones (the entries an ADM reference batch stores)."""
    mu, sigma = compute_statistics(acts["pool"])
    mu_s, sigma_s = compute_statistics(acts["spatial"])
    return {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}


def distances(sample: dict[str, np.ndarray], reference: dict[str, np.ndarray], method: str = "sqrtm") -> dict:
    """FID and sFID between two sets of `statistics` (ADM's argument order: sample first)."""
    return {"fid": frechet_distance(sample["mu"], sample["sigma"], reference["mu"], reference["sigma"], method=method),
            "sfid": frechet_distance(sample["mu_s"], sample["sigma_s"], reference["mu_s"], reference["sigma_s"],
                                     method=method)}


def reference_statistics(path: str, extractor: InceptionFeatureExtractor, batch_size: int = 64) -> dict:
    """A reference batch's `statistics`: the stored ones, else computed once from its images."""
    stats = read_batch_statistics(path)
    if stats is not None:
        return stats
    reader = read_batch_images(path)
    return statistics(compute_activations(reader.iter_batches(batch_size), extractor, batch_size,
                                          keys=("pool", "spatial"), total=len(reader), desc="reference"))


def image_metrics(images: np.ndarray, extractor: InceptionFeatureExtractor, reference: dict,
                  batch_size: int = 64, method: str = "eigh") -> dict:
    """FID, sFID and Inception Score of uint8 images (N, H, W, 3) against reference `statistics`
    (evaluation during training: the Frechet trace by the "eigh" form, several times faster than
    sqrtm at 2048-d, the same to ~1e-8)."""
    acts = compute_activations(images, extractor, batch_size, keys=("pool", "spatial", "probs"), total=len(images),
                               desc="eval")
    return {**distances(statistics(acts), reference, method), "inception_score": inception_score(acts["probs"])}


def _batch_features(path: str, extractor: InceptionFeatureExtractor, batch_size: int,
                    keys: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
    """Activations of a batch's arr_0 and its statistics (stored ones when present)."""
    reader = read_batch_images(path, any_dtype=True)  # dtype: checked by check_batches
    acts = compute_activations(_as_uint8(reader.iter_batches(batch_size)), extractor, batch_size, keys=keys,
                               total=len(reader), desc=os.path.basename(path))
    stats = read_batch_statistics(path)
    if stats is not None:
        return acts, stats, "stored"
    return acts, statistics(acts), "computed"


def evaluate(ref_path: str, sample_path: str, extractor: InceptionFeatureExtractor, batch_size: int = 64,
             distance_dtype: str = "float16", pr_row_batch_size: int = 10000, pr_col_batch_size: int = 10000,
             device: str | torch.device | None = None, fid_method: str = "sqrtm",
             allow_mismatch: bool = False, protocol_warnings: list[str] | None = None) -> dict:
    """ADM's `evaluator.py REF SAMPLE`: IS, FID, sFID, precision, recall (plus provenance).

    The batches' headers are checked first (`check_batches`; skipped when the caller passes the
    `protocol_warnings` it already got)."""
    if protocol_warnings is None:
        protocol_warnings = check_batches(ref_path, sample_path, allow_mismatch)
    logger.info("computing reference batch activations: %s", ref_path)
    ref_acts, ref_stats, ref_src = _batch_features(ref_path, extractor, batch_size, ("pool", "spatial"))
    logger.info("computing sample batch activations: %s", sample_path)
    smp_acts, smp_stats, smp_src = _batch_features(sample_path, extractor, batch_size, ("pool", "spatial", "probs"))
    logger.info("computing evaluations (reference statistics %s, sample statistics %s)", ref_src, smp_src)
    precision = recall = None
    if min(len(ref_acts["pool"]), len(smp_acts["pool"])) > PR_NEIGHBOURS:
        precision, recall = precision_recall(ref_acts["pool"], smp_acts["pool"], nhood_size=PR_NEIGHBOURS,
                                             row_batch_size=pr_row_batch_size, col_batch_size=pr_col_batch_size,
                                             distance_dtype=distance_dtype, device=device)
    return {
        "inception_score": inception_score(smp_acts["probs"]),
        **distances(smp_stats, ref_stats, fid_method),
        "precision": precision,
        "recall": recall,
        "num_ref_images": len(ref_acts["pool"]),
        "num_sample_images": len(smp_acts["pool"]),
        "ref_statistics": ref_src,
        "sample_statistics": smp_src,
        "pr_distance_dtype": distance_dtype,
        "fid_method": fid_method,
        "inception_weights": extractor.weights_path,
        "random_init": extractor.random_init,
        "ref_batch": os.path.abspath(ref_path),
        "sample_batch": os.path.abspath(sample_path),
        "allow_mismatch": bool(protocol_warnings),
        "protocol_warnings": list(protocol_warnings),
    }


def default_json_path(sample_path: str) -> str:
    """`samples/foo.npz` -> `samples/foo_adm_eval.json`."""
    root, ext = os.path.splitext(sample_path)
    return (root if ext == ".npz" else sample_path) + "_adm_eval.json"


def evaluate_files(ref_path: str, sample_path: str, inception_weights: str | None = None,
                   device: str | None = None, output: str | None = None, **kwargs) -> dict:
    """Evaluate SAMPLE against REF with the Inception weights file (default: $ADM_INCEPTION_WEIGHTS)
    and write the results as JSON (default: `default_json_path(sample_path)`), atomically."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # Headers first: a mismatched pair fails before the weights load and before any image is read.
    warnings = check_batches(ref_path, sample_path, kwargs.pop("allow_mismatch", False))
    extractor = InceptionFeatureExtractor(inception_weights, device=device,
                                          random_init=kwargs.pop("random_init", False))
    results = evaluate(ref_path, sample_path, extractor, device=device, protocol_warnings=warnings, **kwargs)
    out = output or default_json_path(sample_path)
    atomic_write_json(results, out)
    logger.info("wrote %s", out)
    return results

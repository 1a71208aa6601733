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


def _batch_features(path: str, extractor: InceptionFeatureExtractor, batch_size: int,
                    keys: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
    """Activations of a batch's arr_0 and its statistics (stored ones when present)."""
    reader = read_batch_images(path)
    acts = compute_activations(reader.iter_batches(batch_size), extractor, batch_size, keys=keys,
                               total=len(reader), desc=os.path.basename(path))
    stats = read_batch_statistics(path)
    if stats is not None:
        return acts, stats, "stored"
    mu, sigma = compute_statistics(acts["pool"])
    mu_s, sigma_s = compute_statistics(acts["spatial"])
    return acts, {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}, "computed"


def evaluate(ref_path: str, sample_path: str, extractor: InceptionFeatureExtractor, batch_size: int = 64,
             distance_dtype: str = "float16", pr_row_batch_size: int = 10000, pr_col_batch_size: int = 10000,
             device: str | torch.device | None = None, fid_method: str = "sqrtm") -> dict:
    """ADM's `evaluator.py REF SAMPLE`: IS, FID, sFID, precision, recall (plus provenance)."""
    logger.info("computing reference batch activations: %s", ref_path)
    ref_acts, ref_stats, ref_src = _batch_features(ref_path, extractor, batch_size, ("pool", "spatial"))
    logger.info("computing sample batch activations: %s", sample_path)
    smp_acts, smp_stats, smp_src = _batch_features(sample_path, extractor, batch_size, ("pool", "spatial", "probs"))
    logger.info("computing evaluations (reference statistics %s, sample statistics %s)", ref_src, smp_src)
    precision, recall = precision_recall(ref_acts["pool"], smp_acts["pool"], row_batch_size=pr_row_batch_size,
                                         col_batch_size=pr_col_batch_size, distance_dtype=distance_dtype,
                                         device=device)
    return {
        "inception_score": inception_score(smp_acts["probs"]),
        "fid": frechet_distance(smp_stats["mu"], smp_stats["sigma"], ref_stats["mu"], ref_stats["sigma"],
                                method=fid_method),
        "sfid": frechet_distance(smp_stats["mu_s"], smp_stats["sigma_s"], ref_stats["mu_s"], ref_stats["sigma_s"],
                                 method=fid_method),
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
    extractor = InceptionFeatureExtractor(inception_weights, device=device,
                                          random_init=kwargs.pop("random_init", False))
    results = evaluate(ref_path, sample_path, extractor, device=device, **kwargs)
    out = output or default_json_path(sample_path)
    atomic_write_json(results, out)
    logger.info("wrote %s", out)
    return results

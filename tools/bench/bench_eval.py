"""Time the ADM metric arithmetic of tools/adm_evaluator.py on random features (no Inception).

ADM's evaluator spends minutes on a GPU for 50k samples; this measures our statistics, Frechet
distance (ADM's sqrtm and the symmetric eigh form), Inception Score and the blocked-matmul k-NN
precision/recall for 50k samples x 10k references of 2048-d features, and a baseline alongside:
ADM's own NumPy steps (np.cov; full distance rows + np.partition) at a subset size where they fit.
Features are pool_3-like (non-negative, squared norms ~500) so float16 distances do not overflow.
Prints one JSON line.

    python tools/bench/bench_eval.py [--num-samples 50000] [--num-ref 10000] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import numpy as np
import torch


from evaluation.adm_metrics import compute_statistics, frechet_distance, inception_score, precision_recall


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _numpy_pr_baseline(ref: np.ndarray, smp: np.ndarray, k: int = 3) -> tuple[float, float]:
    """ADM's ManifoldEstimator steps in float32 NumPy: whole distance rows, np.partition."""
    def dist(u, v):
        return np.maximum((u * u).sum(1)[:, None] - 2 * (u @ v.T) + (v * v).sum(1)[None, :], 0)
    r_ref = np.partition(dist(ref, ref), list(range(k + 1)), axis=1)[:, k]
    r_smp = np.partition(dist(smp, smp), list(range(k + 1)), axis=1)[:, k]
    d = dist(ref, smp)
    return float((d <= r_ref[:, None]).any(0).mean()), float((d <= r_smp[None, :]).any(1).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=50000)
    p.add_argument("--num-ref", type=int, default=10000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--classes", type=int, default=1008)
    p.add_argument("--pr-modes", default="float16,float32", help="comma list of distance dtypes to time")
    p.add_argument("--baseline-size", type=int, default=4000, help="points per set for the NumPy P/R baseline")
    p.add_argument("--skip-sqrtm", action="store_true", help="skip ADM's sqrtm FID (the slow step on CPU)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    rng = np.random.default_rng(0)
    smp = rng.gamma(1.0, 0.35, (args.num_samples, args.dim)).astype(np.float32)
    ref = rng.gamma(1.0, 0.35, (args.num_ref, args.dim)).astype(np.float32) * 1.02
    logits = rng.standard_normal((args.num_samples, args.classes)).astype(np.float32) * 3
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    res = {"bench": "adm_eval_metrics", "device": args.device, "torch_threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "num_samples": args.num_samples,
           "num_ref": args.num_ref, "dim": args.dim}

    (mu1, s1), res["statistics_s"] = _timed(compute_statistics, smp)
    _, res["statistics_np_cov_baseline_s"] = _timed(np.cov, smp, rowvar=False)
    mu2, s2 = compute_statistics(ref)
    fid_eigh, res["fid_eigh_s"] = _timed(frechet_distance, mu1, s1, mu2, s2, method="eigh")
    res["fid_eigh"] = fid_eigh
    if not args.skip_sqrtm:
        fid, res["fid_sqrtm_s"] = _timed(frechet_distance, mu1, s1, mu2, s2)
        res["fid_sqrtm"], res["fid_eigh_rel_diff"] = fid, abs(fid_eigh - fid) / abs(fid)
    res["inception_score"], res["inception_score_s"] = _timed(inception_score, probs)

    for mode in args.pr_modes.split(","):
        (prec, rec), res[f"pr_{mode}_s"] = _timed(precision_recall, ref, smp, distance_dtype=mode, device=args.device)
        res[f"pr_{mode}"] = [prec, rec]

    n = args.baseline_size
    ours, res["pr_subset_float32_s"] = _timed(precision_recall, ref[:n], smp[:n], distance_dtype="float32",
                                              device=args.device)
    base, res["pr_subset_numpy_baseline_s"] = _timed(_numpy_pr_baseline, ref[:n], smp[:n])
    res["pr_subset_size"], res["pr_subset_speedup"] = n, res["pr_subset_numpy_baseline_s"] / res["pr_subset_float32_s"]
    res["pr_subset_abs_diff"] = max(abs(a - b) for a, b in zip(ours, base))
    res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(json.dumps({k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()

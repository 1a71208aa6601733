"""ADM's evaluator (FID, sFID, Inception Score, Precision, Recall) in PyTorch/NumPy, without TensorFlow.

Command line for `evaluation.adm` (openai/guided-diffusion `evaluations/evaluator.py`, commit
22e0df8; protocol in docs/adm_evaluation.md). It prints ADM's five lines and writes them, with
provenance, as JSON next to the sample batch:

    python tools/adm_evaluator.py REF.npz SAMPLE.npz [--device cuda] [--batch-size 64]
        [--inception-weights pt_inception-2015-12-05-6726825d.pth] [--pr-distances float16]

Precision/recall distances: `float16` (default) emulates ADM's GPU arithmetic, `float32` is the
plain formula (see `evaluation.adm_metrics.precision_recall`).
"""
from __future__ import annotations

import argparse
import logging
import sys

from evaluation.adm import evaluate_files
from evaluation.adm_metrics import DISTANCE_DTYPES
from utils.fileio import WriteError


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="ADM (guided-diffusion) evaluator in PyTorch: "
                                                 "Inception Score, FID, sFID, Precision, Recall.")
    parser.add_argument("ref_batch", help="reference batch .npz (e.g. VIRTUAL_imagenet256_labeled.npz)")
    parser.add_argument("sample_batch", help="sample batch .npz (uint8 NHWC arr_0)")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=64, help="Inception batch size (ADM: 64)")
    parser.add_argument("--inception-weights", default=None,
                        help="pt_inception-2015-12-05-6726825d.pth (default: $ADM_INCEPTION_WEIGHTS)")
    parser.add_argument("--pr-distances", choices=DISTANCE_DTYPES, default="float16",
                        help="precision/recall distance arithmetic: float16 emulates ADM (default), float32 plain")
    parser.add_argument("--fid-method", choices=("sqrtm", "eigh"), default="sqrtm",
                        help="sqrtm: ADM's computation (default); eigh: symmetric form, faster, ~1e-8 relative")
    parser.add_argument("--pr-batch-size", type=int, default=10000, help="k-NN distance block size (ADM: 10000)")
    parser.add_argument("--output", default=None, help="JSON path (default: SAMPLE_adm_eval.json next to SAMPLE)")
    parser.add_argument("--random-init", action="store_true",
                        help="random Inception weights: tests only, the numbers are NOT a real FID")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="evaluate although the batches break the protocol (different image sizes, "
                             "non-uint8 data, too few images for a metric); each problem is warned about "
                             "and recorded in the JSON under protocol_warnings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)

    results = evaluate_files(args.ref_batch, args.sample_batch, args.inception_weights, args.device,
                             args.output, random_init=args.random_init, batch_size=args.batch_size,
                             distance_dtype=args.pr_distances, pr_row_batch_size=args.pr_batch_size,
                             pr_col_batch_size=args.pr_batch_size, fid_method=args.fid_method,
                             allow_mismatch=args.allow_mismatch)
    if args.random_init:
        print("WARNING: randomly initialised Inception network; these are NOT real FID/IS numbers")
    for problem in results["protocol_warnings"]:
        print(f"WARNING: protocol mismatch (--allow-mismatch), numbers not comparable: {problem}")
    print("Inception Score:", results["inception_score"])
    print("FID:", results["fid"])
    print("sFID:", results["sfid"])
    print("Precision:", results["precision"])
    print("Recall:", results["recall"])
    return results


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, WriteError) as err:  # one line naming the file / mismatch
        raise SystemExit(f"error: {err}") from None

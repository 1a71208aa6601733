"""ADM's metrics (FID, sFID, Inception Score, Precision, Recall) from Inception activations.

Follows openai/guided-diffusion `evaluations/evaluator.py` (commit 22e0df8), specified in
docs/adm_evaluation.md; every "[changes the number]" item there is reproduced here:

- statistics: float32 mean, float64 unbiased covariance of float32 activations (section 5);
- Frechet distance: sqrtm(sigma_sample @ sigma_ref), eps-offset retry when non-finite, imaginary
  check on the diagonal, no clipping at 0 (section 5). Uses plain `scipy.linalg.sqrtm(A)`, not the
  `disp=False` form that SciPy 1.18 removes;
- Inception Score: consecutive splits of *size* 5000, float32, no epsilon (section 7);
- Precision / Recall: k-NN manifolds (k=3) on squared distances `|u|^2 - 2 u.v + |v|^2`, radius =
  4th smallest distance including the point itself, inclusive `<=` (section 8).

Why two distance modes for precision/recall: ADM computes the distance blocks in float16 (and only
falls back to float32 when a block overflows). The fp16 rounding of `|u|^2 - 2 u.v + |v|^2` moves
squared distances by ~0.2-0.5, which decides points near the ball boundaries. `"float16"` (default)
emulates ADM on a GPU: float16 inputs, float32-accumulated matmul and norm sums rounded once to
float16, then float16 subtract/add/max (lands within ~0.003 of ADM). `"float32"` is the plain
float32 formula (within ~0.007 of ADM, hardware independent).
"""
from __future__ import annotations

import contextlib
import logging
import warnings

import numpy as np
import scipy.linalg
import torch

logger = logging.getLogger(__name__)
DISTANCE_DTYPES = ("float16", "float32")


# ----------------------------------------------------------------------------------------------
# FID / sFID
# ----------------------------------------------------------------------------------------------

def compute_statistics(acts: np.ndarray, block_rows: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """ADM's activation statistics of acts (N, D): mu (D,) float32, sigma (D, D) float64.

    mu is `np.mean` of the float32 activations (float32 result, as ADM). sigma equals
    `np.cov(acts, rowvar=False)` (float64, mean removed in float64, 1/(N-1)), accumulated over row
    blocks so memory stays O(block_rows * D) instead of a float64 copy of all activations.
    """
    acts = np.asarray(acts, dtype=np.float32)  # ADM's activations are float32
    if acts.ndim != 2 or acts.shape[0] < 2:
        raise ValueError(f"need activations of shape (N >= 2, D), got {acts.shape}")
    mu = np.mean(acts, axis=0)
    mean64 = np.mean(acts, axis=0, dtype=np.float64)
    sigma = np.zeros((acts.shape[1], acts.shape[1]), dtype=np.float64)
    for start in range(0, acts.shape[0], block_rows):
        centred = acts[start: start + block_rows].astype(np.float64) - mean64
        sigma += centred.T @ centred
    sigma /= acts.shape[0] - 1
    return mu, sigma


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """Principal matrix square root; a non-finite result is handled by the caller's retry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # singular: caller retries
        return scipy.linalg.sqrtm(a)


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrtm(s1 @ s2) for symmetric PSD s1, s2: s1 s2 has the eigenvalues of sqrt(s2) s1 sqrt(s2)."""
    w, v = np.linalg.eigh(sigma2)
    root2 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root2 @ sigma1 @ root2
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, method: str = "sqrtm") -> float:
    """ADM's Frechet distance `|mu1-mu2|^2 + tr(s1) + tr(s2) - 2 tr sqrtm(s1 @ s2)`.

    ADM passes 1 = sample, 2 = reference (the product order moves FID by ~4e-10 relative).
    `mu1 - mu2` keeps the inputs' dtype (float32 for ADM statistics), as ADM does.
    method: "sqrtm" (default) is ADM's computation with its safeguards; "eigh" takes the trace as
    sum(sqrt(eig(sqrt(s2) s1 sqrt(s2)))), a symmetric PSD form that needs no retry and is several
    times faster at 2048-d; it agrees with "sqrtm" to ~1e-8 relative (docs/adm_evaluation.md §5).
    """
    if method not in ("sqrtm", "eigh"):
        raise ValueError(f"method must be 'sqrtm' or 'eigh', got {method!r}")
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different shapes: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"covariances {sigma1.shape}, {sigma2.shape} do not match means of length {mu1.shape[0]}")
    diff = mu1 - mu2
    if method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
        return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        logger.warning("Frechet distance: singular product, adding %g to the covariance diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    # No clipping at 0: nearly identical sets can give a slightly negative value, as in ADM.
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# ----------------------------------------------------------------------------------------------
# Inception Score
# ----------------------------------------------------------------------------------------------

def inception_score(probs: np.ndarray, split_size: int = 5000, nan_safe: bool = False) -> float:
    """ADM's Inception Score of softmax probabilities probs (N, C).

    Splits are consecutive chunks of `split_size` rows in file order (a size, not a count: 50k
    samples give 10 splits; a shorter last split weighs the same). Arithmetic is float32.
    ADM has no epsilon, so a probability that underflows to exactly 0 makes IS NaN (faithful
    default); `nan_safe=True` uses the limit 0 * log 0 = 0 instead.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"need probabilities of shape (N >= 1, C), got {probs.shape}")
    if split_size < 1:
        raise ValueError(f"split_size must be positive, got {split_size}")
    scores = []
    for start in range(0, probs.shape[0], split_size):
        part = probs[start: start + split_size]
        py = np.mean(part, axis=0, keepdims=True)
        if nan_safe:
            with np.errstate(divide="ignore", invalid="ignore"):
                kl = np.where(part > 0, part * (np.log(part) - np.log(py)), np.float32(0))
        else:
            kl = part * (np.log(part) - np.log(py))
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    return float(np.mean(np.array(scores, dtype=np.float32)))


# ----------------------------------------------------------------------------------------------
# Precision / Recall (k-NN manifolds, Kynkaanniemi et al. 2019, as ADM's ManifoldEstimator)
# ----------------------------------------------------------------------------------------------

class _Points:
    """Features on the device with their squared norms, in float32 and (optionally) float16."""

    def __init__(self, x: np.ndarray, device: torch.device, fp16: bool):
        self.x = torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
        self.norm = (self.x * self.x).sum(1)
        if fp16:
            x16 = self.x.half()
            self.x16 = x16.float()  # float16 values held in float32: exact float32 products
            # ADM: reduce_sum(square(u)) in float16; GPU squares round to fp16, the sum accumulates
            # in float32 and rounds once.
            self.norm16 = (x16 * x16).float().sum(1).half()

    def __len__(self) -> int:
        return self.x.shape[0]


def _squared_distances(a: _Points, rows: slice, b: _Points, cols: slice, fp16: bool) -> torch.Tensor:
    """ADM's DistanceBlock: max(|u|^2 - 2 u.v^T + |v|^2, 0) for a block, returned as float32."""
    if fp16:
        # float16 matmul with float32 accumulation (as on a GPU): exact products, one rounding.
        mm = (a.x16[rows] @ b.x16[cols].T).half()
        dist = (a.norm16[rows, None] - mm * 2) + b.norm16[None, cols]  # float16 ops, each rounded
        dist = dist.clamp_min_(0).float()
        # Entries are in [0, 65504] unless some overflowed (inf, or inf - inf = NaN); the sum then
        # is non-finite. ADM recomputes the whole block in float32 in that case (tf.cond).
        if torch.isfinite(dist.sum()):
            return dist
        logger.info("float16 distance block overflowed; recomputing it in float32 (as ADM)")
    mm = a.x[rows] @ b.x[cols].T
    return ((a.norm[rows, None] - mm * 2) + b.norm[None, cols]).clamp_min_(0)


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def _manifold_radii(p: _Points, k: int, row_batch: int, col_batch: int, fp16: bool) -> torch.Tensor:
    """Squared distance of every point to its k-th nearest other point (N,), float32.

    The (k+1)-th smallest entry of its distance row, self included (ADM: np.partition kth=0..k,
    column k); duplicates count as neighbours at distance 0. A running top-(k+1) over column
    blocks keeps memory at one block instead of a full (row_batch, N) row array.
    """
    radii = torch.empty(len(p), device=p.x.device)
    for rows in _blocks(len(p), row_batch):
        best = None
        for cols in _blocks(len(p), col_batch):
            dist = _squared_distances(p, rows, p, cols, fp16)
            cand = dist.topk(min(k + 1, dist.shape[1]), dim=1, largest=False).values
            best = cand if best is None else torch.cat([best, cand], 1)
            best = best.topk(min(k + 1, best.shape[1]), dim=1, largest=False, sorted=True).values
        radii[rows] = best[:, k]
    return radii


@contextlib.contextmanager
def _full_fp32_matmul(device: torch.device):
    """Disable TF32 for the duration (inference code may have enabled it globally)."""
    if device.type != "cuda":
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


@torch.no_grad()
def precision_recall(ref_acts: np.ndarray, sample_acts: np.ndarray, nhood_size: int = 3,
                     row_batch_size: int = 10000, col_batch_size: int = 10000,
                     distance_dtype: str = "float16",
                     device: str | torch.device | None = None) -> tuple[float, float]:
    """ADM's improved precision and recall of sample_acts (Ns, D) against ref_acts (Nr, D).

    Precision = fraction of samples within some reference point's k-NN ball; recall = fraction of
    references within some sample's ball (squared distances, inclusive `<=`). Distances come in
    (row_batch_size, col_batch_size) matmul blocks, so memory is a few blocks (~1.5 GB for the
    10000 x 10000 default) for any N. `distance_dtype`: "float16" emulates ADM's GPU float16
    distance blocks (default, closest to ADM), "float32" is the plain float32 formula.
    `device`: None picks CUDA when available, else CPU.
    """
    if distance_dtype not in DISTANCE_DTYPES:
        raise ValueError(f"distance_dtype must be one of {DISTANCE_DTYPES}, got {distance_dtype!r}")
    ref_acts, sample_acts = np.asarray(ref_acts), np.asarray(sample_acts)
    if ref_acts.ndim != 2 or sample_acts.ndim != 2 or ref_acts.shape[1] != sample_acts.shape[1]:
        raise ValueError(f"need (N, D) features with equal D, got {ref_acts.shape} and {sample_acts.shape}")
    if min(len(ref_acts), len(sample_acts)) <= nhood_size:
        raise ValueError(f"need more than nhood_size={nhood_size} points per set, got "
                         f"{len(ref_acts)} reference and {len(sample_acts)} sample points")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fp16 = distance_dtype == "float16"
    with _full_fp32_matmul(device):
        ref, smp = _Points(ref_acts, device, fp16), _Points(sample_acts, device, fp16)
        ref_radii = _manifold_radii(ref, nhood_size, row_batch_size, col_batch_size, fp16)
        smp_radii = _manifold_radii(smp, nhood_size, row_batch_size, col_batch_size, fp16)
        ref_in = torch.zeros(len(ref), dtype=torch.bool, device=device)  # recall marks
        smp_in = torch.zeros(len(smp), dtype=torch.bool, device=device)  # precision marks
        for rows in _blocks(len(ref), row_batch_size):
            for cols in _blocks(len(smp), col_batch_size):
                dist = _squared_distances(ref, rows, smp, cols, fp16)
                ref_in[rows] |= (dist <= smp_radii[None, cols]).any(1)
                smp_in[cols] |= (dist <= ref_radii[rows, None]).any(0)
    precision = int(smp_in.sum()) / len(smp)
    recall = int(ref_in.sum()) / len(ref)
    return precision, recall

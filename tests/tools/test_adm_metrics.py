"""ADM metric arithmetic (tools/adm_evaluator.py) against closed forms and plain reimplementations."""
import numpy as np
import pytest
import torch

import evaluation.adm_metrics as ev
from evaluation.adm_metrics import compute_statistics, frechet_distance, inception_score, precision_recall


def _random_cov(rng, d, n=None):
    x = rng.standard_normal((n or 4 * d, d))
    return np.cov(x, rowvar=False)


def _fid_eigh(mu1, s1, mu2, s2):
    """Independent Frechet distance: tr sqrtm(S1 S2) = tr sqrt(sqrt(S2) S1 sqrt(S2)) (symmetric PSD)."""
    w, v = np.linalg.eigh(s2)
    r2 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r2 @ s1 @ r2
    tr = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = np.asarray(mu1, np.float64) - mu2
    return d @ d + np.trace(s1) + np.trace(s2) - 2 * tr


# ---------------------------------------------------------------- statistics

def test_statistics_match_numpy_and_adm_dtypes():
    acts = np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float32) * 3 + 5
    mu, sigma = compute_statistics(acts, block_rows=300)  # several blocks, ragged last one
    assert mu.dtype == np.float32 and sigma.dtype == np.float64
    np.testing.assert_array_equal(mu, np.mean(acts, axis=0))  # ADM: float32 mean
    np.testing.assert_allclose(sigma, np.cov(acts, rowvar=False), rtol=1e-12, atol=1e-12)


def test_statistics_reject_bad_shapes():
    with pytest.raises(ValueError):
        compute_statistics(np.zeros((1, 4)))
    with pytest.raises(ValueError):
        compute_statistics(np.zeros(8))


# ---------------------------------------------------------------- Frechet distance

def test_fid_identical_statistics_is_zero():
    rng = np.random.default_rng(1)
    mu, sigma = rng.standard_normal(12).astype(np.float32), _random_cov(rng, 12)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9


def test_fid_diagonal_covariances_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    a, b = rng.uniform(0.1, 3, 10), rng.uniform(0.1, 3, 10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_fid_translated_sets_is_squared_shift():
    rng = np.random.default_rng(3)
    acts = rng.standard_normal((2000, 8)).astype(np.float32)
    shift = np.array([1.5, -2, 0, 0.25, 3, 0, 0, -1], np.float32)
    mu1, s1 = compute_statistics(acts + shift)
    mu2, s2 = compute_statistics(acts)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(float(shift @ shift), rel=1e-5)


def test_fid_general_covariances_match_symmetric_form():
    rng = np.random.default_rng(4)
    mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
    s1, s2 = _random_cov(rng, 20), _random_cov(rng, 20) * 2
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_fid_eigh(mu1, s1, mu2, s2), rel=1e-8)


@pytest.mark.parametrize("d,n", [(20, 80), (16, 5)])
def test_fid_eigh_method_matches_sqrtm(d, n):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_cov(rng, d, n), _random_cov(rng, d, n + 3)
    got = frechet_distance(mu1, s1, mu2, s2, method="eigh")
    assert got == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1, method="eigh") == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        frechet_distance(mu1, s1, mu2, s2, method="eig")


def test_fid_keeps_float32_mean_difference_like_adm():
    rng = np.random.default_rng(5)
    mu1 = (rng.standard_normal(64) * 100).astype(np.float32)
    mu2 = (mu1 + rng.standard_normal(64).astype(np.float32) * 1e-3).astype(np.float32)
    zero = np.zeros((64, 64))
    diff = mu1 - mu2  # float32, as ADM
    assert frechet_distance(mu1, zero, mu2, zero) == float(diff.dot(diff))
    assert float(diff.dot(diff)) != float(diff.astype(np.float64).dot(diff))  # the check discriminates


def test_fid_singular_covariances():
    """Rank-deficient covariances (fewer samples than dimensions) still give the analytic value."""
    rng = np.random.default_rng(6)
    s1, s2 = _random_cov(rng, 16, n=5), _random_cov(rng, 16, n=7)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_fid_eigh(mu1, s1, mu2, s2), rel=1e-5)
    zero = np.zeros((16, 16))
    assert frechet_distance(mu1, zero, mu2, zero) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-10)


def test_fid_retry_adds_eps_to_both_covariances(monkeypatch):
    rng = np.random.default_rng(7)
    s1, s2 = _random_cov(rng, 6), _random_cov(rng, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    calls, real_sqrtm = [], ev._sqrtm

    def failing_once(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(ev, "_sqrtm", failing_once)
    eps = 1e-3
    got = frechet_distance(mu1, s1, mu2, s2, eps=eps)
    assert len(calls) == 2
    offset = np.eye(6) * eps
    np.testing.assert_allclose(calls[1], (s1 + offset) @ (s2 + offset), rtol=1e-14)
    # the traces use the original covariances, the square root the offset ones (ADM)
    tr = np.trace(real_sqrtm((s1 + offset) @ (s2 + offset))).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr
    assert got == pytest.approx(expected, rel=1e-12)


def test_fid_imaginary_component_check(monkeypatch):
    sigma = np.eye(3)
    monkeypatch.setattr(ev, "_sqrtm", lambda a: a.astype(complex) + 1e-4j)
    assert frechet_distance(np.zeros(3), sigma, np.zeros(3), sigma) == pytest.approx(0.0, abs=1e-12)
    monkeypatch.setattr(ev, "_sqrtm", lambda a: a.astype(complex) + 0.1j)
    with pytest.raises(ValueError, match="Imaginary component"):
        frechet_distance(np.zeros(3), sigma, np.zeros(3), sigma)


def test_fid_shape_mismatch():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


# ---------------------------------------------------------------- Inception Score

def test_is_uniform_predictions_is_one():
    assert inception_score(np.full((40, 1008), 1 / 1008, np.float32)) == pytest.approx(1.0, abs=1e-6)


def test_is_confident_distinct_classes_is_class_count():
    probs = torch.softmax(torch.eye(10) * 60, dim=1).numpy()  # near one-hot, no exact zeros
    assert inception_score(probs) == pytest.approx(10.0, rel=1e-5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_is_exact_one_hot_is_nan_like_adm_unless_nan_safe():
    probs = np.eye(7, dtype=np.float32)
    assert np.isnan(inception_score(probs))  # 0 * log 0 = NaN: ADM has no epsilon
    assert inception_score(probs, nan_safe=True) == pytest.approx(7.0, rel=1e-6)


def test_is_splits_are_consecutive_chunks_of_split_size():
    eye = np.eye(4, dtype=np.float32)
    # split 1: three distinct classes (IS 3); split 2: three identical rows (1); split 3: one row (1)
    probs = np.stack([eye[0], eye[1], eye[2], eye[3], eye[3], eye[3], eye[0]])
    assert inception_score(probs, split_size=3, nan_safe=True) == pytest.approx(5 / 3, rel=1e-6)
    assert inception_score(probs, split_size=7, nan_safe=True) != pytest.approx(5 / 3, rel=1e-3)
    # file order matters: the same rows interleaved give a different score
    assert inception_score(probs[[0, 3, 1, 4, 2, 5, 6]], split_size=3, nan_safe=True) != pytest.approx(5 / 3)


def test_is_matches_float64_reference_on_random_probabilities():
    rng = np.random.default_rng(8)
    probs = rng.dirichlet(np.full(50, 0.3), size=230).astype(np.float32)
    scores = []
    for part in np.split(probs.astype(np.float64), [100, 200]):
        py = part.mean(0, keepdims=True)
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
    got = inception_score(probs, split_size=100)
    assert isinstance(got, float)
    assert got == pytest.approx(np.mean(scores), rel=1e-5)


# ---------------------------------------------------------------- Precision / Recall

def _pr_reference(ref, smp, k=3, fp16=False):
    """Plain NumPy ADM ManifoldEstimator on whole matrices; fp16 follows ADM's float16 DistanceBlock."""
    def dist(u, v):
        if not fp16:
            u, v = u.astype(np.float32), v.astype(np.float32)
            return np.maximum((u * u).sum(1)[:, None] - 2 * (u @ v.T) + (v * v).sum(1)[None, :], 0)
        u16, v16 = u.astype(np.float16), v.astype(np.float16)
        nu = np.square(u16).sum(1, dtype=np.float64).astype(np.float16)
        nv = np.square(v16).sum(1, dtype=np.float64).astype(np.float16)
        mm = (u16.astype(np.float64) @ v16.astype(np.float64).T).astype(np.float16)
        d = np.maximum((nu[:, None] - mm * np.float16(2)) + nv[None, :], np.float16(0))
        return d.astype(np.float32)

    r_ref = np.partition(dist(ref, ref), list(range(k + 1)), axis=1)[:, k]
    r_smp = np.partition(dist(smp, smp), list(range(k + 1)), axis=1)[:, k]
    d = dist(ref, smp)
    return float((d <= r_ref[:, None]).any(0).mean()), float((d <= r_smp[None, :]).any(1).mean())


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_pr_identical_sets(dtype):
    x = np.random.default_rng(9).standard_normal((50, 8)).astype(np.float32)
    assert precision_recall(x, x.copy(), distance_dtype=dtype) == (1.0, 1.0)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_pr_far_apart_sets(dtype):
    rng = np.random.default_rng(10)
    ref = rng.standard_normal((40, 8)).astype(np.float32)
    assert precision_recall(ref, ref[:30] + 40, distance_dtype=dtype) == (0.0, 0.0)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_pr_duplicates_are_neighbours_and_balls_are_inclusive(dtype):
    """Each point 4 times: k=3 radius is 0, so only exact copies count (needs `<=`, not `<`)."""
    pts = np.random.default_rng(11).integers(-4, 5, size=(10, 6)).astype(np.float32)
    far = pts[5:] + 40
    ref = np.repeat(pts, 4, axis=0)                                # 10 points x 4
    smp = np.repeat(np.concatenate([pts[:5], far]), 4, axis=0)    # 5 shared + 5 far points x 4
    assert precision_recall(ref, smp, distance_dtype=dtype) == (0.5, 0.5)


def test_pr_one_dimensional_hand_case():
    # ref 0..5: 3rd-nearest-other squared radii are 9, 4, 4, 4, 4, 9 (points 0 and 5 reach 3 away).
    ref = np.arange(6, dtype=np.float32)[:, None]
    smp = np.array([[-3.0], [8.0], [8.5], [9.0], [30.0]], np.float32)
    # samples: -3 is 3 from point 0 (9 <= 9, inside); 8 is 3 from point 5 (inside); 8.5, 9, 30 outside.
    # sample radii: -3 -> 12^2 (its 3rd nearest other is 9), 8 -> 11^2, 8.5 -> 11.5^2, 9 -> 12^2,
    # 30 -> 22^2, so the ball of -3 covers [-15, 9] and every reference point: recall 1.
    assert precision_recall(ref, smp, distance_dtype="float32") == (2 / 5, 1.0)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_pr_matches_plain_reference_and_blocking_is_invisible(dtype):
    rng = np.random.default_rng(12)
    ref = (rng.standard_normal((300, 32)) + 1).astype(np.float32)
    smp = (rng.standard_normal((400, 32)) * 1.2 + 1.1).astype(np.float32)
    expected = _pr_reference(ref, smp, fp16=dtype == "float16")
    whole = precision_recall(ref, smp, distance_dtype=dtype)
    blocked = precision_recall(ref, smp, row_batch_size=64, col_batch_size=50, distance_dtype=dtype)
    assert whole == blocked
    assert abs(whole[0] - expected[0]) <= 2 / 400 and abs(whole[1] - expected[1]) <= 2 / 300


def test_pr_float16_distances_follow_adm_rounding():
    rng = np.random.default_rng(13)
    u = (rng.standard_normal((64, 48)) + 2).astype(np.float32)
    v = (rng.standard_normal((80, 48)) + 2).astype(np.float32)
    a, b = ev._Points(u, torch.device("cpu"), True), ev._Points(v, torch.device("cpu"), True)
    got = ev._squared_distances(a, slice(None), b, slice(None), fp16=True).numpy()
    u16, v16 = u.astype(np.float16), v.astype(np.float16)
    nu = np.square(u16).sum(1, dtype=np.float64).astype(np.float16)
    nv = np.square(v16).sum(1, dtype=np.float64).astype(np.float16)
    mm = (u16.astype(np.float64) @ v16.astype(np.float64).T).astype(np.float16)
    ref16 = np.maximum((nu[:, None] - mm * np.float16(2)) + nv[None, :], np.float16(0)).astype(np.float32)
    assert np.mean(got == ref16) > 0.99  # accumulation order may flip a rare rounding
    assert np.all(got.astype(np.float16).astype(np.float32) == got)  # values are float16 numbers
    exact = ev._squared_distances(ev._Points(u, torch.device("cpu"), False), slice(None),
                                  ev._Points(v, torch.device("cpu"), False), slice(None), fp16=False).numpy()
    assert np.abs(got - exact).max() > 0.01  # the float16 mode really rounds (squared norms ~ 240)


def test_pr_float16_overflow_falls_back_to_float32():
    rng = np.random.default_rng(14)
    ref = (rng.standard_normal((60, 8)) * 300).astype(np.float32)  # squared norms >> 65504
    smp = (rng.standard_normal((70, 8)) * 320).astype(np.float32)
    assert precision_recall(ref, smp, distance_dtype="float16") == precision_recall(ref, smp, distance_dtype="float32")


def test_pr_input_validation():
    x = np.zeros((10, 4), np.float32)
    with pytest.raises(ValueError):
        precision_recall(x, np.zeros((10, 5), np.float32))
    with pytest.raises(ValueError):
        precision_recall(x, x[:3])
    with pytest.raises(ValueError):
        precision_recall(x, x, distance_dtype="bfloat16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pr_cuda_matches_cpu():
    rng = np.random.default_rng(15)
    ref = rng.standard_normal((500, 64)).astype(np.float32)
    smp = rng.standard_normal((600, 64)).astype(np.float32) * 1.1
    for dtype in ("float32", "float16"):
        cpu = precision_recall(ref, smp, distance_dtype=dtype, device="cpu")
        gpu = precision_recall(ref, smp, distance_dtype=dtype, device="cuda")
        assert abs(cpu[0] - gpu[0]) <= 3 / 600 and abs(cpu[1] - gpu[1]) <= 3 / 500

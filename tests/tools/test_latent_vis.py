"""Latent-uniformity metrics (docs/reference_behaviour.md §7.5) on distributions with known answers."""
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tools.latent_vis import kde_density, sample_latent_vectors, uniformity_metrics


def test_constant_density_is_perfectly_uniform():
    m = uniformity_metrics(np.full(1000, 0.37))
    assert m["density_std"] == pytest.approx(0, abs=1e-12)
    assert m["density_cv"] == pytest.approx(0, abs=1e-12)
    assert m["gini"] == pytest.approx(0, abs=1e-12)
    assert m["normalized_entropy"] == pytest.approx(1, abs=1e-6)     # the +1e-10 inside log2


def test_all_mass_on_one_point():
    n = 50
    d = np.zeros(n)
    d[7] = 2.0
    m = uniformity_metrics(d)
    assert m["gini"] == pytest.approx((n - 1) / n)                  # the maximum for n points
    assert m["normalized_entropy"] == pytest.approx(0, abs=1e-8)
    assert m["density_cv"] == pytest.approx(np.sqrt(n - 1))         # std/mean of one spike


def test_against_plain_formulas():
    d = np.random.default_rng(0).gamma(2.0, size=300)
    m = uniformity_metrics(d)
    # Gini = mean absolute difference / (2 mean); entropy in bits over log2(N)
    mad = np.abs(d[:, None] - d[None, :]).mean()
    assert m["gini"] == pytest.approx(mad / (2 * d.mean()), rel=1e-10)
    p = d / d.sum()
    assert m["normalized_entropy"] == pytest.approx(-(p * np.log2(p)).sum() / np.log2(300),
                                                    rel=1e-8)
    assert m["density_cv"] == pytest.approx(np.std(d) / np.mean(d), rel=1e-12)
    # two-level density: half the points at 1, half at 3 -> cv 0.5, gini 0.25
    m2 = uniformity_metrics(np.r_[np.ones(100), 3 * np.ones(100)])
    assert m2["density_cv"] == pytest.approx(0.5) and m2["gini"] == pytest.approx(0.25)


def test_kde_uniform_grid_vs_clusters():
    g = np.stack(np.meshgrid(np.linspace(0, 1, 20), np.linspace(0, 1, 20)), -1).reshape(-1, 2)
    rng = np.random.default_rng(1)
    clusters = np.concatenate([rng.normal(0.2, 0.02, (320, 2)), rng.normal(0.7, 0.15, (80, 2))])
    u, c = uniformity_metrics(kde_density(g)), uniformity_metrics(kde_density(clusters))
    assert u["density_cv"] < 0.35 < c["density_cv"]
    assert u["gini"] < c["gini"]
    assert u["normalized_entropy"] > c["normalized_entropy"]
    # the KDE matches scipy's definition at one point (Scott bandwidth, full covariance)
    from scipy.stats import gaussian_kde
    assert kde_density(clusters)[3] == pytest.approx(gaussian_kde(clusters.T)(clusters[3:4].T)[0])


def test_sample_from_shard_directory(tmp_path):
    z = torch.randn(6, 3, 2, 2)
    zf = torch.randn(6, 3, 2, 2) + 100
    save_file({"latents": z, "latents_flip": zf, "labels": torch.zeros(6, dtype=torch.int64)},
              str(tmp_path / "latents_rank00_shard000.safetensors"))
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 2.0)
    torch.save({"mean": mean, "std": std}, tmp_path / "latents_stats.pt")
    v = sample_latent_vectors(tmp_path, num_samples=100, seed=0)
    assert v.shape == (6, 3)                                    # capped at the image count
    # every vector is one normalised spatial position of a stored or flipped latent
    cands = torch.cat([z, zf]).permute(0, 2, 3, 1).reshape(-1, 3)
    cands = (cands - 0.5) / 2.0
    assert all(torch.isclose(cands, r).all(1).any() for r in v)
    assert torch.equal(v, sample_latent_vectors(tmp_path, num_samples=100, seed=0))

"""One implementation of the FID statistics (evaluation/adm.py): evaluation during training
(`reference_statistics`, `image_metrics`) gives the ADM evaluator's numbers on the same
activations, and the statistics are ADM's mu / sigma of the pool and spatial features."""
import numpy as np
import pytest

import evaluation.adm as adm
from evaluation.adm_metrics import compute_statistics, frechet_distance, inception_score


class _StubExtractor:
    weights_path, random_init = None, True


@pytest.fixture
def activations(monkeypatch):
    rng = np.random.default_rng(0)
    acts = {"pool": rng.standard_normal((24, 16)).astype(np.float32),
            "spatial": rng.standard_normal((24, 12)).astype(np.float32) * 2,
            "probs": rng.dirichlet(np.ones(10), 24).astype(np.float32)}
    ref = {"pool": rng.standard_normal((30, 16)).astype(np.float32) + 0.3,
           "spatial": rng.standard_normal((30, 12)).astype(np.float32)}
    by_desc = {"eval": acts, "sample.npz": acts, "reference": ref, "ref.npz": ref}

    def fake(images, extractor, batch_size, keys, total, desc):
        return {k: by_desc[desc][k] for k in keys}

    monkeypatch.setattr(adm, "compute_activations", fake)
    return acts, ref


def test_statistics_are_adms(activations):
    acts, _ = activations
    stats = adm.statistics(acts)
    assert np.array_equal(stats["mu"], np.mean(acts["pool"], axis=0))
    np.testing.assert_allclose(stats["sigma"], np.cov(acts["pool"], rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats["sigma_s"], np.cov(acts["spatial"], rowvar=False), rtol=1e-10, atol=1e-12)


def test_training_metrics_equal_the_evaluators(activations, tmp_path):
    acts, ref = activations
    images = np.random.default_rng(1).integers(0, 256, (24, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", np.zeros((30, 4, 4, 3), np.uint8))
    np.savez(tmp_path / "sample.npz", images)
    reference = adm.reference_statistics(str(tmp_path / "ref.npz"), _StubExtractor())  # computed from arr_0
    online = adm.image_metrics(images, _StubExtractor(), reference, method="sqrtm")
    full = adm.evaluate(str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz"), _StubExtractor(),
                        distance_dtype="float32")
    assert {k: online[k] for k in ("fid", "sfid", "inception_score")} == {
        k: full[k] for k in ("fid", "sfid", "inception_score")}
    assert online["fid"] == frechet_distance(*compute_statistics(acts["pool"]), *compute_statistics(ref["pool"]))
    assert online["inception_score"] == inception_score(acts["probs"])
    eigh = adm.image_metrics(images, _StubExtractor(), reference)  # the training default
    assert eigh["fid"] == pytest.approx(online["fid"], rel=1e-6)
    # stored statistics are used as they are
    stored = adm.statistics({"pool": ref["pool"] * 2, "spatial": ref["spatial"]})
    np.savez(tmp_path / "ref.npz", np.zeros((30, 4, 4, 3), np.uint8), **stored)
    again = adm.reference_statistics(str(tmp_path / "ref.npz"), _StubExtractor())
    assert all(np.array_equal(again[k], stored[k]) for k in stored)

"""End to end: the ADM evaluator CLI, run_fid_eval.sh and make_reference_batch.

The Inception network here is randomly initialised: the numbers are NOT a real FID. The tests
check that the CLI wires activations, statistics and metrics exactly as the module functions do.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import evaluation.adm as adm
import tools.adm_evaluator as ev
import tools.make_reference_batch as mrb
from datasets.transforms import center_crop_arr
from evaluation.adm_metrics import compute_statistics, frechet_distance, inception_score, precision_recall

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _images(n, h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _record_activations(monkeypatch):
    """Wrap adm_evaluator.compute_activations so a test can recompute the metrics itself."""
    recorded, real = {}, adm.compute_activations

    def recording(images, extractor, batch_size=64, **kwargs):
        out = real(images, extractor, batch_size, **kwargs)
        recorded[kwargs["desc"]] = out
        return out

    monkeypatch.setattr(adm, "compute_activations", recording)
    return recorded


def _parse_five_lines(stdout):
    lines = [ln for ln in stdout.strip().splitlines() if not ln.startswith("WARNING")]
    names = [ln.split(":")[0] for ln in lines]
    assert names == ["Inception Score", "FID", "sFID", "Precision", "Recall"]  # ADM's order
    return [float(ln.split(":", 1)[1]) for ln in lines]


def _run_cli(tmp_path, monkeypatch, capsys, extra=()):
    np.savez(tmp_path / "ref.npz", _images(4, 8, 8, seed=0))
    np.savez(tmp_path / "sample.npz", _images(4, 8, 8, seed=1), np.arange(4))  # arr_1 labels are ignored
    recorded = _record_activations(monkeypatch)
    results = ev.main([str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz"), "--random-init",
                       "--device", "cpu", "--batch-size", "3", "--pr-distances", "float32", *extra])
    out = capsys.readouterr().out
    assert "NOT real" in out
    saved = json.loads((tmp_path / "sample_adm_eval.json").read_text())
    assert [saved[k] for k in ("inception_score", "fid", "sfid", "precision", "recall")] == _parse_five_lines(out)
    assert saved["random_init"] is True and saved["ref_statistics"] == "computed"
    assert saved["num_ref_images"] == 4 and saved["pr_distance_dtype"] == "float32"
    assert results["fid"] == saved["fid"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
    return saved, recorded["ref.npz"], recorded["sample.npz"]


def test_cli_random_init_end_to_end(tmp_path, monkeypatch, capsys):
    """Real network, IS and P/R; the 2048-d Frechet distances (a minute of sqrtm on 2 cores) are
    recorded instead: their inputs must be the (sample, reference) statistics, in ADM's order."""
    fid_calls = []

    def recording_fid(mu1, sigma1, mu2, sigma2, method="sqrtm"):
        fid_calls.append((mu1, sigma1, mu2, sigma2))
        return 1.25 * len(fid_calls)

    monkeypatch.setattr(adm, "frechet_distance", recording_fid)
    saved, ref, smp = _run_cli(tmp_path, monkeypatch, capsys)
    assert ref["pool"].shape == (4, 2048) and smp["spatial"].shape == (4, 2023)
    assert (saved["fid"], saved["sfid"]) == (1.25, 2.5)
    for (mu1, sigma1, mu2, sigma2), key in zip(fid_calls, ("pool", "spatial")):
        for got, want in zip((mu1, sigma1, mu2, sigma2), (*compute_statistics(smp[key]), *compute_statistics(ref[key]))):
            np.testing.assert_array_equal(got, want)
    assert saved["inception_score"] == inception_score(smp["probs"])
    assert (saved["precision"], saved["recall"]) == precision_recall(ref["pool"], smp["pool"], distance_dtype="float32")


@pytest.mark.slow
def test_cli_random_init_end_to_end_real_fid(tmp_path, monkeypatch, capsys):
    saved, ref, smp = _run_cli(tmp_path, monkeypatch, capsys, extra=("--fid-method", "eigh"))
    assert saved["fid"] == frechet_distance(*compute_statistics(smp["pool"]), *compute_statistics(ref["pool"]),
                                            method="eigh")
    sqrtm_fid = frechet_distance(*compute_statistics(smp["pool"]), *compute_statistics(ref["pool"]))
    assert saved["fid"] == pytest.approx(sqrtm_fid, rel=1e-6, abs=1e-9)


class _StubExtractor:
    weights_path, random_init = None, True


def test_evaluate_uses_stored_reference_statistics(tmp_path, monkeypatch):
    """ADM reference batches: FID/sFID from the stored mu/sigma, precision/recall from arr_0 activations."""
    rng = np.random.default_rng(2)
    acts = {"ref.npz": {"pool": rng.standard_normal((20, 16)).astype(np.float32),
                        "spatial": rng.standard_normal((20, 12)).astype(np.float32)},
            "sample.npz": {"pool": rng.standard_normal((30, 16)).astype(np.float32) + 0.5,
                           "spatial": rng.standard_normal((30, 12)).astype(np.float32),
                           "probs": rng.dirichlet(np.ones(10), 30).astype(np.float32)}}
    monkeypatch.setattr(adm, "compute_activations", lambda images, extractor, batch_size, keys, total, desc: acts[desc])
    other = rng.standard_normal((50, 16)).astype(np.float32) * 2
    other_s = rng.standard_normal((50, 12)).astype(np.float32) * 3
    mu, sigma = compute_statistics(other)
    mu_s, sigma_s = compute_statistics(other_s)
    np.savez(tmp_path / "ref.npz", _images(20, 4, 4, 3), mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    np.savez(tmp_path / "sample.npz", _images(30, 4, 4, 4))

    res = adm.evaluate(str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz"), _StubExtractor(), distance_dtype="float32")
    smp = acts["sample.npz"]
    assert res["ref_statistics"] == "stored" and res["sample_statistics"] == "computed"
    assert res["fid"] == frechet_distance(*compute_statistics(smp["pool"]), mu, sigma)
    assert res["sfid"] == frechet_distance(*compute_statistics(smp["spatial"]), mu_s, sigma_s)
    assert (res["precision"], res["recall"]) == precision_recall(acts["ref.npz"]["pool"], smp["pool"],
                                                                  distance_dtype="float32")
    assert res["inception_score"] == inception_score(smp["probs"])

    np.savez(tmp_path / "sample.npz", _images(30, 4, 4, 4), mu=mu)  # 'mu' without the other three
    with pytest.raises(ValueError, match="sigma"):
        adm.evaluate(str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz"), _StubExtractor())


def test_cli_without_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("ADM_INCEPTION_WEIGHTS", raising=False)
    for name in ("ref.npz", "sample.npz"):  # valid batches: the headers are checked before the weights
        np.savez(tmp_path / name, _images(4, 8, 8, seed=0))
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        ev.main([str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz"), "--device", "cpu"])


def test_run_fid_eval_sh_forwards_arguments(tmp_path):
    script = os.path.join(REPO_ROOT, "run_fid_eval.sh")
    env = {**os.environ, "PYTHON": sys.executable}
    usage = subprocess.run(["bash", script, "only_one.npz"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert usage.returncode == 2 and "usage" in usage.stderr
    helped = subprocess.run(["bash", script, "ref.npz", "sample.npz", "--help"], capture_output=True, text=True,
                            env=env, cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "--inception-weights" in helped.stdout and "--pr-distances" in helped.stdout


# ---------------------------------------------------------------- reference batches

def test_running_statistics_match_compute_statistics():
    acts = np.random.default_rng(5).standard_normal((500, 6)).astype(np.float32) * 0.1 + 100
    stats = mrb.RunningStatistics()
    for part in np.array_split(acts, 7):
        stats.update(part)
    mu, sigma = stats.finalize()
    mu_ref, sigma_ref = compute_statistics(acts)
    assert mu.dtype == np.float32 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-6)
    np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-9, atol=1e-12)


def test_make_reference_batch_cli(tmp_path, monkeypatch):
    folder = tmp_path / "images" / "sub"
    folder.mkdir(parents=True)
    sizes = [(40, 30), (20, 33), (17, 17), (64, 20), (25, 45)]  # (w, h), crops to 16x16
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(_images(1, h, w, seed=10 + i)[0]).save(folder / f"img{i}.png")
    seen = []
    real_cls = mrb.InceptionFeatureExtractor

    def recording_extractor(*args, **kwargs):
        net = real_cls(*args, **kwargs)

        def call(batch):
            seen.append(np.array(batch))
            out = net(batch)
            seen.append({k: v.numpy() for k, v in out.items()})
            return out
        return call

    monkeypatch.setattr(mrb, "InceptionFeatureExtractor", recording_extractor)
    out = tmp_path / "ref.npz"
    mrb.main([str(tmp_path / "images"), str(out), "--image-size", "16", "--num-ref", "3", "--batch-size", "2",
              "--random-init", "--device", "cpu"])

    images = np.concatenate(seen[0::2])
    pool = np.concatenate([f["pool"] for f in seen[1::2]])
    spatial = np.concatenate([f["spatial"] for f in seen[1::2]])
    paths = sorted(str(folder / f"img{i}.png") for i in range(5))
    crops = np.stack([np.asarray(center_crop_arr(Image.open(p).convert("RGB"), 16)) for p in paths])
    np.testing.assert_array_equal(images, crops)  # every image, ADM centre crop, folder order
    with np.load(out) as f:
        assert sorted(f.files) == ["arr_0", "mu", "mu_s", "sigma", "sigma_s"]
        arr = f["arr_0"]
        assert arr.shape == (3, 16, 16, 3) and arr.dtype == np.uint8
        kept = [i for i in range(5) if any(np.array_equal(crops[i], a) for a in arr)]
        assert len(kept) == 3 and np.array_equal(arr, crops[kept])  # a subset, in folder order
        for key, acts in (("mu", pool), ("mu_s", spatial)):
            mu, sigma = compute_statistics(acts)  # statistics cover all five images
            np.testing.assert_allclose(f[key], mu, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(f[key.replace("mu", "sigma")], sigma, rtol=1e-5, atol=1e-9)
    assert adm.read_batch_statistics(str(out))["mu"].shape == (2048,)

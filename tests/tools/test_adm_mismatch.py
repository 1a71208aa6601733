"""The ADM evaluator refuses batches that break the protocol (evaluation/adm.py check_batches):
different image sizes, non-uint8 data, too few images for a metric. Only the .npz headers are read
before the refusal (no Inception weights, no image data); `--allow-mismatch` evaluates anyway and
records every problem in the JSON."""
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

import evaluation.adm as adm
import tools.adm_evaluator as ev
from evaluation.npz import NpzArrayReader

REPO = Path(__file__).resolve().parents[2]


def _images(n, size, seed=0, dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(dtype)


@pytest.fixture
def no_image_reads(monkeypatch):
    """Fail the test if any image data (not a header) is read."""
    def forbidden(self, batch_size):
        raise AssertionError(f"image data of {self.path} read before the protocol check")
        yield  # pragma: no cover

    monkeypatch.setattr(NpzArrayReader, "iter_batches", forbidden)


def _refused(tmp_path, ref, sample, *extra):
    np.savez(tmp_path / "ref.npz", ref)
    np.savez(tmp_path / "sample.npz", sample)
    with pytest.raises(ValueError) as info:  # no weights given: the check comes before loading them
        ev.main([str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz"), "--device", "cpu", *extra])
    assert not (tmp_path / "sample_adm_eval.json").exists()
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_different_image_sizes_are_refused(tmp_path, no_image_reads):
    msg = _refused(tmp_path, _images(8, 32), _images(8, 64))
    assert "image sizes differ: reference 32x32" in msg and "samples 64x64" in msg
    assert str(tmp_path / "ref.npz") in msg and "--allow-mismatch" in msg


def test_non_uint8_samples_are_refused(tmp_path, no_image_reads):
    msg = _refused(tmp_path, _images(8, 16), _images(8, 16, dtype=np.float32) / 255)
    assert f"sample batch {tmp_path / 'sample.npz'}: arr_0 is float32, not uint8" in msg


def test_too_few_images_for_a_metric(tmp_path, no_image_reads):
    msg = _refused(tmp_path, _images(8, 16), _images(3, 16))
    assert "3 images, precision/recall (k=3 neighbours) needs at least 4" in msg
    msg = _refused(tmp_path, _images(1, 16), _images(8, 16), "--allow-mismatch")  # nothing computable
    assert f"reference batch {tmp_path / 'ref.npz'}: 1 image(s); FID needs at least 2" in msg


def test_entry_script_exits_with_one_error_line(tmp_path, monkeypatch, no_image_reads):
    np.savez(tmp_path / "ref.npz", _images(8, 32))
    np.savez(tmp_path / "sample.npz", _images(8, 64))
    monkeypatch.setattr(sys, "argv", ["adm_evaluator.py", str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz")])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / "tools" / "adm_evaluator.py"), run_name="__main__")
    assert str(info.value.code).startswith("error: protocol mismatch: image sizes differ")


class _StubExtractor:
    weights_path, random_init = None, True


def test_allow_mismatch_evaluates_and_records_the_problems(tmp_path, monkeypatch, caplog):
    """Mismatched sizes and too few samples for precision/recall: FID/IS are computed, P/R are
    None, each problem is a warning in the log and in the results."""
    rng = np.random.default_rng(0)
    seen = {}

    def activations(batches, extractor, batch_size, keys, total, desc):
        images = np.concatenate(list(batches))
        seen[desc] = images
        n = len(images)
        return {"pool": rng.standard_normal((n, 6)).astype(np.float32),
                "spatial": rng.standard_normal((n, 5)).astype(np.float32),
                "probs": rng.dirichlet(np.ones(4), n).astype(np.float32)}

    monkeypatch.setattr(adm, "compute_activations", activations)
    np.savez(tmp_path / "ref.npz", _images(8, 8))
    np.savez(tmp_path / "sample.npz", _images(3, 16, seed=1).astype(np.int64))  # int64: rounded to uint8
    res = adm.evaluate(str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz"), _StubExtractor(),
                       allow_mismatch=True)
    assert res["allow_mismatch"] is True and len(res["protocol_warnings"]) == 3
    assert any("image sizes differ" in w for w in res["protocol_warnings"])
    assert any("int64, not uint8" in w for w in res["protocol_warnings"])
    assert res["precision"] is None and res["recall"] is None and np.isfinite(res["fid"])
    assert seen["sample.npz"].dtype == np.uint8
    np.testing.assert_array_equal(seen["sample.npz"], _images(3, 16, seed=1))  # values in range: exact
    assert caplog.text.count("PROTOCOL MISMATCH") == 3
    json.dumps(res)  # the results stay JSON-serialisable

    np.savez(tmp_path / "sample.npz", _images(8, 8, seed=1))  # a matching pair records no warning
    res = adm.evaluate(str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz"), _StubExtractor())
    assert res["allow_mismatch"] is False and res["protocol_warnings"] == [] and res["precision"] is not None

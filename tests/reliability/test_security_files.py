"""Weights, statistics and batch files from the internet (docs/reliability.md, Security): no code
from a file runs without the per-file opt-in, and a small file cannot make a reader allocate more
than it holds (checked from headers before any data is materialised)."""
import argparse
import io
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from conftest import REPO
from utils.safe_load import (TRUSTED_PICKLES_ENV, UnsafeFileError, check_torch_file, load_torch_file,
                             read_safetensors, scan_torch_file)


class SideEffect:
    """Pickles as a call that creates `marker` when unpickled: the code a weights file can run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def evil_file(tmp_path, legacy=False, name="evil.pt"):
    marker = tmp_path / "PWNED"
    path = tmp_path / name
    obj = {"state_dict": {"w": torch.ones(2)}, "ema": {"w": torch.ones(2)}, "model": {"w": torch.ones(2)},
           "mean": torch.ones(1, 4, 1, 1), "std": torch.ones(1, 4, 1, 1), "hook": SideEffect(marker)}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path, marker


def loaders():
    """Every entry point that reads a PyTorch file a user may have downloaded."""
    from datasets.img_latent_dataset import load_latent_stats
    from evaluation.inception import InceptionFeatureExtractor
    from evaluation.toy_classifier import load_classifier
    from models.checkpoint import load_lightningdit_checkpoint
    from tokenizer.checkpoint import read_state_dict
    from tokenizer.foundation import load_foundation_weights
    from training.checkpoints import read_checkpoint

    return {"tokenizer": read_state_dict, "lightningdit": load_lightningdit_checkpoint,
            "stats": lambda p: load_latent_stats(p.parent),
            "toy classifier": load_classifier, "resume": read_checkpoint,
            "inception": lambda p: InceptionFeatureExtractor(str(p)),
            "foundation": lambda p: load_foundation_weights(torch.nn.Linear(2, 2), str(p), "dinov2")}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("name", list(loaders()))
def test_pickled_code_never_runs(tmp_path, name, legacy, monkeypatch):
    monkeypatch.delenv(TRUSTED_PICKLES_ENV, raising=False)
    path, marker = evil_file(tmp_path, legacy, name="latents_stats.pt")   # a name every loader takes
    with pytest.raises(ValueError) as info:
        loaders()[name](path)
    assert not marker.exists()
    text = str(info.value)
    assert "\n" not in text and str(path) in text and "exec" in text
    assert f"{TRUSTED_PICKLES_ENV}={path}" in text and "runs code" in text


def test_scanning_names_every_global_without_running_any(tmp_path):
    path, marker = evil_file(tmp_path)
    scan = scan_torch_file(path)
    assert "builtins.exec" in scan.unusual_globals and not marker.exists()
    assert scan.storages and all(n > 0 for n in scan.storages.values())


def test_the_opt_in_names_one_file(tmp_path, monkeypatch):
    """Only the files listed in $LIGHTNINGDIT_TRUSTED_PICKLES (after resolving links) may run code."""
    path, marker = evil_file(tmp_path)
    (tmp_path / "other").mkdir()
    other, other_marker = evil_file(tmp_path / "other")
    link = tmp_path / "link.pt"
    link.symlink_to(path)
    monkeypatch.setenv(TRUSTED_PICKLES_ENV, f"/nowhere.pt{os.pathsep}{link}")
    with pytest.raises(UnsafeFileError):
        load_torch_file(other)
    assert not other_marker.exists()
    obj = load_torch_file(path)
    assert marker.exists() and torch.equal(obj["state_dict"]["w"], torch.ones(2))


def test_plain_files_load_unchanged(tmp_path):
    """The check changes nothing for ordinary files: same objects as torch.load(weights_only=True)."""
    obj = {"model": {"a": torch.randn(3, 4), "b": torch.arange(5)}, "step": 7, "nested": [torch.ones(2), {"x": 1.5}],
           "param": torch.nn.Parameter(torch.zeros(2)), "view": torch.arange(10.0)[2:5]}
    for legacy in (False, True):
        path = tmp_path / f"plain{legacy}.pt"
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        got, ref = load_torch_file(path), torch.load(path, weights_only=True)
        assert got.keys() == ref.keys() and got["step"] == 7
        assert torch.equal(got["model"]["a"], ref["model"]["a"]) and torch.equal(got["view"], ref["view"])
        assert check_torch_file(path).format == ("legacy" if legacy else "zip")


def test_lightning_style_checkpoint_needs_the_opt_in(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hyper_parameters": argparse.Namespace(lr=1e-4)}, path)
    monkeypatch.delenv(TRUSTED_PICKLES_ENV, raising=False)
    with pytest.raises(UnsafeFileError, match="argparse.Namespace"):
        load_torch_file(path)
    monkeypatch.setenv(TRUSTED_PICKLES_ENV, str(path))
    assert load_torch_file(path)["hyper_parameters"].lr == 1e-4


# ------------------------------------------------------------------------------------------------
# Sizes declared versus bytes present
# ------------------------------------------------------------------------------------------------

class _Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, storage, size, stride):
        self.storage, self.size, self.stride = storage, size, stride

    def __reduce__(self):
        import collections
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, self.size, self.stride, False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel) if isinstance(obj, _Storage) else None


def crafted_zip(path, obj, records, compress=False):
    """A torch.save-layout archive with a hand-written pickle (declarations of our choosing)."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        for key, data in records.items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", "3\n")
    return path


def huge_view_stats(path, channels=500_000_000):
    """latents_stats.pt of a few hundred bytes whose mean/std are (1, C, 1, 1) views of one float."""
    one = _Storage("0", 1)
    view = _Tensor(one, (1, channels, 1, 1), (0, 0, 0, 0))
    return crafted_zip(path, {"mean": view, "std": view}, {"0": np.float32(1).tobytes()})


def test_a_storage_bigger_than_its_record_is_refused(tmp_path):
    path = crafted_zip(tmp_path / "big.pt", {"w": _Tensor(_Storage("0", 10 ** 9), (10 ** 9,), (1,))}, {"0": bytes(16)})
    with pytest.raises(UnsafeFileError, match="declares 4000000000 bytes but its record holds 16"):
        load_torch_file(path)


def test_compressed_records_are_refused(tmp_path):
    """A deflated record could expand to far more than the file (torch.save never compresses)."""
    path = crafted_zip(tmp_path / "bomb.pt", {"w": _Tensor(_Storage("0", 1 << 20), (1 << 20,), (1,))},
                       {"0": bytes(4 << 20)}, compress=True)
    assert os.path.getsize(path) < 64 << 10
    with pytest.raises(UnsafeFileError, match="compressed records"):
        load_torch_file(path)


def test_a_legacy_storage_header_must_match_the_pickle(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(4)}, path, _use_new_zipfile_serialization=False)
    raw = bytearray(path.read_bytes())
    at = len(raw) - 16 - 8                                  # int64 element count before the 16 bytes
    assert int.from_bytes(raw[at:at + 8], "little") == 4
    raw[at:at + 8] = (500_000_000).to_bytes(8, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(UnsafeFileError, match="declares 4 elements but its header says 500000000"):
        load_torch_file(path)


def test_a_view_larger_than_its_storage_is_refused(tmp_path):
    path = huge_view_stats(tmp_path / "v.pt", 1000)
    with pytest.raises(UnsafeFileError, match=r"shape \(1, 1000, 1, 1\) views a storage of 4 bytes"):
        load_torch_file(path)


PEAK = """
import resource, sys
import torch                                      # imports first: the baseline includes them
from datasets.img_latent_dataset import load_latent_stats
from evaluation.adm import check_batches
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    {call}
    outcome = "loaded"
except ValueError as err:
    outcome = str(err)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
print(outcome)
"""


def peak_mib(call):
    """(peak RSS growth in MiB, outcome) of `call` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", PEAK.format(call=call)], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    grown, outcome = proc.stdout.strip().splitlines()[-2:]
    return int(grown), outcome


def test_a_few_hundred_byte_stats_file_declaring_2_gb_allocates_nothing(tmp_path):
    path = huge_view_stats(tmp_path / "latents_stats.pt")
    assert os.path.getsize(path) < 2000
    grown, outcome = peak_mib(f"load_latent_stats({str(tmp_path)!r}, channels=4)")
    assert "views a storage of 4 bytes" in outcome and str(path) in outcome
    assert grown < 100          # the materialised (1, 5e8, 1, 1) float32 tensor would be 2 GB


def huge_npz(path, shape=(10 ** 9, 256, 256, 3), data=64):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("arr_0.npy", header.getvalue() + bytes(data))
    return path


def test_an_npz_declaring_1e9_images_is_refused_from_its_header(tmp_path):
    ref, huge = tmp_path / "ref.npz", huge_npz(tmp_path / "huge.npz")
    np.savez(ref, arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    grown, outcome = peak_mib(f"check_batches({str(ref)!r}, {str(huge)!r})")
    assert "huge.npz" in outcome and "header declares shape (1000000000, 256, 256, 3)" in outcome
    assert grown < 100


def test_npz_rows_and_stored_statistics_are_bounded(tmp_path):
    from evaluation.npz import MAX_STAT_DIM, NpzArrayReader, read_batch_statistics

    row = (1 << 15, 1 << 15, 3)          # one 3 GB "image": allocated per batch when streaming
    with pytest.raises(ValueError, match="one row of shape"):
        NpzArrayReader(str(huge_npz(tmp_path / "row.npz", (2, *row), 2 * int(np.prod(row)))), "arr_0")
    stats = tmp_path / "stats.npz"
    dim = MAX_STAT_DIM + 1
    with zipfile.ZipFile(stats, "w") as z:
        for key, shape in (("mu", (dim,)), ("sigma", (dim, dim)), ("mu_s", (2,)), ("sigma_s", (2, 2))):
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
            z.writestr(f"{key}.npy", header.getvalue() + bytes(8 * int(np.prod(shape))))
    with pytest.raises(ValueError, match=f"D <= {MAX_STAT_DIM}"):
        read_batch_statistics(str(stats))


def test_npz_object_arrays_are_refused(tmp_path):
    from evaluation.npz import NpzArrayReader

    path = tmp_path / "obj.npz"
    np.savez(path, arr_0=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="holds Python objects"):
        NpzArrayReader(str(path))


@pytest.mark.parametrize("version,ok", [("2.5.1+cu121", False), ("2.4.0", False), ("2.6.0", True),
                                        ("2.14.1+cu130", True), ("3.0.0a0", True)])
def test_torch_older_than_2_6_loads_no_weights(version, ok):
    from utils.safe_load import require_safe_torch

    if ok:
        require_safe_torch(version)
    else:
        with pytest.raises(UnsafeFileError, match="CVE-2025-32434.*torch>=2.6"):
            require_safe_torch(version)


def test_safetensors_size_cap(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(1000)}, str(path))
    assert torch.equal(read_safetensors(path)["w"], torch.ones(1000))
    with pytest.raises(UnsafeFileError, match="more than"):
        read_safetensors(path, max_bytes=100)

"""Atomic writes leave either the old file or the complete new one, never a partial file."""
import json
import os

import pytest
import torch

from utils.fileio import atomic_torch_save, atomic_write, atomic_write_json


def test_atomic_torch_save_and_json_round_trip(tmp_path):
    atomic_torch_save({"w": torch.arange(5)}, tmp_path / "a" / "ckpt.pt")
    assert torch.equal(torch.load(tmp_path / "a" / "ckpt.pt")["w"], torch.arange(5))
    atomic_write_json({"fid": 1.35}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"fid": 1.35}


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_files_get_umask_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    atomic_write_json({}, tmp_path / "p.json")
    assert (tmp_path / "p.json").stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------- named write faults (issue 18)

import errno  # noqa: E402
import io  # noqa: E402

import utils.fileio as fileio  # noqa: E402
from utils.fileio import WriteError, atomic_write_text, require_torch_file  # noqa: E402


class _FullDisk(io.FileIO):
    """A file on a disk that fills up after `room` bytes."""
    room = 64

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def test_disk_full_during_torch_save_is_named_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "0000010.pt"
    atomic_torch_save({"w": torch.arange(3)}, target)
    old = target.read_bytes()
    monkeypatch.setattr(fileio, "open", lambda path, mode="r", *a, **k: _FullDisk(path, mode.replace("b", "")),
                        raising=False)
    with pytest.raises(WriteError) as info:
        atomic_torch_save({"w": torch.zeros(10000)}, target)  # torch itself says only "unexpected pos"
    assert str(info.value) == f"no space left on device while writing {target}"
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == old and os.listdir(tmp_path) == ["0000010.pt"]


def test_disk_full_and_read_only_in_text_writers(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError, match=f"^no space left on device while writing {target}$"):
        atomic_write(target, full)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fileio.tempfile, "mkstemp", read_only)
    with pytest.raises(WriteError, match=f"^cannot write {target}: Read-only file system$"):
        atomic_write_json({"fid": 2.0}, target)
    assert target.read_text() == "old"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_unwritable_directory_is_named(tmp_path):
    target = tmp_path / "locked" / "result.json"
    target.parent.mkdir()
    target.write_text("old")
    target.parent.chmod(0o555)
    try:
        with pytest.raises(WriteError, match=f"^cannot write {target}: Permission denied$"):
            atomic_write_text("new", target)
        assert target.read_text() == "old"
    finally:
        target.parent.chmod(0o755)


def test_other_os_errors_pass_through_unchanged(tmp_path):
    def broken(tmp):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "x", broken)
    assert not isinstance(info.value, WriteError) and info.value.errno == errno.EIO


def test_text_file_is_not_a_pytorch_checkpoint(tmp_path):
    text = tmp_path / "weights.pt"
    text.write_text("this is a README, not weights\n")
    with pytest.raises(ValueError, match=f"^not a PyTorch checkpoint: {text}$"):
        require_torch_file(text)
    for kwargs in ({}, {"_use_new_zipfile_serialization": False}):  # zip and legacy formats pass
        torch.save({"w": torch.ones(1)}, tmp_path / "ok.pt", **kwargs)
        require_torch_file(tmp_path / "ok.pt")

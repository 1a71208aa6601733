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

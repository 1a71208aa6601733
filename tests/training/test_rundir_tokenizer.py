"""The tokenizer trainer (training/vavae.py) follows the run-directory rules of training/rundir.py:
an existing run is continued (train.resume, the default), refused (train.resume=false) or moved
aside (train.overwrite=true); a resume with a changed run-defining key stops; a corrupt newest
checkpoint falls back to the previous one. Tiny CPU model (configs/tokenizer/tiny_cpu.yaml)."""
from pathlib import Path

import pytest
import torch

import training.vavae as T
from tokenizer.data import write_toy_images
from tokenizer.train_config import load_train_config
from training.checkpoints import CheckpointError, read_checkpoint
from training.rundir import RunDirError

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tokenizer" / "tiny_cpu.yaml"


def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _cfg(images, **extra):
    overrides = {
        "data.params.train.data_root": str(images / "train"), "data.params.validation.data_root": "null",
        "data.params.batch_size": 2,
        "data.params.num_workers": 0, "model.params.embed_dim": 4, "model.params.use_vf": "null",
        "model.params.lossconfig.params.disc_start": 0, "model.params.lossconfig.params.lpips_random_init": True,
        "model.params.lossconfig.params.disc_ndf": 8, "train.log_every": 1, "train.sample_every": 100,
        "train.num_sample_images": 1, "train.ckpt_every": 1, "train.max_steps": 2,
    }
    overrides.update(extra)
    return load_train_config(str(CONFIG), [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tok_rundir")
    write_toy_images(root / "images" / "train" / "a", 4, size=(32, 32), seed=0)
    T.train(_cfg(root / "images"), root / "run")
    yield {"images": root / "images", "dir": root / "run"}
    torch.set_num_threads(old)


def test_refusals_change_nothing(run):
    before = snapshot(run["dir"])
    with pytest.raises(RunDirError) as info:
        T.train(_cfg(run["images"], **{"train.resume": "false"}), run["dir"])
    assert str(run["dir"]) in str(info.value) and "train.overwrite=true" in str(info.value)
    with pytest.raises(RunDirError) as info:
        T.train(_cfg(run["images"], **{"train.max_steps": 3, "model.base_learning_rate": 3e-4}), run["dir"])
    assert "model.base_learning_rate: 0.001 -> 0.0003" in str(info.value) and "0000002.pt" in str(info.value)
    after = snapshot(run["dir"])
    log = after.pop("log.txt")  # the refused runs only appended their log lines
    assert log.startswith(before.pop("log.txt")) and after == before  # config.yaml included


def test_corrupt_newest_checkpoint_falls_back(run, capsys):
    ckpts = run["dir"] / "checkpoints"
    (ckpts / "0000002.pt").write_bytes(b"PK\x03\x04 truncated")
    T.train(_cfg(run["images"], **{"train.max_steps": 3}), run["dir"])
    log = capsys.readouterr().out
    assert f"cannot resume: corrupt checkpoint {ckpts / '0000002.pt'}" in log
    assert f"resumed from {ckpts / '0000001.pt'} at step 1" in log
    assert read_checkpoint(ckpts / "0000003.pt", ("step",))["step"] == 3

    for step in (1, 2, 3):  # nothing readable left: stop, naming every file
        (ckpts / f"{step:07d}.pt").write_text("garbage")
    with pytest.raises(CheckpointError) as info:
        T.train(_cfg(run["images"], **{"train.max_steps": 4}), run["dir"])
    assert all(f"{s:07d}.pt" in str(info.value) for s in (1, 2, 3))
    assert (ckpts / "0000001.pt").read_text() == "garbage"  # left for the user to inspect


def test_overwrite_moves_outputs_aside(run):
    before = snapshot(run["dir"] / "checkpoints")
    T.train(_cfg(run["images"], **{"train.overwrite": "true"}), run["dir"])
    aside = [p for p in run["dir"].iterdir() if p.name.startswith("checkpoints.old-")]
    assert len(aside) == 1 and snapshot(aside[0]) == before
    assert [p.name for p in sorted((run["dir"] / "checkpoints").iterdir())] == ["0000001.pt", "0000002.pt", "last.pt"]

"""Shared machines (docs/reliability.md, Security): another user's planted links are never followed,
temporary files have unpredictable names and private modes, and the launcher's environment is
data, never shell code."""
import errno
import logging
import os
import stat
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from training.checkpoints import save_checkpoint
from training.metrics import MetricsSink
from training.rundir import RunDirError, RunLock
from utils.fileio import WriteError, append_text
from utils.runtime import configure_logging

FILTER = str(REPO / "tools/launch_errors.py")


@pytest.fixture
def victim(tmp_path):
    """A file of "yours" that a planted link points at: it must stay as it is."""
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


def test_a_link_planted_at_log_txt_is_not_followed(tmp_path, victim):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.txt").symlink_to(victim)
    try:
        with pytest.raises(WriteError, match=r"refusing to write .*log\.txt: it is a symbolic link"):
            configure_logging(True, run / "log.txt")
        logging.getLogger("x").info("a line that must not reach the victim")
    finally:
        configure_logging(False)
    assert victim.read_text() == "precious\n"


def test_log_txt_is_appended_normally(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("earlier run\n")
    try:
        configure_logging(True, log)
        logging.getLogger("x").info("second run")
    finally:
        configure_logging(False)
    assert log.read_text().startswith("earlier run\n") and log.read_text().rstrip().endswith("second run")


def test_a_link_planted_at_metrics_jsonl_is_refused(tmp_path, victim):
    (tmp_path / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(WriteError, match="metrics.jsonl: it is a symbolic link"):
        MetricsSink(tmp_path, enabled=True, report_to="none")
    with pytest.raises(WriteError, match="symbolic link"):
        append_text(tmp_path / "metrics.jsonl", '{"step": 1}\n')
    assert victim.read_text() == "precious\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_metrics_append_names_a_full_disk(tmp_path):
    from pathlib import Path

    sink = MetricsSink(tmp_path, enabled=True, report_to="none")
    sink.path = Path("/dev/full")            # every write: ENOSPC
    with pytest.raises(WriteError, match="^no space left on device while writing /dev/full$"):
        sink.log({"step": 1, "loss": 0.5})


def test_a_link_planted_at_the_lock_is_refused(tmp_path, victim):
    (tmp_path / ".run.lock").symlink_to(victim)
    with pytest.raises(RunDirError, match="symbolic link"):
        RunLock(tmp_path).acquire()
    assert victim.read_text() == "precious\n"


def test_the_lock_is_not_written_through_a_predictable_temp_name(tmp_path, victim):
    """The old temp name `.run.lock.{pid}.tmp` was predictable: a link planted there took the write."""
    (tmp_path / f".run.lock.{os.getpid()}.tmp").symlink_to(victim)
    lock = RunLock(tmp_path).acquire()
    try:
        assert victim.read_text() == "precious\n"
        assert str(os.getpid()) in (tmp_path / ".run.lock").read_text()
        assert not any(p.name.startswith(".run.lock.") and p.name != f".run.lock.{os.getpid()}.tmp"
                       for p in tmp_path.iterdir())
    finally:
        lock.release()


def test_last_pt_link_is_replaced_atomically_through_an_unpredictable_name(tmp_path, victim):
    (tmp_path / ".last.pt.tmp").symlink_to(victim)         # the old fixed temp name
    for step in (1, 2):
        save_checkpoint({"step": step}, tmp_path, step, link_last=True)
    assert os.readlink(tmp_path / "last.pt") == "0000002.pt"
    assert torch.load(tmp_path / "last.pt", weights_only=True) == {"step": 2}
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.pt.tmp", "0000001.pt", "0000002.pt", "last.pt",
                                                         "victim.txt"]


def test_last_pt_names_a_write_error(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("utils.fileio.os.symlink", denied)
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'last.pt'}: Permission denied"):
        save_checkpoint({"step": 1}, tmp_path, 1, link_last=True)


# ------------------------------------------------------------------------------------------------
# The launcher
# ------------------------------------------------------------------------------------------------

def launch_with(tmp_path, **env):
    """`launch` of tools/launch.sh on a script that would create RAN, under the given environment."""
    script = tmp_path / "script.py"
    script.write_text("open('RAN', 'w').close()\n")
    full = dict(os.environ, TMPDIR=str(tmp_path), **env)
    return subprocess.run(["bash", "-c", f"source {REPO}/tools/launch.sh && launch {script}"], cwd=tmp_path,
                          env=full, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["WORLD_SIZE", "GPUS_PER_NODE", "NODE_RANK", "MASTER_PORT"])
def test_a_crafted_number_runs_nothing(tmp_path, name):
    proc = launch_with(tmp_path, **{name: "a[$(touch PWNED)]"})
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == f"error: {name}{' (or RANK)' if name == 'NODE_RANK' else ''} must be a " \
                                           "whole number >= " + ("0" if name == "NODE_RANK" else "1") + \
                                           " (at most 6 digits), got 'a[$(touch PWNED)]'"
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "RAN").exists()


@pytest.mark.parametrize("value", ["0", "08", "-1", "1e3", "1234567", " 1"])
def test_world_size_must_be_a_plain_positive_number(tmp_path, value):
    proc = launch_with(tmp_path, WORLD_SIZE=value)
    assert proc.returncode == 2 and "WORLD_SIZE" in proc.stderr and not (tmp_path / "RAN").exists()


def run_filter(text, log):
    return subprocess.run([sys.executable, FILTER, str(log)], input=text.encode(), capture_output=True)


def test_the_launcher_log_is_private_and_never_follows_a_link(tmp_path, victim):
    log = tmp_path / "launch.log"
    run_filter("error: boom\n", log)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and log.read_text() == "error: boom\n"
    link = tmp_path / "planted.log"
    link.symlink_to(victim)
    proc = run_filter("error: boom\n", link)
    assert victim.read_text() == "precious\n"
    assert proc.stderr.decode().splitlines()[-1] == "error: boom"   # the script's error stays last


@pytest.mark.slow
def test_launch_logs_of_failed_runs_are_private(tmp_path):
    from conftest import TINY_CONFIG
    proc = subprocess.run(["bash", str(REPO / "run_train.sh"), TINY_CONFIG, "train.max_steps=-1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TMPDIR=str(tmp_path), MASTER_PORT=str(29500 + os.getpid() % 1000)))
    assert proc.returncode == 1
    logs = [p for p in tmp_path.iterdir() if p.name.startswith("launch-train.")]
    assert len(logs) == 1 and stat.S_IMODE(logs[0].stat().st_mode) == 0o600
    assert logs[0].name != f"launch-train-{os.getpid()}.log"

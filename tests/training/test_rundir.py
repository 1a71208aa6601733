"""Run directories are owned (training/rundir.py): a run writes into an existing directory only
when resuming or told to start over; a lock keeps a second process out; a resume with a changed
run-defining key stops; a corrupt newest checkpoint falls back to the previous one
(training/checkpoints.py load_latest). Each case checks the error names the culprit and that the
earlier outputs are byte-for-byte unchanged."""
import json
import logging
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from datasets.tiny_latents import write_tiny_latents
from training.checkpoints import CheckpointError, load_latest, read_checkpoint
from training.rundir import (DIT_FREE_KEYS, LOCK_NAME, RunDirError, RunLock, check_resume_config,
                             claim_run_dir, config_differences, release_run_dir)

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs/tiny/lightningdit_tiny.yaml")


def snapshot(directory: Path) -> dict:
    """{relative path: bytes} of every file under `directory`."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


# ------------------------------------------------------------------------------------------------
# Units: ownership, lock, config comparison, checkpoint fallback
# ------------------------------------------------------------------------------------------------

def test_claim_run_dir_rules(tmp_path):
    run = tmp_path / "exp"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "0000010.pt").write_bytes(b"old weights")
    (run / "metrics.jsonl").write_text('{"step": 10}\n')
    before = snapshot(run)
    assert claim_run_dir(tmp_path / "fresh", resume=False, overwrite=False, has_run=False) == "new"
    with pytest.raises(RunDirError) as info:
        claim_run_dir(run, resume=False, overwrite=False, has_run=True, outputs=("checkpoints",))
    msg = str(info.value)
    assert "\n" not in msg and str(run) in msg
    assert "train.resume=true" in msg and "train.overwrite=true" in msg and "train.exp_name" in msg
    with pytest.raises(RunDirError, match="exclude each other"):
        claim_run_dir(run, resume=True, overwrite=True, has_run=True)
    assert claim_run_dir(run, resume=True, overwrite=False, has_run=True) == "resume"
    assert snapshot(run) == before  # refusals and resume touch nothing

    assert claim_run_dir(run, resume=False, overwrite=True, has_run=True,
                         outputs=("checkpoints", "metrics.jsonl", "tensorboard")) == "overwrite"
    aside = sorted(p.name for p in run.iterdir())
    assert len(aside) == 2 and aside[0].startswith("checkpoints.old-") and aside[1].startswith("metrics.old-")
    assert aside[1].endswith(".jsonl")  # the suffix is kept: tools still open it
    moved = {k.replace(aside[0], "checkpoints").replace(aside[1], "metrics.jsonl"): v
             for k, v in snapshot(run).items()}
    assert moved == before  # moved aside byte for byte, nothing deleted


def test_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path):
    run = tmp_path / "exp"
    run.mkdir()
    lock_file = run / LOCK_NAME
    live = os.getppid()  # alive for the whole test, not this process
    lock_file.write_text(json.dumps({"pid": live, "host": socket.gethostname(), "started": "t0"}))
    with pytest.raises(RunDirError) as info:
        RunLock(run).acquire()
    msg = str(info.value)
    assert f"in use by pid {live} on {socket.gethostname()}" in msg and str(lock_file) in msg
    other_host = {"pid": dead_pid(), "host": "another-node", "started": "t0"}
    lock_file.write_text(json.dumps(other_host))  # cannot check a pid on another host: refused
    with pytest.raises(RunDirError, match="another-node"):
        RunLock(run).acquire()
    assert json.loads(lock_file.read_text()) == other_host  # the refusal did not touch the lock

    lock_file.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "started": "t0"}))
    lock = RunLock(run).acquire()  # stale: its process is dead
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock_file.exists()
    assert sorted(os.listdir(run)) == []  # no temp files left


def test_lock_from_another_process_blocks_a_second_writer(tmp_path):
    run = tmp_path / "exp"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from training.rundir import RunLock; "
                               f"RunLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=f"in use by pid {holder.pid}"):
            RunLock(run).acquire()
    finally:
        holder.kill()
        holder.wait()
    RunLock(run).acquire().release()  # killed without cleanup: the lock is stale now


def test_config_differences_ignore_free_keys():
    old = {"model": {"hidden_size": 64}, "optimizer": {"lr": 2e-4}, "train": {"max_steps": 10, "global_seed": 0},
           "sample": {"cfg_scale": 1.0}, "data": {"data_path": "a"}}
    new = {"model": {"hidden_size": 64}, "optimizer": {"lr": 1e-4}, "train": {"max_steps": 99, "global_seed": 1},
           "sample": {"cfg_scale": 4.0}, "data": {"data_path": "b"}}
    assert config_differences(old, new, DIT_FREE_KEYS) == [
        ("data.data_path", "a", "b"), ("optimizer.lr", 2e-4, 1e-4), ("train.global_seed", 0, 1)]
    with pytest.raises(RunDirError) as info:
        check_resume_config(Path("ck.pt"), old, new, DIT_FREE_KEYS, allow_change=False)
    msg = str(info.value)
    assert "optimizer.lr: 0.0002 -> 0.0001" in msg and "train.allow_config_change=true" in msg
    assert "max_steps" not in msg and "cfg_scale" not in msg
    check_resume_config(Path("ck.pt"), old, new, DIT_FREE_KEYS, allow_change=True)  # deliberate: allowed


def test_load_latest_skips_corrupt_files_and_names_them(tmp_path, caplog):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for step in (10, 20):
        torch.save({"step": step}, ckpts / f"{step:07d}.pt")
    good = (ckpts / "0000020.pt").read_bytes()
    (ckpts / "0000030.pt").write_bytes(good[: len(good) // 2])  # truncated by a full disk
    (ckpts / "0000040.pt").write_text("not a checkpoint")
    with caplog.at_level(logging.INFO):
        path, ckpt = load_latest(ckpts, lambda p: read_checkpoint(p, ("step",)))
    assert path.name == "0000020.pt" and ckpt["step"] == 20
    assert "0000040.pt" in caplog.text and "0000030.pt" in caplog.text
    torch.save({"no_step": 1}, ckpts / "0000020.pt")  # readable, but not a training checkpoint
    torch.save({"no_step": 1}, ckpts / "0000010.pt")
    with pytest.raises(CheckpointError) as info:
        load_latest(ckpts, lambda p: read_checkpoint(p, ("step",)))
    assert all(f"{s:07d}.pt" in str(info.value) for s in (10, 20, 30, 40)) and str(ckpts) in str(info.value)
    assert load_latest(tmp_path / "none") is None


def test_text_file_as_weights_is_named(tmp_path):
    from models.checkpoint import load_lightningdit_checkpoint
    from tokenizer.checkpoint import read_state_dict

    text = tmp_path / "model.pt"
    text.write_text("<html>download page</html>\n")
    for load in (load_lightningdit_checkpoint, read_state_dict):
        with pytest.raises(ValueError, match=f"^not a PyTorch checkpoint: {text}$"):
            load(text)


# ------------------------------------------------------------------------------------------------
# train.py end to end (tiny model, a few steps)
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rundir")
    data = write_tiny_latents(str(root / "latents"), num_items=32, shape=(4, 4, 4), num_classes=10)
    common = [CONFIG, f"data.data_path={data}", f"train.output_dir={root / 'out'}", "train.global_batch_size=8",
              "train.log_every=2", "train.ckpt_every=2", "train.max_steps=4", "train.exp_name=run"]
    exp = train.main(common)
    yield {"root": root, "common": common, "exp": exp}
    torch.set_num_threads(old)


def test_rerun_without_resume_is_refused_and_changes_nothing(tiny):
    before = snapshot(tiny["exp"] / "checkpoints")
    with pytest.raises(RunDirError) as info:
        train.main(tiny["common"])
    assert str(tiny["exp"]) in str(info.value) and "train.overwrite=true" in str(info.value)
    assert snapshot(tiny["exp"] / "checkpoints") == before
    assert not (tiny["exp"] / LOCK_NAME).exists()  # a refused run leaves no lock behind


def test_entry_script_exits_with_one_error_line(tiny, monkeypatch):
    """`python train.py ...` as a script (its __main__ block), in-process to stay fast."""
    monkeypatch.setattr(sys, "argv", [str(REPO / "train.py"), *tiny["common"]])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / "train.py"), run_name="__main__")
    msg = str(info.value.code)  # SystemExit(str): Python prints it to stderr and exits with 1
    assert msg.startswith("error: ") and "\n" not in msg and str(tiny["exp"]) in msg


def test_resume_with_a_changed_key_needs_the_flag(tiny):
    before = snapshot(tiny["exp"] / "checkpoints")
    with pytest.raises(RunDirError) as info:
        train.main(tiny["common"] + ["train.resume=true", "train.max_steps=6", "optimizer.lr=5e-4"])
    assert "optimizer.lr: 0.001 -> 0.0005" in str(info.value) and "0000004.pt" in str(info.value)
    assert snapshot(tiny["exp"] / "checkpoints") == before


def test_corrupt_newest_checkpoint_resumes_from_the_previous(tiny, capsys):
    ckpts = tiny["exp"] / "checkpoints"
    newest = ckpts / "0000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    train.main(tiny["common"] + ["train.resume=true"])
    log = capsys.readouterr().out  # the entry script logs to stdout
    assert f"cannot resume: corrupt checkpoint {newest}: " in log
    assert f"resumed from {ckpts / '0000002.pt'} at step 2" in log
    assert read_checkpoint(newest, ("step",))["step"] == 4  # rewritten by the resumed run


def test_overwrite_moves_the_old_run_aside(tiny):
    before = snapshot(tiny["exp"] / "checkpoints")
    train.main(tiny["common"] + ["train.overwrite=true", "optimizer.lr=5e-4"])
    aside = [p for p in tiny["exp"].iterdir() if p.name.startswith("checkpoints.old-")]
    assert len(aside) == 1 and snapshot(aside[0]) == before
    fresh = read_checkpoint(tiny["exp"] / "checkpoints" / "0000004.pt", ("config",))
    assert fresh["config"]["optimizer"]["lr"] == 5e-4
    release_run_dir(tiny["exp"])


def test_a_directory_in_use_is_refused(tiny):
    run = tiny["root"] / "out" / "busy"
    run.mkdir(parents=True)
    (run / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "t0"}))
    with pytest.raises(RunDirError, match=f"in use by pid {os.getppid()}"):
        train.main(tiny["common"][:-1] + ["train.exp_name=busy"])
    assert sorted(os.listdir(run)) == [LOCK_NAME]  # nothing written into it


# ------------------------------------------------------------------------------------------------
# Extraction output folders (extract_features.py): resumable by manifest, locked, --overwrite
# ------------------------------------------------------------------------------------------------

def test_extraction_folder_lock_and_overwrite(tmp_path):
    import extract_features as ef

    out = tmp_path / "latents"
    out.mkdir()
    for name in ("latents_rank00_shard000.safetensors", "extraction.json", "latents_stats.pt", "extraction_log.txt"):
        (out / name).write_bytes(name.encode())
    (out / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "t0"}))
    with pytest.raises(RunDirError, match=f"in use by pid {os.getppid()}"):
        ef.claim_output_dir(out, overwrite=True)
    assert len(list(out.iterdir())) == 5  # refused: nothing moved
    (out / LOCK_NAME).unlink()

    ef.claim_output_dir(out, overwrite=False)  # same arguments resume: nothing moved
    assert (out / "extraction.json").is_file()
    ef.claim_output_dir(out, overwrite=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("latents.old-")]
    assert len(aside) == 1
    assert sorted(p.name for p in aside[0].iterdir()) == [
        "extraction.json", "latents_rank00_shard000.safetensors", "latents_stats.pt"]
    assert all((aside[0] / p).read_bytes() == p.encode() for p in os.listdir(aside[0]))
    assert sorted(os.listdir(out)) == [LOCK_NAME, "extraction_log.txt"]  # the log keeps appending
    release_run_dir(out)

    (out / "extraction.json").write_text(json.dumps({"seed": 1}))
    with pytest.raises(ValueError) as info:
        ef.check_manifest(out, {key: None for key in ef.CONTENT_KEYS} | {"seed": 2})
    assert "--overwrite" in str(info.value) and "--output-path" in str(info.value)

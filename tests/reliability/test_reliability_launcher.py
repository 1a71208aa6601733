"""run_*.sh: a failing script's own one-line error is the launcher's last line (once, however many
processes), its exit status is the launcher's, and `--help` answers without side effects."""
import os
import subprocess
import sys

import pytest

from conftest import REPO, TINY_CONFIG

FILTER = str(REPO / "tools/launch_errors.py")
ERROR = "error: override 'train.max_steps=-1': bad value for 'train.max_steps': -1 (must be in [0, 1000000000])\n"
ACCELERATE_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/venv/bin/accelerate", line 6, in <module>\n'
    "    sys.exit(main())\n"
    '  File "/venv/lib/python3.11/site-packages/accelerate/commands/launch.py", line 999, in simple_launcher\n'
    "    raise subprocess.CalledProcessError(returncode=process.returncode, cmd=cmd)\n"
    "subprocess.CalledProcessError: Command '['/venv/bin/python', 'train.py']' returned non-zero exit status {code}.\n")
ELASTIC_REPORT = (
    "W1129 17:08:38.016000 16071 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 16321 "
    "closing signal SIGTERM\n"
    "Traceback (most recent call last):\n"
    '  File "/venv/bin/accelerate", line 6, in <module>\n'
    "    sys.exit(main())\n"
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
    "============================================================\n"
    "/work/train.py FAILED\n"
    "Failures:\n  exitcode  : 1 (pid: 16321)\n"
    "Root Cause (first observed failure):\n[0]:\n  rank      : 0 (local_rank: 0)\n  exitcode  : {code} (pid: 16320)\n"
    "============================================================\n")
SCRIPT_TRACEBACK = ("Traceback (most recent call last):\n"
                    '  File "/work/train.py", line 3, in <module>\n'
                    "    main()\n"
                    "RuntimeError: boom\n")


def run_filter(text, tmp_path):
    log = tmp_path / "launch.log"
    proc = subprocess.run([sys.executable, FILTER, str(log)], input=text.encode(), capture_output=True)
    return proc.returncode, proc.stderr.decode(), log.read_text()


def test_single_process_error_is_last_with_the_script_status(tmp_path):
    code, shown, log = run_filter("step 1\n" + ERROR + ACCELERATE_TRACEBACK.format(code=2), tmp_path)
    assert shown == "step 1\n" + ERROR
    assert code == 2 and "CalledProcessError" in log


def test_two_processes_show_one_error_and_no_elastic_report(tmp_path):
    code, shown, log = run_filter(ERROR + ERROR + ELASTIC_REPORT.format(code=3), tmp_path)
    assert shown == ERROR
    assert code == 3 and "ChildFailedError" in log and "SIGTERM" in log


def test_script_tracebacks_pass_through_once(tmp_path):
    code, shown, _ = run_filter(SCRIPT_TRACEBACK + SCRIPT_TRACEBACK + ACCELERATE_TRACEBACK.format(code=1), tmp_path)
    assert shown == SCRIPT_TRACEBACK and shown.splitlines()[-1] == "RuntimeError: boom" and code == 1


def test_success_passes_everything_including_progress_bars(tmp_path):
    text = "sampling:  10%|#\rsampling: 100%|##########\ndone\n"
    code, shown, _ = run_filter(text, tmp_path)
    assert (code, shown) == (0, text)


def sandbox(tmp_path):
    """A directory of symlinks to the repository's entries: a script writing beside itself
    (a venv, demo_output/, output/) would show up as a new entry here."""
    box = tmp_path / "repo"
    box.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in ("output", "demo_output", "demo_images"):
            (box / entry.name).symlink_to(entry)
    return box


SLOW = pytest.mark.slow  # each imports torch and the script (10-100 s on a loaded 2-core machine)


@pytest.mark.parametrize("script", ["run_demo.sh", "run_tests.sh", pytest.param("run_fid_eval.sh", marks=SLOW),
    pytest.param("run_train.sh", marks=SLOW), pytest.param("run_inference.sh", marks=pytest.mark.slow), pytest.param("run_fast_inference.sh", marks=pytest.mark.slow),
    pytest.param("run_extraction.sh", marks=pytest.mark.slow), pytest.param("run_train_tokenizer.sh", marks=pytest.mark.slow),
    pytest.param("run_tokenizer_eval.sh", marks=pytest.mark.slow)])
def test_help_has_no_side_effects(script, tmp_path):
    box = sandbox(tmp_path)
    before = sorted(p.name for p in box.iterdir())
    proc = subprocess.run(["bash", str(box / script), "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower() or "bash run_" in proc.stdout
    assert sorted(p.name for p in box.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def launch_env(**extra):
    env = dict(os.environ, MASTER_PORT=str(29500 + os.getpid() % 1000), TMPDIR=extra.pop("TMPDIR"))
    env.update(extra)
    return env


@pytest.mark.slow
def test_run_train_failure_ends_with_the_script_error(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "run_train.sh"), TINY_CONFIG, "train.max_steps=-1", "--bogus"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=launch_env(TMPDIR=str(tmp_path)))
    assert proc.returncode == 2                                   # argparse's status, not accelerate's 1
    assert proc.stderr.splitlines()[-1] == "train.py: error: unrecognized arguments: --bogus"
    assert "CalledProcessError" not in proc.stderr


@pytest.mark.slow
def test_two_process_failure_shows_one_error(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "run_train.sh"), TINY_CONFIG, "train.max_steps=-1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=launch_env(TMPDIR=str(tmp_path), GPUS_PER_NODE="2"))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [ERROR.strip()]

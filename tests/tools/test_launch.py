"""tools/launch.sh and the run_*.sh scripts, run as a user runs them: from a fresh shell they find
the project's environment or say in one line what to run; the multi-node variables give one
accelerate command (LAUNCH_DRY_RUN=1 prints it instead of starting processes) or one error naming
both readings of an ambiguous WORLD_SIZE."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCHERS = ["run_train.sh", "run_inference.sh", "run_fast_inference.sh", "run_extraction.sh",
             "run_train_tokenizer.sh", "run_tokenizer_eval.sh", "run_train_semvae.sh", "run_fid_eval.sh"]
FRESH_PATH = "/usr/bin:/bin"
SLOW = pytest.mark.slow  # each imports torch and its script (10-100 s on a loaded 2-core machine)


def sandbox(tmp_path: Path, venv: Path = None) -> Path:
    """A checkout made of links to the repository's entries, with `venv` as its .venv (or none)."""
    box = tmp_path / "repo"
    box.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".venv", "output", "demo_output", "demo_images", ".git"):
            (box / entry.name).symlink_to(entry)
    if venv is not None:
        (box / ".venv").symlink_to(venv)
    return box


def fresh(cmd, cwd, **env):
    """`cmd` as from a new login: only PATH (and `env`) set, no environment activated."""
    return subprocess.run(cmd, cwd=cwd, env={"PATH": FRESH_PATH, **env}, capture_output=True, text=True,
                          timeout=600)


def this_venv() -> Path:
    prefix = Path(sys.prefix)
    if not (prefix / "bin" / "activate").is_file():
        pytest.skip("the tests do not run in a virtualenv with bin/activate")
    return prefix


def not_an_environment(tmp_path: Path) -> str:
    """A PATH whose `python` has no torch (a stand-in for a system Python)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    return f"{bin_dir}:{FRESH_PATH}"


@pytest.mark.parametrize("script", [s if s in ("run_fid_eval.sh", "run_train.sh") else pytest.param(s, marks=SLOW)
                                    for s in LAUNCHERS])
def test_help_from_a_fresh_shell_activates_the_checkouts_venv(script, tmp_path):
    box = sandbox(tmp_path, this_venv())
    proc = fresh(["bash", str(box / script), "--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


@pytest.mark.parametrize("script", LAUNCHERS)
def test_without_an_environment_one_line_says_what_to_run(script, tmp_path):
    box = sandbox(tmp_path)
    path = not_an_environment(tmp_path)
    for args in (["--help"], ["configs/tiny/lightningdit_tiny.yaml", "ref.npz"]):
        proc = fresh(["bash", str(box / script), *args], cwd=tmp_path, PATH=path)
        assert proc.returncode == 1, proc.stderr
        assert proc.stdout == "" or script == "run_fid_eval.sh" and "usage" in proc.stdout.lower()
        assert proc.stderr.count("\n") == 1, proc.stderr
        line = proc.stderr.strip()
        assert line.startswith("error: no Python environment with torch and accelerate")
        assert f"(python: {tmp_path / 'bin' / 'python'})" in line and f"no {box / '.venv'}" in line
        assert f"run: cd {box} && bash tools/setup_venv.sh" in line and "README, Install" in line


def test_a_venv_without_torch_is_named(tmp_path):
    empty = tmp_path / "empty-venv"
    (empty / "bin").mkdir(parents=True)
    (empty / "bin" / "activate").write_text("")    # activates nothing: `python` stays the fake one
    box = sandbox(tmp_path, empty)
    proc = fresh(["bash", str(box / "run_train.sh"), "--help"], cwd=tmp_path, PATH=not_an_environment(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"error: {box / '.venv'} has no torch or accelerate; run: cd {box} && "
                                        "bash tools/setup_venv.sh (README, Install)"]


def test_this_checkouts_packages_come_first(tmp_path):
    """Whatever environment runs a tool, it imports the packages of the checkout it was started from
    (an editable install of another checkout comes after)."""
    show = tmp_path / "show-path"
    show.write_text('#!/bin/sh\necho "$PYTHONPATH"\n')
    show.chmod(0o755)
    proc = subprocess.run(["bash", str(REPO / "run_fid_eval.sh"), "ref.npz", "sample.npz"], cwd=tmp_path,
                          env=dict(os.environ, PYTHON=str(show), PYTHONPATH="/elsewhere"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{REPO}:/elsewhere"


#################################################################################
#                  Nodes: NNODES, and WORLD_SIZE read unambiguously             #
#################################################################################

def dry_run(tmp_path, **env):
    """The command run_train.sh would run, under `env` (and nothing else of the multi-node kind)."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("WORLD_SIZE", "NNODES", "RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "GPUS_PER_NODE")}
    proc = subprocess.run(["bash", str(REPO / "run_train.sh"), "configs/x.yaml", "data.data_path=/d"], cwd=tmp_path,
                          env={**base, "LAUNCH_DRY_RUN": "1", **env}, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def accelerate_args(stdout: str) -> dict:
    """The accelerate options of a dry-run line, as {option: value} (flags: True)."""
    words = shlex.split(stdout.strip())
    words = words[words.index("launch") + 1:]
    opts, i = {}, 0
    while words[i].startswith("--"):
        if i + 1 < len(words) and not words[i + 1].startswith("--") and not words[i + 1].endswith(".py"):
            opts[words[i]], i = words[i + 1], i + 2
        else:
            opts[words[i]], i = True, i + 1
    assert words[i] == str(REPO / "train.py") and words[i + 1:] == ["configs/x.yaml", "data.data_path=/d"]
    return opts


def layout(opts: dict) -> tuple:
    return int(opts["--num_processes"]), int(opts["--num_machines"]), int(opts.get("--machine_rank", 0))


def test_nnodes_sets_the_nodes_and_wins_over_world_size(tmp_path):
    code, out, err = dry_run(tmp_path, GPUS_PER_NODE="8", NNODES="2", NODE_RANK="1", WORLD_SIZE="16",
                             MASTER_ADDR="10.0.0.1", MASTER_PORT="29400")
    assert code == 0 and err == "", err
    opts = accelerate_args(out)
    assert layout(opts) == (16, 2, 1) and opts["--multi_gpu"] is True
    assert (opts["--main_process_ip"], opts["--main_process_port"]) == ("10.0.0.1", "29400")
    assert opts["--mixed_precision"] == "bf16"                     # run_train.sh's default


def test_world_size_that_can_only_be_nodes_is_read_as_nodes_with_a_note(tmp_path):
    """The authors' convention (WORLD_SIZE=4 nodes of 8 GPUs): 4 processes would not fill a node of 8."""
    code, out, err = dry_run(tmp_path, GPUS_PER_NODE="8", WORLD_SIZE="4", RANK="3")
    assert code == 0
    assert layout(accelerate_args(out)) == (32, 4, 3)
    assert err.splitlines() == ["note: WORLD_SIZE=4 read as the number of nodes (32 processes): as a process "
                                "count it would not fill nodes of 8; NNODES=4 says so without this note"]


@pytest.mark.parametrize("world,per_node,nodes_reading,procs_reading",
                         [("8", "8", (64, 8), (8, 1)), ("16", "8", (128, 16), (16, 2)), ("4", "2", (8, 4), (4, 2))])
def test_world_size_that_could_be_processes_is_refused_naming_both_readings(tmp_path, world, per_node,
                                                                             nodes_reading, procs_reading):
    """A cluster that sets WORLD_SIZE to its process count (torch's meaning) must not start
    WORLD_SIZE x GPUS_PER_NODE processes."""
    code, out, err = dry_run(tmp_path, GPUS_PER_NODE=per_node, WORLD_SIZE=world)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"error: WORLD_SIZE={world} is ambiguous with {per_node} processes per node: as nodes (the authors' "
        f"scripts) {nodes_reading[0]} processes on {nodes_reading[1]} nodes, as processes (torch, torchrun) "
        f"{procs_reading[0]} processes on {procs_reading[1]} node(s); set NNODES={world} or "
        f"NNODES={procs_reading[1]} (NNODES wins over WORLD_SIZE)"]


@pytest.mark.parametrize("env,expected", [
    ({"GPUS_PER_NODE": "2"}, (2, 1, 0)),                                  # one node, its GPUs
    ({"GPUS_PER_NODE": "1", "WORLD_SIZE": "3", "RANK": "2"}, (3, 3, 2)),  # both readings agree
    ({"GPUS_PER_NODE": "4", "WORLD_SIZE": "1"}, (4, 1, 0)),               # one node
    ({"GPUS_PER_NODE": "4", "NNODES": "1", "WORLD_SIZE": "4", "RANK": "2"}, (4, 1, 0)),   # one node: rank 0
])
def test_unambiguous_layouts_launch_silently(tmp_path, env, expected):
    code, out, err = dry_run(tmp_path, **env)
    assert code == 0 and err == "", err
    assert layout(accelerate_args(out)) == expected


def test_one_process_takes_no_multi_node_options(tmp_path):
    code, out, err = dry_run(tmp_path, GPUS_PER_NODE="1")
    assert code == 0 and err == ""
    opts = accelerate_args(out)
    assert layout(opts) == (1, 1, 0) and "--multi_gpu" not in opts and "--main_process_ip" not in opts


def test_a_process_rank_is_not_taken_for_a_node_rank(tmp_path):
    code, out, err = dry_run(tmp_path, GPUS_PER_NODE="8", NNODES="2", RANK="9")
    assert code == 2 and out == ""
    assert err.splitlines() == ["error: NODE_RANK (or RANK)=9 is not a node of 2 (0..1): here it is this node's "
                                "rank, not a process rank; set NODE_RANK"]


@pytest.mark.parametrize("value", ["0", "x", "a[$(touch PWNED)]"])
def test_nnodes_must_be_a_plain_positive_number(tmp_path, value):
    code, out, err = dry_run(tmp_path, NNODES=value)
    assert code == 2 and out == "" and not (tmp_path / "PWNED").exists()
    assert err.splitlines() == [f"error: NNODES must be a whole number >= 1 (at most 6 digits), got '{value}'"]


def test_fast_inference_is_one_process_whatever_the_cluster_says(tmp_path):
    base = {k: v for k, v in os.environ.items() if k not in ("NNODES", "NODE_RANK")}
    proc = subprocess.run(["bash", str(REPO / "run_fast_inference.sh"), "configs/x.yaml"], cwd=tmp_path,
                          env={**base, "LAUNCH_DRY_RUN": "1", "WORLD_SIZE": "16", "RANK": "9", "GPUS_PER_NODE": "8"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    words = shlex.split(proc.stdout)
    assert words[words.index("--num_processes") + 1] == "1" and "--multi_gpu" not in words
    assert words[-2:] == ["configs/x.yaml", "--demo"]

"""Run directories are owned: nothing a previous run wrote is lost or mixed with another run.

A trainer, the latent extractor or the FID sampler writes into a directory only when
- it is new (no checkpoints / outputs yet), or
- it continues the run there (`train.resume=true`; extraction and sampling resume by default when
  their manifest / protocol matches), or
- the user asked to start over (`train.overwrite=true`, `--overwrite`): the old outputs are moved
  aside to `NAME.old-<timestamp>`, never deleted.
Otherwise `RunDirError` names the directory and the three choices.

`RunLock` (a `.run.lock` file holding pid, host and start time) keeps a second process from
writing into a directory in use; a lock whose pid is dead on this host is stale and taken over.

`config_differences` compares a checkpoint's stored config with the current one on every key that
changes the run (everything except the keys listed as free), so a resume with a changed setting
stops unless `train.allow_config_change=true`.
"""
from __future__ import annotations

import atexit
import fnmatch
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from configs.schema import COMPAT_KEYS as DIT_COMPAT_KEYS
from training.checkpoints import list_checkpoints
from utils.fileio import usual_mode

logger = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"

# Keys a resume may change without changing what is trained (schedules of logging, checkpoints,
# validation and sampling; locations; speed-only switches), plus the schema's COMPAT_KEYS (accepted
# and never read). Every other key changes the run.
DIT_FREE_KEYS = (
    "train.resume", "train.overwrite", "train.allow_config_change", "train.max_steps",
    "train.log_every", "train.ckpt_every", "train.keep_last_n", "train.valid_every",
    "train.num_valid_batches", "train.output_dir", "train.exp_name",
    "train.eval*", "train.micro_batch_size", "train.report_to", "train.spike_factor",
    "data.num_workers", "data.valid_path", "data.fid_reference_file", "model.compile",
    "ckpt_path", "vae.*", "sample.*",
) + tuple(DIT_COMPAT_KEYS)
# The tokenizer trainer's list repeats its schema's COMPAT_KEYS (tokenizer/train_config.py) by hand:
# importing that schema here would load the loss modules (LPIPS) into every command that locks a
# directory. All of them are listed except `model.params.lossconfig.params.pixelloss_weight`, which
# a resume has always compared (tests/reliability/test_reliability_leftovers.py keeps the two in step).
TOKENIZER_FREE_KEYS = (
    "train.resume", "train.resume_from", "train.overwrite", "train.allow_config_change",
    "train.max_steps", "train.log_every", "train.sample_every", "train.num_sample_images",
    "train.val_every", "train.val_max_batches", "train.ckpt_every", "train.keep_last_n",
    "train.output_dir", "train.exp_name", "lightning.trainer.max_epochs", "lightning.trainer.devices",
    "lightning.trainer.num_nodes", "lightning.trainer.strategy", "lightning.trainer.accelerator",
    "data.params.num_workers", "data.params.validation.*", "data.params.wrap", "data.target",
    "model.params.monitor", "ckpt_path",
)


class RunDirError(ValueError):
    """A one-line refusal to write into a directory (owned by another run, or in use)."""


# ------------------------------------------------------------------------------------------------
# Ownership
# ------------------------------------------------------------------------------------------------

def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def move_aside(path: Path, stamp: Optional[str] = None) -> Optional[Path]:
    """Rename `path` (file or folder) to `{path}.old-<timestamp>` (suffix kept for files with one);
    returns the new path, or None when `path` does not exist. Never deletes."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return None
    stamp = stamp or timestamp()
    stem, suffix = (path.stem, path.suffix) if path.is_file() and path.suffix else (path.name, "")
    target = path.with_name(f"{stem}.old-{stamp}{suffix}")
    k = 1
    while target.exists():
        target = path.with_name(f"{stem}.old-{stamp}-{k}{suffix}")
        k += 1
    os.replace(path, target)
    logger.warning("moved %s aside to %s", path, target)
    return target


def claim_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, has_run: bool,
                  outputs: Iterable[str] = (), resume_flag: str = "train.resume=true",
                  overwrite_flag: str = "train.overwrite=true",
                  other_choice: str = "another train.exp_name") -> str:
    """Decide whether this run may write into `run_dir`; returns "new", "resume" or "overwrite".

    `has_run`: the directory holds a previous run's results (e.g. checkpoints). With `overwrite`,
    each existing entry of `outputs` (names inside run_dir) is moved aside first.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunDirError(f"{run_dir}: {resume_flag} and {overwrite_flag} exclude each other; pick one")
    if not has_run:
        return "new"
    if resume:
        return "resume"
    if overwrite:
        stamp = timestamp()
        for name in outputs:
            move_aside(run_dir / name, stamp)
        return "overwrite"
    raise RunDirError(f"{run_dir} already holds a run; choose: {resume_flag} to continue it, "
                      f"{overwrite_flag} to start over (old outputs are moved aside, not deleted), "
                      f"or {other_choice}")


def claim_training_dir(run_dir: Path, *, resume: bool, overwrite: bool, outputs: Sequence[str],
                       resume_from: Optional[str] = None) -> str:
    """Lock `run_dir` for this process (main process only) and claim it for a training run:
    "new", "resume" or "overwrite" (outputs moved aside). A run is present when
    `run_dir/checkpoints` holds a checkpoint. `log.txt` is never moved (runs append to it)."""
    run_dir = Path(run_dir)
    RunLock(run_dir).acquire()
    try:
        has_run = bool(list_checkpoints(run_dir / "checkpoints"))
        state = claim_run_dir(run_dir, resume=resume or bool(resume_from), overwrite=overwrite,
                              has_run=has_run, outputs=outputs)
    except RunDirError:
        release_run_dir(run_dir)
        raise
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    if state == "overwrite":
        logger.warning("%s: starting over (train.overwrite=true); the previous run's outputs were moved aside",
                       run_dir)
    return state


def decide_on_main(accelerator, decide: Callable[[], Any]) -> None:
    """Run `decide()` on the main process only; when it raises ValueError (a refusal), every
    process raises it (as RunDirError on the others), so no rank is left waiting at a barrier."""
    from accelerate.utils import broadcast_object_list

    holder: List[Optional[str]] = [None]
    error: Optional[ValueError] = None
    if accelerator.is_main_process:
        try:
            decide()
        except ValueError as err:
            error, holder[0] = err, str(err)
    if accelerator.num_processes > 1:
        broadcast_object_list(holder)
    if error is not None:
        raise error
    if holder[0] is not None:
        raise RunDirError(holder[0])


# ------------------------------------------------------------------------------------------------
# Lock
# ------------------------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed but not yet reaped child is a zombie: it writes nothing any more
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RunLock:
    """`{directory}/.run.lock`: created atomically (hard link of a complete temp file with an
    unpredictable name), holding {pid, host, started}; released by `release()` and at interpreter
    exit. A symbolic link at the lock path is refused (another user may have planted it)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.held = False

    def _owner(self) -> Optional[Dict[str, Any]]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.path.is_symlink():
            raise RunDirError(f"{self.path} is a symbolic link; refusing to use it as this run's lock "
                              "(remove it if you made it)")
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        fd, name = tempfile.mkstemp(prefix=".run.lock.", suffix=".tmp", dir=self.directory)
        tmp = Path(name)
        os.fchmod(fd, usual_mode(0o644))   # mkstemp makes it private; other runs read the owner
        with os.fdopen(fd, "w") as f:       # created exclusively: never written through a planted link
            f.write(json.dumps(me) + "\n")
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    break
                except FileExistsError:
                    owner = self._owner()
                    if owner is None:
                        continue  # released meanwhile: try again
                    if owner.get("host") == me["host"] and owner.get("pid") == me["pid"]:
                        break  # this process already holds it (an earlier in-process run)
                    if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) \
                            and not _pid_alive(owner["pid"]):
                        logger.warning("%s: stale lock of dead process %d (started %s), taking it over",
                                       self.path, owner["pid"], owner.get("started"))
                        self.path.unlink(missing_ok=True)
                        continue
                    raise RunDirError(
                        f"{self.directory} is in use by pid {owner.get('pid')} on {owner.get('host')} "
                        f"(since {owner.get('started')}); wait for it, or delete {self.path} if that run "
                        "is dead") from None
            else:
                raise RunDirError(f"{self.path}: could not take the lock (another process keeps taking it)")
        finally:
            tmp.unlink(missing_ok=True)
        self.held = True
        _HELD[str(self.directory.resolve())] = self
        atexit.register(self.release)
        return self

    def release(self) -> None:
        if not self.held:
            return
        owner = self._owner()
        if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
        self.held = False
        _HELD.pop(str(self.directory.resolve()), None)


_HELD: Dict[str, RunLock] = {}


def release_run_dir(directory: Path) -> None:
    """Release this process's lock on `directory`, if it holds one."""
    lock = _HELD.get(str(Path(directory).resolve()))
    if lock is not None:
        lock.release()


# ------------------------------------------------------------------------------------------------
# Config compatibility on resume
# ------------------------------------------------------------------------------------------------

def _flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_differences(stored: dict, current: dict, free: Sequence[str]) -> List[Tuple[str, Any, Any]]:
    """(key, stored value, current value) for every key present in both configs whose value
    differs, except keys matching a pattern in `free` (fnmatch, e.g. "sample.*")."""
    old, new = _flatten(stored), _flatten(current)
    return [(k, old[k], new[k]) for k in sorted(set(old) & set(new))
            if old[k] != new[k] and not any(fnmatch.fnmatchcase(k, p) for p in free)]


def check_resume_config(path: Path, stored: Optional[dict], current: dict, free: Sequence[str],
                        allow_change: bool, flag: str = "train.allow_config_change=true") -> None:
    """Refuse to resume checkpoint `path` under a config that changes the run (one line naming
    the keys), unless `allow_change`, in which case every change is logged as a warning."""
    if stored is None:
        logger.warning("%s stores no config: cannot check that the resumed run is the same", path)
        return
    diff = config_differences(stored, current, free)
    if not diff:
        return
    text = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diff)
    if not allow_change:
        raise RunDirError(f"{path} was trained with a different config ({text}); resume with the "
                          f"same settings, or pass {flag} to change them deliberately")
    logger.warning("resuming %s with a changed config (%s): allowed by %s", path, text, flag)

"""Training checkpoints of both trainers: naming, listing, pruning, atomic saving, and finding the
newest readable one to resume from (`load_latest`: a corrupt newest file is named and skipped).

Files are `{ckpt_dir}/{step:07d}.pt` (the reference's LightningDiT name) for both trainers.
Tokenizer runs written before the trainers shared this module used `step_{step:07d}.pt`; those
are still listed, resumed from (with a log line) and pruned.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from utils.fileio import atomic_symlink, atomic_torch_save
from utils.safe_load import UnsafeFileError, load_torch_file

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"^(\d{7,})\.pt$")
LEGACY_TOKENIZER_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    """`{ckpt_dir}/{step:07d}.pt` (the reference's name)."""
    return Path(ckpt_dir) / f"{step:07d}.pt"


def list_checkpoints(ckpt_dir: Path) -> List[Tuple[int, Path]]:
    """(step, path) of every checkpoint in ckpt_dir, sorted by step (temp files ignored).

    Where a step has both names, the current `NNNNNNN.pt` wins over the legacy `step_N.pt`."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found: Dict[int, Path] = {}
    for path in sorted(ckpt_dir.iterdir(), key=lambda p: CHECKPOINT_NAME.match(p.name) is not None):
        match = CHECKPOINT_NAME.match(path.name) or LEGACY_TOKENIZER_NAME.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return sorted(found.items())


class CheckpointError(ValueError):
    """No checkpoint of a run could be read (each one is named in the message)."""


def read_checkpoint(path: Path, required: Sequence[str] = ()) -> Dict[str, Any]:
    """torch.load(path) on the CPU (weights only, sizes checked first: utils/safe_load.py),
    checking that the top-level `required` keys exist; a file that fails either way raises with
    one line naming it."""
    try:
        ckpt = load_torch_file(path)
    except Exception as err:  # truncated zip, bad pickle, text file: not readable; pickled code: refused
        reason = str(err) if isinstance(err, UnsafeFileError) else _first_line(err)
        reason = reason[len(f"{path}: "):] if reason.startswith(f"{path}: ") else reason
        raise CheckpointError(f"corrupt checkpoint {path}: {reason}") from None
    missing = [k for k in required if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"corrupt checkpoint {path}: no {missing} entries")
    return ckpt


def load_latest(ckpt_dir: Path, loader: Callable[[Path], Any] = read_checkpoint
                ) -> Optional[Tuple[Path, Any]]:
    """(path, loader(path)) of the newest checkpoint that `loader` reads, or None if there is none.

    A checkpoint that fails to load (a run killed while the disk filled, a truncated copy) is
    logged by name and the next older one is tried; if every one fails, CheckpointError names
    them all. `loader` should only read (not apply) the file, so a fallback starts clean.
    """
    found = list_checkpoints(ckpt_dir)
    failures = []
    for _, path in reversed(found):
        try:
            obj = loader(path)
        except Exception as err:
            msg = _first_line(err)
            logger.error("cannot resume: %s; trying the previous checkpoint",
                         msg if str(path) in msg else f"{path}: {msg}")
            failures.append(path.name)
            continue
        if failures:
            logger.warning("resuming from %s: newer checkpoint(s) %s could not be read", path, ", ".join(failures))
        if LEGACY_TOKENIZER_NAME.match(path.name):
            logger.info("resuming from %s (legacy tokenizer checkpoint name; new ones are NNNNNNN.pt)", path)
        return path, obj
    if failures:
        raise CheckpointError(f"no readable checkpoint in {ckpt_dir}: {', '.join(failures)} are corrupt "
                              "(move them away and resume, or start over with train.overwrite=true)")
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


def prune_checkpoints(ckpt_dir: Path, keep_last_n: Optional[int]) -> List[Path]:
    """Delete all but the newest `keep_last_n` checkpoints; returns the deleted paths."""
    if keep_last_n is None or keep_last_n <= 0:
        return []
    doomed = [path for _, path in list_checkpoints(ckpt_dir)[:-keep_last_n]]
    for path in doomed:
        path.unlink()
    return doomed


def save_checkpoint(state: Dict[str, Any], ckpt_dir: Path, step: int, keep_last_n: Optional[int] = None,
                    link_last: bool = False) -> Path:
    """Write `state` atomically as `{step:07d}.pt`, optionally point `last.pt` at it, then prune."""
    path = checkpoint_path(ckpt_dir, step)
    atomic_torch_save(state, path)
    if link_last:
        atomic_symlink(path.name, path.parent / "last.pt")  # relative: the run directory can move
    for old in prune_checkpoints(ckpt_dir, keep_last_n):
        logger.info("removed old checkpoint %s", old)
    logger.info("saved checkpoint to %s", path)
    return path

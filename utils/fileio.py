"""Atomic file writes: a crash never leaves a half-written checkpoint, shard or result file.

Each writer writes to a temporary file in the destination directory, flushes it to disk, then
renames it over the destination (`os.replace` is atomic on POSIX and Windows). A full disk or an
unwritable destination raises `WriteError` with a one-line message naming the destination ("no
space left on device while writing PATH", "cannot write PATH: ..."); the previous file stays.

Temporary names are unpredictable (`tempfile.mkstemp`, created exclusively), so another user of a
shared directory cannot plant a link where a temporary file will be written. Files that grow
(`log.txt`, `metrics.jsonl`) are opened by `open_append`, which refuses a symbolic link at the
path instead of following it.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Union

PathLike = Union[str, os.PathLike]
_UMASK = os.umask(0)
os.umask(_UMASK)




def usual_mode(mode: int = 0o666) -> int:
    """`mode` less the process umask: the permissions `open()` would give a new file."""
    return mode & ~_UMASK


_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_NO_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


class WriteError(OSError):
    """A write that failed for a reason the user must fix (disk full, no permission); str() is
    one line naming the destination."""

    def __init__(self, err_no: int, message: str):
        super().__init__(err_no, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def write_error(err: OSError, path: PathLike) -> OSError:
    """`err` as a WriteError naming `path` when it is a disk-full or permission error, else `err`."""
    if isinstance(err, WriteError):
        return err
    if err.errno in _NO_SPACE:
        return WriteError(err.errno, f"no space left on device while writing {path}")
    if err.errno in _NO_PERMISSION:
        return WriteError(err.errno, f"cannot write {path}: {err.strerror or os.strerror(err.errno)}")
    return err


@contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yield a temporary path next to `path`; on success it is renamed to `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, usual_mode())  # mkstemp creates 0600; give the file the usual permissions
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        mapped = write_error(err, path)
        if mapped is err:
            raise
        raise mapped from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def named_write_errors(path: PathLike) -> Iterator[None]:
    """Re-raise a disk-full or permission OSError of the block as a WriteError naming `path`."""
    try:
        yield
    except OSError as err:
        mapped = write_error(err, path)
        if mapped is err:
            raise
        raise mapped from err


def atomic_symlink(target: str, link: PathLike) -> None:
    """Point the symbolic link `link` at `target` (e.g. `last.pt` -> `0000100.pt`), atomically: a
    link under an unpredictable temporary name is renamed over `link`."""
    link = Path(link)
    with named_write_errors(link):
        for _ in range(100):
            tmp = link.parent / f".{link.name}.{secrets.token_hex(8)}.tmp"
            try:
                os.symlink(target, tmp)
                break
            except FileExistsError:
                continue
        else:
            raise WriteError(errno.EEXIST, f"cannot create a temporary link next to {link}")
        try:
            os.replace(tmp, link)
        except OSError:
            os.unlink(tmp)
            raise


def refuse_symlink(path: PathLike) -> None:
    """WriteError when `path` is a symbolic link (see `open_append`)."""
    if os.path.islink(path):
        raise WriteError(errno.ELOOP, f"refusing to write {path}: it is a symbolic link "
                                      "(remove it; logs are never written through links)")


def open_append(path: PathLike, mode: int = 0o666):
    """`open(path, "a")` that refuses a symbolic link at `path` (another user could plant one to
    make this process append to a file of theirs or overwrite one of yours); WriteError names the
    path. New files get `mode` less the umask."""
    refuse_symlink(path)
    with named_write_errors(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_CLOEXEC", 0), mode)
        except OSError:
            refuse_symlink(path)     # planted between the check and the open: O_NOFOLLOW refused it
            raise
    return os.fdopen(fd, "a", encoding="utf-8")


def append_text(path: PathLike, text: str) -> None:
    """Append `text` to `path` (created if missing) through `open_append`; a full disk or a
    permission problem is a WriteError naming the path."""
    with named_write_errors(path), open_append(path) as f:
        f.write(text)


def atomic_write(path: PathLike, write: Callable[[str], Any]) -> None:
    """Call `write(tmp_path)` and move the result to `path` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


class _RecordingWriter:
    """A binary file for torch.save that remembers the first OSError of a write: torch reports a
    failed write as an opaque RuntimeError ("unexpected pos"), dropping ENOSPC."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as err:
            self.error = self.error or err
            raise


def _torch_save_to(obj: Any, tmp: str) -> None:
    import torch
    with open(tmp, "wb") as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(obj, writer)
            writer.flush()
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """`torch.save(obj, path)`, atomically."""
    atomic_write(path, lambda tmp: _torch_save_to(obj, tmp))


def require_torch_file(path: PathLike, what: str = "PyTorch checkpoint") -> None:
    """Raise ValueError("not a PyTorch checkpoint: PATH") unless `path` starts like a file that
    torch.save writes (a zip archive, or a legacy pickle): a text or image file given as weights
    otherwise fails deep inside torch.load with an unrelated message (e.g. `KeyError: 101`)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ValueError(f"not a {what}: {path}")


def atomic_write_json(obj: Any, path: PathLike) -> None:
    """Write `obj` as indented JSON, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
    atomic_write(path, write)


def atomic_write_text(text: str, path: PathLike) -> None:
    """Write `text`, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def require_intact_torch_file(path: PathLike, what: str = "PyTorch checkpoint") -> None:
    """`require_torch_file`, and for the zip format also its central directory (read from the end
    of the file, cheap): a truncated copy is named here instead of failing inside torch.load with
    'PytorchStreamReader failed reading zip archive'."""
    require_torch_file(path, what)
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip:
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except (zipfile.BadZipFile, OSError) as err:
            raise ValueError(f"{path}: truncated or corrupt {what} ({err})") from None

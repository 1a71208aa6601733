"""Reading weight and data files that may come from the internet: no code from the file runs, and
a small file cannot make the reader allocate more memory than the file holds.

`torch.load(weights_only=True)` refuses pickled Python objects other than tensors and plain
containers, but it trusts what the file declares about sizes. `load_torch_file` checks the file
first, from its metadata only:
- the zip format (torch >= 1.6): every record stored uncompressed (no zip bomb), the records'
  sizes adding up to no more than the file, the pickle record at most `MAX_PICKLE_BYTES`;
- every storage the pickle declares has exactly its bytes in the file (the zip record of that
  storage; in the legacy format the size header written before the bytes). The declarations are
  read by `scan_torch_file`, an unpickler that imports nothing: every global the pickle names
  becomes an inert stub, so scanning runs no code whatever the file holds.
Then torch (>= 2.6: earlier versions can run code even with weights_only=True, CVE-2025-32434)
loads it with `weights_only=True`, and every tensor of the result must be a strided
CPU tensor whose elements fit in its storage (a 4-byte storage viewed with zero strides as
500 million channels is refused before any operation touches it).

A file whose pickle needs other Python objects (e.g. a PyTorch Lightning checkpoint of
pytorch-lightning < 1.5 keys its callbacks by class) is refused with one line naming the file,
the globals it imports and the risk. Loading it anyway runs its code, so it needs an explicit
opt-in per file: `LIGHTNINGDIT_TRUSTED_PICKLES=/path/a.ckpt:/path/b.ckpt` (an os.pathsep-separated
list; only the files listed, compared after resolving links). Converting the file to
.safetensors once, on a machine you trust, avoids the question.

`read_safetensors` applies the same size rule to .safetensors files (their JSON header declares
every tensor's dtype, shape and byte range, which the safetensors library checks against the
file before reading).

    python -m utils.safe_load FILE...   # what a .pt/.pth/.ckpt declares, without loading it
"""
from __future__ import annotations

import _compat_pickle
import copyreg
import io
import logging
import os
import pickle
import re
import struct
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from utils.fileio import require_torch_file

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
TRUSTED_PICKLES_ENV = "LIGHTNINGDIT_TRUSTED_PICKLES"
MAX_PICKLE_BYTES = 256 << 20     # the object structure of a checkpoint (not its tensor bytes)


class UnsafeFileError(ValueError):
    """A file refused before (or instead of) loading it; str() is one line naming the file."""


# ------------------------------------------------------------------------------------------------
# Scanning: what a torch file declares, read without importing or calling anything
# ------------------------------------------------------------------------------------------------

class _Inert:
    """What every global of a scanned pickle becomes: calling it, instantiating it or setting its
    state builds an inert object and runs nothing."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:    # dict subclasses (OrderedDict)
        pass

    def append(self, item: Any) -> None:                    # list subclasses
        pass

    def extend(self, items: Any) -> None:
        pass


@dataclass
class TorchFileScan:
    """What a torch.save file declares: its format, its storages {key: bytes} and the globals
    (module.name) its pickle imports."""
    format: str                                   # "zip" | "legacy"
    storages: Dict[str, int] = field(default_factory=dict)
    globals: List[str] = field(default_factory=list)

    @property
    def unusual_globals(self) -> List[str]:
        """The globals that torch.load(weights_only=True) does not accept by default (what a
        refusal names; torch.load itself decides what loads)."""
        allowed = _weights_only_globals()
        return [g for g in self.globals if g not in allowed]


def _weights_only_globals() -> set:
    """Names of the globals weights_only=True accepts: torch's own list where this torch version
    exposes it, else the ones an ordinary checkpoint uses."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals, _get_user_allowed_globals
        names = set(_get_allowed_globals()) | set(_get_user_allowed_globals())
    except Exception:  # a torch without these (private) helpers
        names = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                 "torch.Size", "torch.device", "builtins.set"}
    return names | {"torch.storage.UntypedStorage"}


class _ScanUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its memo is a dict, not an array
    def __init__(self, file, scan: TorchFileScan, source: str):
        super().__init__(file, encoding="utf-8", errors="surrogateescape")
        self.scan, self.source = scan, source
        self.stubs: Dict[str, type] = {}
        self.declared: Dict[str, Tuple[int, int]] = {}    # key -> (elements, bytes per element)

    def find_class(self, module: str, name: str) -> type:
        if self.proto < 3:   # Python 2 names, as pickle maps them (`__builtin__` -> `builtins`)
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        if qualname not in self.stubs:
            self.stubs[qualname] = type(name, (_Inert,), {"qualname": qualname})
            self.scan.globals.append(qualname)
        return self.stubs[qualname]

    def get_extension(self, code: int) -> None:
        """EXT1/2/4 opcodes through `find_class` too (never copyreg's cache of real objects)."""
        key = copyreg._extension_registry.get(code)
        if not key:
            raise UnsafeFileError(f"{self.source}: unregistered pickle extension code {code}")
        self.append(self.find_class(*key))

    def persistent_load(self, pid: Any) -> _Inert:
        # ('storage', storage type, key, location, numel[, view metadata (legacy)])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeFileError(f"{self.source}: unexpected persistent id in the pickle ({str(pid)[:80]})")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(numel, int) or numel < 0:
            raise UnsafeFileError(f"{self.source}: storage {key} declares a bad size {numel!r}")
        declared = (numel, _element_size(getattr(storage_type, "qualname", "?"), self.source))
        if self.declared.setdefault(key, declared) != declared:
            raise UnsafeFileError(f"{self.source}: storage {key} is declared with two different sizes")
        return _Inert()


def _element_size(storage_type: str, source: str) -> int:
    """Bytes per element of a pickled storage type (`torch.FloatStorage`, `torch.storage.UntypedStorage`)."""
    import torch

    module, _, name = storage_type.rpartition(".")
    if name == "UntypedStorage" and module in ("torch", "torch.storage"):
        return 1
    cls = getattr(torch, name, None) if module == "torch" and name.endswith("Storage") else None
    with warnings.catch_warnings():      # typed storage classes are deprecated, their dtypes not
        warnings.simplefilter("ignore")
        dtype = getattr(cls, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        raise UnsafeFileError(f"{source}: unknown storage type {storage_type} in the pickle")
    return torch.empty((), dtype=dtype).element_size()


class _LimitedReader:
    """A binary file for the scanning unpickler that refuses to read past `limit` bytes, so a
    huge pickle fails early instead of filling memory with objects."""

    def __init__(self, f, limit: int, source: str):
        self.f, self.left, self.source = f, limit, source

    def _count(self, data: bytes) -> bytes:
        self.left -= len(data)
        if self.left < 0:
            raise UnsafeFileError(f"{self.source}: the pickle is larger than {MAX_PICKLE_BYTES} bytes")
        return data

    def read(self, n: int = -1) -> bytes:
        return self._count(self.f.read(n if n is not None and 0 <= n <= self.left + 1 else self.left + 1))

    def readline(self) -> bytes:
        return self._count(self.f.readline(self.left + 1))


def _unpickle(f, scan: TorchFileScan, source: str) -> Tuple[Any, Dict[str, Tuple[int, int]]]:
    unpickler = _ScanUnpickler(_LimitedReader(f, MAX_PICKLE_BYTES, source), scan, source)
    try:
        obj = unpickler.load()
    except UnsafeFileError:
        raise
    except Exception as err:  # truncated or malformed pickle: every failure means "not readable"
        raise UnsafeFileError(f"{source}: unreadable pickle ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:160] if str(err) else ''})") from None
    return obj, unpickler.declared


def _scan_zip(path: str) -> TorchFileScan:
    scan = TorchFileScan("zip")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            compressed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED
                          or i.compress_size != i.file_size]
            if compressed:
                raise UnsafeFileError(f"{path}: compressed records {compressed[:3]} (torch.save stores "
                                      "records uncompressed; a compressed one can expand far beyond the file)")
            if sum(i.file_size for i in infos) > os.path.getsize(path):
                raise UnsafeFileError(f"{path}: the zip records declare more bytes than the file holds")
            pickles = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
            if len(pickles) != 1:
                raise UnsafeFileError(f"{path}: not a torch.save archive (no single */data.pkl record)")
            prefix = pickles[0].filename[: -len("data.pkl")]
            if pickles[0].file_size > MAX_PICKLE_BYTES:
                raise UnsafeFileError(f"{path}: the pickle record is {pickles[0].file_size} bytes "
                                      f"(more than {MAX_PICKLE_BYTES})")
            _, declared = _unpickle(io.BytesIO(archive.read(pickles[0])), scan, path)
            records = {i.filename: i.file_size for i in infos}
    except zipfile.BadZipFile as err:
        raise UnsafeFileError(f"{path}: truncated or corrupt PyTorch file ({err})") from None
    for key, (count, element) in declared.items():
        have = records.get(f"{prefix}data/{key}")
        if have is None:
            raise UnsafeFileError(f"{path}: storage {key} has no record in the archive")
        if have != count * element:
            raise UnsafeFileError(f"{path}: storage {key} declares {count * element} bytes but its "
                                  f"record holds {have}")
    scan.storages = {key: count * element for key, (count, element) in declared.items()}
    return scan


def _scan_legacy(path: str) -> TorchFileScan:
    """The pre-1.6 format: magic, protocol and system-info pickles, the object pickle, the list of
    storage keys, then per key an int64 element count and the storage's bytes."""
    scan = TorchFileScan("legacy")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        for _ in range(3):                       # magic number, protocol version, sys info
            _unpickle(f, scan, path)
        _, declared = _unpickle(f, scan, path)
        keys, _ = _unpickle(f, scan, path)
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(declared):
            raise UnsafeFileError(f"{path}: the storage list does not match the storages the pickle declares")
        for key in map(str, keys):
            head = f.read(8)
            if len(head) != 8:
                raise UnsafeFileError(f"{path}: truncated before storage {key}")
            count, element = declared[key]
            if struct.unpack("<q", head)[0] != count:
                raise UnsafeFileError(f"{path}: storage {key} declares {count} elements but its header "
                                      f"says {struct.unpack('<q', head)[0]}")
            if f.tell() + count * element > size:
                raise UnsafeFileError(f"{path}: truncated in storage {key}")
            f.seek(count * element, os.SEEK_CUR)
    scan.storages = {key: count * element for key, (count, element) in declared.items()}
    return scan


def scan_torch_file(path: PathLike) -> TorchFileScan:
    """What a torch.save file declares (format, storages, globals), read without loading it;
    UnsafeFileError when the declarations do not match the bytes in the file."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    return _scan_zip(path) if is_zip else _scan_legacy(path)


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------

def trusted_pickles() -> List[str]:
    """The files the user allowed to run pickled code ($LIGHTNINGDIT_TRUSTED_PICKLES), resolved."""
    value = os.environ.get(TRUSTED_PICKLES_ENV, "")
    return [os.path.realpath(p) for p in value.split(os.pathsep) if p]


def _iter_tensors(obj: Any) -> Iterator[Any]:
    """Every tensor in nested dicts / lists / tuples / sets (iterative; shared or cyclic
    references are visited once)."""
    import torch

    stack, seen = [obj], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)


def check_tensors(obj: Any, source: str) -> None:
    """Every tensor in `obj` is a strided CPU tensor whose elements fit in its storage, so no
    operation on it can touch more memory than the file held."""
    import torch

    for t in _iter_tensors(obj):
        if t.layout is not torch.strided or t.device.type != "cpu" or t.is_quantized:
            raise UnsafeFileError(f"{source}: holds a {t.layout} {t.device.type} tensor "
                                  f"(expected plain strided CPU tensors)")
        if t.numel() * t.element_size() > t.untyped_storage().nbytes():
            raise UnsafeFileError(f"{source}: a tensor of shape {tuple(t.shape)} views a storage of "
                                  f"{t.untyped_storage().nbytes()} bytes (overlapping strides "
                                  f"{tuple(t.stride())}); refusing to expand it")


def _refusal(path: str, what: str, names: List[str]) -> str:
    names = names or ["objects other than tensors"]
    return (f"{path}: refusing to load this {what}: its pickle imports {', '.join(names[:6])}"
            f"{' ...' if len(names) > 6 else ''}, and loading that runs code from the file. "
            f"If you trust where it came from, allow this one file with "
            f"{TRUSTED_PICKLES_ENV}={os.path.abspath(path)} (or convert it to .safetensors)")


MIN_TORCH = (2, 6)   # earlier versions can run code even under weights_only=True (CVE-2025-32434)


def require_safe_torch(version: str) -> None:
    """UnsafeFileError unless torch `version` is at least MIN_TORCH."""
    numbers = tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:2])
    if numbers < MIN_TORCH:
        raise UnsafeFileError(f"torch {version} can run code from a PyTorch file even with weights_only=True "
                              f"(CVE-2025-32434); install torch>={'.'.join(map(str, MIN_TORCH))} to load weights")


def check_torch_file(path: PathLike, what: str = "PyTorch checkpoint", *,
                     max_bytes: Optional[int] = None) -> TorchFileScan:
    """Everything `load_torch_file` checks before loading, without loading: the file is a torch
    file of at most `max_bytes`, its declarations match its bytes (`scan_torch_file`), and, for
    the zip format, its pickle imports nothing that weights_only=True refuses (unless the file is
    in $LIGHTNINGDIT_TRUSTED_PICKLES). Cheap: the tensor bytes are not read."""
    import torch

    path = os.fspath(path)
    require_safe_torch(torch.__version__)
    require_torch_file(path, what)
    size = os.path.getsize(path)
    if max_bytes is not None and size > max_bytes:
        raise UnsafeFileError(f"{path}: {size} bytes, more than a {what} may have ({max_bytes})")
    scan = scan_torch_file(path)
    if scan.format == "zip" and os.path.realpath(path) not in trusted_pickles():
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if unsafe:
            raise UnsafeFileError(_refusal(path, what, unsafe))
    return scan


def load_torch_file(path: PathLike, what: str = "PyTorch checkpoint", *,
                    max_bytes: Optional[int] = None) -> Any:
    """`torch.load(path, map_location="cpu", weights_only=True)` after `scan_torch_file`, with
    `check_tensors` on the result. `max_bytes` caps the file size (small files such as statistics).

    Raises ValueError("not a {what}: PATH") for a file that is no torch file, UnsafeFileError for
    inconsistent declarations, oversized files and pickled objects (unless the file is listed in
    $LIGHTNINGDIT_TRUSTED_PICKLES, in which case it is loaded with weights_only=False).
    """
    import torch

    path = os.fspath(path)
    scan = check_torch_file(path, what, max_bytes=max_bytes)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if os.path.realpath(path) not in trusted_pickles():
            named = re.findall(r"GLOBAL (\S+)", str(err))
            raise UnsafeFileError(_refusal(path, what, scan.unusual_globals or named)) from None
        logger.warning("%s: loading pickled objects (%s) with weights_only=False: allowed by %s",
                       path, ", ".join(scan.unusual_globals[:6]) or "?", TRUSTED_PICKLES_ENV)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    check_tensors(obj, path)
    return obj


def read_safetensors(path: PathLike, what: str = "safetensors file", *,
                     max_bytes: Optional[int] = None) -> Dict[str, Any]:
    """{name: tensor} of a .safetensors file (CPU). The library checks every declared dtype,
    shape and byte range against the file before reading; `max_bytes` caps the file size."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.fspath(path)
    size = os.path.getsize(path)
    if max_bytes is not None and size > max_bytes:
        raise UnsafeFileError(f"{path}: {size} bytes, more than a {what} may have ({max_bytes})")
    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: unreadable {what} ({str(err).splitlines()[0][:160]})") from None
    check_tensors(tensors, path)
    return tensors


def load_weights_file(path: PathLike, what: str = "PyTorch checkpoint", *,
                      max_bytes: Optional[int] = None) -> Any:
    """`read_safetensors` for `*.safetensors`, else `load_torch_file`."""
    if os.fspath(path).endswith(".safetensors"):
        return read_safetensors(path, what, max_bytes=max_bytes)
    return load_torch_file(path, what, max_bytes=max_bytes)


def main(argv: Optional[List[str]] = None) -> int:
    """Print what each file declares (format, storages, bytes, globals) without loading it."""
    status = 0
    for path in (sys.argv[1:] if argv is None else argv):
        try:
            require_torch_file(path)
            scan = scan_torch_file(path)
        except (OSError, ValueError) as err:
            print(f"{path}: {err}")
            status = 1
            continue
        print(f"{path}: {scan.format} format, {len(scan.storages)} storages, "
              f"{sum(scan.storages.values())} tensor bytes; globals other than tensors: "
              f"{', '.join(scan.unusual_globals) or 'none'}")
    return status


if __name__ == "__main__":
    sys.exit(main())

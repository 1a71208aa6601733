"""ADM sample and reference batches (.npz): streamed reading, atomic streamed writing, and
packing a folder of `{i:06d}.png` samples into `{folder}.npz`.

Batch format (docs/adm_evaluation.md §2): uint8 (N, H, W, 3) images under `arr_0`; class labels
under `arr_1` (ignored by the evaluator); reference batches may also hold precomputed Inception
statistics `mu`, `sigma`, `mu_s`, `sigma_s`. Packing follows the reference `tools/save_npz.py`
(docs/reference_behaviour.md §7.4), but streams one image at a time (memory is one image, not
50k), refuses a folder with missing indices or mixed sizes, and writes atomically. The result
loads with `np.load` exactly like `np.savez(path, arr_0, arr_1)`.
"""
from __future__ import annotations

import logging
import os
import re
import zipfile
from typing import Iterable, Iterator, Mapping

import numpy as np
from PIL import Image
from tqdm import tqdm

from utils.fileio import atomic_write

logger = logging.getLogger(__name__)

STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
_SAMPLE_NAME = re.compile(r"^(\d{6})\.png$")
LABELS_FILE = "labels.npy"


class StreamedArray:
    """An array to be written chunk by chunk: its full shape, dtype and an iterable of row chunks."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, chunks: Iterable[np.ndarray]):
        self.shape, self.dtype, self.chunks = tuple(shape), np.dtype(dtype), chunks


def write_npz_atomic(path: str, arrays: Mapping[str, np.ndarray | StreamedArray]) -> None:
    """Write an uncompressed .npz (as np.savez) member by member, atomically (utils/fileio.py).

    StreamedArray members are written from their chunks, so the whole array never sits in memory.
    """
    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, value in arrays.items():
                with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                    if isinstance(value, StreamedArray):
                        _write_streamed(f, key, value)
                    else:
                        np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)

    atomic_write(path, write)


def _write_streamed(f, key: str, value: StreamedArray) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(value.dtype), "fortran_order": False, "shape": value.shape}
    np.lib.format.write_array_header_1_0(f, header)
    rows = 0
    for chunk in value.chunks:
        chunk = np.ascontiguousarray(chunk, dtype=value.dtype)
        if chunk.shape[1:] != value.shape[1:]:
            raise ValueError(f"array '{key}': chunk of shape {chunk.shape} does not fit {value.shape}")
        f.write(chunk.data)
        rows += chunk.shape[0]
    if rows != value.shape[0]:
        raise ValueError(f"array '{key}': got {rows} rows, header says {value.shape[0]}")


def _sample_indices(sample_dir: str) -> list[int]:
    return sorted(int(m.group(1)) for m in map(_SAMPLE_NAME.match, os.listdir(sample_dir)) if m)


def create_npz_from_sample_folder(sample_dir: str, num: int | None = None) -> str:
    """Pack `{sample_dir}/{i:06d}.png`, i < num (all of 0..N-1 when num is None), into `{sample_dir}.npz`.

    Returns the .npz path. Raises FileNotFoundError / ValueError (one line) on a missing folder,
    missing indices, non-RGB images, mixed sizes or a too-short labels file.
    """
    sample_dir = os.path.normpath(sample_dir)
    if not os.path.isdir(sample_dir):
        raise FileNotFoundError(f"sample folder not found: {sample_dir}")
    indices = _sample_indices(sample_dir)
    if num is None:
        num = len(indices)
    if num < 1:
        raise ValueError(f"no NNNNNN.png samples (000000.png, ...) to pack in {sample_dir} (num={num})")
    missing = sorted(set(range(num)) - set(indices))
    if missing:
        raise ValueError(f"{sample_dir}: {len(missing)} of {num} samples missing, first {missing[0]:06d}.png")
    paths = [os.path.join(sample_dir, f"{i:06d}.png") for i in range(num)]

    with Image.open(paths[0]) as first:
        height, width = first.height, first.width

    def images():
        for path in tqdm(paths, desc="packing", unit="img"):
            with Image.open(path) as img:
                if img.mode != "RGB":
                    raise ValueError(f"{path}: mode {img.mode}, expected an RGB image")
                if img.size != (width, height):
                    raise ValueError(f"{path}: size {img.width}x{img.height} differs from {paths[0]} ({width}x{height})")
                yield np.asarray(img, dtype=np.uint8)[None]

    arrays: dict = {"arr_0": StreamedArray((num, height, width, 3), np.uint8, images())}
    labels_path = os.path.join(sample_dir, LABELS_FILE)
    if os.path.isfile(labels_path):
        labels = read_npy(labels_path)
        if labels.ndim != 1 or len(labels) < num:
            raise ValueError(f"{labels_path}: need at least {num} labels (1-D), got shape {labels.shape}")
        arrays["arr_1"] = labels[:num].astype(np.int64)
    out_path = f"{sample_dir}.npz"
    write_npz_atomic(out_path, arrays)
    logger.info("saved %s: arr_0 %s%s", out_path, (num, height, width, 3), " + labels arr_1" if "arr_1" in arrays else "")
    return out_path


# Bounds on what a batch file may declare (checked from the .npy headers before any data is read;
# ADM's batches: 50,000 x 256 x 256 x 3 uint8 images, 2048-d statistics).
MAX_ITEM_BYTES = 256 << 20       # one image (a batch row): 8192 x 8192 x 3 uint8 is 192 MiB
MAX_WHOLE_BYTES = 2 << 30        # an array that must be loaded whole (Fortran order)
MAX_STAT_DIM = 8192              # mu (D,), sigma (D, D) of stored Inception statistics


def _read_npy_header(f, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy stream `f` (positioned at its start); ValueError
    for an unknown format version or an object dtype (pickled Python objects)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):    # 3.0 differs only by a UTF-8 header, ASCII for arrays
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"{where}: unsupported .npy format version {version}")
    if dtype.hasobject:
        raise ValueError(f"{where}: holds Python objects (dtype {dtype}); only numeric arrays are read")
    return tuple(shape), fortran, dtype


def _check_size(where: str, shape: tuple[int, ...], dtype: np.dtype, header_bytes: int,
                member_bytes: int) -> None:
    """The data a header declares must be exactly what the member holds (as np.save writes it)."""
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if header_bytes + declared != member_bytes:
        raise ValueError(f"{where}: header declares shape {shape} {dtype} ({declared} bytes) but the "
                         f"file holds {member_bytes - header_bytes} bytes of data")


class NpzArrayReader:
    """One array of an .npz, streamed in row batches from the zip member (as ADM reads arr_0).

    The member's .npy header is checked before any data is read: a numeric dtype, a declared size
    equal to the bytes the member holds, one row at most `MAX_ITEM_BYTES` (a batch of rows is what
    is allocated), and at most `MAX_WHOLE_BYTES` for a Fortran-ordered array, which is loaded
    whole. Format 1.0/2.0/3.0 C-ordered arrays are read batch by batch.
    """

    def __init__(self, path: str, key: str = "arr_0"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"batch file not found: {path}")
        self.path, self.key, self.member = path, key, f"{key}.npy"
        where = f"{path} ('{key}')"
        try:
            with zipfile.ZipFile(path) as zf:
                if self.member not in zf.namelist():
                    keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
                    raise ValueError(f"{path} has no array '{key}' (arrays: {keys})")
                info = zf.getinfo(self.member)
                with zf.open(self.member) as f:
                    self.shape, self.fortran_order, self.dtype = _read_npy_header(f, where)
                    header_bytes = f.tell()
        except zipfile.BadZipFile as err:
            raise ValueError(f"{path} is not an .npz file ({err})") from None
        _check_size(where, self.shape, self.dtype, header_bytes, info.file_size)
        row = int(np.prod(self.shape[1:], dtype=object)) * self.dtype.itemsize if self.shape else 0
        if row > MAX_ITEM_BYTES:
            raise ValueError(f"{where}: one row of shape {self.shape[1:]} is {row} bytes (at most {MAX_ITEM_BYTES})")
        if self.fortran_order and info.file_size > MAX_WHOLE_BYTES:
            raise ValueError(f"{where}: a Fortran-ordered array of {info.file_size} bytes (read whole; "
                             f"at most {MAX_WHOLE_BYTES})")

    @property
    def _streamable(self) -> bool:
        return not self.fortran_order

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 1

    def read(self) -> np.ndarray:
        """The whole array (for small ones: labels, statistics)."""
        with np.load(self.path, allow_pickle=False) as f:
            return f[self.key]

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        if not self._streamable:
            arr = self.read()
            yield from (arr[i: i + batch_size] for i in range(0, len(arr), batch_size))
            return
        with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
            _read_npy_header(f, self.path)
            for start in range(0, self.shape[0], batch_size):
                batch = np.empty((min(batch_size, self.shape[0] - start), *self.shape[1:]), self.dtype)
                view, got = memoryview(batch).cast("B"), 0
                while got < len(view):
                    n = f.readinto(view[got:])
                    if not n:
                        raise ValueError(f"{self.path}: '{self.key}' is truncated")
                    got += n
                yield batch


def read_npy(path: str, max_bytes: int = MAX_WHOLE_BYTES) -> np.ndarray:
    """A small standalone .npy file (e.g. a sample folder's labels.npy), its header checked
    (numeric dtype, declared size equal to the file's, at most `max_bytes`) before loading."""
    with open(path, "rb") as f:
        shape, _, dtype = _read_npy_header(f, path)
        header_bytes = f.tell()
    size = os.path.getsize(path)
    _check_size(path, shape, dtype, header_bytes, size)
    if size > max_bytes:
        raise ValueError(f"{path}: {size} bytes (at most {max_bytes})")
    return np.load(path, allow_pickle=False)


def read_batch_images(path: str, any_dtype: bool = False) -> NpzArrayReader:
    """The `arr_0` images of an ADM batch; they must be uint8 (N, H, W, 3) in 0..255 (only the
    header is read here).

    ADM casts any dtype to float32 silently (a [0, 1] float batch gives meaningless numbers); we
    refuse anything but uint8 instead, unless `any_dtype` (the evaluator's --allow-mismatch).
    """
    reader = NpzArrayReader(path, "arr_0")
    if (reader.dtype != np.uint8 and not any_dtype) or len(reader.shape) != 4 or reader.shape[-1] != 3:
        raise ValueError(f"{path}: arr_0 must be uint8 (N, H, W, 3) images in 0..255, "
                         f"got {reader.dtype} {reader.shape}")
    return reader


def read_batch_statistics(path: str) -> dict[str, np.ndarray] | None:
    """`mu, sigma, mu_s, sigma_s` stored in a batch file, or None when it has no `mu` (as ADM).
    Their headers are checked first: float `mu` (D,) and `sigma` (D, D) with D <= MAX_STAT_DIM."""
    with zipfile.ZipFile(path) as zf:
        names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
    if "mu" not in names:
        return None
    missing = [k for k in STAT_KEYS if k not in names]
    if missing:
        raise ValueError(f"{path} has 'mu' but lacks {missing} (ADM needs all of {STAT_KEYS})")
    out = {}
    for mu_key, sigma_key in (("mu", "sigma"), ("mu_s", "sigma_s")):
        mu, sigma = NpzArrayReader(path, mu_key), NpzArrayReader(path, sigma_key)
        dim = mu.shape[0] if len(mu.shape) == 1 else -1
        if not (0 < dim <= MAX_STAT_DIM and sigma.shape == (dim, dim) and mu.dtype.kind == "f"
                and sigma.dtype.kind == "f"):
            raise ValueError(f"{path}: '{mu_key}' {mu.shape} {mu.dtype} / '{sigma_key}' {sigma.shape} "
                             f"{sigma.dtype}: expected float (D,) and (D, D) with D <= {MAX_STAT_DIM}")
        out[mu_key], out[sigma_key] = mu.read(), sigma.read()
    return {k: out[k] for k in STAT_KEYS}

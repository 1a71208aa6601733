"""Pack a folder of sample PNGs into an ADM sample batch (`{folder}.npz`).

Follows the reference `tools/save_npz.py` (REFERENCE.md section 7.4) and guided-diffusion's batch
format (ADM_EVAL.md section 2): `{i:06d}.png` for i = 0..N-1 are stacked, sorted by index, as
uint8 (N, H, W, 3) under the key `arr_0`. If `{folder}/labels.npy` exists (int64, index-aligned
with the PNGs: entry i is the class of `{i:06d}.png`), its first N entries go to `arr_1`, as
guided-diffusion's class-conditional samplers write them (the evaluator ignores `arr_1`).

Unlike the reference, images are streamed into the zip member one at a time (memory is one
image, not 50k), a folder with missing indices or mixed sizes is refused, and the file is written
atomically. The result loads with `np.load` exactly like `np.savez(path, arr_0, arr_1)`.

    python tools/save_npz.py SAMPLE_DIR [--num 50000]
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import zipfile
from typing import Iterable, Mapping

import numpy as np
from PIL import Image
from tqdm import tqdm

if __package__ in (None, ""):  # run as `python tools/save_npz.py`: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.fileio import atomic_write  # noqa: E402

logger = logging.getLogger(__name__)

_SAMPLE_NAME = re.compile(r"^(\d{6})\.png$")
LABELS_FILE = "labels.npy"


class StreamedArray:
    """An array to be written chunk by chunk: its full shape, dtype and an iterable of row chunks."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, chunks: Iterable[np.ndarray]):
        self.shape, self.dtype, self.chunks = tuple(shape), np.dtype(dtype), chunks


def write_npz_atomic(path: str, arrays: Mapping[str, np.ndarray | StreamedArray]) -> None:
    """Write an uncompressed .npz (as np.savez) member by member, atomically (tools/fileio.py).

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
        raise ValueError(f"no {{i:06d}}.png samples to pack in {sample_dir} (num={num})")
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
        labels = np.load(labels_path)
        if labels.ndim != 1 or len(labels) < num:
            raise ValueError(f"{labels_path}: need at least {num} labels (1-D), got shape {labels.shape}")
        arrays["arr_1"] = labels[:num].astype(np.int64)
    out_path = f"{sample_dir}.npz"
    write_npz_atomic(out_path, arrays)
    logger.info("saved %s: arr_0 %s%s", out_path, (num, height, width, 3), " + labels arr_1" if "arr_1" in arrays else "")
    return out_path


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="Pack {i:06d}.png samples into an ADM sample batch {folder}.npz")
    parser.add_argument("sample_dir")
    parser.add_argument("--num", type=int, default=None, help="pack indices 0..num-1 (default: all, contiguous)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return create_npz_from_sample_folder(args.sample_dir, args.num)


if __name__ == "__main__":
    main()

"""Pre-extracted semantic-encoder features: the files SFD's Semantic VAE trains on.

Format (SFD `tokenizer/semvae/extract_dinov2_feature.py`, read by its `data/preextracted.py`):
`{root}/{model_name}/features_{N}samples.safetensors` with
    patch_tokens (N, L, D) fp16   final normalised patch tokens (256 x 768 for DINOv2-B/14 at 224 px)
    cls_tokens   (N, D)    fp16   the class token
    patch_avg    (N, D)    fp16   mean of the fp32 patch tokens over L, then fp16
    class_indices (N,)     int64  ImageFolder label
and `metadata_{N}samples.json` (class_names, image_paths, model_name, feature_dim, num_samples,
num_patches, *_shape, class_to_idx, idx_to_class, num_classes, extraction_config).

SFD loads the whole file into memory (0.5 TB for ImageNet's train split); here it is memory-mapped
(the safetensors header gives each tensor's byte range) and batches are gathered from the map.
`FeatureFileWriter` writes the same file in place, batch by batch, so an extraction can stop and
continue (tools/extract_semantic_features.py): the file is preallocated under a `.partial` name
and renamed when complete.
"""
from __future__ import annotations

import glob
import json
import os
import re
import struct
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

DTYPES = {"F16": np.float16, "F32": np.float32, "I64": np.int64}
FEATURE_KEYS = ("class_indices", "cls_tokens", "patch_avg", "patch_tokens")   # byte order in our files
FEATURE_NAME = re.compile(r"^features_(\d+)samples\.safetensors$")


def feature_files(feature_dir: str, model_name: str, max_samples: Optional[int]) -> Tuple[Path, Path]:
    """(features file, metadata file) of `{feature_dir}/{model_name}` for `max_samples` (SFD's
    naming); None: the folder's only features file. Missing files raise naming the path."""
    folder = Path(feature_dir) / model_name
    if max_samples is None:
        found = sorted(p for p in glob.glob(str(folder / "features_*samples.safetensors"))
                       if FEATURE_NAME.match(os.path.basename(p)))
        if len(found) != 1:
            raise FileNotFoundError(f"{folder}: expected one features_<N>samples.safetensors, found "
                                    f"{len(found)} ({', '.join(os.path.basename(p) for p in found) or 'none'}); "
                                    "set max_samples to pick one, or extract them with "
                                    "tools/extract_semantic_features.py")
        max_samples = int(FEATURE_NAME.match(os.path.basename(found[0])).group(1))
    features = folder / f"features_{max_samples}samples.safetensors"
    metadata = folder / f"metadata_{max_samples}samples.json"
    for path in (features, metadata):
        if not path.is_file():
            raise FileNotFoundError(f"pre-extracted features not found: {path} (extract them with "
                                    "tools/extract_semantic_features.py)")
    return features, metadata


def read_header(path: Path) -> Tuple[Dict[str, dict], int]:
    """The safetensors header {name: {dtype, shape, data_offsets}} and the byte offset of the data."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its header length)")
        (n,) = struct.unpack("<Q", head)
        if n > 100 << 20:
            raise ValueError(f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ValueError(f"{path}: not a safetensors file (unreadable header)") from None
    header.pop("__metadata__", None)
    return header, 8 + n


class FeatureFile:
    """Memory-mapped view of one features file: `patch_tokens` (N, L, D) and `labels` (N,).

    The maps are opened on first use in each process (DataLoader workers included)."""

    def __init__(self, path: Path, metadata: Optional[Path] = None):
        self.path = Path(path)
        header, self._start = read_header(self.path)
        missing = [k for k in ("patch_tokens", "class_indices") if k not in header]
        if missing:
            raise ValueError(f"{self.path}: no '{missing[0]}' tensor (is it a features file of "
                             "tools/extract_semantic_features.py / SFD's extract_dinov2_feature.py?)")
        self._entries = {k: header[k] for k in ("patch_tokens", "class_indices")}
        for key, entry in self._entries.items():
            if entry["dtype"] not in DTYPES:
                raise ValueError(f"{self.path}: '{key}' has dtype {entry['dtype']} (expected one of {sorted(DTYPES)})")
        shape = self._entries["patch_tokens"]["shape"]
        if len(shape) != 3 or self._entries["class_indices"]["shape"] != shape[:1]:
            raise ValueError(f"{self.path}: patch_tokens {shape} and class_indices "
                             f"{self._entries['class_indices']['shape']} do not describe N items of (L, D) tokens")
        self.num_samples, self.num_patches, self.feature_dim = (int(s) for s in shape)
        if metadata is not None:
            meta = json.loads(Path(metadata).read_text())
            if int(meta.get("num_samples", self.num_samples)) != self.num_samples or \
                    int(meta.get("feature_dim", self.feature_dim)) != self.feature_dim:
                raise ValueError(f"{metadata} (num_samples {meta.get('num_samples')}, feature_dim "
                                 f"{meta.get('feature_dim')}) does not describe {self.path} {shape}")
        self._maps: Optional[Dict[str, np.memmap]] = None

    def _map(self, key: str) -> np.memmap:
        if self._maps is None:
            self._maps = {}
            for name, entry in self._entries.items():
                begin, _ = entry["data_offsets"]
                self._maps[name] = np.memmap(self.path, dtype=DTYPES[entry["dtype"]], mode="r",
                                             offset=self._start + begin, shape=tuple(entry["shape"]))
        return self._maps[key]

    def __getstate__(self):  # workers open their own maps
        return {**self.__dict__, "_maps": None}

    def tokens(self, indices: Sequence[int]) -> torch.Tensor:
        """Patch tokens of `indices` as float32 (len, L, D) (SFD's `.float()` of the stored fp16)."""
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")          # sorted reads from the map, then back in order
        out = np.empty((len(idx), self.num_patches, self.feature_dim), dtype=np.float32)
        out[order] = self._map("patch_tokens")[idx[order]]
        return torch.from_numpy(out)

    def labels(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._map("class_indices")[np.asarray(indices, dtype=np.int64)],
                                           dtype=np.int64))


class FeatureBatches(Dataset):
    """Dataset whose item is a whole batch: `dataset[[i, j, ...]]` -> {'patch_tokens' (B, L, D)
    float32, 'class_idx' (B,) int64} (one gather from the map per batch, not one per item)."""

    def __init__(self, file: FeatureFile):
        self.file = file

    def __len__(self) -> int:
        return self.file.num_samples

    def __getitem__(self, indices: List[int]) -> Dict[str, torch.Tensor]:
        return {"patch_tokens": self.file.tokens(indices), "class_idx": self.file.labels(indices)}


#################################################################################
#                                     Writing                                   #
#################################################################################

def _layout(num_samples: int, num_patches: int, dim: int) -> Tuple[Dict[str, dict], bytes]:
    """The header of a features file and its bytes (padded to 8 as safetensors writes it)."""
    shapes = {"class_indices": ("I64", [num_samples]), "cls_tokens": ("F16", [num_samples, dim]),
              "patch_avg": ("F16", [num_samples, dim]), "patch_tokens": ("F16", [num_samples, num_patches, dim])}
    header, offset = {}, 0
    for key in FEATURE_KEYS:
        dtype, shape = shapes[key]
        size = int(np.prod(shape)) * np.dtype(DTYPES[dtype]).itemsize
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return header, struct.pack("<Q", len(text)) + text


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class FeatureFileWriter:
    """Writes a features file in place: `write(start, ...)` stores items [start, start + B).

    `open(path, ...)` creates `{path}.partial` at its full size (sparse), or reopens it when its
    header matches (a continued extraction); `finish()` flushes and renames it to `path`."""

    def __init__(self, path: Path, num_samples: int, num_patches: int, feature_dim: int):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.header, head = _layout(num_samples, num_patches, feature_dim)
        self.start = len(head)
        total = self.start + self.header["patch_tokens"]["data_offsets"][1]
        if self.partial.is_file():
            existing, start = read_header(self.partial)
            if existing != self.header or start != self.start or self.partial.stat().st_size != total:
                raise ValueError(f"{self.partial} was started for other shapes; delete it to start over")
            self.fd = os.open(self.partial, os.O_RDWR)
        else:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(self.fd, total)
            os.pwrite(self.fd, head, 0)

    def write(self, start: int, patch_tokens: torch.Tensor, cls_tokens: torch.Tensor, labels: torch.Tensor) -> None:
        """patch_tokens (B, L, D) fp32 -> patch_tokens, and patch_avg = mean over L in fp32, stored fp16."""
        arrays = {"patch_tokens": patch_tokens.half(), "patch_avg": patch_tokens.mean(dim=1).half(),
                  "cls_tokens": cls_tokens.half(), "class_indices": labels.to(torch.int64)}
        for key, value in arrays.items():
            data = value.detach().cpu().contiguous().numpy()
            row = data[0].nbytes if data.ndim > 1 else data.itemsize
            begin = self.header[key]["data_offsets"][0] + start * row
            if begin + data.nbytes > self.header[key]["data_offsets"][1]:
                raise ValueError(f"{self.partial}: items {start}..{start + len(data)} are past the end")
            _pwrite_all(self.fd, data.tobytes(), self.start + begin)

    def sync(self) -> None:
        os.fsync(self.fd)

    def finish(self) -> Path:
        self.sync()
        os.close(self.fd)
        os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass

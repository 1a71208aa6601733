"""Pre-extracted latents in the released shard format, and their channel statistics.

Follows the reference `datasets/img_latent_dataset.py` (docs/reference_behaviour.md §4.3-4.4). A latent directory
holds `latents_rank{RR:02d}_shard{SSS:03d}.safetensors` files, each with
    latents       float32 (n, C, H, W)   posterior sample of the image
    latents_flip  float32 (n, C, H, W)   posterior sample of its horizontal flip
    labels        int64   (n,)           ImageFolder class index
and `latents_stats.pt` = {'mean': (1, C, 1, 1), 'std': (1, C, 1, 1)} float32. The global index
runs over the sorted shard files in order.

Differences from the reference, none of which changes the tensors a training step sees:
- shard files are opened once per process (cached `safe_open` handles), not on every item;
- the 50/50 stored-vs-flipped choice uses torch's RNG (seedable; DataLoader workers get torch's
  per-worker seeds) instead of numpy's global RNG;
- the constructor never writes files: stats come from `compute_latent_stats` (seeded) and
  `save_latent_stats` (atomic), called by extract_features.py (or `--stats-only`);
- a bad directory (no shards, a missing key, disagreeing shapes, an unreadable file) raises one
  ValueError naming the file.
"""
from __future__ import annotations

import bisect
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from safetensors import SafetensorError, safe_open
from torch.utils.data import Dataset

from utils.fileio import atomic_torch_save

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
SHARD_KEYS = ("latents", "latents_flip", "labels")
STATS_FILE = "latents_stats.pt"
STATS_NUM_SAMPLES = 10000


def shard_name(rank: int, shard: int) -> str:
    """The released shard file name: latents_rank{rank:02d}_shard{shard:03d}.safetensors."""
    return f"latents_rank{rank:02d}_shard{shard:03d}.safetensors"


class LatentShards:
    """Index over a directory's shard files; reads single rows through cached handles.

    `files` (sorted), `counts` (rows per file), `latent_shape` (C, H, W). Handles are opened
    lazily and cached per process (a forked DataLoader worker opens its own).
    """

    def __init__(self, data_dir: PathLike):
        self.data_dir = Path(data_dir)
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"latent directory not found: {self.data_dir}")
        self.files = sorted(self.data_dir.glob("*.safetensors"))
        if not self.files:
            raise ValueError(f"no *.safetensors latent shards in {self.data_dir} "
                             "(run extract_features.py to create them)")
        counts, shape = [], None
        for path in self.files:
            n, file_shape = _check_shard(path)
            if shape is not None and file_shape != shape:
                raise ValueError(f"{path}: latent shape {file_shape} differs from {shape} "
                                 f"in {self.files[0].name}")
            shape = file_shape
            counts.append(n)
        self.counts: List[int] = counts
        self.latent_shape: Tuple[int, int, int] = shape
        self.offsets = [0]                                       # start of each file, then N
        for n in counts:
            self.offsets.append(self.offsets[-1] + n)
        self._handles: Dict[int, object] = {}
        self._pid = None

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> Tuple[int, int]:
        """Global index -> (file number, row in that file)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} latents")
        f = bisect.bisect_right(self.offsets, index) - 1        # skips empty files
        return f, index - self.offsets[f]

    def handle(self, f: int):
        if self._pid != os.getpid():       # never share mmap handles across a fork
            self._handles, self._pid = {}, os.getpid()
        if f not in self._handles:
            self._handles[f] = safe_open(str(self.files[f]), framework="pt")
        return self._handles[f]

    def read(self, key: str, index: int) -> torch.Tensor:
        """Row `index` of `key`: (C, H, W) for latents, a 0-d int64 tensor for labels."""
        f, row = self.locate(index)
        return self.handle(f).get_slice(key)[row: row + 1][0]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, None
        return state


def _check_shard(path: Path) -> Tuple[int, Tuple[int, int, int]]:
    """Validate one shard's header; return (rows, (C, H, W))."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            missing = [k for k in SHARD_KEYS if k not in keys]
            if missing:
                raise ValueError(f"{path}: missing key(s) {missing} (has {sorted(keys)})")
            lat = list(f.get_slice("latents").get_shape())
            flip = list(f.get_slice("latents_flip").get_shape())
            lab = list(f.get_slice("labels").get_shape())
            dtypes = {k: f.get_slice(k).get_dtype() for k in SHARD_KEYS}
    except SafetensorError as e:
        raise ValueError(f"{path}: unreadable safetensors file ({e})") from e
    if len(lat) != 4 or flip != lat or lab != lat[:1]:
        raise ValueError(f"{path}: inconsistent shapes latents {lat}, latents_flip {flip}, "
                         f"labels {lab} (expected (n, C, H, W), (n, C, H, W), (n,))")
    if dtypes != {"latents": "F32", "latents_flip": "F32", "labels": "I64"}:
        raise ValueError(f"{path}: dtypes {dtypes}, expected latents F32 and labels I64")
    return lat[0], tuple(lat[1:])


# ------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------

def compute_latent_stats(data_dir: PathLike, num_samples: int = STATS_NUM_SAMPLES,
                         seed: int = 0) -> Dict[str, torch.Tensor]:
    """Per-channel mean and unbiased std of `num_samples` random unflipped latents.

    The reference's definition (docs/reference_behaviour.md §4.4): min(num_samples, N) images drawn without
    replacement, `latents` only (never the flips), mean and `torch.std` (N - 1) over (N, H, W).
    Ours is seeded (torch generator) and accumulates in float64. Returns float32 (1, C, 1, 1).
    """
    shards = LatentShards(data_dir)
    n = min(num_samples, len(shards))
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(shards), generator=g)[:n].sort().values.tolist()
    chunks = [index[i: i + 1024] for i in range(0, n, 1024)]

    def load(chunk: List[int]) -> torch.Tensor:                     # (len(chunk), C, H, W)
        return torch.stack([shards.read("latents", i) for i in chunk]).double()

    # Two passes over chunks (float64) instead of one (n, C, H, W) tensor: 10k latents of
    # 32x16x16 would be 0.65 GB in float64.
    count = n * shards.latent_shape[1] * shards.latent_shape[2]
    total = sum(load(c).sum(dim=(0, 2, 3)) for c in chunks)
    mean = (total / count).reshape(1, -1, 1, 1)
    sq = sum((load(c) - mean).pow(2).sum(dim=(0, 2, 3)) for c in chunks)
    std = (sq / (count - 1)).sqrt().reshape(1, -1, 1, 1)                # unbiased, as torch.std
    return {"mean": mean.float(), "std": std.float()}


def save_latent_stats(stats: Dict[str, torch.Tensor], data_dir: PathLike) -> Path:
    """Write {'mean', 'std'} atomically to `data_dir/latents_stats.pt`; returns the path."""
    path = Path(data_dir) / STATS_FILE
    atomic_torch_save({"mean": stats["mean"].float().contiguous(),
                       "std": stats["std"].float().contiguous()}, path)
    return path


def load_latent_stats(data_dir: PathLike, channels: Optional[int] = None,
                      channels_of: str = "the latents' channels") -> Tuple[torch.Tensor, torch.Tensor]:
    """(mean, std), each float32 (1, C, 1, 1), from `data_dir/latents_stats.pt`.

    Enough for sampling: the released stats file alone (no shards) works. With `channels`, C must
    equal it (`channels_of` names where that number comes from in the error).
    """
    path = Path(data_dir) / STATS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"latent statistics not found: {path}. Download the released latents_stats.pt, or "
            f"run extract_features.py (or `extract_features.py --stats-only --output-path "
            f"{data_dir}`) to compute them from the shards")
    from utils.safe_load import UnsafeFileError, load_torch_file

    what = "PyTorch stats file (torch.save of {'mean', 'std'})"
    try:  # sizes checked from the file's metadata first; a tensor bigger than its bytes is refused
        stats = load_torch_file(path, what, max_bytes=16 << 20)   # the released file: 1.5 KB
    except UnsafeFileError:
        raise
    except ValueError as err:
        if str(err).startswith("not a "):
            raise
        raise ValueError(f"{path}: unreadable stats file ({err})") from None
    except Exception as err:  # truncated zip, ...
        raise ValueError(f"{path}: unreadable stats file ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(stats, dict) or "mean" not in stats or "std" not in stats:
        raise ValueError(f"{path}: expected a dict with 'mean' and 'std'")
    if not all(isinstance(stats[k], torch.Tensor) for k in ("mean", "std")):
        raise ValueError(f"{path}: 'mean' and 'std' must be tensors")
    mean, std = stats["mean"], stats["std"]
    if mean.dim() != 4 or mean.shape != std.shape or mean.shape[0] != 1 or mean.shape[2:] != (1, 1):
        raise ValueError(f"{path}: mean/std shapes {tuple(mean.shape)}/{tuple(std.shape)}, "
                         "expected (1, C, 1, 1)")
    if not (mean.dtype.is_floating_point and std.dtype.is_floating_point):
        raise ValueError(f"{path}: mean/std dtypes {mean.dtype}/{std.dtype}, expected floating point")
    mean, std = mean.float(), std.float()
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
        raise ValueError(f"{path}: mean/std contain NaN or inf")
    if not (std > 0).all():
        raise ValueError(f"{path}: std must be positive in every channel, got min {std.min().item():.3g}")
    if channels is not None and mean.shape[1] != channels:
        raise ValueError(f"{path}: stats have {mean.shape[1]} channels, {channels_of} = {channels}")
    return mean, std


def validate_latents(data_dir: PathLike, in_chans: int, latent_grid: int, num_classes: int,
                     latent_norm: bool) -> LatentShards:
    """Check a training latent directory against the model before anything is written or built.

    Shards readable with the right keys/dtypes (LatentShards), at least one latent, latent shape
    (in_chans, latent_grid, latent_grid), every label in [0, num_classes), and with `latent_norm`
    finite stats with positive std and the same channel count. One-line ValueError naming the file.
    """
    shards = LatentShards(data_dir)
    if len(shards) == 0:
        raise ValueError(f"{shards.data_dir}: the latent shards hold no latents (every shard is empty)")
    expected = (in_chans, latent_grid, latent_grid)
    if tuple(shards.latent_shape) != expected:
        raise ValueError(f"{shards.files[0]}: latent shape {tuple(shards.latent_shape)} does not match the "
                         f"model's {expected} (model.in_chans, data.image_size // vae.downsample_ratio)")
    for f, path in enumerate(shards.files):
        if shards.counts[f] == 0:
            continue
        labels = shards.handle(f).get_tensor("labels")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"{path}: labels in [{low}, {high}] outside [0, {num_classes}) "
                             "(data.num_classes)")
    if latent_norm:
        load_latent_stats(data_dir, channels=in_chans)
    return shards


# ------------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------------

class ImgLatentDataset(Dataset):
    """Training latents: item i -> (feature (C, H, W) float32, label 0-d int64).

    feature = (z - mean) / std * latent_multiplier when latent_norm else z * latent_multiplier,
    where z is `latents` or `latents_flip` of row i with probability 1/2 each.
    """

    def __init__(self, data_dir: PathLike, latent_norm: bool = True,
                 latent_multiplier: float = 1.0):
        self.data_dir = Path(data_dir)
        self.shards = LatentShards(data_dir)
        self.latent_norm = latent_norm
        self.latent_multiplier = latent_multiplier
        if latent_norm:
            self._latent_mean, self._latent_std = load_latent_stats(data_dir, self.shards.latent_shape[0])
            self._latent_mean = self._latent_mean.squeeze(0)    # (C, 1, 1)
            self._latent_std = self._latent_std.squeeze(0)

    def __len__(self) -> int:
        return len(self.shards)

    def get_latent_stats(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of shape (1, C, 1, 1), from `data_dir/latents_stats.pt`."""
        return load_latent_stats(self.data_dir)

    def __getitem__(self, idx: int) -> Tuple[torch.Tensor, torch.Tensor]:
        # The reference takes 'latents' if uniform(0, 1) > 0.5 else 'latents_flip'.
        key = "latents" if torch.rand(()) > 0.5 else "latents_flip"
        feature = self.shards.read(key, idx)
        label = self.shards.read("labels", idx)
        if self.latent_norm:
            feature = (feature - self._latent_mean) / self._latent_std
        return feature * self.latent_multiplier, label

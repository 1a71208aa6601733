"""Pre-extracted latents in the released shard format, and their channel statistics.

Follows the reference `datasets/img_latent_dataset.py` (docs/reference_behaviour.md §4.3-4.4). A latent directory
holds `latents_rank{RR:02d}_shard{SSS:03d}.safetensors` files, each with
    latents       float32 (n, C, H, W)   posterior sample of the image
    latents_flip  float32 (n, C, H, W)   posterior sample of its horizontal flip
    labels        int64   (n,)           ImageFolder class index
and `latents_stats.pt` = {'mean': (1, C, 1, 1), 'std': (1, C, 1, 1)} float32. The global index
runs over the sorted shard files in order.

SFD's shards (its `dataset/img_latent_dataset.py`; the SFD part of docs/reference_behaviour.md)
may add, each with its `_flip` twin, any floating dtype:
    latents_dino  (n, Cd, H, W)  ReDi-style DINOv2 PCA channels (not standardised)
    latents_sv    (n, Cs, H, W)  the semantic VAE's latents, stats in `latents_sv_stats.pt`
    feats_dino    (n, D, h, w)   DINOv2 patch features, fp16: the REPA target
The model's input is then x1 = multiplier * [(z - mean)/std ; dino ; (s - sv_mean)/sv_std]
(texture first, SFD's order; `datasets.latent_norm.LatentNormalizer`), and the REPA target
travels beside it as `extras['repa_target']` (float32, as SFD's `.float()`). Which parts are
used is the caller's choice (the config: model.semantic_chans, data.latent_sv_norm,
model.use_repa), not "every key the shard holds" as in SFD, so a LightningDiT baseline can train
on the texture part of SFD's shards. One flip draw per item picks the key of every part.

Differences from the reference, none of which changes the tensors a training step sees:
- shard files are opened once per process (cached `safe_open` handles), not on every item;
- the 50/50 stored-vs-flipped choice uses torch's RNG (seedable; DataLoader workers get torch's
  per-worker seeds) instead of numpy's global RNG;
- the constructor never writes files (SFD's computes missing stats with an unseeded draw):
  stats come from `compute_latent_stats` (seeded) and `save_latent_stats` (atomic), called by
  extract_features.py (or `--stats-only`); a missing stats file is a FileNotFoundError;
- every part is float32 in x1 (SFD's `torch.cat` would promote to the widest part's dtype; the
  released shards are float32 but for the fp16 REPA features, which are returned as float32);
- a bad directory (no shards, a missing key or flip twin, disagreeing shapes, an unreadable
  file) raises one ValueError naming the file and the key.
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

from datasets.latent_norm import LatentNormalizer
from utils.fileio import atomic_torch_save

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
SHARD_KEYS = ("latents", "latents_flip", "labels")
FLIP = "_flip"
SEMANTIC_KEYS = ("latents_dino", "latents_sv")   # after the texture, in SFD's order
SV_KEY = "latents_sv"
REPA_KEY = "feats_dino"
OPTIONAL_KEYS = (*SEMANTIC_KEYS, REPA_KEY)       # each with its `_flip` twin
EXTRA_NAMES = {REPA_KEY: "repa_target"}          # shard key -> keyword of Transport.training_losses
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
STATS_NUM_SAMPLES = 10000


def stats_file(key: str = "latents") -> str:
    """The stats file of a latent key (SFD's naming): latents_stats.pt, latents_sv_stats.pt."""
    return f"{key}_stats.pt"


STATS_FILE = stats_file("latents")
SV_STATS_FILE = stats_file(SV_KEY)


def shard_name(rank: int, shard: int) -> str:
    """The released shard file name: latents_rank{rank:02d}_shard{shard:03d}.safetensors."""
    return f"latents_rank{rank:02d}_shard{shard:03d}.safetensors"


class LatentShards:
    """Index over a directory's shard files; reads single rows through cached handles.

    `files` (sorted), `counts` (rows per file), `latent_shape` (C, H, W), `parts` (optional key
    -> its row shape, for the SFD keys every shard holds). Handles are opened lazily and cached
    per process (a forked DataLoader worker opens its own).
    """

    def __init__(self, data_dir: PathLike):
        self.data_dir = Path(data_dir)
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"latent directory not found: {self.data_dir}")
        self.files = sorted(self.data_dir.glob("*.safetensors"))
        if not self.files:
            raise ValueError(f"no *.safetensors latent shards in {self.data_dir} "
                             "(run extract_features.py to create them)")
        counts, shapes = [], None
        for path in self.files:
            n, file_shapes = _shard_header(path)
            if shapes is not None and file_shapes != shapes:
                key = next(k for k in sorted(set(shapes) | set(file_shapes), key=_key_order)
                           if shapes.get(k) != file_shapes.get(k))
                raise ValueError(f"{path}: {key} {_describe(file_shapes.get(key))} differs from "
                                 f"{_describe(shapes.get(key))} in {self.files[0].name}")
            shapes = file_shapes
            counts.append(n)
        self.counts: List[int] = counts
        self.latent_shape: Tuple[int, int, int] = shapes.pop("latents")
        self.parts: Dict[str, Tuple[int, ...]] = shapes
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

    def channels(self, key: str) -> int:
        """Channel count of `key` ("latents" or an optional part)."""
        return self.latent_shape[0] if key == "latents" else self.parts[key][0]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, None
        return state


def _key_order(key: str) -> int:
    return ("latents", *OPTIONAL_KEYS).index(key)


def _describe(shape: Optional[Tuple[int, ...]]) -> str:
    return "absent" if shape is None else f"shape {shape}"


def _shard_header(path: Path) -> Tuple[int, Dict[str, Tuple[int, ...]]]:
    """Validate one shard's header; return (rows, {"latents": (C, H, W), optional part: row shape})."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            missing = [k for k in SHARD_KEYS if k not in keys]
            if missing:
                raise ValueError(f"{path}: missing key(s) {missing} (has {sorted(keys)})")
            for key in OPTIONAL_KEYS:
                if (key in keys) != (key + FLIP in keys):
                    have, lack = (key, key + FLIP) if key in keys else (key + FLIP, key)
                    raise ValueError(f"{path}: has {have} but not {lack} (every part needs its flip)")
            present = [k for k in OPTIONAL_KEYS if k in keys]
            names = (*SHARD_KEYS, *present, *(p + FLIP for p in present))
            shapes = {k: list(f.get_slice(k).get_shape()) for k in names}
            dtypes = {k: f.get_slice(k).get_dtype() for k in shapes}
    except SafetensorError as e:
        raise ValueError(f"{path}: unreadable safetensors file ({e})") from e
    lat, flip, lab = shapes["latents"], shapes["latents_flip"], shapes["labels"]
    if len(lat) != 4 or flip != lat or lab != lat[:1]:
        raise ValueError(f"{path}: inconsistent shapes latents {lat}, latents_flip {flip}, "
                         f"labels {lab} (expected (n, C, H, W), (n, C, H, W), (n,))")
    if {k: dtypes[k] for k in SHARD_KEYS} != {"latents": "F32", "latents_flip": "F32", "labels": "I64"}:
        raise ValueError(f"{path}: dtypes {({k: dtypes[k] for k in SHARD_KEYS})}, expected latents F32 "
                         "and labels I64")
    out = {"latents": tuple(lat[1:])}
    for key in present:
        shape, twin = shapes[key], shapes[key + FLIP]
        if len(shape) != 4 or shape[0] != lat[0] or twin != shape:
            raise ValueError(f"{path}: {key} {shape} / {key + FLIP} {twin}, expected (n, C, H, W) "
                             f"for both with n = {lat[0]} rows as latents")
        if dtypes[key] not in FLOAT_DTYPES or dtypes[key + FLIP] != dtypes[key]:
            raise ValueError(f"{path}: {key} / {key + FLIP} dtypes {dtypes[key]} / {dtypes[key + FLIP]}, "
                             f"expected one floating dtype ({', '.join(FLOAT_DTYPES)})")
        out[key] = tuple(shape[1:])
    return lat[0], out


def _check_shard(path: Path) -> Tuple[int, Tuple[int, int, int]]:
    """Validate one shard's header; return (rows, (C, H, W)) of its texture latents."""
    n, shapes = _shard_header(path)
    return n, shapes["latents"]


# ------------------------------------------------------------------------------------------------
# Which parts make up the model's input
# ------------------------------------------------------------------------------------------------

def latent_parts(shards: LatentShards, semantic_chans: int = 0, latent_sv_norm: bool = False) -> Tuple[str, ...]:
    """The shard keys whose channels, concatenated in this order, are the model's input.

    semantic_chans 0: the texture latents alone (LightningDiT), whatever else the shards hold.
    Otherwise the texture latents and then every semantic part the shards hold, in SFD's order
    (latents_dino, latents_sv), whose channels must add up to semantic_chans.
    """
    where = shards.files[0]
    if semantic_chans == 0:
        if latent_sv_norm:
            raise ValueError(f"{where}: data.latent_sv_norm is true but model.semantic_chans is 0 "
                             "(no semantic channels to standardise)")
        return ("latents",)
    present = [k for k in SEMANTIC_KEYS if k in shards.parts]
    if not present:
        raise ValueError(f"{where}: model.semantic_chans = {semantic_chans} but the shards hold no "
                         f"semantic latents ({' or '.join(SEMANTIC_KEYS)})")
    found = sum(shards.channels(k) for k in present)
    if found != semantic_chans:
        listed = ", ".join(f"{k} {shards.channels(k)}" for k in present)
        raise ValueError(f"{where}: the semantic latents have {found} channels ({listed}), "
                         f"model.semantic_chans = {semantic_chans}")
    for key in present:
        if shards.parts[key][1:] != shards.latent_shape[1:]:
            raise ValueError(f"{where}: {key} grid {shards.parts[key][1:]} differs from the latents' "
                             f"{shards.latent_shape[1:]} (they are concatenated along channels)")
    if latent_sv_norm and SV_KEY not in present:
        raise ValueError(f"{where}: data.latent_sv_norm is true but the shards hold no {SV_KEY}")
    return ("latents", *present)


def require_repa_target(shards: LatentShards) -> Tuple[int, ...]:
    """The REPA target's row shape (D, h, w); a one-line error when the shards have none."""
    if REPA_KEY not in shards.parts:
        raise ValueError(f"{shards.files[0]}: model.use_repa needs REPA targets, but the shards hold no "
                         f"{REPA_KEY} / {REPA_KEY + FLIP} (extract them with the REPA encoder)")
    return shards.parts[REPA_KEY]


# ------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------

def compute_latent_stats(data_dir: PathLike, num_samples: int = STATS_NUM_SAMPLES,
                         seed: int = 0, key: str = "latents") -> Dict[str, torch.Tensor]:
    """Per-channel mean and unbiased std of `num_samples` random unflipped rows of `key`.

    The reference's definition (docs/reference_behaviour.md §4.4; SFD's for `latents_sv` too):
    min(num_samples, N) images drawn without replacement, `key` only (never the flips), mean and
    `torch.std` (N - 1) over (N, H, W). Ours is seeded (torch generator; the same rows for every
    key) and accumulates in float64. Returns float32 (1, C, 1, 1).
    """
    shards = LatentShards(data_dir)
    if key != "latents" and key not in shards.parts:
        raise ValueError(f"{shards.files[0]}: no {key} to compute statistics of")
    channels, height, width = shards.latent_shape if key == "latents" else shards.parts[key]
    n = min(num_samples, len(shards))
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(shards), generator=g)[:n].sort().values.tolist()
    chunks = [index[i: i + 1024] for i in range(0, n, 1024)]

    def load(chunk: List[int]) -> torch.Tensor:                     # (len(chunk), C, H, W)
        return torch.stack([shards.read(key, i) for i in chunk]).double()

    # Two passes over chunks (float64) instead of one (n, C, H, W) tensor: 10k latents of
    # 32x16x16 would be 0.65 GB in float64.
    count = n * height * width
    total = sum(load(c).sum(dim=(0, 2, 3)) for c in chunks)
    mean = (total / count).reshape(1, -1, 1, 1)
    sq = sum((load(c) - mean).pow(2).sum(dim=(0, 2, 3)) for c in chunks)
    std = (sq / (count - 1)).sqrt().reshape(1, -1, 1, 1)                # unbiased, as torch.std
    return {"mean": mean.float(), "std": std.float()}


def save_latent_stats(stats: Dict[str, torch.Tensor], data_dir: PathLike, key: str = "latents") -> Path:
    """Write {'mean', 'std'} atomically to `data_dir/{key}_stats.pt`; returns the path."""
    path = Path(data_dir) / stats_file(key)
    atomic_torch_save({"mean": stats["mean"].float().contiguous(),
                       "std": stats["std"].float().contiguous()}, path)
    return path


def load_latent_stats(data_dir: PathLike, channels: Optional[int] = None,
                      channels_of: str = "the latents' channels", *,
                      file: str = STATS_FILE) -> Tuple[torch.Tensor, torch.Tensor]:
    """(mean, std), each float32 (1, C, 1, 1), from `data_dir/latents_stats.pt` (or `file`).

    Enough for sampling: the released stats file alone (no shards) works. With `channels`, C must
    equal it (`channels_of` names where that number comes from in the error).
    """
    path = Path(data_dir) / file
    if not path.is_file():
        raise FileNotFoundError(
            f"latent statistics not found: {path}. Download the released {path.name}, or "
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


def load_semantic_stats(data_dir: PathLike, channels: Optional[int] = None,
                        channels_of: str = "latents_sv's channels") -> Tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of SFD's semantic latents, float32 (1, Cs, 1, 1), from `latents_sv_stats.pt`
    (the same checks as `load_latent_stats`)."""
    return load_latent_stats(data_dir, channels, channels_of, file=SV_STATS_FILE)


def load_normalizer(data_dir: PathLike, latent_norm: bool, latent_multiplier: float, *, in_chans: int,
                    semantic_chans: int = 0, latent_sv_norm: bool = False) -> LatentNormalizer:
    """The `LatentNormalizer` of a model with `in_chans` channels, the last `semantic_chans` of
    them semantic, from the stats files in `data_dir` (no shards needed: sampling has only the
    stats). Texture stats with `latent_norm`, semantic stats (the last channels) with
    `latent_sv_norm`; their channel counts are checked against the config."""
    texture_chans = in_chans - semantic_chans
    mean = std = sv_mean = sv_std = None
    if latent_norm:
        mean, std = load_latent_stats(data_dir, texture_chans, "model.in_chans - model.semantic_chans"
                                      if semantic_chans else "model.in_chans")
    if latent_sv_norm:
        if semantic_chans == 0:
            raise ValueError(f"{Path(data_dir) / SV_STATS_FILE}: data.latent_sv_norm is true but "
                             "model.semantic_chans is 0 (no semantic channels to standardise)")
        sv_mean, sv_std = load_semantic_stats(data_dir)
        if sv_mean.shape[1] > semantic_chans:
            raise ValueError(f"{Path(data_dir) / SV_STATS_FILE}: stats have {sv_mean.shape[1]} channels, "
                             f"more than model.semantic_chans = {semantic_chans}")
    return LatentNormalizer(mean, std, latent_multiplier, sv_mean, sv_std, channels=in_chans,
                            texture_chans=texture_chans)


def normalizer_from_config(cfg, data_dir: Optional[PathLike] = None) -> LatentNormalizer:
    """`load_normalizer` with the config's keys (data.latent_norm, data.latent_multiplier,
    data.latent_sv_norm, model.in_chans, model.semantic_chans), stats from `data.data_path`."""
    return load_normalizer(data_dir if data_dir is not None else cfg.data.data_path, cfg.data.latent_norm,
                           cfg.data.latent_multiplier, in_chans=cfg.model.in_chans,
                           semantic_chans=cfg.model.semantic_chans, latent_sv_norm=cfg.data.latent_sv_norm)


def validate_latents(data_dir: PathLike, in_chans: int, latent_grid: int, num_classes: int,
                     latent_norm: bool, *, semantic_chans: int = 0, latent_sv_norm: bool = False,
                     repa: bool = False) -> LatentShards:
    """Check a training latent directory against the model before anything is written or built.

    Shards readable with the right keys/dtypes (LatentShards), at least one latent, texture
    latents of shape (in_chans - semantic_chans, latent_grid, latent_grid), semantic parts that
    add up to semantic_chans (`latent_parts`), REPA targets when `repa`, every label in
    [0, num_classes), and the stats the normalisation needs (finite, positive std, the parts'
    channel counts). One-line ValueError naming the file.
    """
    shards = LatentShards(data_dir)
    if len(shards) == 0:
        raise ValueError(f"{shards.data_dir}: the latent shards hold no latents (every shard is empty)")
    expected = (in_chans - semantic_chans, latent_grid, latent_grid)
    if tuple(shards.latent_shape) != expected:
        chans = "model.in_chans - model.semantic_chans" if semantic_chans else "model.in_chans"
        raise ValueError(f"{shards.files[0]}: latent shape {tuple(shards.latent_shape)} does not match the "
                         f"model's {expected} ({chans}, data.image_size // vae.downsample_ratio)")
    parts = latent_parts(shards, semantic_chans, latent_sv_norm)
    if repa:
        require_repa_target(shards)
    for f, path in enumerate(shards.files):
        if shards.counts[f] == 0:
            continue
        labels = shards.handle(f).get_tensor("labels")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"{path}: labels in [{low}, {high}] outside [0, {num_classes}) "
                             "(data.num_classes)")
    if latent_norm:
        load_latent_stats(data_dir, channels=expected[0])
    if latent_sv_norm and SV_KEY in parts:
        load_semantic_stats(data_dir, channels=shards.channels(SV_KEY))
    return shards


# ------------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------------

class ImgLatentDataset(Dataset):
    """Training latents: item i -> (x1 float32 (C, H, W), label 0-d int64, extras).

    x1 = normalizer.normalize([z ; semantic parts]) (module docstring), where every part is row
    i of its stored or its flipped key, one draw (probability 1/2) for all of them. With
    latent_norm false and no semantic parts this is z * latent_multiplier, as the reference.
    `extras` is a dict of tensors keyed by `Transport.training_losses` keywords: `repa_target`
    (D, h, w) float32 with `repa`, else empty.

    `semantic_chans`, `latent_sv_norm` and `repa` mirror model.semantic_chans,
    data.latent_sv_norm and model.use_repa; the defaults read the texture latents alone.
    """

    def __init__(self, data_dir: PathLike, latent_norm: bool = True, latent_multiplier: float = 1.0, *,
                 latent_sv_norm: bool = False, semantic_chans: int = 0, repa: bool = False):
        self.data_dir = Path(data_dir)
        self.shards = LatentShards(data_dir)
        self.latent_norm = latent_norm
        self.latent_multiplier = latent_multiplier
        self.parts = latent_parts(self.shards, semantic_chans, latent_sv_norm)
        self.extras = (REPA_KEY,) if repa else ()
        if repa:
            require_repa_target(self.shards)
        texture_chans = self.shards.latent_shape[0]
        mean = std = sv_mean = sv_std = None
        if latent_norm:
            mean, std = load_latent_stats(data_dir, texture_chans)
        if latent_sv_norm:
            sv_mean, sv_std = load_semantic_stats(data_dir, self.shards.channels(SV_KEY))
        self.normalizer = LatentNormalizer(mean, std, latent_multiplier, sv_mean, sv_std,
                                           channels=texture_chans + semantic_chans, texture_chans=texture_chans)

    def __len__(self) -> int:
        return len(self.shards)

    def get_latent_stats(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of shape (1, C, 1, 1), from `data_dir/latents_stats.pt`."""
        return load_latent_stats(self.data_dir)

    def __getitem__(self, idx: int) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        # The reference takes 'latents' if uniform(0, 1) > 0.5 else 'latents_flip'; SFD takes
        # the same choice for every part.
        suffix = "" if torch.rand(()) > 0.5 else FLIP
        parts = [self.shards.read(key + suffix, idx).float() for key in self.parts]
        feature = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        label = self.shards.read("labels", idx)
        extras = {EXTRA_NAMES[key]: self.shards.read(key + suffix, idx).float() for key in self.extras}
        return self.normalizer.normalize(feature), label, extras

"""Download the released files this repository knows by name, check them, and say how to use them.

    python tools/fetch_weights.py --list                          # names, sizes, licences, present?
    python tools/fetch_weights.py vavae-f16d32 lightningdit-xl-800ep latents-stats-vavae-f16d32
    python tools/fetch_weights.py sfd-xl-4m sfd-guide-b-70k --root /data/weights

Each file lands at `--root` / the path the shipped configs already name (`pretrained_models/...`
for LightningDiT and VA-VAE, `outputs/...` for SFD's configs), so with the default root (the
current directory, i.e. run from the repository root) those configs find it as they are. After
fetching, one line per name prints the `key=value` overrides (or flags) that point a run at the
file wherever it is; for tokenizers a copy of the tokenizer YAML with `ckpt_path` set is written
next to the weights, so that `vae.config_path=` / `--tokenizer-config` names it.

- Hugging Face Hub files go through `huggingface_hub` (its cache, resumable, progress bars; with
  HF_HUB_OFFLINE=1 only the cache is read) and are then hard-linked (or copied) to their place.
  The cache names each blob by its hash (sha256 for LFS files, git's sha1 for small ones); the file
  is checked against it.
- Other files are plain HTTP (urllib): a `.part` file grows and a rerun resumes it with a Range
  request; the sha256 is checked where the source publishes one (torchvision's file-name prefix).
- Files holding pickled Python objects beyond tensors (registry field `pickle`: why) get a warning:
  loading them runs code from the file, so the loaders read them only with explicit consent.

Offline (`--offline` or HF_HUB_OFFLINE=1), nothing is downloaded: each missing file is named with
where to get it. Exit status 1 when a requested file is missing or fails its check.

The released ImageNet latents are one tar.gz cut into parts (`split_aa`, `split_ab`, ...; the Hub
dataset hustvl/imagenet256-latents-vave-f16d32-dinov2, folder `splits/`). `--extract PARTS OUT`
reads the parts in name order as one stream and unpacks it into OUT (no merged copy on disk; only
plain files and folders, each inside OUT), then prints the `data.data_path=` override:

    hf download hustvl/imagenet256-latents-vave-f16d32-dinov2 --repo-type dataset \
        --include 'splits/*' --local-dir /data/latent_parts
    python tools/fetch_weights.py --extract /data/latent_parts/splits /data/vavae_latents
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from evaluation.inception import WEIGHTS_FILENAME as INCEPTION_FILENAME
from evaluation.inception import WEIGHTS_URLS as INCEPTION_URLS
from tokenizer.foundation import FOUNDATION_MODELS

CHUNK = 1 << 20
CONFIG_OVERRIDE = re.compile(r"[a-z_]+(\.[a-z_]+)*=")   # key=value for the run scripts (not flags, not env)
HUB = "https://huggingface.co"


@dataclass(frozen=True)
class Source:
    """One file: where it lives (a Hub repo file or a URL) and where it goes under --root."""
    dest: str                            # relative to --root: the path the shipped configs name
    repo: Optional[str] = None           # Hub repo id
    path: Optional[str] = None           # file inside the Hub repo
    repo_type: str = "model"
    url: Optional[str] = None            # plain HTTP source (when not on the Hub)
    sha256: Optional[str] = None         # published digest, or its published prefix
    size: Optional[int] = None           # bytes, approximate (None: not known here)

    @property
    def origin(self) -> str:
        if self.url:
            return self.url
        kind = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        return f"{HUB}/{kind}{self.repo}/resolve/main/{self.path}"


@dataclass(frozen=True)
class Entry:
    """A released artefact known by name. `use`: overrides printed after fetching, with {file}
    (the first file), {dir} (its folder) and {yaml} (the tokenizer YAML written for it)."""
    name: str
    what: str
    files: Tuple[Source, ...]
    licence: str
    use: Tuple[str, ...]
    pickle: Optional[str] = None         # why loading it needs pickle (None: tensors and containers only)
    tokenizer_yaml: Optional[str] = None # repo YAML copied next to the weights with ckpt_path set
    tokenizer_ckpt: str = "file"         # what that ckpt_path names: "file" or "dir"
    note: str = ""


def _hub(dest: str, repo: str, path: str, size: Optional[int] = None, repo_type: str = "model") -> Source:
    return Source(dest=dest, repo=repo, path=path, repo_type=repo_type, size=size)


GB, MB, KB = 10 ** 9, 10 ** 6, 10 ** 3
TOKENIZER_USE = ("vae.config_path={yaml}", "--tokenizer-config {yaml}")
SFD = "SFD-Project/SFD"
SFD_LATENTS = "imagenet1k-latents/sdvae_f16d32_semvaebasech16_repadinov2_vitb14_reg/imagenet_train_256"
SFD_LICENCE = "see the Hub card of SFD-Project/SFD (SFD's code: MIT)"
SFD_INFERRED = ("file name from SFD's configs and README (the Hub listing was not checked here); "
                "if the Hub says it is missing, look at " + f"{HUB}/{SFD}/tree/main")
SFD_PICKLE = "a training checkpoint whose `config` is an OmegaConf object"


def _sfd_dit(name: str, folder: str, step: int, what: str) -> Entry:
    rel = f"model_weights/{folder}/checkpoints/{step:07d}.pt"
    return Entry(name, what, (_hub(f"outputs/train/{folder}/checkpoints/{step:07d}.pt", SFD, rel),),
                 SFD_LICENCE, ("ckpt_path={file}",), pickle=SFD_PICKLE, note=SFD_INFERRED)


def _foundation(name: str, key: str, what: str, licence: str, size: int,
                use: Tuple[str, ...] = ("model.params.foundation.weights={file}",)) -> Entry:
    hub_id = FOUNDATION_MODELS[key].hub_id
    return Entry(name, what, (_hub(f"pretrained_models/{hub_id.split('/')[1]}.safetensors", hub_id,
                                   "model.safetensors", size),),
                 licence, use)


def _sdvae(variant: str) -> Entry:
    repo = f"stabilityai/sd-vae-{variant}"
    folder = f"pretrained_models/sd-vae-{variant}"
    return Entry(f"sdvae-{variant}", f"SD-VAE kl-f8 ({variant}), the Table 1 tokenizer (diffusers folder)",
                 (_hub(f"{folder}/config.json", repo, "config.json", 1 * KB),
                  _hub(f"{folder}/diffusion_pytorch_model.safetensors", repo, "diffusion_pytorch_model.safetensors",
                       335 * MB)),
                 "MIT", TOKENIZER_USE, tokenizer_yaml=f"configs/tokenizer/sdvae_{variant.replace('-', '_')}.yaml",
                 tokenizer_ckpt="dir")


# The registry: every name this tool knows, defined once.
REGISTRY: Tuple[Entry, ...] = (
    Entry("lightningdit-xl-800ep", "LightningDiT-XL/1, 800 epochs (FID 1.35 with guidance)",
          (_hub("pretrained_models/lightningdit-xl-imagenet256-800ep.pt", "hustvl/lightningdit-xl-imagenet256-800ep",
                "lightningdit-xl-imagenet256-800ep.pt"),),
          "MIT", ("ckpt_path={file}",), note="needs latents-stats-vavae-f16d32 and vavae-f16d32 to sample"),
    Entry("lightningdit-xl-64ep", "LightningDiT-XL/1, 64 epochs (FID 2.11 with guidance)",
          (_hub("pretrained_models/lightningdit-xl-imagenet256-64ep.pt", "hustvl/lightningdit-xl-imagenet256-64ep",
                "lightningdit-xl-imagenet256-64ep.pt"),),
          "MIT", ("ckpt_path={file}",), note="needs latents-stats-vavae-f16d32 and vavae-f16d32 to sample"),
    Entry("vavae-f16d32", "VA-VAE f16d32 (DINOv2-aligned), the released tokenizer",
          (_hub("pretrained_models/vavae-imagenet256-f16d32-dinov2.pt", "hustvl/vavae-imagenet256-f16d32-dinov2",
                "vavae-imagenet256-f16d32-dinov2.pt", 2150 * MB),),
          "MIT", TOKENIZER_USE, tokenizer_yaml="configs/tokenizer/vavae_f16d32.yaml"),
    Entry("latents-stats-vavae-f16d32", "channel mean / std of the VA-VAE f16d32 ImageNet latents (latents_stats.pt)",
          (_hub("pretrained_models/imagenet256-latents-vavae-f16d32/latents_stats.pt",
                "hustvl/vavae-imagenet256-f16d32-dinov2", "latents_stats.pt", 1790),),
          "MIT", ("data.data_path={dir}",),
          note="enough for sampling; training needs the latent shards "
               f"({HUB}/datasets/hustvl/imagenet256-latents-vave-f16d32-dinov2, split tar parts: --extract)"),
    _sdvae("ft-ema"),
    _sdvae("ft-mse"),
    _foundation("dinov2-vitl14", "dinov2", "DINOv2 ViT-L/14 (VF loss of VA-VAE training)", "Apache-2.0", 1220 * MB),
    _foundation("mae-vitl16", "mae", "MAE ViT-L/16 (VF loss, Table 4)", "CC-BY-NC-4.0", 1210 * MB),
    _foundation("sam-vitl", "sam", "SAM ViT-L image encoder (VF loss, Table 4)", "Apache-2.0", 1230 * MB),
    _foundation("clip-vitb16", "clip", "OpenAI CLIP ViT-B/16 image tower (VF loss, Table 4)", "MIT (OpenAI CLIP)",
                350 * MB),
    Entry("inception-fid", "FID Inception-v3 weights (ADM evaluation, rFID)",
          (Source(dest=f"pretrained_models/{INCEPTION_FILENAME}", url=INCEPTION_URLS[0], size=95_600 * KB),),
          "Apache-2.0 (pytorch-fid)", ("--inception-weights {file}", "ADM_INCEPTION_WEIGHTS={file}"),
          note="no sha256 is published for it; the digest is printed"),
    Entry("vgg16-lpips", "torchvision VGG16 (LPIPS in tokenizer training and evaluation)",
          (Source(dest="pretrained_models/vgg16-397923af.pth",
                  url="https://download.pytorch.org/models/vgg16-397923af.pth", sha256="397923af",
                  size=553_433_881),),
          "BSD-3-Clause (torchvision)", ("LPIPS_VGG_WEIGHTS={file}", "--lpips-vgg-weights {file}")),
    Entry("adm-ref-imagenet256", "ADM reference batch VIRTUAL_imagenet256_labeled.npz (FID/sFID/IS/precision/recall)",
          (Source(dest="outputs/ADM_npz/VIRTUAL_imagenet256_labeled.npz",
                  url="https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/"
                      "VIRTUAL_imagenet256_labeled.npz"),),
          "MIT (openai/guided-diffusion); ImageNet-derived", ("data.fid_reference_file={file}",),
          note="no sha256 is published for it; the digest is printed"),
    _sfd_dit("sfd-xl-400k", "sfd_xl", 400_000, "SFD LightningDiT-XL, 400k steps (80 epochs)"),
    _sfd_dit("sfd-xl-4m", "sfd_xl", 4_000_000, "SFD LightningDiT-XL, 4M steps (800 epochs)"),
    _sfd_dit("sfd-1p0-400k", "sfd_1p0", 400_000, "SFD LightningDiT-XXL (1.0B), 400k steps"),
    _sfd_dit("sfd-1p0-4m", "sfd_1p0", 4_000_000, "SFD LightningDiT-XXL (1.0B), 4M steps (EMA only)"),
    _sfd_dit("sfd-guide-b-60k", "sfd_autoguidance_b", 60_000, "SFD AutoGuidance guide LightningDiT-B, 60k"),
    _sfd_dit("sfd-guide-b-70k", "sfd_autoguidance_b", 70_000, "SFD AutoGuidance guide LightningDiT-B, 70k"),
    _sfd_dit("sfd-guide-b-120k", "sfd_autoguidance_b", 120_000, "SFD AutoGuidance guide LightningDiT-B, 120k"),
    Entry("sfd-semvae", "SFD Semantic VAE (DINOv2-B/14-reg tokens -> 16 channels)",
          (_hub("outputs/semantic_vae/dinov2_vitb14_reg/transformer_ch16/checkpoints/semantic_ae_final.pt", SFD,
                "semantic_vae/dinov2_vitb14_reg/transformer_ch16/checkpoints/semantic_ae_final.pt"),),
          SFD_LICENCE, ("semvae.semvae_ckpt_path={file}",),
          pickle="optimizer, scheduler and loss-tracker state beside the weights (not verified loadable "
                 "as tensors only)", note=SFD_INFERRED),
    _foundation("dinov2-vitb14-reg", "dinov2_vitb14_reg", "DINOv2 ViT-B/14 with registers: SFD's semantic encoder "
                "and REPA target", "Apache-2.0", 346 * MB, use=("--dino-weights {file}", "--weights {file}")),
    Entry("sfd-latents-stats", "SFD's texture and semantic latent statistics (latents_stats.pt, latents_sv_stats.pt)",
          (_hub(f"outputs/dataset/{SFD_LATENTS}/latents_stats.pt", SFD, f"{SFD_LATENTS}/latents_stats.pt"),
           _hub(f"outputs/dataset/{SFD_LATENTS}/latents_sv_stats.pt", SFD, f"{SFD_LATENTS}/latents_sv_stats.pt")),
          SFD_LICENCE, ("data.data_path={dir}",), note=SFD_INFERRED),
    Entry("ldm-f16d32-50ep", "LDM f16d32 autoencoder, 50 epochs, no VF loss: SFD's texture tokenizer",
          (_hub("outputs/model_weights/va-vae-imagenet256-experimental-variants/ldm-imagenet256-f16d32-50ep.ckpt",
                "hustvl/va-vae-imagenet256-experimental-variants", "ldm-imagenet256-f16d32-50ep.ckpt", 349 * MB),),
          "MIT", TOKENIZER_USE, tokenizer_yaml="configs/tokenizer/sdvae_f16d32.yaml"),
)
BY_NAME: Dict[str, Entry] = {e.name: e for e in REGISTRY}
assert len(BY_NAME) == len(REGISTRY), "duplicate registry names"


class FetchError(RuntimeError):
    """A file that could not be fetched or failed its check; str() is one line naming it."""


#################################################################################
#                                    Checks                                     #
#################################################################################

def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """git's object id of a file (what the Hub cache names small, non-LFS blobs by)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sha256(path: Path, expected: Optional[str], source: str) -> str:
    """The file's sha256; FetchError when `expected` (a digest or its prefix) does not match."""
    digest = file_sha256(path)
    if expected and not digest.startswith(expected.lower()):
        raise FetchError(f"sha256 mismatch for {path} (from {source}): expected {expected}, got {digest}")
    return digest


def check_hub_blob(blob: Path, source: str) -> str:
    """Check a Hub cache blob against its name (sha256 for LFS files, git sha1 otherwise); on a
    mismatch the blob is deleted so that the next run downloads it again."""
    name = blob.name
    if re.fullmatch(r"[0-9a-f]{64}", name):
        digest = file_sha256(blob)
    elif re.fullmatch(r"[0-9a-f]{40}", name):
        digest = git_blob_sha1(blob)
    else:
        return file_sha256(blob)
    if digest != name:
        blob.unlink()
        raise FetchError(f"checksum mismatch for {source}: the Hub says {name}, the cached file hashes to "
                         f"{digest}; the cached copy was removed, run again to download it afresh")
    return digest if len(name) == 64 else file_sha256(blob)


#################################################################################
#                                   Transfers                                   #
#################################################################################

def place(src: Path, dest: Path) -> None:
    """Put the cached file `src` at `dest`: a hard link (no second copy) or, across file systems,
    a copy through a temporary name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def fetch_hub(src: Source, dest: Path, offline: bool) -> str:
    """Download (or take from the HF cache) one Hub file, check it, place it; returns its sha256."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    try:
        cached = Path(hf_hub_download(src.repo, src.path, repo_type=src.repo_type, local_files_only=offline))
    except LocalEntryNotFoundError:
        raise FetchError(f"{src.repo}/{src.path} is not in the Hugging Face cache and the Hub was not reached "
                         f"({'offline' if offline else 'no connection'}); on a machine with internet run this "
                         f"command again, or download {src.origin} and put it at {dest}") from None
    except EntryNotFoundError:
        raise FetchError(f"{src.origin}: no such file on the Hub") from None
    except RepositoryNotFoundError:
        raise FetchError(f"{src.repo}: no such Hub repository (or it needs a token: `hf auth login`)") from None
    except HfHubHTTPError as err:
        raise FetchError(f"{src.origin}: {str(err).splitlines()[0]}") from None
    blob = cached.resolve()
    digest = check_hub_blob(blob, src.origin)
    place(blob, dest)
    return digest


def fetch_url(src: Source, dest: Path, timeout: float = 60.0) -> str:
    """HTTP download into `dest.part`, resumed with a Range request when the part exists; checked
    (sha256 where published) before it is renamed to `dest`. Returns the sha256."""
    from tqdm import tqdm

    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(src.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and response.status != 206:       # the server ignored the range: start over
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, "ab" if have else "wb") as out, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=dest.name, disable=None) as bar:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        if not (err.code == 416 and have):            # 416: nothing after `have`: the part is complete
            raise FetchError(f"{src.url}: HTTP {err.code} {err.reason}") from None
        total = re.fullmatch(r"bytes \*/(\d+)", err.headers.get("Content-Range", "") or "")
        if total and int(total.group(1)) != have:
            part.unlink()
            raise FetchError(f"{src.url}: the partial download {part} does not match the file on the server "
                             "(removed); run again") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise FetchError(f"{src.url}: cannot download ({reason}); rerun to resume "
                         f"({part} keeps what arrived), or get it elsewhere and put it at {dest}") from None
    try:
        digest = check_sha256(part, src.sha256, src.url)
    except FetchError:
        part.unlink()
        raise
    os.replace(part, dest)
    return digest


#################################################################################
#                        Split archives (the released latents)                  #
#################################################################################

class PartsReader:
    """The parts of a split file read as one stream, in the given order (never joined on disk)."""

    def __init__(self, parts: Sequence[Path]):
        self.parts = list(parts)
        self.index = 0
        self.current = None

    def read(self, size: int = -1) -> bytes:
        out = []
        while size != 0 and self.index < len(self.parts):
            if self.current is None:
                self.current = open(self.parts[self.index], "rb")
            chunk = self.current.read(size)
            if chunk:
                out.append(chunk)
                size = size - len(chunk) if size > 0 else size
                continue
            self.current.close()
            self.current, self.index = None, self.index + 1
        return b"".join(out)

    def close(self) -> None:
        if self.current is not None:
            self.current.close()


def split_parts(folder: Path) -> List[Path]:
    """The `split_*` parts of `folder` in name order (split's suffixes aa, ab, ... sort as written)."""
    parts = sorted(p for p in folder.glob("split_*") if p.is_file())
    if not parts:
        raise FetchError(f"no split_* parts in {folder} (download them first: README, Released weights)")
    return parts


def _member_target(out: Path, member: tarfile.TarInfo) -> Optional[Path]:
    """Where a member goes under `out`: None for what is not a plain file or folder; FetchError for a
    name that would leave `out` (absolute, `..`)."""
    name = Path(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise FetchError(f"refusing archive member {member.name!r}: it would be written outside {out}")
    if not (member.isfile() or member.isdir()):
        return None
    return out / name


def extract_parts(parts: Sequence[Path], out: Path) -> Path:
    """Unpack the tar (optionally gzip/bz2/xz) that `parts` make up, in order, into `out`; returns the
    folder holding the latent shards (`*.safetensors`). It is written to `out.partial` first and
    renamed when complete, so `out` never holds half an archive; an `out` that exists is refused."""
    if out.exists():
        raise FetchError(f"{out} already exists: remove it, or pass another folder")
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():                            # left by an interrupted run
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    reader = PartsReader(parts)
    skipped = []
    try:
        with tarfile.open(fileobj=reader, mode="r|*") as tar:
            for member in tar:
                target = _member_target(tmp, member)
                if target is None:
                    skipped.append(member.name)
                elif member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FetchError(f"cannot unpack the {len(parts)} parts {parts[0].name} .. {parts[-1].name} "
                         f"({str(err) or type(err).__name__}): a part is missing, incomplete or out of order") from None
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FetchError(f"cannot unpack into {out}: {err.strerror or err} ({err.filename or tmp})") from None
    except FetchError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        reader.close()
    if skipped:
        print(f"skipped {len(skipped)} archive members that are not plain files or folders "
              f"(e.g. {skipped[0]})", file=sys.stderr)
    os.replace(tmp, out)
    folders = sorted({p.parent for p in out.rglob("*.safetensors")}, key=lambda d: (len(d.parts), str(d)))
    if not folders:
        raise FetchError(f"the archive unpacked into {out} holds no *.safetensors latent shards")
    return folders[0]


def extract_command(parts_dir: Path, out: Path) -> int:
    """`--extract PARTS OUT`: unpack, then print where the shards are and the override naming them."""
    try:
        folder = extract_parts(split_parts(parts_dir), out)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for other in sorted({p.parent for p in out.rglob("*.safetensors")} - {folder}):
        print(f"latents: note: more shards in {other}", file=sys.stderr)
    shards = len(list(folder.glob("*.safetensors")))
    print(f"latents: {folder} ({shards} shards)")
    if not (folder / "latents_stats.pt").is_file():
        print(f"latents: note: no latents_stats.pt beside the shards; fetch latents-stats-vavae-f16d32 into "
              f"{folder}, or run `python extract_features.py --output-path {folder} --stats-only`")
    print(f"latents: use  data.data_path={folder}")
    return 0


#################################################################################
#                                   Commands                                    #
#################################################################################

@dataclass
class Fetched:
    entry: Entry
    paths: List[Path] = field(default_factory=list)
    digests: List[str] = field(default_factory=list)
    yaml: Optional[Path] = None


def offline_mode(flag: bool) -> bool:
    return flag or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def fetch_entry(entry: Entry, root: Path, offline: bool, repo_root: Path) -> Fetched:
    """Every file of `entry` under `root` (present ones are checked, not downloaded again)."""
    out = Fetched(entry)
    for src in entry.files:
        dest = (root / src.dest).resolve()
        if dest.exists():  # checked when a digest is published; Hub files were checked when fetched
            digest = check_sha256(dest, src.sha256, str(dest)) if src.sha256 else "already present"
        elif src.url is not None:
            if offline:
                raise FetchError(f"{dest} is missing (offline); download {src.url} to it")
            digest = fetch_url(src, dest)
        else:
            digest = fetch_hub(src, dest, offline)
        out.paths.append(dest)
        out.digests.append(digest)
    if entry.tokenizer_yaml:
        out.yaml = write_tokenizer_yaml(repo_root / entry.tokenizer_yaml, out.paths[0], entry.tokenizer_ckpt)
    return out


def write_tokenizer_yaml(template: Path, weights: Path, ckpt: str) -> Path:
    """Copy of the repo's tokenizer YAML next to the weights, its ckpt_path naming them (absolute)."""
    from omegaconf import OmegaConf

    from utils.fileio import atomic_write_text

    cfg = OmegaConf.load(template)
    cfg.ckpt_path = str(weights.parent if ckpt == "dir" else weights)
    target = weights.parent / template.name if ckpt == "file" else weights.parent.parent / template.name
    atomic_write_text(OmegaConf.to_yaml(cfg), target)
    return target


def usage_lines(done: Fetched) -> List[str]:
    fields = {"file": done.paths[0], "dir": done.paths[0].parent, "yaml": done.yaml}
    return [u.format(**fields) for u in done.entry.use]


def human(size: Optional[int]) -> str:
    if size is None:
        return "?"
    for unit, scale in (("GB", GB), ("MB", MB), ("kB", KB)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"


def list_registry(root: Path, out=None) -> None:
    """One line per name: size, licence, pickle flag, present or missing under `root`."""
    out = out or sys.stdout
    width = max(len(e.name) for e in REGISTRY)
    print(f"{'name':<{width}}  {'size':>8}  {'here':<7}  licence / what", file=out)
    for e in REGISTRY:
        sizes = [s.size for s in e.files]
        size = human(sum(sizes)) if all(s is not None for s in sizes) else human(None)
        here = "yes" if all((root / s.dest).exists() for s in e.files) else "missing"
        flag = "  [pickle]" if e.pickle else ""
        print(f"{e.name:<{width}}  {size:>8}  {here:<7}  {e.licence}{flag}: {e.what}", file=out)
    print(f"(sizes approximate, '?' = not known here; here = present under {root}; [pickle]: see the "
          "warning printed when fetched)", file=out)


def pickle_warning(entry: Entry) -> str:
    return (f"WARNING: {entry.name} is a pickle ({entry.pickle}): loading it can run code from the file. "
            "Load it only if you trust its source; this repository's loaders read such files only with "
            "your explicit consent.")


def resolve_names(names: Sequence[str]) -> List[Entry]:
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown name(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)} "
                         "(python tools/fetch_weights.py --list)")
    return [BY_NAME[n] for n in dict.fromkeys(names)]


def main(argv: Optional[Iterable[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="names: " + ", ".join(BY_NAME))
    p.add_argument("names", nargs="*", help="what to fetch (see --list)")
    p.add_argument("--list", action="store_true", help="names, sizes, licences, and which are present")
    p.add_argument("--root", type=Path, default=Path("."),
                   help="folder the files go under, at the paths the configs name (default: .)")
    p.add_argument("--offline", action="store_true", help="download nothing; report what is missing")
    p.add_argument("--extract", nargs=2, type=Path, metavar=("PARTS", "OUT"),
                   help="unpack the split_* parts in folder PARTS (the released latents) into OUT")
    args = p.parse_args(None if argv is None else list(argv))
    if args.extract:
        return extract_command(*(path.resolve() for path in args.extract))
    root = args.root.resolve()
    if args.list or not args.names:
        list_registry(root)
        return 0
    entries = resolve_names(args.names)
    offline = offline_mode(args.offline)
    repo_root = Path(__file__).resolve().parents[1]
    failed, overrides = [], []
    for entry in entries:
        try:
            done = fetch_entry(entry, root, offline, repo_root)
        except FetchError as err:
            print(f"{entry.name}: MISSING: {err}", file=sys.stderr)
            failed.append(entry.name)
            continue
        for path, digest in zip(done.paths, done.digests):
            state = digest if digest == "already present" else f"sha256 {digest}"
            print(f"{entry.name}: {path} ({human(path.stat().st_size)}, {state})")
        if done.yaml:
            print(f"{entry.name}: tokenizer YAML {done.yaml}")
        uses = usage_lines(done)
        print(f"{entry.name}: use  {'  |  '.join(uses)}")
        overrides += [u for u in uses if CONFIG_OVERRIDE.match(u)][:1]
        if entry.note:
            print(f"{entry.name}: note: {entry.note}")
        if entry.pickle:
            print(pickle_warning(entry), file=sys.stderr)
    keys = [o.split("=", 1)[0] for o in overrides]
    if len(keys) > 1 and len(set(keys)) == len(keys):    # one run's overrides (not alternatives)
        print("together: " + " ".join(overrides))
    if failed:
        print(f"missing: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

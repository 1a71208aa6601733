"""The 2015 FID Inception network as ADM's evaluator uses it, in PyTorch.

Follows guided-diffusion's `evaluations/evaluator.py` (spec: docs/adm_evaluation.md §3-4). The network
definition is torch-fidelity's `inception-v3-compat` port of `inception-2015-12-05` (TF-style
pooling patches); this file only adds what ADM reads from the graph:

- 'pool'    (N, 2048): `pool_3:0`, the FID / precision-recall features.
- 'spatial' (N, 2023): `mixed_6/conv:0`, i.e. the post-BN-ReLU output of `Mixed_6d.branch1x1`
                       ([N, 192, 17, 17]), first 7 channels, flattened in **NHWC** order so that
                       it lines up with the `mu_s / sigma_s` stored in ADM reference batches.
- 'logits'  (N, 1008): `pool @ fc.weight.T` **without the bias** (ADM's IS softmax ignores it).
- 'probs'   (N, 1008): softmax of 'logits' in float32, the input of the Inception Score.

Preprocessing (inside torch-fidelity's forward): TF1 legacy `resize_bilinear` to 299x299
(no half-pixel centres, source = dst * in / out floored, upper neighbour clamped) and
`(x - 128) / 128`. Both change the number relative to torchvision-style preprocessing.

Weights are read from a local file, the standard `pt_inception-2015-12-05-6726825d.pth`
(pytorch-fid) or torch-fidelity's `weights-inception-2015-12-05-6726825d.pth` (same hash prefix,
both keyed like torchvision's Inception-v3; not verified offline). Loading is strict. `random_init=True` builds the same
network with seeded random weights for tests: its numbers are NOT a real FID.
"""
from __future__ import annotations

import io
import logging
import os
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from tqdm import tqdm

from utils.safe_load import load_torch_file

logger = logging.getLogger(__name__)

WEIGHTS_ENV_VAR = "ADM_INCEPTION_WEIGHTS"
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URLS = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
)
FEATURE_KEYS = ("pool", "spatial", "logits", "probs")
SPATIAL_CHANNELS = 7  # ADM keeps mixed_6/conv[..., :7]: 17 * 17 * 7 = 2023 features
INPUT_SIZE = 299


def resolve_weights_path(weights_path: str | None) -> str:
    """The Inception weights file: `weights_path` (flag / config key `eval.inception_weights`),
    else $ADM_INCEPTION_WEIGHTS. Raises FileNotFoundError naming the file and where to get it."""
    path = weights_path or os.environ.get(WEIGHTS_ENV_VAR)
    if not path:
        raise FileNotFoundError(
            f"no Inception weights given: pass --inception-weights PATH or set ${WEIGHTS_ENV_VAR} to a local "
            f"copy of {WEIGHTS_FILENAME} (download it on a machine with internet from {WEIGHTS_URLS[0]})")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Inception weights file not found: {path} (expected {WEIGHTS_FILENAME}, from {WEIGHTS_URLS[0]} "
            f"or {WEIGHTS_URLS[1]})")
    return path


def tf1_resize_bilinear(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """TF1 legacy `resize_bilinear(align_corners=False)` of a float (N, C, H, W) tensor to size x size.

    Source coordinate of output pixel d is `d * in / out` (no half-pixel offset), its floor and the
    next pixel (clamped to the edge) are blended linearly. This is the resize inside ADM's Inception
    graph (docs/adm_evaluation.md §3); torch-fidelity implements it bit-exactly on CPU.
    """
    return interpolate_bilinear_2d_like_tensorflow1x(x, size=(size, size), align_corners=False, method="slow")


class _InceptionV3Compat(FeatureExtractorInceptionV3):
    """torch-fidelity's network, built without loading anything; weights are loaded by the caller.

    torch-fidelity's constructor always loads a state dict (downloading it when no path is given).
    We hand it a marker dict and skip that one load, so construction never touches the network.
    """

    _MARKER = "__adm_skip_constructor_load__"

    def __init__(self):
        marker = io.BytesIO()
        torch.save({self._MARKER: torch.zeros(0)}, marker)
        marker.seek(0)
        super().__init__("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=marker)

    def load_state_dict(self, state_dict, *args, **kwargs):
        if self._MARKER in state_dict:
            return None
        return super().load_state_dict(state_dict, *args, **kwargs)


def _random_init_(net: nn.Module, seed: int = 0) -> None:
    """Seeded variance-preserving init (He for convs) so random features are O(1), not ~1e-8."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=gen)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=m.in_features ** -0.5, generator=gen)
            nn.init.zeros_(m.bias)


class InceptionFeatureExtractor(nn.Module):
    """ADM's Inception features from uint8 images.

    Args:
        weights_path: local weights file; None falls back to $ADM_INCEPTION_WEIGHTS.
        device: where the network runs.
        random_init: build the network with seeded random weights (tests only, not a real FID).

    Calling it with uint8 images (N, H, W, 3) (numpy or torch, any H x W) returns a dict of float32
    tensors on `device`: 'pool' (N, 2048), 'spatial' (N, 2023), 'logits' (N, 1008), 'probs' (N, 1008).
    """

    def __init__(self, weights_path: str | None = None, device: str | torch.device = "cpu",
                 random_init: bool = False):
        super().__init__()
        self.net = _InceptionV3Compat()
        self.random_init = random_init
        if random_init:
            logger.warning("Inception network is randomly initialised: metrics are NOT a real FID / IS")
            _random_init_(self.net)
            self.weights_path = None
        else:
            self.weights_path = resolve_weights_path(weights_path)
            state_dict = load_torch_file(self.weights_path, "PyTorch Inception weights file")
            self.net.load_state_dict(state_dict, strict=True)
            logger.info("loaded Inception weights from %s", self.weights_path)
        self.net.requires_grad_(False).eval()
        self._spatial = None
        # mixed_6/conv:0 is Mixed_6d's 1x1 branch after BN + ReLU (docs/adm_evaluation.md §4).
        self.net.Mixed_6d.branch1x1.register_forward_hook(self._grab_spatial)
        self.device = torch.device(device)
        self.to(self.device)

    def _grab_spatial(self, module, inputs, output):
        self._spatial = output[:, :SPATIAL_CHANNELS]

    @torch.no_grad()
    def forward(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        x = torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
        x = x.to(self.device).permute(0, 3, 1, 2)  # NHWC -> NCHW, as torch-fidelity expects
        pool, logits = self.net(x)  # resize to 299 (TF1), (x - 128) / 128, network; logits without bias
        spatial = self._spatial.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # (N, 17*17*7), NHWC order
        self._spatial = None
        return {"pool": pool, "spatial": spatial.float(), "logits": logits, "probs": torch.softmax(logits, dim=1)}


def compute_activations(images_uint8: np.ndarray | torch.Tensor | Iterable[np.ndarray],
                        extractor: InceptionFeatureExtractor, batch_size: int = 64,
                        keys: Sequence[str] = FEATURE_KEYS, total: int | None = None,
                        desc: str = "inception") -> dict[str, np.ndarray]:
    """Run `extractor` over uint8 images (N, H, W, 3) in batches; returns float32 numpy arrays per key.

    `images_uint8` is an array / tensor (sliced into `batch_size` rows, ADM uses 64) or an iterable of
    uint8 batches (then `total` sets the progress bar length). Batching does not change the math.
    """
    unknown = set(keys) - set(FEATURE_KEYS)
    if unknown:
        raise ValueError(f"unknown feature keys {sorted(unknown)}; choose from {FEATURE_KEYS}")
    if isinstance(images_uint8, (np.ndarray, torch.Tensor)):
        total = len(images_uint8)
        batches = (images_uint8[i: i + batch_size] for i in range(0, total, batch_size))
    else:
        batches = images_uint8
    out = {k: [] for k in keys}
    with tqdm(total=total, desc=desc, unit="img") as bar:
        for batch in batches:
            feats = extractor(batch)
            for k in keys:
                out[k].append(feats[k].cpu().numpy())
            bar.update(len(batch))
    dims = {"pool": 2048, "spatial": 17 * 17 * SPATIAL_CHANNELS, "logits": 1008, "probs": 1008}
    return {k: np.concatenate(v) if v else np.zeros((0, dims[k]), np.float32) for k, v in out.items()}

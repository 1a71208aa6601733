"""LPIPS (VGG16, v0.1) perceptual distance for tokenizer evaluation and the VA-VAE training loss.

Follows docs/reference_behaviour.md §1.12 / §6.6 (taming / LightningDiT `LPIPS`): scaling layer, torchvision
VGG16 features cut after relu1_2 ... relu5_3, channel-unit-normalised features (eps 1e-10),
squared differences, a 1x1 `lin` layer per level (Dropout then conv C->1, no bias), spatial mean,
sum over the 5 levels. Built from the `lpips` package's modules; its bundled linear calibration
weights (`lpips/weights/v0.1/vgg.pth`, md5 d507d7349b931f0638a25a48a722f98a) are the file the
reference downloads. The state_dict keys equal taming's (`scaling_layer.*`, `net.slice{1..5}.*`,
`lin{0..4}.model.1.weight`), so `loss.perceptual_loss.*` of the authors' checkpoints matches.

Nothing is downloaded: the VGG16 ImageNet weights come from a local torchvision file
`vgg16-397923af.pth` given by path or the `LPIPS_VGG_WEIGHTS` environment variable.
"""
from __future__ import annotations

import logging
import os
import warnings

import lpips
import torch
import torch.nn as nn

from utils.safe_load import load_torch_file

logger = logging.getLogger(__name__)

VGG_WEIGHTS_ENV = "LPIPS_VGG_WEIGHTS"
VGG_WEIGHTS_HINT = ("torchvision's VGG16 ImageNet weights vgg16-397923af.pth "
                    "(https://download.pytorch.org/models/vgg16-397923af.pth); pass its path or set "
                    f"{VGG_WEIGHTS_ENV}")
# torchvision `features` index ranges of the five LPIPS slices (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


def lpips_calibration_path() -> str:
    """The linear-layer weights shipped inside the `lpips` package."""
    return os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")


def _vgg_to_lpips_keys(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """torchvision vgg16 keys `features.{i}.*` -> `net.slice{s}.{i}.*`; counts dropped `classifier.*`."""
    out, dropped = {}, 0
    for key, value in sd.items():
        if key.startswith("classifier."):
            dropped += 1
            continue
        if not key.startswith("features."):
            raise ValueError(f"unexpected key '{key}' in the VGG16 weights")
        idx = int(key.split(".")[1])
        slices = [n for n, (lo, hi) in enumerate(_SLICES, 1) if lo <= idx < hi]
        if not slices:
            raise ValueError(f"unexpected key '{key}' in the VGG16 weights")
        out[f"net.slice{slices[0]}.{key[len('features.'):]}"] = value
    return out, dropped


class LPIPSLoss(nn.Module):
    """LPIPS distance d(x, y): x, y (B, 3, H, W) in [-1, 1] -> (B, 1, 1, 1).

    Frozen (no parameter requires grad) and built in eval mode; gradients flow to the inputs.
    `.train()` re-enables the lin-layer dropout (p=0.5) as in the reference's training, where
    Lightning's `model.train()` reaches the loss module (docs/reference_behaviour.md §9.3); evaluation keeps eval.
    `vgg_weights`: path to `vgg16-397923af.pth` (default: $LPIPS_VGG_WEIGHTS). `random_init=True`
    keeps a random VGG (tests only; the calibration weights still come from the package).
    """

    def __init__(self, vgg_weights: str | os.PathLike | None = None, random_init: bool = False,
                 use_dropout: bool = True):
        super().__init__()
        vgg_weights = vgg_weights if vgg_weights is not None else os.environ.get(VGG_WEIGHTS_ENV)
        if not random_init:
            if not vgg_weights:
                raise FileNotFoundError(f"LPIPS needs {VGG_WEIGHTS_HINT}")
            if not os.path.isfile(vgg_weights):
                raise FileNotFoundError(f"LPIPS VGG16 weights not found: {vgg_weights} ({VGG_WEIGHTS_HINT})")
        # Build on the meta device: lpips constructs a whole torchvision VGG16 (138M parameters,
        # classifier included) only to keep its features; every tensor is filled below.
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore", UserWarning)  # torchvision's `pretrained=` notice
            base = lpips.LPIPS(pretrained=False, net="vgg", version="0.1", lpips=True, pnet_rand=True,
                               use_dropout=use_dropout, eval_mode=True, verbose=False)
        self.scaling_layer = lpips.ScalingLayer()  # constant shift/scale buffers, built on the CPU
        self.net = base.net.to_empty(device="cpu")
        self.lin0, self.lin1, self.lin2, self.lin3, self.lin4 = (m.to_empty(device="cpu") for m in base.lins)
        self._load_strict(load_torch_file(lpips_calibration_path(), "LPIPS calibration file"),
                          prefix="lin", source=lpips_calibration_path())
        if random_init:
            logger.warning("LPIPS with a random VGG16 (random_init=True): values are meaningless")
            for m in self.net.modules():  # torchvision's VGG init
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
        else:
            sd = load_torch_file(vgg_weights, "VGG16 weights file")
            if any(k.startswith("features.") for k in sd):
                sd, dropped = _vgg_to_lpips_keys(sd)
                logger.info("LPIPS: loaded VGG16 features from %s (ignored %d classifier tensors)",
                            vgg_weights, dropped)
            self._load_strict(sd, prefix="net.", source=os.fspath(vgg_weights))
        self.requires_grad_(False)
        self.eval()

    def _load_strict(self, sd: dict[str, torch.Tensor], prefix: str, source: str) -> None:
        """Load exactly the keys of this module starting with `prefix` from `sd`."""
        own = {k: v for k, v in self.state_dict().items() if k.startswith(prefix)}
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        if missing or unexpected:
            raise ValueError(f"{source}: missing keys {missing[:8]}, unexpected keys {unexpected[:8]}")
        bad = [k for k in own if own[k].shape != sd[k].shape]
        if bad:
            raise ValueError(f"{source}: shape mismatch for {bad[:8]}")
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(sd[k])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        feats_x = self.net(self.scaling_layer(x))
        feats_y = self.net(self.scaling_layer(y))
        lins = (self.lin0, self.lin1, self.lin2, self.lin3, self.lin4)
        total = 0.0
        for lin, fx, fy in zip(lins, feats_x, feats_y):
            diff = (lpips.normalize_tensor(fx) - lpips.normalize_tensor(fy)).pow(2)
            total = total + lin(diff).mean(dim=(2, 3), keepdim=True)
        return total

"""ADM centre crop against hand-computed geometry, and the [-1, 1] transform."""
import numpy as np
import pytest
import torch
from PIL import Image

from datasets.transforms import adm_transform, center_crop_arr


def _image(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# (W, H), target, sizes after each BOX halving, BICUBIC size, (top, left) of the crop: by hand.
CASES = [
    ((500, 375), 256, [], (341, 256), (0, 42)),            # 500 * 256/375 = 341.33
    ((1200, 800), 256, [(600, 400)], (384, 256), (0, 64)),  # 800 >= 512: one halving
    ((300, 1000), 64, [(150, 500), (75, 250)], (64, 213), (74, 0)),  # portrait, two halvings
    ((40, 30), 64, [], (85, 64), (0, 10)),                  # upscaling: 40 * 64/30 = 85.33
    ((512, 512), 256, [(256, 256)], (256, 256), (0, 0)),    # exactly 2x: halved once
    ((257, 999), 128, [(128, 499)], (128, 499), (185, 0)),  # odd sizes floor when halving
    ((301, 200), 100, [(150, 100)], (150, 100), (0, 25)),   # short side == 2x target: halved
    ((164, 160), 100, [], (102, 100), (0, 1)),              # 164 * 0.625 = 102.5 rounds to even
]


@pytest.mark.parametrize("size,target,halvings,resized,offset", CASES)
def test_center_crop_geometry(size, target, halvings, resized, offset):
    img = _image(*size)
    expected = img
    for wh in halvings:
        expected = expected.resize(wh, resample=Image.BOX)
    expected = expected.resize(resized, resample=Image.BICUBIC)
    top, left = offset
    expected = np.asarray(expected)[top: top + target, left: left + target]
    out = np.asarray(center_crop_arr(img, target))
    assert out.shape == (target, target, 3)
    np.testing.assert_array_equal(out, expected)


def test_adm_transform_range_and_flip():
    img = _image(90, 70, seed=1)
    crop = np.asarray(center_crop_arr(img, 32)).astype(np.float32)
    expected = torch.from_numpy(crop / 127.5 - 1.0).permute(2, 0, 1)
    x = adm_transform(32)(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(adm_transform(32, p_hflip=1.0)(img), expected.flip(-1), atol=1e-6, rtol=0)

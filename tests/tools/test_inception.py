"""The ADM Inception feature wrapper (evaluation/inception.py), with a randomly initialised network.

Random weights: these tests check preprocessing, tensor plumbing and weight loading, not real FIDs.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluation.inception import (WEIGHTS_ENV_VAR, WEIGHTS_FILENAME, InceptionFeatureExtractor, compute_activations,
                             resolve_weights_path, tf1_resize_bilinear)


@pytest.fixture(scope="module")
def adm_extractor():
    return InceptionFeatureExtractor(None, random_init=True)


def _images(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- TF1 resize

def test_tf1_resize_upsample_hand_computed():
    x = torch.tensor([[0.0, 10.0], [20.0, 30.0]])[None, None]
    # source coordinate = dst * 2/3: rows/cols 0 -> 0, 1 -> 0.667 (blend 0,1), 2 -> 1.333 (clamped to 1)
    expected = torch.tensor([[0.0, 20 / 3, 10.0],
                             [40 / 3, 20.0, 70 / 3],
                             [20.0, 80 / 3, 30.0]])
    torch.testing.assert_close(tf1_resize_bilinear(x, 3)[0, 0], expected, rtol=0, atol=1e-5)
    # not PyTorch's half-pixel-centre bilinear
    assert not torch.allclose(F.interpolate(x, size=(3, 3), mode="bilinear", align_corners=False)[0, 0], expected)


def test_tf1_resize_downsample_hand_computed():
    row = torch.tensor([0.0, 10.0, 40.0, 90.0, 160.0])
    x = row.expand(5, 5)[None, None]
    # source coordinate = dst * 5/3: 0 -> 0, 1 -> 1.667 (10 + 30 * 2/3), 2 -> 3.333 (90 + 70 / 3)
    out = tf1_resize_bilinear(x, 3)[0, 0]
    torch.testing.assert_close(out, torch.tensor([0.0, 30.0, 90 + 70 / 3]).expand(3, 3), rtol=0, atol=1e-4)


def test_tf1_resize_matches_plain_loop():
    img = np.random.default_rng(1).uniform(0, 255, (7, 5)).astype(np.float32)
    out_size = 6
    ref = np.zeros((out_size, out_size), np.float64)
    for i in range(out_size):
        for j in range(out_size):
            y, x = i * 7 / out_size, j * 5 / out_size
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, 6), min(x0 + 1, 4)
            dy, dx = y - y0, x - x0
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * dx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * dx
            ref[i, j] = top + (bottom - top) * dy
    out = tf1_resize_bilinear(torch.from_numpy(img)[None, None], out_size)[0, 0].numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-3)


# ---------------------------------------------------------------- features
# One forward of two 299x299 images (CPU forwards are the slow part) serves several tests.

@pytest.fixture(scope="module")
def adm_forward(adm_extractor):
    net = adm_extractor.net
    net.fc.bias.data.uniform_(1.0, 2.0)  # random init zeroes it; a real bias must not reach the logits
    seen = {}
    hooks = [net.Conv2d_1a_3x3.register_forward_hook(lambda m, i, o: seen.update(first_input=i[0].clone())),
             net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: seen.update(mixed_6d_1x1=o.clone()))]
    imgs = _images(2, 299, 299, seed=2)
    try:
        feats = adm_extractor(imgs)
    finally:
        for h in hooks:
            h.remove()
    return imgs, feats, seen


def test_feature_shapes_and_dtypes(adm_forward):
    _, feats, _ = adm_forward
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "pool": (2, 2048), "spatial": (2, 2023), "logits": (2, 1008), "probs": (2, 1008)}
    assert all(v.dtype == torch.float32 for v in feats.values())
    assert feats["pool"].std() > 0 and torch.isfinite(feats["pool"]).all()


def test_input_scaling_and_identity_resize(adm_forward):
    """A 299x299 image reaches the first conv unresized and scaled as (x - 128) / 128."""
    imgs, _, seen = adm_forward
    expected = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() - 128) / 128
    torch.testing.assert_close(seen["first_input"], expected, rtol=0, atol=0)
    assert seen["first_input"].min() >= -1 and seen["first_input"].max() <= 0.9921875


def test_spatial_is_mixed_6d_branch1x1_first7_channels_nhwc(adm_forward):
    _, feats, seen = adm_forward
    block = seen["mixed_6d_1x1"]  # (N, 192, 17, 17), post-BN-ReLU
    assert block.shape == (2, 192, 17, 17) and (block >= 0).all()
    spatial = feats["spatial"]
    n, h, w, c = 1, 5, 11, 4
    assert spatial[n, (h * 17 + w) * 7 + c] == block[n, c, h, w]  # element (h, w, c) -> (h*17 + w)*7 + c
    torch.testing.assert_close(spatial, block[:, :7].permute(0, 2, 3, 1).reshape(2, -1), rtol=0, atol=0)
    assert not torch.equal(spatial, block[:, :7].reshape(2, -1))  # NCHW order would differ


def test_logits_exclude_the_bias_and_probs_are_their_softmax(adm_extractor, adm_forward):
    _, feats, _ = adm_forward
    fc = adm_extractor.net.fc
    assert fc.bias.min() >= 1.0
    torch.testing.assert_close(feats["logits"], feats["pool"] @ fc.weight.T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats["probs"], torch.softmax(feats["logits"], 1))
    torch.testing.assert_close(feats["probs"].sum(1), torch.ones(2))


def test_bad_inputs_are_rejected(adm_extractor):
    with pytest.raises(ValueError):
        adm_extractor(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError):
        adm_extractor(np.zeros((1, 3, 8, 8), np.uint8))


def test_compute_activations_batching_and_iterables(adm_extractor):
    imgs = torch.from_numpy(_images(3, 12, 12, seed=5))
    sliced = compute_activations(imgs, adm_extractor, batch_size=2)  # batches of 2 and 1
    streamed = compute_activations(iter([imgs[:1].numpy(), imgs[1:].numpy()]), adm_extractor, total=3)
    assert set(sliced) == {"pool", "spatial", "logits", "probs"}
    for k in sliced:
        assert sliced[k].dtype == np.float32 and sliced[k].shape[0] == 3
        np.testing.assert_allclose(streamed[k], sliced[k], rtol=1e-4, atol=1e-6)
    assert not np.allclose(sliced["pool"][0], sliced["pool"][1])  # rows are per image, in order
    only_pool = compute_activations(iter([]), adm_extractor, keys=("pool",))
    assert set(only_pool) == {"pool"} and only_pool["pool"].shape == (0, 2048)
    with pytest.raises(ValueError):
        compute_activations(imgs, adm_extractor, keys=("pool3",))


# ---------------------------------------------------------------- weights

def test_missing_weights_name_the_file(monkeypatch, tmp_path):
    monkeypatch.delenv(WEIGHTS_ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILENAME):
        InceptionFeatureExtractor(None)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        InceptionFeatureExtractor(str(tmp_path / "nope.pth"))
    monkeypatch.setenv(WEIGHTS_ENV_VAR, str(tmp_path / "from_env.pth"))
    with pytest.raises(FileNotFoundError, match="from_env.pth"):
        resolve_weights_path(None)


def test_weights_load_strictly_from_a_local_file(adm_extractor, tmp_path, monkeypatch):
    path = tmp_path / WEIGHTS_FILENAME
    state = {k: v for k, v in adm_extractor.net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)  # like the released file: torchvision Inception-v3 key names
    monkeypatch.setenv(WEIGHTS_ENV_VAR, str(path))
    loaded = InceptionFeatureExtractor(None)  # found through the environment variable
    assert loaded.weights_path == str(path) and not loaded.random_init
    got = loaded.net.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())
    del state["fc.bias"]
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="fc.bias"):
        InceptionFeatureExtractor(str(path))

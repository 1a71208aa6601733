"""tools/analyse_reconstruction.py: edge profiles find a one-sided halo; the shift estimate is right."""
import numpy as np

from tools.analyse_reconstruction import (OFFSETS, edge_profiles, foreground_mask, gradient_shift,
                                          luma_chroma)


def _square_image() -> np.ndarray:
    img = np.full((1, 24, 24, 3), 40.0)
    img[0, 8:16, 8:16] = (220.0, 60.0, 200.0)
    return img


def test_blue_halo_left_of_a_square_is_found_on_the_left_side_only():
    img = _square_image()
    mask = foreground_mask(img)
    assert mask.sum() == 64 and mask[0, 8:16, 8:16].all()
    err = np.zeros_like(img)
    err[0, 8:16, 6:8, 2] = 30.0  # +30 blue in the two columns left of the square
    prof = edge_profiles(mask, err)
    left = prof["left"][:, 2]
    assert np.allclose(left[OFFSETS <= 0], 0) and np.allclose(left[(OFFSETS == 1) | (OFFSETS == 2)], 30)
    assert np.allclose(left[OFFSETS == 3], 0)
    for side in ("right", "top"):
        assert np.allclose(prof[side], 0)
    # bottom edge pixels (row 15, cols 8..15) never reach columns 6..7
    assert np.allclose(prof["bottom"], 0)


def test_luma_chroma_of_grey_has_no_chroma():
    ycc = luma_chroma(np.array([[10.0, 10.0, 10.0], [0.0, 0.0, 100.0]]))
    assert np.allclose(ycc[0], [10, 0, 0])
    assert np.allclose(ycc[1], [11.4, 88.6, -11.4])


def test_gradient_shift_recovers_a_known_subpixel_shift():
    yy, xx = np.mgrid[0:32, 0:32].astype(float)
    blob = lambda dy, dx: 200 * np.exp(-((yy - 15 - dy) ** 2 + (xx - 16 - dx) ** 2) / 18.0)
    src = np.stack([blob(0, 0), blob(0, 0)])
    dst = np.stack([blob(0.2, -0.1), blob(-0.15, 0.25)])
    assert np.allclose(gradient_shift(src, dst), [[0.2, -0.1], [-0.15, 0.25]], atol=0.01)

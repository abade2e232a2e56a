"""PSNR, SSIM and the Y conventions against hand computations, skimage and exact arithmetic."""
import math
from fractions import Fraction

import cv2
import numpy as np
import pytest
from skimage.color import rgb2ycbcr
from skimage.metrics import structural_similarity

from tests.y_oracle import FLOAT_FORMULA_TRAPS, float_formula_y, with_traps, y_channel
from utils.evaluation.metrics import evaluate_pair, psnr, rgb_to_y, ssim
from utils.image_io import read_rgb

# Our SSIM and skimage's evaluate the same float64 formula with a different summation order.
SSIM_TOL = 1e-10


def skimage_ssim(a, b, **kw):
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255, **kw)


def test_psnr_by_hand():
    a = np.zeros((2, 2))
    b = np.array([[0.0, 0.0], [0.0, 10.0]])
    # MSE = 10^2 / 4 = 25 -> PSNR = 10 log10(255^2 / 25) = 20 log10(255) - 20 log10(5)
    assert psnr(a, b) == pytest.approx(20 * math.log10(255) - 20 * math.log10(5), abs=1e-12)
    # data range 1: MSE = (0.5^2 + 0.5^2) / 2 = 0.25 -> 10 log10(1 / 0.25)
    assert psnr([0.0, 1.0], [0.5, 0.5], data_range=1.0) == pytest.approx(10 * math.log10(4), abs=1e-12)
    assert psnr(b, b) == math.inf


@pytest.mark.parametrize("shape", [(11, 11), (16, 37), (128, 128)])
def test_ssim_matches_skimage_on_random_arrays(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.integers(0, 256, shape).astype(np.float64)
    b = np.clip(a + rng.normal(0, 25, shape), 0, 255)
    assert abs(ssim(a, b) - skimage_ssim(a, b)) < SSIM_TOL
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((10, 40)), np.zeros((10, 40)))


def degraded(img, seed):
    """A blurred and noised copy of an RGB uint8 face, as a stand-in SR output."""
    rng = np.random.default_rng(seed)
    blurred = cv2.GaussianBlur(img, (0, 0), 1.5).astype(np.float64)
    return np.clip(np.round(blurred + rng.normal(0, 6, img.shape)), 0, 255).astype(np.uint8)


def test_y_ssim_and_rgb_metrics_match_skimage_on_real_faces(celeba_dir):
    for i, path in enumerate(sorted((celeba_dir / "val").glob("*.jpg"))[:3]):
        gt = read_rgb(path)
        sr = degraded(gt, i)
        # Y channel: skimage's own BT.601 conversion, unquantised
        y_gt, y_sr = rgb2ycbcr(gt)[..., 0], rgb2ycbcr(sr)[..., 0]
        p, s = evaluate_pair(gt, sr, convention="float")
        assert abs(s - skimage_ssim(y_gt, y_sr)) < 1e-9
        assert p == pytest.approx(10 * math.log10(255 ** 2 / np.mean((y_gt - y_sr) ** 2)), abs=1e-9)
        # truncated Y, the default: skimage SSIM on the same Y planes
        p, s = evaluate_pair(gt, sr)
        t_gt, t_sr = rgb_to_y(gt), rgb_to_y(sr)
        assert abs(s - skimage_ssim(t_gt, t_sr)) < SSIM_TOL
        assert 0.5 < s < 0.99
        # RGB: PSNR over all channels, SSIM averaged over the channels
        p, s = evaluate_pair(gt, sr, rgb=True)
        mse = np.mean((gt.astype(np.float64) - sr) ** 2)
        assert p == pytest.approx(10 * math.log10(255 ** 2 / mse), abs=1e-9)
        assert abs(s - skimage_ssim(gt.astype(np.float64), sr.astype(np.float64), channel_axis=2)) < SSIM_TOL


def test_crop_border_drops_the_rim_before_both_metrics():
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    sr = gt.copy()
    sr[:4] = 0  # damage only inside the 4-pixel rim
    assert evaluate_pair(gt, sr, crop_border=4) == (math.inf, pytest.approx(1.0, abs=1e-12))
    sr[20, 20] = 255 - sr[20, 20]
    p, s = evaluate_pair(gt, sr, crop_border=4)
    y_gt, y_sr = rgb_to_y(gt)[4:-4, 4:-4], rgb_to_y(sr)[4:-4, 4:-4]
    assert p == pytest.approx(10 * math.log10(255 ** 2 / np.mean((y_gt - y_sr) ** 2)), abs=1e-9)
    assert abs(s - skimage_ssim(y_gt, y_sr)) < SSIM_TOL


def exact_y(colour, convention):
    """Y of one colour from exact rationals: truncated or rounded half up."""
    r, g, b = (int(c) for c in colour)
    exact = 16 + Fraction(65481 * r + 128553 * g + 24966 * b, 255000)
    return math.floor(exact) if convention == "truncate" else math.floor(exact + Fraction(1, 2))


def test_y_conventions_against_the_formula_on_every_colour():
    v = np.arange(256, dtype=np.uint8)
    g, b = np.meshgrid(v, v, indexing="ij")
    undecided = 0
    for red in range(256):  # one plane of 65536 colours at a time keeps the arrays in cache
        rgb = np.stack([np.full_like(g, red), g, b], axis=-1).reshape(-1, 3)
        r_, g_, b_ = (rgb[:, i].astype(np.float64) for i in range(3))
        direct = 16 + (65.481 * r_ + 128.553 * g_ + 24.966 * b_) / 255  # the section 5 formula in float64
        assert np.abs(rgb_to_y(rgb, "float") - direct).max() < 1e-12
        for convention, shifted in (("truncate", direct), ("round", direct + 0.5)):
            y = rgb_to_y(rgb, convention)
            frac = shifted - np.floor(shifted)
            clear = np.minimum(frac, 1 - frac) > 1e-9
            np.testing.assert_array_equal(y[clear], np.floor(shifted[clear]))
            # where float64 cannot decide (Y within 1e-9 of an integer or a half), exact rationals do
            for colour, value in zip(rgb[~clear], y[~clear]):
                assert value == exact_y(colour, convention)
            undecided += int((~clear).sum())
    assert 0 < undecided < 1000


def test_y_oracle_and_its_float_formula_traps():
    """tests/y_oracle.py, which the CLI tests use, against exact rationals; its trap colours are
    ones where a floating-point truncation of the formula comes out one below."""
    traps = np.array(FLOAT_FORMULA_TRAPS, dtype=np.uint8)
    colours = np.concatenate([traps, np.random.default_rng(3).integers(0, 256, (200, 3), dtype=np.uint8)])
    for convention in ("truncate", "round"):
        assert y_channel(colours, convention).tolist() == [exact_y(c, convention) for c in colours]
        np.testing.assert_array_equal(rgb_to_y(colours, convention), y_channel(colours, convention))
    np.testing.assert_array_equal(float_formula_y(traps), y_channel(traps) - 1)
    assert with_traps(np.zeros((2, 3, 3), np.uint8)).reshape(-1, 3).tolist() == traps.tolist()


def test_y_keeps_the_image_shape_and_rejects_non_rgb():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert rgb_to_y(img).shape == (5, 7)
    with pytest.raises(ValueError):
        rgb_to_y(img.astype(np.float32))
    with pytest.raises(ValueError):
        rgb_to_y(img, "bankers")

"""PSNR and SSIM as in the paper's test protocol (docs/architecture.md §5).

Y channel of BT.601 YCbCr: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 on uint8 RGB.
SSIM: Gaussian window sigma 1.5 truncated to 11x11, K1 0.01, K2 0.03, population covariance,
mean over the SSIM map after dropping the 5-pixel border the window does not cover (the
definition of ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)``).
"""
import math

import cv2
import numpy as np

from utils.y_conventions import DEFAULT_Y_CONVENTION, Y_CONVENTIONS

# Y * 255000 = 65481 R + 128553 G + 24966 B + 16 * 255000, exactly, in integers: the float
# formula lands a hair below an integer for a few colours (24 to 46 of 2^24 when truncating,
# depending on the order of the operations), so the quantised Y comes from the exact numerator.
_Y_WEIGHTS = np.array([65481, 128553, 24966], dtype=np.int32)
_Y_OFFSET = 16 * 255000
_Y_DENOM = 255000

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5), as scipy.ndimage truncates the Gaussian: an 11x11 window
SSIM_K1, SSIM_K2 = 0.01, 0.03


def rgb_to_y(img, convention=DEFAULT_Y_CONVENTION):
    """RGB uint8 (..., 3) -> Y float64 (...), quantised by ``convention`` (utils/y_conventions.py).

    ``truncate`` floors Y, ``round`` rounds it to the nearest integer with halves up (MATLAB's rule;
    194 of the 2^24 colours have a Y of exactly k + 1/2), ``float`` keeps it unquantised.
    """
    if convention not in Y_CONVENTIONS:
        raise ValueError(f"unknown Y convention {convention!r}; use one of {', '.join(Y_CONVENTIONS)}")
    if img.dtype != np.uint8 or img.shape[-1] != 3:
        raise ValueError(f"expected RGB uint8 (..., 3), got {img.dtype} {img.shape}")
    numer = img.astype(np.int32) @ _Y_WEIGHTS + _Y_OFFSET
    if convention == "truncate":
        return (numer // _Y_DENOM).astype(np.float64)
    if convention == "round":
        return ((numer + _Y_DENOM // 2) // _Y_DENOM).astype(np.float64)
    return numer / _Y_DENOM


def psnr(a, b, data_range=255.0):
    """PSNR in dB between two arrays of the same shape (all elements pooled); inf if equal."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / mse)


def _gaussian_taps():
    x = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return taps / taps.sum()


_TAPS = _gaussian_taps()


def _local_mean(x):
    """Gaussian-weighted local mean of a 2-D float64 array on the region the 11x11 window covers fully:
    (H, W) -> (H - 10, W - 10). The filter's border mode is irrelevant because that rim is cropped."""
    r = SSIM_RADIUS
    return cv2.sepFilter2D(x, cv2.CV_64F, _TAPS, _TAPS, borderType=cv2.BORDER_REFLECT)[r:-r, r:-r]


def ssim(a, b, data_range=255.0):
    """Mean SSIM of two 2-D float64 arrays (H, W), both at least 11x11.

    In-place arithmetic on the (H - 10, W - 10) maps: fresh temporaries of this size cost more
    (allocation and page faults) than the filtering itself.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"ssim expects two 2-D arrays of one shape, got {a.shape} and {b.shape}")
    win = 2 * SSIM_RADIUS + 1
    if min(a.shape) < win:
        raise ValueError(f"SSIM needs images of at least {win}x{win} pixels, got {a.shape[1]}x{a.shape[0]}")
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _local_mean(a), _local_mean(b)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    # numerator (2 mu_a mu_b + c1) (2 cov + c2), cov = E[ab] - mu_a mu_b
    num = _local_mean(a * b)
    num -= mu_ab
    num *= 2
    num += c2
    mu_ab *= 2
    mu_ab += c1
    num *= mu_ab
    # denominator (mu_a^2 + mu_b^2 + c1) (var_a + var_b + c2), var = E[x^2] - mu^2
    den = _local_mean(a * a)
    den += _local_mean(b * b)
    den -= mu_aa
    den -= mu_bb
    den += c2
    mu_aa += mu_bb
    mu_aa += c1
    den *= mu_aa
    num /= den
    return float(num.mean())


def evaluate_pair(gt, sr, convention=DEFAULT_Y_CONVENTION, crop_border=0, rgb=False):
    """(PSNR, SSIM) of two RGB uint8 images (H, W, 3) of one size.

    Y channel by default (``convention`` as in ``rgb_to_y``); ``rgb=True`` pools the three
    channels for PSNR and averages per-channel SSIM. ``crop_border`` pixels are dropped on
    each side first.
    """
    if gt.shape != sr.shape:
        raise ValueError(f"image sizes differ: {gt.shape} vs {sr.shape}")
    if crop_border:
        c = crop_border
        if min(gt.shape[:2]) <= 2 * c:
            raise ValueError(f"crop_border {c} leaves nothing of a {gt.shape[1]}x{gt.shape[0]} image")
        gt, sr = gt[c:-c, c:-c], sr[c:-c, c:-c]
    if rgb:
        gt64, sr64 = gt.astype(np.float64), sr.astype(np.float64)
        s = float(np.mean([ssim(gt64[..., ch], sr64[..., ch]) for ch in range(3)]))
        return psnr(gt64, sr64), s
    gy, sy = rgb_to_y(gt, convention), rgb_to_y(sr, convention)
    return psnr(gy, sy), ssim(gy, sy)

"""Each --y_convention reproduces the numbers of the tool utils/y_conventions.py names, on real faces.

- float: BasicSR, through the ``basicsr`` package's own calculate_psnr/calculate_ssim (requirements-test.txt).
- round: MATLAB's rgb2ycbcr on uint8 images, written here from its documented arithmetic (the scaled
  coefficients [65.481, 128.553, 24.966] / 255 and offset 16 in double, then rounded to the nearest
  integer, halves away from zero, as conversion to uint8 does), with the SSIM of Wang's reference
  ssim_index.m (fspecial('gaussian', 11, 1.5), 'valid' filtering, mean of the map).
- truncate: the face-SR family's psnr_ssim.py, from its formula: Y = 16 + RGB . ([65.481, 128.553,
  24.966] / 255) in float64, cast with astype(np.uint8); PSNR on it; skimage's Gaussian SSIM
  (sigma 1.5, population covariance).
Each tool works in floating point; ours works in exact integers. The exhaustive test below shows
where that can matter: only at the colours whose exact Y is a tie (an integer when truncating, an
integer + 1/2 when rounding), where the tool's own rounding errors decide.
"""
import importlib
import importlib.util
import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.signal import correlate2d
from skimage.metrics import structural_similarity

from data.degradation import bicubic_degrade_array
from data.prepare_celeba import DEFAULT_BOX, crop_face
from tests.conftest import ROOT, in_ci, shared_path
from utils.evaluation.metrics import evaluate_pair, rgb_to_y
from utils.image_io import read_rgb
from utils.y_conventions import CONVENTIONS, Y_CONVENTIONS

FACES = 50  # the first 50 CelebA val faces: the measured example of docs/metrics.md
BT601 = (65.481, 128.553, 24.966)
EXACT = (65481, 128553, 24966)  # 255000 Y = EXACT . RGB + 16 * 255000
DENOM = 255000


@pytest.fixture(scope="module")
def faces():
    """[(HR, bicubic x8)] 128x128 RGB uint8 pairs: CelebA val faces cropped as data.prepare_celeba does,
    bicubic down to 16x16 and back as data.make_lr does."""
    paths = sorted(shared_path("data", "celeba_align", "val").glob("*.jpg"))[:FACES]
    assert len(paths) == FACES
    pairs = []
    for path in paths:
        hr = np.asarray(crop_face(Image.fromarray(read_rgb(path)), DEFAULT_BOX, 128))
        pairs.append((hr, bicubic_degrade_array(hr, 8)[1]))
    return pairs


@pytest.fixture(scope="module")
def basicsr_metrics():
    """``basicsr.metrics.psnr_ssim`` without running the __init__.py of basicsr (it imports BasicSR's training
    code: yaml, lmdb, addict, and torchvision.transforms.functional_tensor, gone from torchvision 0.17 on)
    or of basicsr.metrics (NIQE, from scipy.ndimage.filters, deprecated)."""
    spec = importlib.util.find_spec("basicsr")
    if spec is None:
        reason = "basicsr is not installed: pip install --no-deps -r requirements-test.txt"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    root = Path(spec.submodule_search_locations[0])
    for name, folder in (("basicsr", root), ("basicsr.metrics", root / "metrics")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
    return importlib.import_module("basicsr.metrics.psnr_ssim")


def psnr_by_hand(a, b):
    return 10 * math.log10(255 ** 2 / np.mean((np.asarray(a, np.float64) - b) ** 2))


def family_y(img):
    """The face-SR family's Y: the float64 formula cast with astype(np.uint8)."""
    return (16 + img.astype(np.float64) @ (np.array(BT601) / 255.0)).astype(np.uint8)


def family_metrics(gt, sr):
    yg, ys = family_y(gt), family_y(sr)
    ssim = structural_similarity(yg, ys, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255)
    return psnr_by_hand(yg, ys), ssim


def matlab_y(img):
    """MATLAB's rgb2ycbcr Y of uint8 RGB: T = origT / 255 and offset 16 in double, rounded half away from zero."""
    rgb = img.astype(np.float64)
    t = np.array(BT601) / 255
    y = t[0] * rgb[..., 0] + t[1] * rgb[..., 1] + t[2] * rgb[..., 2] + 16
    return np.floor(y + 0.5)  # y > 0: half away from zero is half up


def wang_ssim(a, b):
    """Wang et al.'s ssim_index.m: 11x11 Gaussian window (sigma 1.5, normalised), 'valid' filtering, mean."""
    x = np.arange(-5, 6, dtype=np.float64)
    window = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.5 ** 2))
    window /= window.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def filt(img):
        return correlate2d(img, window, mode="valid")

    mu_a, mu_b = filt(a), filt(b)
    var_a, var_b = filt(a * a) - mu_a ** 2, filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    ssim_map = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def matlab_metrics(gt, sr):
    yg, ys = matlab_y(gt), matlab_y(sr)
    return psnr_by_hand(yg, ys), wang_ssim(yg, ys)


def basicsr_pair(bsr, gt, sr, crop_border=0, y=True):
    """BasicSR's PSNR/SSIM of two RGB images (it reads BGR, as cv2.imread gives)."""
    g, s = gt[..., ::-1], sr[..., ::-1]
    return (bsr.calculate_psnr(g, s, crop_border, test_y_channel=y),
            bsr.calculate_ssim(g, s, crop_border, test_y_channel=y))


def ours(faces, convention, **kw):
    return np.array([evaluate_pair(gt, sr, convention, **kw) for gt, sr in faces])


def agrees(got, ref):
    """Same numbers: per image within 2e-4 dB / 2e-5 (a tool's float arithmetic puts the odd pixel one
    level off, see the exhaustive test: 1.1e-4 dB at most over CelebA's 780 val faces), means within 1e-5.
    The three conventions' means lie 4e-4 to 3e-3 dB and 5e-5 to 8e-4 apart here."""
    per_image = np.abs(got - ref).max(0)
    means = np.abs(got.mean(0) - ref.mean(0))
    return bool(per_image[0] < 2e-4 and per_image[1] < 2e-5 and means.max() < 1e-5)


REFERENCES = {  # the tool as utils/y_conventions.py names it -> its PSNR/SSIM of one RGB pair
    "BasicSR": lambda bsr: lambda gt, sr: basicsr_pair(bsr, gt, sr),
    "MATLAB": lambda _: matlab_metrics,
    "psnr_ssim.py": lambda _: family_metrics,
}


@pytest.mark.parametrize("tool", REFERENCES)
def test_each_tool_is_named_by_the_one_convention_that_reproduces_it(tool, faces, request):
    bsr = request.getfixturevalue("basicsr_metrics") if tool == "BasicSR" else None
    reference = REFERENCES[tool](bsr)
    ref = np.array([reference(gt, sr) for gt, sr in faces])
    reproducing = {c for c in Y_CONVENTIONS if agrees(ours(faces, c), ref)}
    naming = {c for c in Y_CONVENTIONS if tool in CONVENTIONS[c].tools}
    assert reproducing == naming and len(naming) == 1, (reproducing, naming)


def test_basicsr_agreement_is_float32_close_with_a_crop_and_on_rgb(faces, basicsr_metrics):
    """BasicSR keeps Y in float32, we in float64: 4e-7 dB and 2e-8 apart at most (measured)."""
    got = ours(faces, "float")
    ref = np.array([basicsr_pair(basicsr_metrics, gt, sr) for gt, sr in faces])
    worst_psnr, worst_ssim = np.abs(got - ref).max(0)
    assert worst_psnr < 1e-5 and worst_ssim < 1e-7
    few = faces[:8]
    np.testing.assert_allclose(ours(few, "float", crop_border=8),
                               [basicsr_pair(basicsr_metrics, gt, sr, crop_border=8) for gt, sr in few], atol=1e-5)
    np.testing.assert_allclose(ours(few, "float", rgb=True),
                               [basicsr_pair(basicsr_metrics, gt, sr, y=False) for gt, sr in few], atol=1e-9)


def every_colour_plane():
    """(red, RGB uint8 (65536, 3), exact 255000 Y as int64 (65536,)) for each red value: all 2^24 colours."""
    v = np.arange(256)
    g, b = (a.ravel() for a in np.meshgrid(v, v, indexing="ij"))
    for red in range(256):
        rgb = np.stack([np.full_like(g, red), g, b], axis=-1)
        numerator = rgb @ np.array(EXACT, dtype=np.int64) + 16 * DENOM
        yield rgb.astype(np.uint8), numerator


def test_the_float_tools_depart_from_exact_y_only_at_ties():
    """Exhaustively: an exact Y that is not a tie lies at least 1/255000 from one, far beyond any float64
    rounding error, so every tool's float arithmetic quantises it as exact arithmetic does. The ties
    exist (MATLAB's half-away rule matters: numpy's round-half-even would differ), and there the tools'
    results are off by one at a few colours."""
    halves = integers = matlab_off = family_off = 0
    for rgb, numerator in every_colour_plane():
        remainder = numerator % DENOM
        half, integer = remainder == DENOM // 2, remainder == 0
        halves += int(half.sum())
        integers += int(integer.sum())
        rounded, truncated = rgb_to_y(rgb, "round"), rgb_to_y(rgb, "truncate")
        np.testing.assert_array_equal(rounded[half], (numerator[half] + DENOM // 2) // DENOM)  # halves go up
        matlab, family = matlab_y(rgb), family_y(rgb)
        np.testing.assert_array_equal(matlab[~half], rounded[~half])
        np.testing.assert_array_equal(family[~integer], truncated[~integer])
        matlab_off += int((matlab != rounded).sum())
        family_off += int((family != truncated).sum())
    assert (halves, integers) == (194, 206)
    assert 0 < matlab_off < halves and 0 < family_off < integers


def documented_conventions_rows():
    """{convention: row cells} of the conventions table in docs/metrics.md."""
    rows = {}
    for line in (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8").splitlines():
        match = re.match(r"\|\s*`(\w+)`", line)
        if match and match.group(1) in Y_CONVENTIONS:
            rows[match.group(1)] = [c.strip() for c in line.strip().strip("|").split("|")]
    return rows


def test_documented_conventions_table_names_the_tools_and_our_measurement(faces):
    rows = documented_conventions_rows()
    assert set(rows) == set(Y_CONVENTIONS)
    for name, cells in rows.items():
        assert CONVENTIONS[name].tools in cells, name
        psnr, ssim = ours(faces, name).mean(0)
        assert f"{psnr:.4f} / {ssim:.4f}" == cells[-1], name

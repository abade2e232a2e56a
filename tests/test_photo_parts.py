"""The photo pipeline's parts that need no detector: similarity fits, pasting back, EXIF orientation,
enlarging in strips, the detector's tiling arithmetic and the synthetic ground truth."""
import io
import itertools
import math

import numpy as np
import pytest
from PIL import Image, ImageOps

from utils.photo import geometry, paste, photo_io, synthetic
from utils.photo.alignment import FRAME, TEMPLATE, align_face, lr_side
from utils.photo.detector import OVERLAP, TILE, Detection, FaceDetector, tile_starts
from utils.photo.pipeline import enhance_photo


def rotation_matrix(scale, degrees, tx, ty):
    """An independent similarity: scale * R(degrees) with y pointing down, then a shift."""
    a = math.radians(degrees)
    return np.array([[scale * math.cos(a), scale * math.sin(a), tx], [-scale * math.sin(a), scale * math.cos(a), ty]])


def test_umeyama_recovers_a_known_similarity_exactly():
    truth = rotation_matrix(0.37, 23.0, 11.5, -4.25)
    points = np.random.default_rng(0).uniform(0, 100, (5, 2))
    moved = points @ truth[:, :2].T + truth[:, 2]
    np.testing.assert_allclose(geometry.umeyama(points, moved), truth, atol=1e-10)
    np.testing.assert_allclose(geometry.umeyama(points, moved, [2, 2, 0.3, 1, 1]), truth, atol=1e-10)
    assert geometry.scale_of(truth) == pytest.approx(0.37)
    assert geometry.angle_of(truth) == pytest.approx(23.0)


def test_umeyama_never_reflects_and_weights_pull_the_fit():
    points = np.array([[0.0, 0], [10, 0], [0, 10], [10, 10]])
    skewed = np.array([[0.0, 0], [10, 1], [-1, 9], [12, 10]])
    mirrored = skewed * [-1, 1]
    fit = geometry.umeyama(skewed, mirrored)
    assert np.linalg.det(fit[:, :2]) > 0  # the best rotation, not the reflection
    target = points.copy()
    target[0] += [3.0, 0.0]  # one point off: weighting it more pulls the fit towards it
    light = np.linalg.norm(geometry.apply(geometry.umeyama(points, target, [0.1, 1, 1, 1]), points[:1]) - target[:1])
    heavy = np.linalg.norm(geometry.apply(geometry.umeyama(points, target, [10, 1, 1, 1]), points[:1]) - target[:1])
    assert heavy < light


def test_transform_helpers_agree_with_matrix_algebra():
    a, b = rotation_matrix(2.0, 10, 3, 4), rotation_matrix(0.5, -35, -1, 7)
    p = np.array([[1.0, 2.0], [-3.0, 5.0]])
    np.testing.assert_allclose(geometry.apply(geometry.compose(a, b), p), geometry.apply(a, geometry.apply(b, p)))
    np.testing.assert_allclose(geometry.apply(geometry.invert(a), geometry.apply(a, p)), p, atol=1e-12)
    # OpenCV's pixel centres sit at integers: pixel (0, 0)'s centre (0.5, 0.5) maps the same way in both.
    centre = geometry.apply(a, [[0.5, 0.5]]) - 0.5
    np.testing.assert_allclose(geometry.apply(geometry.to_opencv(a), [[0.0, 0.0]]), centre)


def smooth_photo(width, height):
    """A smooth but steep picture (waves of 75-95 pixels, up to 9 grey levels per pixel): resampling
    loses almost nothing, and a pixel's misplacement shows."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 128 + 110 * np.sin(x / 12.0) * np.cos(y / 15.0)
    g = 120 + 90 * np.cos((x + y) / 14.0)
    b = 100 + 0.3 * x - 0.2 * y
    return np.clip(np.round(np.stack([r, g, b], axis=2)), 0, 255).astype(np.uint8)


def within_rounding(diff):
    """At most 3 grey levels anywhere and more than 1 at under 0.1 % of the pixels."""
    return diff.max() <= 3 and np.mean(diff > 1) < 0.001


class Identity:
    """A restorer that returns the network's input unchanged: the bicubic-enlarged aligned face."""
    lr_size, scale = 16, 8

    def restore(self, lr):
        side = lr.shape[0] * self.scale
        return np.asarray(Image.fromarray(lr).resize((side, side), Image.BICUBIC), np.float32)


class KnownFaces:
    """A detector that reports faces where they were put."""

    def __init__(self, frames):
        self.frames = frames

    def detect(self, photo):
        return [Detection(np.zeros(4), geometry.apply(f, TEMPLATE), 1.0) for f in self.frames]


@pytest.mark.parametrize("scale", [8, 4])
def test_a_face_restored_as_itself_leaves_the_photo_unchanged(scale):
    photo = smooth_photo(160, 112)
    frames = [geometry.similarity(16 / FRAME, math.radians(7), (64, 64), (40.3, 45.1)),
              geometry.similarity(24 / FRAME, math.radians(-12), (64, 64), (110.7, 60.2))]
    result = enhance_photo(photo, Identity(), KnownFaces(frames), scale=scale)
    enlarged = np.asarray(Image.fromarray(photo).resize((160 * scale, 112 * scale), Image.BICUBIC))
    assert result.image.shape == enlarged.shape and len(result.faces) == 2
    diff = np.abs(result.image.astype(int) - enlarged.astype(int))
    changed = diff.max(axis=2) > 0
    # Outside the faces' squares nothing changes at all.
    inside = np.zeros(changed.shape, bool)
    for frame in frames:
        x0, y0, x1, y1 = geometry.bounding_box(geometry.compose(geometry.scaling(scale), frame), FRAME, FRAME)
        inside[max(0, math.floor(y0)):math.ceil(y1), max(0, math.floor(x0)):math.ceil(x1)] = True
    assert not changed[~inside].any()
    # Inside, the face went out and back through resamplings of a smooth picture: rounding only.
    assert within_rounding(diff), (diff.max(), np.mean(diff > 1))
    assert changed[inside].any()  # the faces were pasted (a paste that did nothing would pass the above)


def test_a_misplaced_paste_shows():
    """The identity test above sees a paste 3/8 of an input pixel off: the same face put back 3 output
    pixels to the right breaks its bound."""
    photo = smooth_photo(160, 112)
    frame = geometry.similarity(16 / FRAME, 0.0, (64, 64), (60.0, 50.0))
    canvas = photo_io.upscale(photo, 8)
    face = Identity().restore(align_face(photo, geometry.apply(frame, TEMPLATE)).lr)
    to_canvas = geometry.compose(geometry.scaling(8), geometry.compose(frame, geometry.scaling(FRAME / 128)))
    reference = canvas.copy()
    paste.paste_face(canvas, face, geometry.compose(geometry.translation(3, 0), to_canvas))
    assert not within_rounding(np.abs(canvas.astype(int) - reference.astype(int)))


def test_feathered_mask_is_zero_at_the_edges_and_one_inside():
    mask = paste.feathered_mask(128)
    assert mask.shape == (128, 128)
    assert mask[0].max() < 0.01 and mask[:, -1].max() < 0.01
    assert mask[32:96, 32:96].min() > 0.99
    np.testing.assert_allclose(mask, mask[::-1, ::-1], atol=1e-6)


def test_lr_side_keeps_the_face_resolution():
    assert lr_side(11.2, 16) == 16   # too small: enlarged to the model's input
    assert lr_side(23.6, 16) == 24   # its own size: each input pixel spans `scale` output pixels


def test_faces_too_small_or_too_large_get_a_notice_and_large_ones_stay_bicubic():
    photo = smooth_photo(200, 150)
    frames = [geometry.similarity(60 / FRAME, 0.0, (64, 64), (60.0, 70.0)),
              geometry.similarity(12 / FRAME, 0.0, (64, 64), (160.0, 70.0))]
    result = enhance_photo(photo, Identity(), KnownFaces(frames), scale=2, max_face=48)
    large, small = result.faces
    assert large.restored is None and "larger than --max_face 48" in large.notice
    assert large.record()["restored"] is False and large.record()["network_input"] is None
    assert small.restored.shape == (128, 128, 3) and "smaller than the model's 16 px" in small.notice
    enlarged = np.asarray(Image.fromarray(photo).resize((400, 300), Image.BICUBIC))
    np.testing.assert_array_equal(result.image[:, :200], enlarged[:, :200])  # the large face's half


def test_align_face_cuts_the_frame_at_the_face_resolution():
    photo = smooth_photo(200, 150)
    frame = geometry.similarity(30 / FRAME, math.radians(9), (64, 64), (100.0, 70.0))
    aligned = align_face(photo, geometry.apply(frame, TEMPLATE))
    assert aligned.lr.shape == (30, 30, 3)
    assert aligned.face_size == pytest.approx(30.0)
    np.testing.assert_allclose(geometry.compose(aligned.to_frame, frame), geometry.scaling(1.0), atol=1e-9)
    # The crop's centre pixel is the photo at the frame's centre.
    assert np.abs(aligned.lr[15, 15].astype(int) - photo[70, 100].astype(int)).max() <= 3
    small = align_face(photo, geometry.apply(geometry.similarity(9 / FRAME, 0.0, (64, 64), (100, 75)), TEMPLATE))
    assert small.lr.shape == (16, 16, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path, orientation):
    img = Image.fromarray(np.random.default_rng(orientation).integers(0, 256, (6, 10, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"
    img.save(path, exif=exif)
    photo, found = photo_io.read_photo(path)
    assert found == orientation
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    np.testing.assert_array_equal(photo, expected)


def test_read_photo_without_exif_is_upright(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (5, 3), (10, 20, 30)).save(buf, format="PNG")
    (tmp_path / "a.png").write_bytes(buf.getvalue())
    photo, orientation = photo_io.read_photo(tmp_path / "a.png")
    assert orientation == 1 and photo.shape == (3, 5, 3)


def test_upscale_in_strips_equals_one_pil_resize(monkeypatch):
    monkeypatch.setattr(photo_io, "STRIP_ROWS", 7)
    photo = np.random.default_rng(1).integers(0, 256, (50, 37, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(photo).resize((37 * 3, 50 * 3), Image.BICUBIC))
    np.testing.assert_array_equal(photo_io.upscale(photo, 3), expected)


@pytest.mark.parametrize("length", [TILE + 1, 2500, 5000])
def test_tiles_cover_the_photo_with_the_overlap(length):
    starts = tile_starts(length, TILE, OVERLAP)
    assert starts[0] == 0 and starts[-1] + TILE == length
    assert all(b - a <= TILE - OVERLAP for a, b in itertools.pairwise(starts))
    # every centre belongs to the core of some tile
    for centre in np.linspace(0, length - 0.01, 997):
        assert any(FaceDetector._in_core(centre, s, length) for s in starts)


def test_group_photo_puts_the_face_frame_where_it_says():
    """A source whose frame is a white square on black: in the ground truth the white lands exactly in the
    placement's (rotated) square."""
    image = np.zeros((60, 60, 3), np.uint8)
    image[10:50, 10:50] = 255
    source = synthetic.FaceSource(image, (10, 10, 40))
    placement = synthetic.Placement((40.0, 30.0), 20, 15.0)
    photo = synthetic.group_photo([source], [placement], 80, 60, scale=4, background=np.zeros((4, 4, 3), np.uint8))
    inner = synthetic.face_region(photo, 0, inset=0.1)
    assert photo.hr[inner].min() > 230
    ring = synthetic.face_region(photo, 0, inset=-0.1) & ~synthetic.face_region(photo, 0, inset=0.02)
    outside = ~synthetic.face_region(photo, 0, inset=-0.3)
    assert photo.hr[outside].max() == 0
    assert photo.hr[ring].mean() < 200  # the edge of the square is where the placement puts it
    assert photo.lr.shape == (60, 80, 3)

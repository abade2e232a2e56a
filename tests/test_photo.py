"""The photo pipeline on real faces (MTCNN from facenet-pytorch, the shipped model) and enhance.py's
command line: outputs, JSON fields and every kind of bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from data.prepare_celeba import DEFAULT_BOX
from models import HybriMamba
from models.checkpoint import save_checkpoint
from tests.conftest import ROOT, file_hashes, shared_path
from utils.demo.faces import astronaut_source
from utils.errors import UserError
from utils.evaluation.pretrained import SHIPPED_MODEL
from utils.image_io import list_images, read_rgb
from utils.photo import cli, detector, geometry, synthetic
from utils.photo.alignment import FRAME, TEMPLATE
from utils.photo.detector import FaceDetector
from utils.photo.outputs import WRITTEN_BY
from utils.photo.pipeline import LANDMARK_NAMES, enhance_photo
from utils.photo.restorer import FaceRestorer, load_model

pytestmark = pytest.mark.usefixtures("one_thread")
SIZES = [20, 24, 28, 32, 36, 40, 22, 30]
ANGLES = [0, 8, -8, 0, 10, -5, 3, 0]
TINY = {"embed_dim": 8, "depth": 1, "n_layers": 1, "expand": 1.0, "d_state": 4, "mlp_ratio": 2.0}


def psnr(a, b, mask):
    """PSNR (dB, RGB, peak 255) over the pixels of ``mask``, computed here by hand."""
    diff = a[mask].astype(np.float64) - b[mask].astype(np.float64)
    return 10 * np.log10(255.0 ** 2 / np.mean(diff ** 2))


@pytest.fixture(scope="module")
def val_faces():
    return list_images(shared_path("data", "celeba_align", "val"))


@pytest.fixture(scope="module")
def group(val_faces):
    """Eight real CelebA validation faces of 20-40 pixels, some turned, at known places; x8 ground truth."""
    sources = [synthetic.celeba_source(read_rgb(p)) for p in val_faces[:len(SIZES)]]
    placements, (width, height) = synthetic.grid_layout(SIZES, ANGLES, per_row=4)
    return synthetic.group_photo(sources, placements, width, height, scale=8, seed=0)


@pytest.fixture(scope="module")
def mtcnn():
    return FaceDetector()


@pytest.fixture(scope="module")
def found(group, mtcnn):
    detections = mtcnn.detect(group.lr)
    return detections, synthetic.match_faces(detections, group)


def test_detector_finds_nine_in_ten_faces_of_20_to_40_pixels(group, found):
    detections, matches = found
    assert sum(m is not None for m in matches) >= 0.9 * len(group.frames)
    assert len(detections) <= len(group.frames)  # nothing found in the background
    assert all(0.5 < d.score <= 1 for d in detections)


def test_alignment_puts_the_eyes_where_the_training_framing_has_them(group, found):
    """Each matched face's fitted frame against its true frame: where the template's eyes land in the
    128x128 frame. Two pixels there is the spread of the eyes among CelebA's own aligned faces (1.4-1.8
    px); the bound per face is 2 px on average over both eyes plus the detector's error, which at these
    sizes is well under one input pixel (8 frame pixels at 16 px)."""
    detections, matches = found
    errors = []
    for frame, match in zip(group.frames, matches):
        if match is None:
            continue
        fit = geometry.umeyama(detections[match].landmarks, TEMPLATE, (2, 2, 0.3, 1, 1))
        landed = geometry.apply(geometry.compose(fit, frame), TEMPLATE[:2])
        errors.append(np.linalg.norm(landed - TEMPLATE[:2], axis=1))
    errors = np.array(errors)
    assert np.median(errors) < 2.0, errors
    assert errors.max() < 6.0, errors
    # No bias: a coordinate convention off by half a pixel would shift every face the same way by 3+ px.
    shifts = []
    for frame, match in zip(group.frames, matches):
        if match is not None:
            fit = geometry.umeyama(detections[match].landmarks, TEMPLATE, (2, 2, 0.3, 1, 1))
            shifts.append(geometry.apply(geometry.compose(fit, frame), TEMPLATE[:2]).mean(0) - TEMPLATE[:2].mean(0))
    assert np.linalg.norm(np.mean(shifts, axis=0)) < 1.5, np.mean(shifts, axis=0)


@pytest.fixture(scope="module")
def shipped():
    model, scale, size, _ = load_model(SHIPPED_MODEL)
    return FaceRestorer(model, scale, size)


def test_restored_faces_beat_the_bicubic_photo(group, mtcnn, shipped):
    result = enhance_photo(group.lr, shipped, mtcnn, scale=8)
    bicubic = np.asarray(Image.fromarray(group.lr).resize(group.hr.shape[1::-1], Image.BICUBIC))
    assert result.image.shape == group.hr.shape
    gains = []
    for index in range(len(group.frames)):
        region = synthetic.face_region(group, index)
        gains.append(psnr(group.hr, result.image, region) - psnr(group.hr, bicubic, region))
    assert min(gains) > 0, np.round(gains, 2)
    assert np.mean(gains) > 0.3, np.round(gains, 2)
    background = np.ones(group.hr.shape[:2], bool)
    for index in range(len(group.frames)):
        background &= ~synthetic.face_region(group, index, inset=-0.5)
    np.testing.assert_array_equal(result.image[background], bicubic[background])


def test_template_recomputed_on_celeba_crops(val_faces, mtcnn):
    """The template's landmarks, measured again on 24 other training-framed validation faces (the
    constants come from all 780): eyes within 1 px, nose and mouth within 2 px of their mean."""
    points = []
    for path in val_faces[-24:]:
        crop = np.asarray(Image.open(path).convert("RGB").crop(DEFAULT_BOX).resize((FRAME, FRAME), Image.BICUBIC))
        canvas = np.full((FRAME * 2, FRAME * 2, 3), 127, np.uint8)
        canvas[64:192, 64:192] = crop
        faces = mtcnn.detect(canvas)
        assert faces, path
        points.append(faces[0].landmarks - 64)
    error = np.abs(np.mean(points, axis=0) - TEMPLATE)
    assert error[:2].max() < 1.0 and error.max() < 2.0, error


def test_detector_coordinates_do_not_drift_with_size(val_faces, mtcnn):
    """The same faces at 128 and 32 pixels: in corner coordinates the small face's landmarks times 4 are
    the large face's. MTCNN's own 1-based coordinates would be off by 0.5 * (4 - 1) = 1.5 px."""
    offsets = []
    for path in val_faces[100:116]:
        face = Image.open(path).convert("RGB").crop(DEFAULT_BOX)
        found = {}
        for side in (32, 128):
            canvas = np.full((side * 3, side * 3, 3), 127, np.uint8)
            canvas[side:2 * side, side:2 * side] = np.asarray(face.resize((side, side), Image.BICUBIC))
            faces = mtcnn.detect(canvas)
            found[side] = faces[0].landmarks[:2] - side if faces else None
        if found[32] is not None and found[128] is not None:
            offsets.append(found[32] * 4 - found[128])
    assert len(offsets) >= 12
    assert np.abs(np.mean(offsets, axis=(0, 1))).max() < 0.75, np.mean(offsets, axis=(0, 1))


def test_large_photos_are_searched_tile_by_tile(group, mtcnn, monkeypatch):
    """A photo wider than a tile: faces on the tile seams are found once, as in one pass."""
    whole = mtcnn.detect(group.lr)
    monkeypatch.setattr(detector, "TILE", 96)
    monkeypatch.setattr(detector, "OVERLAP", 48)
    tiled = mtcnn.detect(group.lr)
    assert len(tiled) == len(whole)
    for d in whole:
        nearest = min(np.abs(t.landmarks - d.landmarks).max() for t in tiled)
        assert nearest < 1.0


def test_missing_detector_package_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # what an absent package looks like to import
    with pytest.raises(UserError) as err:
        FaceDetector()
    text = str(err.value)
    assert "facenet-pytorch" in text and "pip install --no-deps facenet-pytorch==2.6.0" in text
    assert "\n" not in text


# enhance.py ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny untrained HybriMamba: the command line is about plumbing, not quality."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, {"model": HybriMamba(**TINY).state_dict(),
                           "options": {**TINY, "scale_factor": 8, "load_size": 128}})
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder with a photo of three small faces (scikit-image's astronaut, built in; as JPEG) and one
    without faces."""
    folder = tmp_path_factory.mktemp("photos")
    sources = [astronaut_source()] * 3
    placements, (width, height) = synthetic.grid_layout([24, 28, 32], [0, 6, -6], per_row=3)
    group = synthetic.group_photo(sources, placements, width, height, scale=1, seed=1)
    Image.fromarray(group.lr).save(folder / "group.jpg", quality=95)
    Image.fromarray(synthetic.smooth_background(60, 40, np.random.default_rng(0), cell=12)).save(folder / "empty.png")
    return folder


def run(argv):
    return cli.main([str(a) for a in argv])


def test_cli_writes_photo_faces_json_and_side_by_side(photos, tiny_model, tmp_path):
    out = tmp_path / "out"
    assert run([photos, "--out", out, "--pretrain_model_path", tiny_model, "--gpus", 0, "--side_by_side",
                "--upscale", 4]) == 0
    photo = np.asarray(Image.open(photos / "group.jpg"))
    result = read_rgb(out / "group.png")
    assert result.shape == (photo.shape[0] * 4, photo.shape[1] * 4, 3)
    record = json.loads((out / "group.json").read_text())
    assert record["written_by"] == WRITTEN_BY and record["upscale"] == 4
    assert record["input"] == "group.jpg" and record["input_size"] == [photo.shape[1], photo.shape[0]]
    assert len(record["faces"]) == 3
    for face in record["faces"]:
        assert set(face) >= {"box", "landmarks", "score", "face_size", "transform", "network_input", "notice"}
        assert list(face["landmarks"]) == list(LANDMARK_NAMES)
        left, top, right, bottom = face["box"]
        assert 0 <= left < right <= photo.shape[1] and 0 <= top < bottom <= photo.shape[0]
        for x, y in face["landmarks"].values():
            assert left - 2 < x < right + 2 and top - 2 < y < bottom + 2
        # The transform maps the landmarks near the template; its scale is 128 / face size.
        fit = np.array(face["transform"]["photo_to_frame"])
        points = np.array(list(face["landmarks"].values()))
        assert np.abs(geometry.apply(fit, points) - TEMPLATE).max() < 12
        assert face["transform"]["scale"] == pytest.approx(FRAME / face["face_size"], rel=1e-3)
        assert 22 <= face["face_size"] <= 36 and face["network_input"] == round(face["face_size"])
    pictures = sorted((out / "group_faces").iterdir())
    assert [p.name for p in pictures] == ["00.png", "01.png", "02.png"]
    for picture, face in zip(pictures, record["faces"]):
        side = face["network_input"] * 8
        assert read_rgb(picture).shape == (side, 2 * side, 3)  # LR input enlarged | restored
    sbs = read_rgb(out / "group_side_by_side.png")
    assert sbs.shape[1] == 3 * result.shape[1]
    empty = json.loads((out / "empty.json").read_text())
    assert empty["faces"] == [] and read_rgb(out / "empty.png").shape == (160, 240, 3)


def test_cli_without_faces_says_so_and_still_enlarges(photos, tiny_model, tmp_path, caplog):
    out = tmp_path / "out"
    run([photos / "empty.png", "--out", out, "--pretrain_model_path", tiny_model, "--gpus", 0])
    assert "no face found" in caplog.text
    enlarged = np.asarray(Image.open(photos / "empty.png").resize((480, 320), Image.BICUBIC))
    np.testing.assert_array_equal(read_rgb(out / "empty.png"), enlarged)


def test_cli_honours_exif_orientation(photos, tiny_model, tmp_path):
    """The group photo stored turned on its side with an EXIF tag saying so: the faces are found upright
    and the output is upright."""
    upright = Image.open(photos / "group.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    src = tmp_path / "in"
    src.mkdir()
    upright.transpose(Image.Transpose.ROTATE_90).save(src / "turned.jpg", exif=exif, quality=95)
    run([src / "turned.jpg", "--out", tmp_path / "out", "--pretrain_model_path", tiny_model, "--gpus", 0,
         "--upscale", 2])
    record = json.loads((tmp_path / "out" / "turned.json").read_text())
    assert record["exif_orientation"] == 6 and record["input_size"] == list(upright.size)
    assert len(record["faces"]) == 3
    assert read_rgb(tmp_path / "out" / "turned.png").shape == (upright.size[1] * 2, upright.size[0] * 2, 3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_cli_reads_grey_alpha_and_16_bit_photos(photos, tiny_model, tmp_path, mode):
    rgb = Image.open(photos / "group.jpg")
    img = rgb.convert("L").point(lambda v: v * 257, "I").convert("I;16") if mode == "I;16" else rgb.convert(mode)
    img.save(tmp_path / "photo.png")
    run([tmp_path / "photo.png", "--out", tmp_path / "out", "--pretrain_model_path", tiny_model, "--gpus", 0,
         "--upscale", 2])
    record = json.loads((tmp_path / "out" / "photo.json").read_text())
    assert len(record["faces"]) >= 2  # grey faces are found too
    assert read_rgb(tmp_path / "out" / "photo.png").shape == (rgb.size[1] * 2, rgb.size[0] * 2, 3)


def test_cli_unreadable_photo_is_one_line_or_skipped(photos, tiny_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "broken.jpg").write_bytes(b"not a jpeg at all")
    Image.open(photos / "empty.png").save(src / "fine.png")
    done = subprocess.run([sys.executable, "enhance.py", str(src), "--out", str(tmp_path / "out"),
                           "--pretrain_model_path", str(tiny_model), "--gpus", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "broken.jpg" in done.stderr and "--skip_bad_images" in done.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written
    run([src, "--out", tmp_path / "out", "--pretrain_model_path", tiny_model, "--gpus", 0, "--skip_bad_images",
         "--upscale", 2])
    assert (tmp_path / "out" / "fine.png").is_file() and not (tmp_path / "out" / "broken.png").exists()


def test_cli_refuses_an_output_folder_inside_the_input(photos, tiny_model):
    before = file_hashes(photos)
    with pytest.raises(UserError, match="inside the input folder"):
        run([photos, "--out", photos / "enhanced", "--pretrain_model_path", tiny_model, "--gpus", 0])
    assert file_hashes(photos) == before and not (photos / "enhanced").exists()


def test_cli_never_replaces_files_it_did_not_write(photos, tiny_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "empty.png").write_bytes(b"the user's own file")
    with pytest.raises(UserError, match="not written by enhance.py"):
        run([photos / "empty.png", "--out", out, "--pretrain_model_path", tiny_model, "--gpus", 0])
    assert (out / "empty.png").read_bytes() == b"the user's own file"
    # A photo whose outputs would land on itself.
    with pytest.raises(UserError, match="not written by enhance.py"):
        run([photos / "empty.png", "--out", photos, "--pretrain_model_path", tiny_model, "--gpus", 0])
    # Its own outputs it replaces: a second run over the same folder works.
    run([photos / "group.jpg", "--out", out, "--pretrain_model_path", tiny_model, "--gpus", 0, "--upscale", 2])
    run([photos / "group.jpg", "--out", out, "--pretrain_model_path", tiny_model, "--gpus", 0, "--upscale", 2])


def test_cli_refuses_an_output_too_large_to_hold(photos, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "MAX_OUTPUT_PIXELS", 10_000)
    with pytest.raises(UserError, match="smaller --upscale"):
        run([photos / "empty.png", "--out", tmp_path / "out", "--pretrain_model_path", tiny_model, "--gpus", 0])


@pytest.mark.parametrize("argv, message", [
    (["--upscale", "0"], "--upscale 0"),
    (["--max_face", "2"], "--max_face 2"),
    (["--gpus", "-1"], "--gpus -1"),
])
def test_cli_rejects_bad_options(tmp_path, argv, message):
    with pytest.raises(UserError, match=message):
        run([tmp_path, "--out", tmp_path / "out", *argv])


def test_cli_rejects_a_missing_input(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        run([tmp_path / "nothing.jpg", "--out", tmp_path / "out"])

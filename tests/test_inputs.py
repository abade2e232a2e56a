"""Inputs that crashed or misled (issue 20, items 13, 15, 18, 19): each now a one-line error or a true notice.
test.py runs in-process here (torch loads once); test_outputs.py covers the scripts' command lines."""
import json
import logging
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

import test as test_script
from models import HybriMamba
from models.checkpoint import load_checkpoint, load_model_file, load_weights, save_checkpoint
from models.pretrained import SHIPPED_MODEL
from tests.conftest import ROOT
from tests.test_eval_scripts import face_like, run, save
from tests.test_outputs import faces, in_process, training_run  # noqa: F401  (fixtures)
from utils import image_io
from utils.image_io import list_images, read_rgb, write_rgb
from utils.output_files import written_for
from utils.training import export_model

SHIPPED = ROOT / SHIPPED_MODEL


def sr_argv(lr, ckpt, out, *extra):
    """test.py's command line on ``lr`` with checkpoint ``ckpt``, writing to ``out``."""
    return ["--gpus", "0", "--num_threads", "0", "--dataroot", str(lr), "--pretrain_model_path", str(ckpt),
            "--save_as_dir", str(out), *map(str, extra)]


def sizes(folder):
    return {p.name: Image.open(p).size for p in sorted(folder.glob("*.png"))}


# ------------------------------------------------------------------ item 13
@pytest.mark.parametrize("bad, message", [({"embed_dim": "abc"}, "embed_dim = 'abc' must be an integer"),
                                          ({"expand": float("inf")}, "expand = inf must be a finite number"),
                                          ({"embed_dim": 100000}, "embed_dim = 100000 must be <= 1024")])
def test_checkpoint_network_options_are_checked_before_building(faces, training_run, bad, message, capsys):
    root, _, _, lr = faces
    ckpt = load_checkpoint(training_run / "latest.pt")
    path = root / "absurd.pt"
    save_checkpoint(path, {**ckpt, "options": {**ckpt["options"], **bad}})
    line = in_process(test_script.main, sr_argv(lr, path, root / "sr"), capsys)
    assert line.startswith(f"error: {path}: network option {message}")
    assert not (root / "sr").exists()


# ------------------------------------------------------------------ item 15
def test_test_py_runs_the_task_the_checkpoint_was_trained_for(faces, training_run, caplog):
    root, hr, _, lr = faces  # the run: 4x4 -> 16x16 (load_size 16, scale_factor 4); inputs 4x4
    latest = training_run / "latest.pt"
    with caplog.at_level(logging.WARNING, logger="hybrimamba"):
        test_script.main(sr_argv(lr, latest, root / "sr"))
    assert sizes(root / "sr") == {"a.png": (16, 16), "b.png": (16, 16)}
    assert ("notice: load_size 16 and scale_factor 4 from the checkpoint (the task it was trained for); pass "
            "--load_size / --scale_factor to change") in caplog.messages
    assert not [m for m in caplog.messages if "neither the LR size" in m]  # the inputs are not blamed

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hybrimamba"):
        test_script.main(sr_argv(lr, latest, root / "sr32", "--load_size", 32, "--hr_dir", hr))
    assert sizes(root / "sr32") == {"a.png": (32, 32), "b.png": (32, 32)}
    assert caplog.messages[:2] == [
        "notice: scale_factor 4 from the checkpoint (the task it was trained for); pass --scale_factor to change",
        "notice: --load_size 32 differs from the checkpoint's load_size 16, the task it was trained for"]
    record = json.loads((root / "sr32" / "metrics.json").read_text())
    assert (record["load_size"], record["scale_factor"]) == (32, 4)


# ------------------------------------------------------------------ item 18
def test_exported_and_shipped_models_are_labelled_with_the_weights_they_hold(faces, training_run, capsys):
    root, hr, _, lr = faces
    export = root / "export.pt"
    assert export_model.export_model(training_run / "latest.pt", export).provenance["weights"] == "EMA"
    test_script.main(sr_argv(lr, export, root / "sr", "--load_size", 32, "--hr_dir", hr))
    record = json.loads((root / "sr" / "metrics.json").read_text())
    assert record["weights"].startswith(f"EMA weights from {export} (iteration 20)")
    legacy = root / "legacy_export.pt"  # as the export tool wrote before provenance existed
    exported = load_checkpoint(export)
    save_checkpoint(legacy, {k: exported[k] for k in ("model", "options", "iteration", "weights")})
    small = HybriMamba(**{k: exported["options"][k] for k in ("embed_dim", "depth", "n_layers")})
    assert load_weights(small, legacy).startswith("EMA weights")
    state = load_model_file(SHIPPED)
    model = HybriMamba(**{k: state["options"][k] for k in ("embed_dim", "depth", "n_layers", "expand", "d_state",
                                                           "mlp_ratio")})
    assert load_weights(model, SHIPPED).startswith("EMA weights")
    assert load_weights(model, SHIPPED, prefer_ema=False).startswith("EMA weights")  # it holds no other


def test_a_folder_as_checkpoint_names_the_files_in_it(faces, training_run, capsys):
    root, _, _, lr = faces
    line = in_process(test_script.main, sr_argv(lr, training_run, root / "sr"), capsys)
    assert line == f"error: {training_run}: is a folder; pass the checkpoint file in it (best.pt, latest.pt)"


# ------------------------------------------------------------------ item 19
def test_gif_inputs_give_their_first_frame_with_a_notice(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(image_io, "_notified", set())  # the notice comes once per process
    frames = [Image.fromarray(face_like(8, 8, i)) for i in range(3)]
    frames[0].save(tmp_path / "m.gif", save_all=True, append_images=frames[1:])
    with caplog.at_level(logging.WARNING, logger="hybrimamba"):
        img = read_rgb(tmp_path / "m.gif")
    np.testing.assert_array_equal(img, np.asarray(Image.open(tmp_path / "m.gif").convert("RGB")))
    assert f"{tmp_path / 'm.gif'}: a GIF of 3 frames; the first is used (further ones silently)" in caplog.text
    assert "alpha" not in caplog.text  # OpenCV's opaque alpha channel of a GIF is no news
    assert list_images(tmp_path) == [tmp_path / "m.gif"]


def test_test_py_super_resolves_gif_inputs(faces, training_run):
    root, _, _, lr = faces
    Image.fromarray(face_like(4, 4, 7)).save(lr / "c.gif")
    test_script.main(sr_argv(lr, training_run / "latest.pt", root / "sr"))
    assert sizes(root / "sr") == {"a.png": (16, 16), "b.png": (16, 16), "c.png": (16, 16)}


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_as_pil_applies_it(tmp_path, caplog, monkeypatch, suffix, orientation):
    monkeypatch.setattr(image_io, "_notified", set())  # the notice comes once per process
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(face_like(12, 20, orientation)).save(path, exif=exif, quality=100, lossless=True)
    with caplog.at_level(logging.WARNING, logger="hybrimamba"):
        img = read_rgb(path)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert img.shape == upright.shape
    assert np.abs(img.astype(int) - upright).max() <= (2 if suffix == ".jpg" else 0)  # two JPEG decoders
    assert f"turned upright as its EXIF orientation {orientation} says" in caplog.text


def test_broken_and_looping_links_are_named_not_silently_left_out(tmp_path, caplog):
    folder = tmp_path / "lr"
    save(folder / "a.png", face_like(4, 4, 0))
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    linked = tmp_path / "elsewhere"
    save(linked / "b.png", face_like(4, 4, 1))
    (folder / "more").symlink_to(linked)  # a linked folder is read (recursive listings)...
    (linked / "back").symlink_to(folder)  # ...once, although it links back
    with caplog.at_level(logging.WARNING, logger="hybrimamba"):
        assert list_images(folder, recursive=False) == [folder / "a.png"]
        assert list_images(folder) == [folder / "a.png", folder / "more" / "b.png"]
    assert (f"notice: left out 2 image name(s) that are broken or looping symbolic links: {folder / 'gone.png'}, "
            f"{folder / 'loop.png'}") in caplog.messages
    assert any(m.startswith("notice: 1 linked folder(s) lead back to a folder already read") for m in caplog.messages)


def test_grayscale_outputs_against_colour_ground_truth_are_a_warning(faces, tmp_path):
    _, hr, _, _ = faces
    gray = tmp_path / "gray"
    for path in sorted(hr.glob("*.png")):
        save(gray / path.name, np.asarray(Image.open(path).convert("L").convert("RGB")))
    done = run("psnr_ssim.py", hr, gray)
    assert done.returncode == 0, done.stderr
    assert ("warning: 2 SR image(s) are grayscale but their ground truth is in colour (a, b): Y-channel scores "
            "cannot see the missing colour; compare with --rgb") in done.stdout
    assert "warning" not in run("psnr_ssim.py", hr, hr).stdout


KILLED_WRITE = """
import os, sys
import numpy as np
from utils import image_io, output_files

real = output_files.record_output

def record_then_die(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), 9)

output_files.record_output = record_then_die
image_io.write_rgb(sys.argv[1], np.zeros((8, 8, 3), np.uint8), "super-resolved image")
"""


def test_a_kill_mid_write_leaves_the_earlier_output_whole_and_recorded(tmp_path):
    path = tmp_path / "a.png"
    write_rgb(path, face_like(8, 8, 0), "super-resolved image")
    before = path.read_bytes()
    done = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(path)], cwd=ROOT, capture_output=True)
    assert done.returncode == -9, done.stderr
    assert path.read_bytes() == before and written_for(path, "super-resolved image")
    assert len(list(tmp_path.glob(".a.png.*.tmp"))) == 1  # removed at the next start (test_outputs.py)

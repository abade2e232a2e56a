"""The web page: its work on a face and on a photo with faces, its API, and the page itself in a real
headless browser (Chromium)."""
import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from data.degradation import resize_bicubic
from models import HybriMamba
from models.pretrained import SHIPPED_MODEL
from tests.conftest import ROOT, in_ci, shared_path
from utils.errors import UserError
from utils.image_io import list_images, read_rgb
from utils.photo import synthetic
from utils.photo.photo_io import upscale
from utils.web.faces import prepare, restore_face
from utils.web.photos import is_photo
from utils.web.server import MAX_UPLOAD_BYTES, FaceApp, make_server

TASK = {"scale_factor": 8, "load_size": 128}
CELEBA_BOX = (19, 63, 156, 200)
PHOTO_FACES = [24, 28, 32, 36]  # pixels: four real faces in a 260x76 photo, found and restored


def png_bytes(img):
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="PNG")
    return buffer.getvalue()


def from_data_url(url):
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def test_prepare_keeps_small_faces_and_shrinks_large_ones_as_the_training_data():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    lr, hr, how = prepare(small, TASK)
    assert how == "lr" and hr is None and np.array_equal(lr, small[:, 2:18])  # the centred 16x16 square
    large = rng.integers(0, 256, (150, 140, 3), dtype=np.uint8)
    lr, hr, how = prepare(large, TASK)
    square = Image.fromarray(large[5:145])
    want_hr = resize_bicubic(square, (128, 128))
    assert how == "hr" and np.array_equal(hr, np.asarray(want_hr))
    assert np.array_equal(lr, np.asarray(resize_bicubic(want_hr, (16, 16))))
    assert prepare(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), TASK)[2] == "lr"  # up to twice the LR side
    assert prepare(rng.integers(0, 256, (33, 33, 3), dtype=np.uint8), TASK)[2] == "hr"
    assert prepare(large, TASK, "lr")[2] == "lr" and prepare(small, TASK, "hr")[1].shape == (128, 128, 3)


@pytest.fixture(scope="module")
def shipped():
    return HybriMamba.from_pretrained(SHIPPED_MODEL, scan_backend="torch")


@contextlib.contextmanager
def serving(app):
    """The page's server for ``app`` on a free local port, in this process; yields its address."""
    httpd = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def server(shipped):
    with serving(FaceApp(shipped, SHIPPED_MODEL.name)) as address:
        yield address


@pytest.fixture(scope="module")
def group():
    """A photo with four real CelebA validation faces of 24-36 pixels at known places (x8 ground truth)."""
    paths = list_images(shared_path("data", "celeba_align", "val"))
    placements, (width, height) = synthetic.grid_layout(PHOTO_FACES, per_row=len(PHOTO_FACES))
    sources = [synthetic.celeba_source(read_rgb(path)) for path in paths[:len(PHOTO_FACES)]]
    return synthetic.group_photo(sources, placements, width, height, scale=8, seed=0)


def post(url, data, headers=None, timeout=120):
    request = urllib.request.Request(url, data=data, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_api_super_resolves_an_uploaded_face_with_the_model(server, shipped):
    face = np.asarray(Image.fromarray(np.linspace(30, 220, 48 * 48 * 3).reshape(48, 48, 3).astype(np.uint8)))
    status, answer = post(f"{server}/api/enhance?treat_as=auto&name=face.png", png_bytes(face))
    assert status == 200, answer
    assert answer["treated_as"] == "hr" and answer["input_size"] == [48, 48] and answer["lr_size"] == [16, 16]
    expected = restore_face(shipped, face)
    for key in ("lr", "bicubic", "sr", "hr"):
        assert np.array_equal(from_data_url(answer[key]), expected[key]), key
    status, answer = post(f"{server}/api/enhance?treat_as=lr&name=face.png", png_bytes(face))
    assert answer["treated_as"] == "lr" and answer["hr"] is None and from_data_url(answer["sr"]).shape == (128, 128, 3)
    with urllib.request.urlopen(f"{server}/api/info", timeout=30) as response:
        info = json.load(response)
    assert info["model"] == SHIPPED_MODEL.name and info["task"] == TASK and info["provenance"]["iterations"] == 3127
    with urllib.request.urlopen(f"{server}/", timeout=30) as response:
        page = response.read().decode()
    assert '<input type="file" id="file"' in page and "http" not in page.replace("http://", "")  # nothing remote


@pytest.mark.parametrize("body,query,status,message", [
    (b"not an image", "name=notes.txt", 400, "notes.txt: not a readable image"),
    (b"", "name=empty.png", 400, "empty upload"),
    (png_bytes(np.zeros((8, 8, 3), np.uint8)), "treat_as=huge", 400, "treat_as='huge': use one of auto, lr, hr"),
])
def test_api_answers_bad_uploads_with_one_line(server, body, query, status, message):
    code, answer = post(f"{server}/api/enhance?{query}", body)
    assert code == status and message in answer["error"] and "\n" not in answer["error"]


def test_api_refuses_a_too_large_upload_without_reading_it(server):
    code, answer = post(f"{server}/api/enhance", b"x" * 16, {"Content-Length": str(MAX_UPLOAD_BYTES + 1)})
    assert code == 413 and "send at most" in answer["error"]


def test_face_app_refuses_huge_images(shipped):
    app = FaceApp(shipped, "none")
    with pytest.raises(UserError, match="crop the face first"):
        app.enhance(png_bytes(np.zeros((8000, 7000, 3), np.uint8)), "hr", name="big.png")


def test_api_enhances_a_photo_with_faces_and_leaves_the_background_bicubic(server, group):
    status, answer = post(f"{server}/api/enhance?treat_as=photo&name=group.png", png_bytes(group.lr), timeout=600)
    assert status == 200, answer
    height, width = group.lr.shape[:2]
    assert answer["treated_as"] == "photo" and answer["input_size"] == [width, height]
    assert answer["size"] == [8 * width, 8 * height] and answer["hr"] is None
    assert np.array_equal(from_data_url(answer["lr"]), group.lr)
    matches = synthetic.match_faces([synthetic_detection(face) for face in answer["faces"]], group)
    assert len(answer["faces"]) == len(PHOTO_FACES) and None not in matches  # each face found, nothing else
    assert all(face["restored"] and not face["notice"] for face in answer["faces"])
    sr, bicubic = from_data_url(answer["sr"]), from_data_url(answer["bicubic"])
    assert sr.shape == bicubic.shape == group.hr.shape and np.array_equal(bicubic, upscale(group.lr, 8))
    for index in range(len(PHOTO_FACES)):
        region = synthetic.face_region(group, index)
        assert np.abs(sr[region].astype(int) - bicubic[region]).mean() > 1, index  # restored, not bicubic
    background = np.ones(sr.shape[:2], bool)
    for index in range(len(PHOTO_FACES)):
        background &= ~synthetic.face_region(group, index, inset=-0.5)
    assert np.array_equal(sr[background], bicubic[background])
    assert is_photo(width, height) and not is_photo(178, 218)  # "auto" takes this photo as one, a CelebA face not


def synthetic_detection(face):
    """An answer's face record as the ``Detection`` that ``synthetic.match_faces`` compares."""
    from utils.photo.detector import Detection

    return Detection(np.array(face["box"]), np.array(list(face["landmarks"].values())), face["score"])


def test_photo_mode_without_the_detector_names_the_package_and_face_mode_still_works(shipped, monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # import facenet_pytorch now fails
    with serving(FaceApp(shipped, SHIPPED_MODEL.name)) as address:
        code, answer = post(f"{address}/api/enhance?treat_as=photo&name=group.png",
                            png_bytes(np.zeros((60, 80, 3), np.uint8)))
        assert code == 400 and "\n" not in answer["error"]
        assert answer["error"].startswith("photo mode: face detection needs facenet-pytorch"), answer["error"]
        assert "pip install" in answer["error"] and "face mode works without it" in answer["error"]
        code, answer = post(f"{address}/api/enhance?name=face.png", png_bytes(np.zeros((16, 16, 3), np.uint8)))
        assert code == 200 and answer["treated_as"] == "lr"


def test_photo_mode_refuses_photos_whose_x8_enlargement_is_too_large(shipped):
    app = FaceApp(shipped, "none")
    with pytest.raises(UserError, match=r"big.png: 600x500 enlarged 8x would be 19 megapixels; the page makes at "
                                        r"most 16 \(about 500x500 in\): crop the photo"):
        app.enhance(png_bytes(np.zeros((500, 600, 3), np.uint8)), name="big.png")  # "auto": a photo
    assert app.enhance(png_bytes(np.zeros((500, 600, 3), np.uint8)), "hr")["treated_as"] == "hr"  # a face: allowed


def browser_paths():
    """(chromium, chromedriver) from the system, or skip (outside CI) / fail (under CI) saying what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing = "the Python package 'selenium' (pip install selenium)"
    else:
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        driver = shutil.which("chromedriver")
        if chromium and driver:
            return chromium, driver
        missing = "Chromium and its driver (apt-get install chromium chromium-driver)"
    if in_ci():
        pytest.fail(f"the browser test needs {missing}; .ci/run installs them", pytrace=False)
    pytest.skip(f"the browser test needs {missing}")


@pytest.fixture
def web_command():
    """`python -m utils.web --port 0` as a user starts it; yields the page's address."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "utils.web", "--port", "0", "--scan_backend", "torch"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("HybriMamba web page: "):
                yield line.split()[3]
                break
        else:
            pytest.fail("the web page did not start in 120 s:\n" + "".join(lines))
        if not lines or not lines[-1].startswith("HybriMamba web page: "):
            pytest.fail("the web page did not start:\n" + "".join(lines))
    finally:
        process.terminate()
        process.wait(timeout=30)


PIXELS = """
const img = document.getElementById(arguments[0]);
const [left, top, right, bottom] = arguments[1] || [0, 0, img.naturalWidth, img.naturalHeight];
const canvas = document.createElement("canvas");
canvas.width = img.naturalWidth;
canvas.height = img.naturalHeight;
const context = canvas.getContext("2d");
context.drawImage(img, 0, 0);
return [right - left, bottom - top, Array.from(context.getImageData(left, top, right - left, bottom - top).data)];
"""
NATURAL_SIZE = "const img = document.getElementById(arguments[0]); return [img.naturalWidth, img.naturalHeight];"


def shown(driver, element_id, box=None):
    """The RGB pixels (H, W, 3) of the page's image ``element_id`` as the browser decoded them, or of its
    part ``box`` (left, top, right, bottom)."""
    width, height, rgba = driver.execute_script(PIXELS, element_id, box)
    return np.array(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3]


def wait_for_result(driver, name, seconds=600):
    """The page's status once it reports the result (or an error) for the upload ``name`` (minutes on busy cores)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    status = driver.find_element(By.ID, "status")
    try:
        WebDriverWait(driver, seconds).until(
            lambda d: status.get_attribute("data-state") in ("done", "error") and name in status.text)
    except TimeoutException:
        pytest.fail(f"no result for {name} in {seconds} s; the page says: {status.text}", pytrace=False)
    return status


def test_the_page_in_a_real_browser_shows_the_models_result(web_command, celeba_dir, shipped, group, tmp_path):
    chromium, driver_path = browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    face_path = sorted((celeba_dir / "val").iterdir())[0]
    face = Image.open(face_path).convert("RGB").crop(CELEBA_BOX)  # a real 137x137 face crop
    upload = tmp_path / "face.png"
    face.save(upload)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1400",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(web_command)
        assert driver.title.startswith("HybriMamba")
        driver.find_element(By.ID, "file").send_keys(str(upload))
        status = wait_for_result(driver, "face.png")
        assert status.get_attribute("data-state") == "done", status.text
        assert driver.find_element(By.ID, "results").is_displayed()
        sr, bicubic = shown(driver, "sr"), shown(driver, "bicubic")
        assert sr.shape == bicubic.shape == (128, 128, 3) and shown(driver, "lr").shape == (16, 16, 3)
        assert np.abs(sr.astype(int) - bicubic.astype(int)).mean() > 1  # not the bicubic picture
        expected = restore_face(shipped, np.asarray(face))  # the same face through the model in this process
        assert np.abs(sr.astype(int) - expected["sr"].astype(int)).max() <= 1  # what the model made
        download = driver.find_element(By.ID, "download")
        assert download.get_attribute("download") == "face_hybrimamba_x8.png"
        assert np.array_equal(from_data_url(download.get_attribute("href")), sr)
        driver.find_element(By.ID, "toggle").click()  # the comparison now shows bicubic only
        assert "inset(0px 100%" in driver.find_element(By.ID, "compare_sr").value_of_css_property("clip-path")
        driver.save_screenshot(str(tmp_path / "page.png"))

        # A photo with faces ("auto": it is wider than 256 pixels): enlarged x8, its faces restored.
        Image.fromarray(group.lr).save(tmp_path / "group.png")
        driver.find_element(By.ID, "file").send_keys(str(tmp_path / "group.png"))
        status = wait_for_result(driver, "group.png")  # about 2 minutes on two busy cores
        assert status.get_attribute("data-state") == "done", status.text
        assert f"as a photo with faces: {len(PHOTO_FACES)} face(s) found" in status.text
        height, width = group.lr.shape[:2]
        assert driver.execute_script(NATURAL_SIZE, "sr") == [8 * width, 8 * height]
        assert driver.execute_script(NATURAL_SIZE, "bicubic") == [8 * width, 8 * height]
        assert len(driver.find_elements(By.CSS_SELECTOR, "#face_list li")) == len(PHOTO_FACES)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#boxes .box")) == len(PHOTO_FACES)
        enlarged = upscale(group.lr, 8)
        for index in range(len(PHOTO_FACES)):
            rows, cols = np.nonzero(synthetic.face_region(group, index))
            box = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
            sr, bicubic = shown(driver, "sr", box), shown(driver, "bicubic", box)
            assert np.abs(sr.astype(int) - bicubic.astype(int)).mean() > 1, index  # the face is restored
            expected = enlarged[box[1]:box[3], box[0]:box[2]]
            assert np.abs(bicubic.astype(int) - expected).max() <= 1  # the bicubic photo it was compared with
        assert driver.find_element(By.ID, "download").get_attribute("download") == "group_hybrimamba_x8.png"
        driver.save_screenshot(str(tmp_path / "page_photo.png"))
    finally:
        driver.quit()


def test_restore_face_runs_the_network_on_the_bicubic_input(shipped):
    face = np.asarray(Image.fromarray(np.full((16, 16, 3), 120, np.uint8)))
    out = restore_face(shipped, face)
    x = torch.from_numpy(out["bicubic"].transpose(2, 0, 1).copy()).float()[None] / 127.5 - 1
    with torch.no_grad():
        want = ((shipped(x)[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(out["sr"], want) and out["treated_as"] == "lr"

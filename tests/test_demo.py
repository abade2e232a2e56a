"""`make demo`: the face sets it builds (checked against scikit-image and PIL directly) and a smoke
run of the whole pipeline with a tiny training budget."""
import json
import math
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from options import TrainOptions
from tests.conftest import file_hashes
from tests.y_oracle import y_channel
from utils.demo import faces as demo_faces
from utils.demo import pipeline as demo
from utils.errors import UserError
from utils.image_io import write_rgb
from utils.photo.outputs import MAX_PANEL_SIDE

ROOT = Path(__file__).resolve().parents[1]


def load(path):
    return np.asarray(Image.open(path).convert("RGB"))


def lfw_face(index):
    """LFW face ``index`` of scikit-image as RGB uint8 (25, 25, 3), computed here independently."""
    grey = np.round(skimage.data.lfw_subset()[index].astype(np.float64) * 255).astype(np.uint8)
    return np.stack([grey] * 3, axis=2)


def windows_24(face):
    """The 8 possible 24x24 training windows of a 25x25 face (offsets 0/1, mirrored or not)."""
    crops = [face[top:top + 24, left:left + 24] for top in (0, 1) for left in (0, 1)]
    return crops + [c[:, ::-1] for c in crops]


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    out = tmp_path_factory.mktemp("faces")
    return demo_faces.build_builtin_faces(out, size=24, progress=False)


def test_builtin_faces_counts_and_sizes(builtin):
    train = sorted(builtin.train_dir.glob("*.png"))
    held = sorted(builtin.heldout_dir.glob("*.png"))
    assert len(train) == builtin.train_count == 80 * 8 + 160
    assert len(held) == builtin.heldout_count == 20
    assert sum(p.name.startswith("astronaut_") for p in train) == 160
    for path in train[::37] + held:
        img = load(path)
        assert img.shape == (24, 24, 3) and img.std() > 5  # real content, not a blank crop


def test_heldout_faces_are_the_last_lfw_faces_and_never_trained_on(builtin):
    train = {load(p).tobytes() for p in builtin.train_dir.glob("*.png")}
    for i, path in enumerate(sorted(builtin.heldout_dir.glob("*.png"))):
        face = lfw_face(80 + i)
        assert np.array_equal(load(path), face[:24, :24])
        assert not any(w.tobytes() in train for w in windows_24(face))
    # the same membership test does find the training faces
    for index in (0, 41, 79):
        assert all(w.tobytes() in train for w in windows_24(lfw_face(index)))


def test_astronaut_crops_come_from_the_portrait_around_her_face(builtin):
    crops = [load(p).astype(np.float64) for p in sorted(builtin.train_dir.glob("astronaut_*.png"))]
    # a head-and-shoulders view of the portrait brought to 24x24, independently with PIL (grey, as the crops)
    portrait = Image.fromarray(skimage.data.astronaut()).convert("L").convert("RGB")
    reference = np.asarray(portrait.crop((140, 35, 310, 205)).resize((24, 24), Image.BICUBIC)).astype(np.float64)
    elsewhere = np.asarray(portrait.crop((330, 330, 500, 500)).resize((24, 24), Image.BICUBIC)).astype(np.float64)

    def distance(a, b):
        return min(np.abs(a - b).mean(), np.abs(a[:, ::-1] - b).mean())

    near = sum(distance(c, reference) < distance(c, elsewhere) for c in crops)
    assert near > 0.9 * len(crops)
    assert len({c.tobytes() for c in crops}) == len(crops)


def test_builtin_faces_are_all_grey(builtin):
    """The held-out LFW faces are grey; colour training crops made the network paint colour fringes on them."""
    for folder in (builtin.train_dir, builtin.heldout_dir):
        for path in folder.glob("*.png"):
            img = load(path)
            assert (img == img[..., :1]).all(), path.name


def test_builtin_faces_at_a_smaller_size(tmp_path):
    faces = demo_faces.build_builtin_faces(tmp_path, size=16, progress=False)
    first = load(faces.heldout_dir / "lfw080.png")
    expected = np.asarray(Image.fromarray(lfw_face(80)[:24, :24]).resize((16, 16), Image.BICUBIC))
    assert first.shape == (16, 16, 3)
    assert np.array_equal(first, expected)


@pytest.mark.parametrize("size", [28, 2])
def test_builtin_faces_refuse_sizes_they_cannot_give(tmp_path, size):
    with pytest.raises(UserError, match=f"--load_size {size}.*--dataroot"):
        demo_faces.build_builtin_faces(tmp_path, size=size, progress=False)


def test_builtin_faces_need_no_network(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    faces = demo_faces.build_builtin_faces(tmp_path, size=24, progress=False)
    assert faces.train_count == 800


def test_an_image_scikit_image_would_download_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(skimage.data, "__file__", str(tmp_path / "__init__.py"))
    with pytest.raises(UserError, match="lfw_subset.npy.*--dataroot"):
        demo_faces.build_builtin_faces(tmp_path / "out", size=24, progress=False)


def make_user_faces(root, count):
    """``count`` random RGB faces of mixed sizes in two subfolders, some sharing a file stem."""
    rng = np.random.default_rng(1)
    paths = []
    for i in range(count):
        h, w = (40, 30) if i % 2 else (33, 50)
        path = root / ("a" if i < count // 2 else "b") / f"face{i % (count // 2):02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return sorted(paths)


def test_user_faces_split_deterministically_and_disjoint(tmp_path):
    sources = make_user_faces(tmp_path / "mine", 12)
    faces = demo_faces.build_user_faces(tmp_path / "mine", tmp_path / "out", size=24, progress=False)
    train = sorted(p.name for p in faces.train_dir.glob("*.png"))
    held = sorted(p.name for p in faces.heldout_dir.glob("*.png"))
    assert (faces.train_count, faces.heldout_count) == (10, 2) == (len(train), len(held))
    assert not set(train) & set(held)
    positions = sorted(int(name.split("_")[0]) for name in train + held)
    assert positions == list(range(12))
    assert [int(name.split("_")[0]) for name in held] == [3, 9]  # evenly spaced among 12
    for name in held:
        source = Image.open(sources[int(name.split("_")[0])]).convert("RGB")
        w, h = source.size
        side = min(w, h)
        square = source.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
        assert np.array_equal(load(faces.heldout_dir / name), np.asarray(square.resize((24, 24), Image.BICUBIC)))
    again = demo_faces.build_user_faces(tmp_path / "mine", tmp_path / "again", size=24, progress=False)
    assert sorted(p.name for p in again.heldout_dir.glob("*.png")) == held


def test_user_faces_need_two_images(tmp_path):
    make_user_faces(tmp_path / "one", 2)
    (tmp_path / "one" / "b" / "face00.png").unlink()
    with pytest.raises(UserError, match="1 image.*at least 2"):
        demo_faces.build_user_faces(tmp_path / "one", tmp_path / "out", progress=False)


def test_training_command_parses_with_train_py_options(tmp_path):
    args = demo.parse_args(["--iters", "120", "--batch_size", "16"])
    command = demo.training_arguments(args, tmp_path / "train", 800, tmp_path / "out")
    assert command[0] == "train.py"
    opt = TrainOptions().parse([str(a) for a in command[1:]])
    assert (opt.max_iters, opt.total_epochs, opt.lr_milestones) == (120, 3, [2])  # 50 iterations per epoch
    assert (opt.load_size, opt.scale_factor, opt.gpus, opt.embed_dim, opt.depth) == (24, 4, 0, 8, 1)
    with pytest.raises(UserError, match="10 training faces do not fill one batch of 16"):
        demo.training_arguments(args, tmp_path / "train", 10, tmp_path / "out")


def test_demo_options_are_checked():
    with pytest.raises(UserError, match="--load_size 26 must be a multiple of 4"):
        demo.parse_args(["--load_size", "26"])
    with pytest.raises(UserError, match="--iters 0"):
        demo.parse_args(["--iters", "0"])
    # --torch_threads sets torch's threads (train.py's --num_threads counts DataLoader workers); --threads: old name
    assert demo.parse_args(["--torch_threads", "3"]).torch_threads == 3
    assert demo.parse_args(["--threads", "2"]).torch_threads == 2


def test_output_folder_is_reused_only_when_the_demo_made_it(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep")
    with pytest.raises(UserError, match="not written by the demo"):
        demo.prepare_out_dir(foreign)
    ours = tmp_path / "ours"
    demo.prepare_out_dir(ours)
    write_rgb(ours / "faces" / "train" / "old.png", np.zeros((4, 4, 3), np.uint8), demo_faces.PURPOSE)
    (ours / "notes.txt").write_text("keep")
    demo.prepare_out_dir(ours)  # the demo's files go, the user's stay
    assert not (ours / "faces").exists() and (ours / "notes.txt").read_text() == "keep"
    assert f"kept 1 file(s) in {ours} that the demo did not write" in capsys.readouterr().out

    # a file where the demo writes that it did not write (or that changed since): refused, nothing removed
    for name, content in (("mine.png", b"x"), ("SR/edited.png", None)):
        path = ours / "results" / name
        write_rgb(path, np.zeros((4, 4, 3), np.uint8), demo_faces.PURPOSE)
        path.write_bytes(content or path.read_bytes() + b"edited")
        before = file_hashes(ours)
        with pytest.raises(UserError, match=re.escape(f"were not written by it (or changed since): {path}")):
            demo.prepare_out_dir(ours)
        assert file_hashes(ours) == before
        path.unlink()


def test_lpips_is_used_only_where_it_can_run(tmp_path, monkeypatch):
    monkeypatch.delenv("HYBRIMAMBA_LPIPS_BACKBONE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "create_connection", offline)
    flags, note = demo.lpips_backbone(demo.parse_args([]), 24)
    assert flags == [] and "at least 31x31" in note and "24x24" in note
    assert demo.lpips_backbone(demo.parse_args(["--load_size", "32", "--no_lpips"]), 32)[0] == []
    flags, note = demo.lpips_backbone(demo.parse_args(["--load_size", "32"]), 32)
    assert flags == [] and "not cached" in note and "HYBRIMAMBA_LPIPS_BACKBONE" in note
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert demo.lpips_backbone(demo.parse_args(["--load_size", "32"]), 32)[0] == ["--lpips"]
    monkeypatch.setenv("HYBRIMAMBA_LPIPS_BACKBONE", "alex.pth")
    flags = demo.lpips_backbone(demo.parse_args(["--load_size", "32"]), 32)[0]
    assert flags == ["--lpips", "--backbone_weights", "alex.pth"]


def y_psnr(gt, sr):
    """PSNR of the BT.601 Y channel truncated to integers (the table's convention)."""
    return 10 * math.log10(255 ** 2 / np.mean((y_channel(gt) - y_channel(sr)) ** 2))


def table_rows(markdown):
    """The body rows of a results table (after its header and rule; the caption under it is not a row)."""
    return [line for line in markdown.splitlines() if line.startswith("|")][2:]


def test_demo_smoke_run_writes_every_output(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "utils.demo", "--out", str(out), "--iters", "1", "--batch_size", "4",
                           "--skip_check"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    for step in range(1, 8):
        assert f"=== step {step}/7" in text
    assert "LPIPS skipped: its AlexNet needs images of at least 31x31" in text
    assert re.search(r"the demo took [\d.]+ min \(faces \d+ s, training \d+ s", text)

    heldout = sorted((out / "faces" / "heldout").glob("*.png"))
    assert len(heldout) == 20 and len(list((out / "faces" / "train").glob("*.png"))) == 800
    for folder, side in (("faces/heldout_lr", 6), ("results/Bicubic", 24), ("results/HybriMamba", 24)):
        files = sorted((out / folder).glob("*.png"))
        assert [p.stem for p in files] == [p.stem for p in heldout]
        assert load(files[0]).shape == (side, side, 3)
    assert (out / "ckpt" / "demo" / "latest.pt").is_file()
    assert (out / "logs" / "demo" / "train_log.txt").is_file()
    # 8 faces, 2 per row, 4 tiles of 24 pixels zoomed 4x each (utils.evaluation.side_by_side's layout)
    assert load(out / "results" / "side_by_side.png").shape == (4 * (24 + 96) + 3 * 4, 2 * 4 * 96 + 4, 3)

    # The shipped 8x model on the astronaut's face: LR 16x16, bicubic and SR 128x128, a row each, a picture.
    x8 = out / "results" / "x8"
    assert load(out / "faces" / "astronaut_lr" / "astronaut.png").shape == (16, 16, 3)
    for folder in ("Bicubic", "HybriMamba"):
        assert load(x8 / folder / "astronaut.png").shape == (128, 128, 3)
    x8_rows = [line.split("|")[1].strip() for line in table_rows((x8 / "table.md").read_text())]
    assert x8_rows == ["Bicubic", "HybriMamba"]
    # one face: a 24-pixel caption band over LR | bicubic | SR | HR tiles of 128 pixels
    assert load(x8 / "side_by_side.png").shape == (24 + 128, 4 * 128, 3)

    # The shipped model on the group photo through enhance.py: its outputs and each face's score.
    photo = out / "results" / "photo"
    group = load(out / "faces" / "group_photo" / "group.png")
    assert load(photo / "group.png").shape == (group.shape[0] * 8, group.shape[1] * 8, 3)
    assert len(json.loads((photo / "group.json").read_text())["faces"]) == len(demo_faces.GROUP_SIZES)
    # input | bicubic | result, each reduced to at most MAX_PANEL_SIDE pixels (the x8 photo is 1728 wide)
    assert load(photo / "group_side_by_side.png").shape[1] == 3 * min(MAX_PANEL_SIDE, group.shape[1] * 8)
    assert load(photo / "closeup.png").shape == (3 * (24 + 160) + 2 * 4, 4 * 160, 3)
    scores = re.findall(r"face \d \( ?(\d+) px\): bicubic ([\d.]+) dB, enhance.py ([\d.]+) dB", text)
    assert [int(s[0]) for s in scores] == list(demo_faces.GROUP_SIZES)

    table = (out / "results" / "table.md").read_text()
    assert table in text.replace("\r", "")
    rows = {line.split("|")[1].strip(): line for line in table_rows(table)}
    assert sorted(rows) == ["Bicubic", "HybriMamba"]

    def mean_psnr(folder):
        return np.mean([y_psnr(load(h), load(out / folder / h.name)) for h in heldout])

    model, bicubic = mean_psnr("results/HybriMamba"), mean_psnr("results/Bicubic")
    assert f"| {bicubic:.2f} |" in rows["Bicubic"] and f"| {model:.2f} |" in rows["HybriMamba"]
    verdict = re.search(r"HybriMamba (beats|does NOT beat) bicubic .*PSNR ([\d.]+) dB vs ([\d.]+) dB", text)
    assert verdict and verdict.group(1) == ("beats" if model > bicubic else "does NOT beat")
    assert (float(verdict.group(2)), float(verdict.group(3))) == (round(model, 2), round(bicubic, 2))

    # everything the run wrote is recorded as the demo's: a rerun removes it all, and nothing else
    (out / "notes.txt").write_text("mine")
    demo.prepare_out_dir(out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [".hybrimamba-outputs", ".hybrimamba_demo",
                                                                       "notes.txt"]

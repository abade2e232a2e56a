"""Data pipeline: degradation and augmentation against direct PIL computations, datasets, scripts."""
import logging
import random
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from data import CelebADataset, PairedDataset, SingleDataset, create_dataset, prepare_celeba
from data.augmentation import random_flip_scale
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def noise_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path, img):
    """Write an RGB uint8 array with PIL (independent of the project's writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def as_tensor(img):
    """uint8 (H, W, 3) -> (3, H, W) float32 x / 127.5 - 1, so equality checks the uint8 content."""
    return torch.tensor(np.array(img)).permute(2, 0, 1).float() / 127.5 - 1


def pil_degrade(hr, scale):
    return hr.resize((hr.width // scale, hr.height // scale), Image.BICUBIC).resize(hr.size, Image.BICUBIC)


def to_pil(tensor):
    return Image.fromarray(tensor.add(1).mul(127.5).round().byte().permute(1, 2, 0).numpy())


# --- CelebADataset: degradation, sizes, augmentation ---------------------------------------

def test_celeba_degradation_matches_pil(tmp_path):
    path = save(tmp_path / "hr" / "face.png", noise_image(128, 128))
    item = CelebADataset(tmp_path / "hr", load_size=128, scale_factor=8, augment=False)[0]
    hr = Image.open(path).convert("RGB")
    assert item["path"] == str(path)
    assert item["HR"].dtype == torch.float32 and item["HR"].shape == (3, 128, 128)
    assert torch.equal(item["HR"], as_tensor(hr))
    assert torch.equal(item["LR"], as_tensor(pil_degrade(hr, 8)))


def test_celeba_brings_other_sizes_to_load_size(tmp_path):
    save(tmp_path / "a" / "wide.png", noise_image(160, 140))  # h 160, w 140
    item = CelebADataset(tmp_path / "a", load_size=64, scale_factor=4, augment=False)[0]
    expected = Image.open(tmp_path / "a" / "wide.png").crop((0, 10, 140, 150)).resize((64, 64), Image.BICUBIC)
    assert torch.equal(item["HR"], as_tensor(expected))
    assert torch.equal(item["LR"], as_tensor(pil_degrade(expected, 4)))


def test_celeba_reads_prepared_layout_and_recurses(tmp_path):
    save(tmp_path / "prep" / "HR" / "sub" / "1.png", noise_image(32, 32))
    save(tmp_path / "prep" / "LR" / "1.png", noise_image(4, 4))
    ds = CelebADataset(tmp_path / "prep", load_size=32, scale_factor=8)
    assert [Path(p).name for p in ds.paths] == ["1.png"] and "HR" in ds.paths[0].parts


def test_celeba_rejects_empty_folder_and_bad_scale(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        CelebADataset(tmp_path / "empty")
    save(tmp_path / "x" / "1.png", noise_image(8, 8))
    with pytest.raises(UserError, match="not divisible"):
        CelebADataset(tmp_path / "x", load_size=100, scale_factor=8)


def test_augmentation_seeded_keeps_size_and_degrades_consistently(tmp_path):
    save(tmp_path / "hr" / "face.png", noise_image(64, 64))
    ds = CelebADataset(tmp_path / "hr", load_size=64, scale_factor=8, augment=True)
    draws = []
    for seed in range(5):
        random.seed(seed)
        first = ds[0]
        random.seed(seed)
        again = ds[0]
        assert first["HR"].shape == (3, 64, 64) and first["LR"].shape == (3, 64, 64)
        assert torch.equal(first["HR"], again["HR"]) and torch.equal(first["LR"], again["LR"])
        assert torch.equal(first["LR"], as_tensor(pil_degrade(to_pil(first["HR"]), 8)))
        draws.append(first["HR"])
    assert len({d.numpy().tobytes() for d in draws}) == 5


def test_flip_happens_sometimes_and_is_exact():
    img = Image.fromarray(noise_image(16, 16))
    flipped = np.asarray(img)[:, ::-1]
    outcomes = []
    for seed in range(12):
        out = np.asarray(random_flip_scale(img, scale_range=(1.0, 1.0), rng=random.Random(seed)))
        assert np.array_equal(out, np.asarray(img)) or np.array_equal(out, flipped)
        outcomes.append(np.array_equal(out, flipped))
    assert any(outcomes) and not all(outcomes)


def test_scale_is_a_resized_crop_at_random_positions():
    img = Image.fromarray(noise_image(64, 64, seed=3))
    crop = round(64 / 1.3)
    windows = {
        (x, y): np.asarray(img.crop((x, y, x + crop, y + crop)).resize((64, 64), Image.BICUBIC))
        for y in range(64 - crop + 1) for x in range(64 - crop + 1)
    }
    found = set()
    for seed in range(6):
        out = np.asarray(random_flip_scale(img, flip_prob=0.0, scale_range=(1.3, 1.3), rng=random.Random(seed)))
        matches = [xy for xy, window in windows.items() if np.array_equal(out, window)]
        assert len(matches) == 1
        found.add(matches[0])
    assert len({x for x, _ in found}) > 1 and len({y for _, y in found}) > 1


def test_dataloader_workers_are_reproducible(tmp_path):
    for i in range(4):
        save(tmp_path / "hr" / f"{i}.png", noise_image(32, 32, seed=i))
    ds = CelebADataset(tmp_path / "hr", load_size=32, scale_factor=8)

    def epoch(seed):
        loader = DataLoader(ds, batch_size=2, shuffle=True, num_workers=2,
                            generator=torch.Generator().manual_seed(seed))
        return torch.cat([batch["HR"] for batch in loader])

    assert torch.equal(epoch(0), epoch(0))
    assert not torch.equal(epoch(0), epoch(1))


# --- corrupt files ----------------------------------------------------------------------------

def test_corrupt_image_error_or_skip(tmp_path, caplog):
    save(tmp_path / "hr" / "a.png", noise_image(32, 32))
    (tmp_path / "hr" / "b.png").write_bytes(b"this is not an image" * 10)
    save(tmp_path / "hr" / "c.png", noise_image(32, 32, seed=1))
    strict = CelebADataset(tmp_path / "hr", load_size=32, scale_factor=8, augment=False)
    with pytest.raises(UserError, match="b.png"):
        strict[1]
    lenient = CelebADataset(tmp_path / "hr", load_size=32, scale_factor=8, augment=False, skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="hybrimamba"):
        first = lenient[1]
        second = lenient[1]
    assert first["path"] == second["path"] == str(tmp_path / "hr" / "c.png")
    assert torch.equal(first["HR"], as_tensor(Image.open(tmp_path / "hr" / "c.png")))
    assert sum("b.png" in r.getMessage() for r in caplog.records) == 1


def test_all_corrupt_with_skip_is_an_error(tmp_path):
    (tmp_path / "hr").mkdir()
    (tmp_path / "hr" / "x.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(UserError, match="no readable image"):
        CelebADataset(tmp_path / "hr", load_size=32, skip_bad=True)[0]


# --- PairedDataset ------------------------------------------------------------------------

def test_paired_pairs_by_stem_with_mixed_extensions(tmp_path):
    hr_a = save(tmp_path / "hr" / "a.png", noise_image(32, 32, seed=1))
    hr_b = save(tmp_path / "hr" / "b.bmp", noise_image(32, 32, seed=2))
    lr_a = save(tmp_path / "lr" / "a.bmp", noise_image(4, 4, seed=3))
    lr_b = save(tmp_path / "lr" / "b.png", noise_image(32, 32, seed=4))
    ds = PairedDataset(tmp_path / "lr", tmp_path / "hr", load_size=32)
    assert len(ds) == 2
    for i, (lr, hr) in enumerate([(lr_a, hr_a), (lr_b, hr_b)]):
        item = ds[i]
        assert item["path"] == str(lr)
        assert torch.equal(item["HR"], as_tensor(Image.open(hr)))
        assert torch.equal(item["LR"], as_tensor(Image.open(lr).resize((32, 32), Image.BICUBIC)))


def test_paired_errors(tmp_path):
    save(tmp_path / "hr" / "a.png", noise_image(32, 32))
    save(tmp_path / "hr" / "b.png", noise_image(30, 32))
    save(tmp_path / "lr" / "a.png", noise_image(4, 4))
    with pytest.raises(UserError, match="b"):
        PairedDataset(tmp_path / "lr", tmp_path / "hr", load_size=32)
    save(tmp_path / "lr" / "b.png", noise_image(4, 4))
    ds = PairedDataset(tmp_path / "lr", tmp_path / "hr", load_size=32)
    with pytest.raises(UserError, match=r"b\.png.*32x30"):
        ds[1]


# --- SingleDataset ----------------------------------------------------------------------------

@pytest.mark.parametrize("h, w, load_size", [(16, 16, 128), (20, 24, 128), (20, 24, 30)])
def test_single_resizes_any_size(tmp_path, h, w, load_size):
    path = save(tmp_path / "lr" / "face.png", noise_image(h, w))
    item = SingleDataset(tmp_path / "lr", load_size=load_size)[0]
    assert item["orig_size"] == (h, w) and item["path"] == str(path)
    expected = Image.open(path).resize((load_size, load_size), Image.BICUBIC)
    assert torch.equal(item["LR"], as_tensor(expected))


def test_single_converts_gray_alpha_and_16bit(tmp_path):
    rng = np.random.default_rng(5)
    gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    deep = rng.integers(0, 65536, (16, 16, 3), dtype=np.uint16)
    (tmp_path / "lr").mkdir()
    Image.fromarray(gray).save(tmp_path / "lr" / "g.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "lr" / "r.png")
    cv2.imwrite(str(tmp_path / "lr" / "d.png"), deep[:, :, ::-1])  # OpenCV writes BGR
    ds = SingleDataset(tmp_path / "lr", load_size=16)
    items = {Path(ds[i]["path"]).stem: ds[i]["LR"] for i in range(len(ds))}
    assert torch.equal(items["g"], as_tensor(np.repeat(gray[:, :, None], 3, axis=2)))
    assert torch.equal(items["r"], as_tensor(rgba[:, :, :3]))
    assert torch.equal(items["d"], as_tensor(np.floor(deep / 257.0 + 0.5).astype(np.uint8)))


def test_create_dataset(tmp_path):
    save(tmp_path / "lr" / "a.png", noise_image(16, 16))
    assert isinstance(create_dataset("single", root=tmp_path / "lr", load_size=32), SingleDataset)
    with pytest.raises(UserError, match="celeba, paired, single"):
        create_dataset("ffhq", root=tmp_path)


# --- prepare_celeba ---------------------------------------------------------------------------

def real_faces(celeba_dir, tmp_path, count):
    """A few real img_align_celeba files linked into tmp_path/src (never copied into the repo)."""
    src = tmp_path / "src"
    src.mkdir()
    for path in sorted((celeba_dir / "train").glob("*.jpg"))[:count]:
        (src / path.name).symlink_to(path)
    return src, sorted(p.stem for p in src.iterdir())


def pil_crop(path):
    return Image.open(path).convert("RGB").crop((19, 63, 156, 200)).resize((128, 128), Image.BICUBIC)


def test_prepare_celeba_crops_and_test_lr(celeba_dir, tmp_path, capsys):
    src, ids = real_faces(celeba_dir, tmp_path, 4)
    (tmp_path / "exclude.txt").write_text(f"{ids[0]}.jpg\n# a comment\n{ids[1]}\n")
    (tmp_path / "part.txt").write_text("".join(f"{i}.jpg 2\n" for i in ids[:3]))
    prepare_celeba.main(["--src", str(src), "--out", str(tmp_path / "out"), "--exclude",
                         str(tmp_path / "exclude.txt"), "--make_test_lr", "--workers", "2"])
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "HR").glob("*.png")) == [f"{i}.png" for i in ids[2:]]
    for stem in ids[2:]:
        hr = Image.open(out / "HR" / f"{stem}.png")
        assert hr.size == (128, 128)
        assert np.array_equal(np.asarray(hr), np.asarray(pil_crop(src / f"{stem}.jpg")))
        lr = Image.open(out / "LR" / f"{stem}.png")
        assert lr.size == (16, 16)
        assert np.array_equal(np.asarray(lr), np.asarray(hr.resize((16, 16), Image.BICUBIC)))
        up = Image.open(out / "LR_bicubic" / f"{stem}.png")
        assert np.array_equal(np.asarray(up), np.asarray(lr.resize((128, 128), Image.BICUBIC)))
    assert "wrote 2 HR crop(s)" in capsys.readouterr().out
    with pytest.raises(UserError, match=f"1 file.*outside this selection.*{ids[3]}"):
        prepare_celeba.main(["--src", str(src), "--out", str(out), "--exclude", str(tmp_path / "exclude.txt"),
                             "--partition", str(tmp_path / "part.txt"), "--split", "test"])


def test_prepare_celeba_partition(celeba_dir, tmp_path):
    src, ids = real_faces(celeba_dir, tmp_path, 4)
    (tmp_path / "part.txt").write_text("".join(f"{i}.jpg {s}\n" for i, s in zip(ids, [0, 1, 2, 1])))
    prepare_celeba.main(["--src", str(src), "--out", str(tmp_path / "val"), "--partition",
                         str(tmp_path / "part.txt"), "--split", "val", "--workers", "1"])
    assert sorted(p.stem for p in (tmp_path / "val" / "HR").glob("*.png")) == [ids[1], ids[3]]
    assert not (tmp_path / "val" / "LR").exists()
    with pytest.raises(UserError, match="needs --partition"):
        prepare_celeba.main(["--src", str(src), "--out", str(tmp_path / "x"), "--split", "val"])
    (tmp_path / "bad.txt").write_text("000001.jpg 7\n")
    with pytest.raises(UserError, match="bad.txt:1"):
        prepare_celeba.main(["--src", str(src), "--out", str(tmp_path / "x"), "--partition",
                             str(tmp_path / "bad.txt"), "--split", "val"])


def test_prepare_celeba_size_check_and_auto_box(tmp_path):
    path = save(tmp_path / "src" / "odd.png", noise_image(100, 90))
    with pytest.raises(UserError, match=r"odd\.png.*--box auto"):
        prepare_celeba.main(["--src", str(tmp_path / "src"), "--out", str(tmp_path / "o"), "--workers", "1"])
    prepare_celeba.main(["--src", str(tmp_path / "src"), "--out", str(tmp_path / "o"), "--box", "auto",
                         "--size", "64", "--workers", "1"])
    expected = Image.open(path).crop((0, 5, 90, 95)).resize((64, 64), Image.BICUBIC)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "HR" / "odd.png")), np.asarray(expected))
    with pytest.raises(UserError, match="not square"):
        prepare_celeba.main(["--src", str(tmp_path / "src"), "--out", str(tmp_path / "o"),
                             "--box", "0", "0", "10", "20"])


# --- make_lr ----------------------------------------------------------------------------------

def run_make_lr(*args):
    return subprocess.run([sys.executable, "-m", "data.make_lr", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_make_lr_script(tmp_path):
    a = save(tmp_path / "hr" / "a.png", noise_image(32, 32, seed=1))
    b = save(tmp_path / "hr" / "b.bmp", noise_image(16, 24, seed=2))
    done = run_make_lr(tmp_path / "hr", "--lr_dir", tmp_path / "lr", "--lr_up_dir", tmp_path / "up", "--scale", "8")
    assert done.returncode == 0, done.stderr
    for hr_path in (a, b):
        hr = Image.open(hr_path)
        lr = Image.open(tmp_path / "lr" / f"{hr_path.stem}.png")
        assert lr.size == (hr.width // 8, hr.height // 8)
        assert np.array_equal(np.asarray(lr), np.asarray(hr.resize(lr.size, Image.BICUBIC)))
        up = Image.open(tmp_path / "up" / f"{hr_path.stem}.png")
        assert np.array_equal(np.asarray(up), np.asarray(lr.resize(hr.size, Image.BICUBIC)))

    save(tmp_path / "hr" / "c.png", noise_image(30, 32))
    failed = run_make_lr(tmp_path / "hr", "--lr_dir", tmp_path / "lr2")
    assert failed.returncode == 2
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "c.png" in lines[0] and "not divisible" in lines[0]
    assert not (tmp_path / "lr2").exists()

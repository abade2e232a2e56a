"""psnr_ssim.py, folder evaluation, the results table and the side-by-side picture, run as users run them."""
import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from tests.y_oracle import float_formula_y, with_traps, y_channel
from utils.errors import UserError
from utils.evaluation.folder_eval import evaluate_folders
from utils.evaluation.side_by_side import GAP, LABEL_HEIGHT

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    """Run a script or ``-m module`` from the repository root; returns the CompletedProcess."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def face_like(h, w, seed):
    """A smooth random RGB uint8 image (low-frequency noise, upsampled), like a face crop in spectrum."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def noisy(img, seed, sigma=8.0):
    rng = np.random.default_rng(seed)
    return np.clip(np.round(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)


def save(path, img):
    """Write an RGB uint8 array with PIL (independent of the project's writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(img).save(path)
    return path


def load(path):
    return np.asarray(Image.open(path).convert("RGB"))


def reference_metrics(gt, sr, rgb=False, convention="truncate", y=y_channel):
    """Independent PSNR/SSIM: the section 5 Y in exact integers (tests/y_oracle.py), skimage's SSIM."""
    a, b = (gt.astype(np.float64), sr.astype(np.float64)) if rgb else (y(gt, convention), y(sr, convention))
    p = 10 * math.log10(255 ** 2 / np.mean((a - b) ** 2))
    s = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
                              channel_axis=2 if rgb else None)
    return p, s


def printed(stdout, label):
    return float(re.search(rf"^{label}: ([0-9.]+)", stdout, re.M).group(1))


def assert_every_value_tagged(text, tag):
    """Every PSNR/SSIM value in ``text`` is followed by ``(tag)`` (or ``(tag; ...)``), e.g. '(Y truncate)'."""
    value = r"\b(?:PSNR|SSIM):? (?:\d+\.\d+|infinite)"
    values = re.findall(value, text)
    tagged = re.findall(value + r"(?: dB)? \(" + re.escape(tag) + r"[);]", text)
    assert values and len(tagged) == len(values), (tag, text)


@pytest.fixture
def folders(tmp_path):
    """GT as PNG, SR as JPEG/BMP/PNG under the same stems, plus one SR-only file that shifts sort positions.
    The GT holds colours whose Y a floating-point truncation gets wrong."""
    gt_dir, sr_dir = tmp_path / "gt", tmp_path / "sr"
    for i, (stem, ext) in enumerate([("b_face", ".jpg"), ("c_face", ".bmp"), ("d_face", ".png")]):
        gt = with_traps(face_like(40, 32, i))
        save(gt_dir / f"{stem}.png", gt)
        save(sr_dir / f"{stem}{ext}", noisy(gt, 10 + i))
    save(sr_dir / "a_extra.png", face_like(40, 32, 99))
    return gt_dir, sr_dir


def test_psnr_ssim_cli_pairs_by_stem_across_extensions(folders, tmp_path):
    gt_dir, sr_dir = folders
    out_csv = tmp_path / "metrics.csv"
    res = run("psnr_ssim.py", gt_dir, sr_dir, "--allow_missing", "--csv", out_csv)
    assert res.returncode == 0, res.stderr
    assert "pairs: 3" in res.stdout and "1 unpaired file(s) skipped" in res.stdout
    assert "truncated" in res.stdout
    assert_every_value_tagged(res.stdout, "Y truncate")
    # In a pipe: a plain progress line, not tqdm's bar ("100%|####|").
    assert "%|" not in res.stderr and f"evaluating {sr_dir.name}: 3/3 img (100%)" in res.stderr
    expected = {}
    for sr_path in sorted(sr_dir.iterdir()):
        if sr_path.stem != "a_extra":
            expected[sr_path.stem] = reference_metrics(load(gt_dir / f"{sr_path.stem}.png"), load(sr_path))
    with open(out_csv) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == sorted(expected)
    for row in rows:
        p, s = expected[row["name"]]
        assert float(row["psnr"]) == pytest.approx(p, abs=1e-9)
        assert abs(float(row["ssim"]) - s) < 1e-10
        assert Path(row["sr"]).stem == row["name"] and row["convention"] == "Y truncate"
    assert printed(res.stdout, "PSNR") == pytest.approx(np.mean([p for p, _ in expected.values()]), abs=6e-5)
    assert printed(res.stdout, "SSIM") == pytest.approx(np.mean([s for _, s in expected.values()]), abs=6e-5)
    # The check can tell exact truncation from a float formula's.
    stem = next(iter(expected))
    sr = load(next(sr_dir.glob(f"{stem}.*")))
    naive = reference_metrics(load(gt_dir / f"{stem}.png"), sr, y=lambda img, _: float_formula_y(img))
    assert abs(naive[0] - expected[stem][0]) > 1e-6


def test_psnr_ssim_cli_rgb_and_rounding(folders):
    gt_dir, sr_dir = folders
    (sr_dir / "a_extra.png").unlink()
    res = run("psnr_ssim.py", gt_dir, sr_dir, "--rgb")
    assert res.returncode == 0, res.stderr
    assert "RGB channels" in res.stdout
    assert_every_value_tagged(res.stdout, "RGB")
    refs = [reference_metrics(load(gt_dir / f"{p.stem}.png"), load(p), rgb=True) for p in sorted(sr_dir.iterdir())]
    assert printed(res.stdout, "PSNR") == pytest.approx(np.mean([p for p, _ in refs]), abs=6e-5)
    assert printed(res.stdout, "SSIM") == pytest.approx(np.mean([s for _, s in refs]), abs=6e-5)
    res = run("psnr_ssim.py", gt_dir, sr_dir, "--y_convention", "round")
    assert res.returncode == 0 and "rounded" in res.stdout and "MATLAB" in res.stdout
    assert_every_value_tagged(res.stdout, "Y round")
    refs = [reference_metrics(load(gt_dir / f"{p.stem}.png"), load(p), convention="round")
            for p in sorted(sr_dir.iterdir())]
    assert printed(res.stdout, "PSNR") == pytest.approx(np.mean([p for p, _ in refs]), abs=6e-5)
    assert printed(res.stdout, "SSIM") == pytest.approx(np.mean([s for _, s in refs]), abs=6e-5)


def assert_one_line_error(res, *needles):
    """Exit code 2 and one ``error:`` line, the last on stderr (progress bars and OpenCV logs may precede it)."""
    assert res.returncode == 2, res.stdout + res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and res.stderr.rstrip().endswith(errors[0]), res.stderr
    for needle in needles:
        assert needle in errors[0]


def test_unpaired_files_are_an_error(folders):
    gt_dir, sr_dir = folders
    assert_one_line_error(run("psnr_ssim.py", gt_dir, sr_dir), "a_extra", "--allow_missing")


def test_size_mismatch_names_the_pair(folders):
    gt_dir, sr_dir = folders
    (sr_dir / "a_extra.png").unlink()
    save(sr_dir / "c_face.bmp", face_like(40, 36, 5))
    assert_one_line_error(run("psnr_ssim.py", gt_dir, sr_dir), "c_face.png", "c_face.bmp", "32x40", "36x40")


def test_corrupt_file_is_named(folders):
    gt_dir, sr_dir = folders
    (sr_dir / "a_extra.png").unlink()
    (gt_dir / "d_face.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert_one_line_error(run("psnr_ssim.py", gt_dir, sr_dir), "d_face.png")


def test_too_small_for_the_window_and_bad_options(tmp_path):
    for d in ("gt", "sr"):
        save(tmp_path / d / "x.png", face_like(10, 30, 0))
    with pytest.raises(UserError, match="11x11"):
        evaluate_folders(tmp_path / "gt", tmp_path / "sr", progress=False)
    with pytest.raises(UserError, match="crop_border"):
        evaluate_folders(tmp_path / "gt", tmp_path / "sr", crop_border=-1, progress=False)


def test_thread_pool_gives_the_serial_results(tmp_path):
    for i in range(12):
        gt = face_like(24 + 8 * (i % 2), 24, i)
        save(tmp_path / "gt" / f"{i:02d}.png", gt)
        save(tmp_path / "sr" / f"{i:02d}.png", noisy(gt, i))
    serial, s_sum = evaluate_folders(tmp_path / "gt", tmp_path / "sr", workers=1, progress=False)
    threaded, t_sum = evaluate_folders(tmp_path / "gt", tmp_path / "sr", workers=3, progress=False)
    assert serial == threaded and s_sum == t_sum
    assert s_sum["count"] == 12 and s_sum["psnr"] == pytest.approx(np.mean([r["psnr"] for r in serial]))


def pil_bicubic(hr, scale):
    img = Image.fromarray(hr)
    small = img.resize((img.width // scale, img.height // scale), Image.BICUBIC)
    return np.asarray(small.resize(img.size, Image.BICUBIC))


def table_rows(path):
    """Markdown table -> {first cell: [cells]} and the header cells."""
    lines = [ln for ln in Path(path).read_text().splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return cells[0], {row[0]: row for row in cells[2:]}


def test_results_table_two_datasets_bicubic_stats_and_paper_rows(tmp_path):
    truth = {}
    for dataset, seed in (("Helen", 0), ("CelebA", 50)):
        for i in range(3):
            hr = face_like(32, 32, seed + i)
            save(tmp_path / dataset / "hr" / f"{i}.png", hr)
            save(tmp_path / dataset / "MyNet" / f"{i}.png", noisy(hr, seed + i))
            truth.setdefault((dataset, "MyNet"), []).append(reference_metrics(hr, noisy(hr, seed + i)))
            truth.setdefault((dataset, "Bicubic"), []).append(reference_metrics(hr, pil_bicubic(hr, 8)))
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"params": 15_123_456, "flops": 19.74e9, "macs": 9.87e9}))
    out = tmp_path / "table.md"
    res = run("-m", "utils.evaluation.results_table",
              "--hr_dir", tmp_path / "Helen" / "hr", "--dataset_name", "Helen",
              "--sr_dirs", tmp_path / "Helen" / "MyNet",
              "--hr_dir", tmp_path / "CelebA" / "hr", "--dataset_name", "CelebA",
              "--sr_dirs", tmp_path / "CelebA" / "MyNet",
              "--bicubic", "--model_stats", f"MyNet={stats}", "--with_paper", "--out", out)
    assert res.returncode == 0, res.stderr
    header, rows = table_rows(out)
    assert header == ["Method", "Params", "FLOPs", "Helen PSNR", "SSIM", "LPIPS", "CelebA PSNR", "SSIM", "LPIPS"]
    assert rows["MyNet"][1:3] == ["15.1M", "19.7G"] and rows["Bicubic"][1:3] == ["-", "-"]
    for (dataset, method), refs in truth.items():
        col = 3 if dataset == "Helen" else 6
        row = rows[method]
        assert float(row[col]) == pytest.approx(np.mean([p for p, _ in refs]), abs=0.006)
        assert float(row[col + 1]) == pytest.approx(np.mean([s for _, s in refs]), abs=6e-5)
        assert row[col + 2] == "-"
    assert rows["HybriMamba (paper)"][1:] == ["15.1M", "19.7G", "28.33", "0.8375", "0.1621",
                                              "28.43", "0.8250", "0.1638"]
    assert out.read_text() in res.stdout
    # the convention: beside each value on the terminal, and under the table in the file
    per_method = [ln for ln in res.stdout.splitlines() if " / " in ln and "PSNR" in ln]
    assert len(per_method) == 4
    assert_every_value_tagged("\n".join(per_method), "Y truncate")
    caption = out.read_text().rstrip().splitlines()[-1]
    assert caption.startswith("PSNR/SSIM: Y truncate") and "psnr_ssim.py" in caption and "(paper) rows" in caption


def test_results_table_positional_folders_and_bad_stats(tmp_path):
    hr = face_like(16, 16, 1)
    save(tmp_path / "hr" / "0.png", hr)
    save(tmp_path / "A" / "0.png", noisy(hr, 1))
    out = tmp_path / "t.md"
    res = run("-m", "utils.evaluation.results_table", "--hr_dir", tmp_path / "hr", tmp_path / "A", "--out", out)
    assert res.returncode == 0, res.stderr
    header, rows = table_rows(out)
    assert header[3] == "hr PSNR" and list(rows) == ["A"]
    (tmp_path / "bad.json").write_text("{}")
    assert_one_line_error(run("-m", "utils.evaluation.results_table", "--hr_dir", tmp_path / "hr", tmp_path / "A",
                              "--model_stats", f"A={tmp_path / 'bad.json'}", "--out", out), "bad.json", "params")


def test_side_by_side_layout_and_tiles(tmp_path):
    hrs = {}
    for i in range(3):
        hrs[i] = face_like(32, 32, i)
        lr = np.asarray(Image.fromarray(hrs[i]).resize((4, 4), Image.BICUBIC))
        save(tmp_path / "lr" / f"{i}.png", lr)
        save(tmp_path / "sr" / f"{i}.png", noisy(hrs[i], i))
        save(tmp_path / "hr" / f"{i}.png", hrs[i])
    out = tmp_path / "fig.png"
    res = run("-m", "utils.evaluation.side_by_side", "--lr", tmp_path / "lr", "--sr", tmp_path / "sr",
              "--hr", tmp_path / "hr",
              "--bicubic", "--n", "3", "--per_row", "2", "--out", out)
    assert res.returncode == 0, res.stderr
    fig = load(out)
    # 2 faces per row x 4 tiles of 32 px, 2 rows, caption bands and gaps
    assert fig.shape == (2 * (LABEL_HEIGHT + 32) + GAP, 2 * 4 * 32 + GAP, 3)
    row2 = LABEL_HEIGHT + 32 + GAP + LABEL_HEIGHT  # top of the second row's tiles
    np.testing.assert_array_equal(fig[row2:row2 + 32, 96:128], hrs[2])  # face 2, HR column
    lr2 = load(tmp_path / "lr" / "2.png")
    np.testing.assert_array_equal(fig[row2:row2 + 32, 0:32], np.repeat(np.repeat(lr2, 8, 0), 8, 1))
    np.testing.assert_array_equal(fig[row2:row2 + 32, 32:64],
                                  np.asarray(Image.fromarray(lr2).resize((32, 32), Image.BICUBIC)))
    assert (fig[:LABEL_HEIGHT, :32] < 128).any()  # a caption is drawn
    assert (fig[row2:row2 + 32, 128 + GAP:] == 255).all()  # no fourth face


def test_side_by_side_zoom_replicates_pixels(tmp_path):
    hr = face_like(16, 16, 0)
    save(tmp_path / "lr" / "a.png", np.asarray(Image.fromarray(hr).resize((4, 4), Image.BICUBIC)))
    save(tmp_path / "sr" / "a.png", hr)
    save(tmp_path / "hr" / "a.png", hr)
    out = tmp_path / "fig.png"
    res = run("-m", "utils.evaluation.side_by_side", "--lr", tmp_path / "lr", "--sr", tmp_path / "sr",
              "--hr", tmp_path / "hr",
              "--zoom", "3", "--out", out)
    assert res.returncode == 0, res.stderr
    fig = load(out)
    assert fig.shape == (LABEL_HEIGHT + 48, 3 * 48, 3)
    np.testing.assert_array_equal(fig[LABEL_HEIGHT:, 96:144], np.repeat(np.repeat(hr, 3, 0), 3, 1))

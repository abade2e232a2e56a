"""test.py and test.sh: outputs against an independent forward pass, checkpoint layouts, EMA choice,
scoring with --hr_dir, errors raised before inference, and the seed's commands run for real."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from data.single_dataset import SingleDataset
from models import HybriMamba
from models.checkpoint import save_checkpoint
from options import TestOptions, TrainOptions
from tests.conftest import ROOT, shared_path
from tests.test_eval_scripts import assert_every_value_tagged
from tests.test_options import readme_blocks, script_calls
from utils.errors import UserError
from utils.evaluation.folder_eval import evaluate_folders
from utils.evaluation.inference import run_test, super_resolve
from utils.evaluation.lpips_metric import build_lpips

TINY = {"embed_dim": 8, "depth": 1, "n_layers": 1}
TINY_FLAGS = [f for k, v in TINY.items() for f in (f"--{k}", str(v))]
LR_SIZES = {"a": (8, 8), "b": (16, 16), "c": (12, 10)}  # stem -> (width, height)
STEMS = sorted([*LR_SIZES, "d"])                         # d: a 16x16 grayscale input
PATH_FLAGS = ("--dataroot", "--pretrain_model_path", "--save_as_dir")
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def random_rgb(rng, width, height):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def weights():
    """Raw weights of a tiny HybriMamba and EMA weights that differ from them."""
    torch.manual_seed(0)
    raw = HybriMamba(**TINY).state_dict()
    ema = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in raw.items()}
    return raw, ema


@pytest.fixture(scope="module")
def files(tmp_path_factory, weights):
    """LR inputs of several sizes and modes, and the checkpoint layouts test.py must read."""
    root = tmp_path_factory.mktemp("test_script")
    rng = np.random.default_rng(0)
    lr = root / "lr"
    lr.mkdir()
    for stem, (w, h) in LR_SIZES.items():
        Image.fromarray(random_rgb(rng, w, h)).save(lr / f"{stem}.png")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(lr / "d.png")

    raw, ema = weights
    # Options stored exactly as train.py stores them: every option of the run.
    options = dict(vars(TrainOptions().parse(["--dataroot", "unused", *TINY_FLAGS])))
    save_checkpoint(root / "train.pt", {"model": raw, "ema": ema, "options": options, "iteration": 3, "epoch": 0})
    torch.save({f"module.{k}": v for k, v in raw.items()}, root / "bare.pt")
    torch.save(HybriMamba(**{**TINY, "embed_dim": 12}).state_dict(), root / "wide.pt")
    return root


def oracle(state, path, size):
    """Independent result: PIL bicubic to size x size, a fresh network, reflect padding by hand, rounding."""
    net = HybriMamba(**TINY)
    net.load_state_dict(state)
    img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    pad = -size % 4
    with torch.no_grad():
        y = net.eval()(F.pad(x, (0, pad, 0, pad), mode="reflect"))[0, :, :size, :size]
    return np.round((y.clamp(-1, 1).permute(1, 2, 0).numpy().astype(np.float64) + 1) * 127.5).astype(np.uint8)


def max_diff(a, b):
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def assert_same_picture(got, want, what):
    """Equal up to rare one-level flips (batching moves a value across a rounding boundary);
    truncating instead of rounding would change about half of the values."""
    assert got.shape == want.shape and got.dtype == np.uint8, what
    assert max_diff(got, want) <= 1, what
    assert np.mean(got != want) < 0.01, what


def read(path):
    return np.asarray(Image.open(path))


def cli_args(files, out, *extra, ckpt="train.pt", load_size=32):
    return ["--gpus", "0", "--num_threads", "0", "--batch_size", "3", "--load_size", str(load_size),
            "--dataroot", str(files / "lr"), "--pretrain_model_path", str(files / ckpt), "--save_as_dir", str(out),
            *extra]


def run(argv):
    return run_test(TestOptions().parse(argv), progress=False)


def assert_outputs_match(out, files, state, size):
    assert sorted(p.name for p in out.glob("*.png")) == [f"{s}.png" for s in STEMS]
    for stem in STEMS:
        assert_same_picture(read(out / f"{stem}.png"), oracle(state, files / "lr" / f"{stem}.png", size), stem)


@pytest.fixture(scope="module")
def ema_run(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("sr_ema")
    outputs, summary = run(cli_args(files, out))
    return out, outputs, summary


def test_training_checkpoint_uses_ema_weights_by_default(files, weights, ema_run):
    raw, ema = weights
    out, outputs, summary = ema_run
    assert summary is None
    assert [p.name for p in outputs] == [f"{s}.png" for s in STEMS]
    assert_outputs_match(out, files, ema, 32)
    # the two weight sets really give different pictures, so the check above tells them apart
    assert max_diff(read(out / "b.png"), oracle(raw, files / "lr" / "b.png", 32)) > 2


def test_no_ema_uses_the_raw_weights(files, weights, tmp_path):
    raw, _ = weights
    run(cli_args(files, tmp_path / "sr", "--no_ema"))
    assert_outputs_match(tmp_path / "sr", files, raw, 32)


def test_bare_state_dict_with_module_prefix_and_command_line_network(files, weights, tmp_path):
    run(cli_args(files, tmp_path / "sr", *TINY_FLAGS, ckpt="bare.pt"))
    assert_outputs_match(tmp_path / "sr", files, weights[0], 32)


def test_size_not_a_multiple_of_4_goes_through_padding(files, weights, tmp_path):
    net = HybriMamba(**TINY)
    net.load_state_dict(weights[0])
    outputs = super_resolve(net.eval(), SingleDataset(files / "lr", load_size=30), tmp_path, batch_size=2,
                            progress=False)
    assert len(outputs) == len(STEMS)
    assert_outputs_match(tmp_path, files, weights[0], 30)


@pytest.fixture
def hr_dir(files, ema_run, tmp_path):
    """Ground truth for every input, one of them identical to its output, plus an HR image with no input."""
    rng = np.random.default_rng(1)
    hr = tmp_path / "hr"
    hr.mkdir()
    for stem in ["a", "b", "c", "e"]:
        Image.fromarray(random_rgb(rng, 32, 32)).save(hr / f"{stem}.png")
    shutil.copy(ema_run[0] / "d.png", hr / "d.png")
    return hr


def strict_json(path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


def csv_rows(path):
    lines = Path(path).read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","))) for line in lines[1:]]


def test_hr_dir_writes_csv_and_json_equal_to_a_direct_evaluation(files, hr_dir, tmp_path, capsys):
    out = tmp_path / "sr"
    _, summary = run(cli_args(files, out, "--hr_dir", str(hr_dir)))
    rows, expected = evaluate_folders(hr_dir, out, allow_missing=True, progress=False)
    assert len(rows) == 4 and expected["skipped_unpaired"] == 1

    written = csv_rows(out / "metrics.csv")
    assert [r["name"] for r in written] == STEMS
    for got, want in zip(written, rows):
        assert float(got["psnr"]) == want["psnr"] and float(got["ssim"]) == want["ssim"]
    assert written[STEMS.index("d")]["psnr"] == "inf"

    record = strict_json(out / "metrics.json")
    assert record["count"] == 4 and record["skipped_unpaired"] == 1 and record["identical_pairs"] == 1
    finite = [float(r["psnr"]) for r in written if r["psnr"] != "inf"]
    assert len(finite) == 3 and record["psnr"] == pytest.approx(np.mean(finite), abs=1e-12)  # identical pair left out
    assert record["ssim"] == expected["ssim"] == summary["ssim"]
    assert record["y_convention"] == "truncate" and record["convention"] == "Y truncate" and record["load_size"] == 32
    assert all(r["convention"] == "Y truncate" for r in written)
    assert record["weights"].startswith("EMA weights")
    printed = capsys.readouterr().out
    assert f"SSIM: {expected['ssim']:.4f}" in printed and "truncated" in printed
    assert_every_value_tagged(printed, "Y truncate")


def test_lpips_with_hr_dir_equals_lpips_on_the_folders(files, hr_dir, tmp_path, alexnet_weights):
    out = tmp_path / "sr"
    run(cli_args(files, out, "--hr_dir", str(hr_dir), "--lpips", "--backbone_weights", str(alexnet_weights),
                  "--y_convention", "round"))
    lpips_model = build_lpips("alex", str(alexnet_weights))
    rows, expected = evaluate_folders(hr_dir, out, convention="round", lpips_model=lpips_model,
                                      allow_missing=True, progress=False)
    written = csv_rows(out / "metrics.csv")
    assert [float(r["lpips"]) for r in written] == pytest.approx([r["lpips"] for r in rows], abs=1e-6)
    assert [float(r["psnr"]) for r in written] == [r["psnr"] for r in rows]
    record = strict_json(out / "metrics.json")
    assert record["lpips"] == pytest.approx(expected["lpips"], abs=1e-6) and record["lpips"] > 0
    assert record["lpips_net"] == "alex" and record["y_convention"] == "round" and record["convention"] == "Y round"
    assert all(r["convention"] == "Y round" for r in written)


def write_images(folder, names, size, seed=2):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(random_rgb(rng, size, size)).save(folder / name)
    return folder


@pytest.mark.parametrize("case, message", [
    ("same_stem", "share the stem 'a'"),
    ("missing_gt", "no ground truth for 1 input(s) (d)"),
    ("gt_size", "ground truth is 64x64 but the outputs are 32x32"),
    ("leftover", "holds 1 image(s) not made from"),
    ("cuda_scan", "--scan_backend cuda cannot run"),
])
def test_bad_setups_fail_before_inference(files, tmp_path, case, message):
    lr, out = files / "lr", tmp_path / "sr"
    extra = []
    if case == "same_stem":
        lr = tmp_path / "lr"
        shutil.copytree(files / "lr", lr)
        shutil.copy(lr / "a.png", lr / "a.jpg")
    elif case == "missing_gt":
        extra = ["--hr_dir", str(write_images(tmp_path / "hr", ["a.png", "b.png", "c.jpg"], 32))]
    elif case == "gt_size":
        extra = ["--hr_dir", str(write_images(tmp_path / "hr", [f"{s}.png" for s in STEMS], 64))]
    elif case == "leftover":
        write_images(out, ["old.png"], 32)
        extra = ["--hr_dir", str(write_images(tmp_path / "hr", [f"{s}.png" for s in STEMS], 32))]
    elif torch.cuda.is_available():
        pytest.skip("CUDA is available here, so the cuda scan backend may run")
    else:
        extra = ["--scan_backend", "cuda"]
    argv = cli_args(files, out, *extra)
    argv[argv.index("--dataroot") + 1] = str(lr)
    before = sorted(out.iterdir()) if out.exists() else []
    with pytest.raises(UserError, match=re.escape(message)):
        run(argv)
    assert (sorted(out.iterdir()) if out.exists() else []) == before


def test_mismatched_checkpoint_is_a_one_line_error_with_exit_code_2(files, tmp_path):
    argv = cli_args(files, tmp_path / "sr", *TINY_FLAGS, ckpt="wide.pt")
    done = subprocess.run([sys.executable, "test.py", *argv], cwd=ROOT, env=ONE_THREAD, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {files / 'wide.pt'}: weights do not fit this network")
    assert "shallow.0.weight (12, 3, 3, 3) vs (8, 3, 3, 3)" in lines[0]
    assert "it stores no network options, so pass the --embed_dim/--depth" in lines[0]
    assert not list((tmp_path / "sr").glob("*.png"))


def without_paths(args):
    """Command-line words with the values of the path flags blanked out."""
    return [("PATH" if i and args[i - 1] in PATH_FLAGS else word) for i, word in enumerate(args)]


def test_test_sh_keeps_the_seed_commands(tmp_path):
    readme = shared_path("seed", "HybriMamba-README.md")
    seed = [c[1:] for s in readme_blocks(readme, tmp_path) for c in script_calls(s, tmp_path)
            if Path(c[0]).name == "test.py"]
    ours = [c[1:] for c in script_calls(ROOT / "test.sh", tmp_path) if Path(c[0]).name == "test.py"]
    assert len(seed) == 2 and sorted(map(without_paths, ours)) == sorted(map(without_paths, seed))
    # script_calls does not keep the call order: pair each input folder with its output folder
    datasets = {Path(a[a.index("--save_as_dir") + 1]).name: a[a.index("--dataroot") + 1] for a in ours}
    assert sorted(datasets) == ["Mamba-celeba", "Mamba-helen"]
    assert "Helen" in datasets["Mamba-helen"] and "CelebA" in datasets["Mamba-celeba"]


def test_test_sh_runs_on_a_training_checkpoint(files, weights, tmp_path):
    """test.sh itself, its paths set from the environment: a 16x16 LR and an already upsampled 128x128 input."""
    helen, celeba = tmp_path / "helen", tmp_path / "celeba"
    shutil.copytree(files / "lr", helen, ignore=lambda d, names: [n for n in names if n != "b.png"])
    rng = np.random.default_rng(3)
    celeba.mkdir()
    Image.fromarray(random_rgb(rng, 128, 128)).save(celeba / "up.png")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"  # a wrapper, not a symlink: a venv is found next to the called path
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    env = {**ONE_THREAD, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": "",
           "HELEN_LR": str(helen), "CELEBA_LR": str(celeba), "CKPT": str(files / "train.pt"),
           "HELEN_OUT": str(tmp_path / "out_helen"), "CELEBA_OUT": str(tmp_path / "out_celeba")}
    done = subprocess.run(["bash", "test.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("--gpus 1 but CUDA is not available: running on the CPU") == 2
    # Output captured in a pipe: a plain progress line per run instead of tqdm's bar ("100%|####|").
    assert "%|" not in done.stderr and done.stderr.count("super-resolving: 1/1 img (100%)") == 2
    ema = weights[1]
    for out, src in ((tmp_path / "out_helen" / "b.png", helen / "b.png"),
                     (tmp_path / "out_celeba" / "up.png", celeba / "up.png")):
        assert_same_picture(read(out), oracle(ema, src, 128), out)

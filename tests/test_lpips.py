"""LPIPS: calc_lpips.py and build_lpips against lpips.LPIPS built by the package's own code."""
import csv
import os
import re
import subprocess
import sys
import urllib.error
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision

from tests.conftest import shared_path
from utils.errors import UserError
from utils.evaluation.folder_eval import evaluate_folders
from utils.evaluation.lpips_metric import BACKBONE_ENV, build_lpips, load_backbone, lpips_distance
from utils.image_io import read_rgb, write_rgb

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights():
    """The shared AlexNet backbone weights, once per module (``alexnet_weights`` is per test)."""
    return shared_path("weights", "alexnet_imagenet_features.pth")


@pytest.fixture(scope="module")
def ours(weights):
    return build_lpips("alex", backbone_weights=weights)


@pytest.fixture(scope="module")
def reference_lpips(weights):
    """``lpips.LPIPS(net="alex")`` on its normal pretrained path, with torchvision's AlexNet
    constructor handing it the shared weights: lpips's own code slices the backbone."""
    import lpips

    state = torch.load(weights, weights_only=True)
    make_alexnet = torchvision.models.alexnet

    def pretrained_alexnet(*args, **kwargs):
        net = make_alexnet()
        missing, unexpected = net.load_state_dict(state, strict=False)
        assert not unexpected and all(k.startswith("classifier.") for k in missing)
        return net

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lpips.pretrained_networks.tv, "alexnet", pretrained_alexnet)
        return lpips.LPIPS(net="alex", verbose=False).eval()


def as_input(img):
    """RGB uint8 (H, W, 3) -> (1, 3, H, W) in [-1, 1], written out here rather than via the project."""
    return torch.tensor(img, dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1


@pytest.fixture
def faces(celeba_dir, tmp_path):
    """Three real faces as GT (PNG) and their heavy Gaussian blur as SR."""
    for path in sorted((celeba_dir / "val").glob("*.jpg"))[:3]:
        img = read_rgb(path)
        write_rgb(tmp_path / "gt" / f"{path.stem}.png", img, "test image")
        write_rgb(tmp_path / "sr" / f"{path.stem}.png", cv2.GaussianBlur(img, (0, 0), 4), "test image")
    return tmp_path / "gt", tmp_path / "sr"


def test_calc_lpips_cli_equals_lpips_package(faces, reference_lpips, alexnet_weights, tmp_path):
    gt_dir, sr_dir = faces
    out_csv = tmp_path / "lpips.csv"
    env = {**os.environ, BACKBONE_ENV: str(alexnet_weights)}  # the option's default
    res = subprocess.run([sys.executable, "calc_lpips.py", str(gt_dir), str(sr_dir), "--device", "cpu",
                          "--batch_size", "2", "--csv", str(out_csv)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    with open(out_csv) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    values = []
    for row in rows:
        gt, sr = read_rgb(gt_dir / row["gt"]), read_rgb(sr_dir / row["sr"])
        with torch.no_grad():
            expected = reference_lpips(as_input(gt), as_input(sr)).item()
        assert float(row["lpips"]) == pytest.approx(expected, abs=1e-5)
        # real ImageNet weights: a heavy blur of a face is clearly, but not maximally, different
        assert 0.1 < expected < 1.0
        values.append(expected)
    mean = float(re.search(r"^LPIPS \(alex\): ([0-9.]+)", res.stdout, re.M).group(1))
    assert mean == pytest.approx(np.mean(values), abs=6e-5)


def test_identical_images_give_zero(faces, ours):
    gt_dir, _ = faces
    rows, summary = evaluate_folders(gt_dir, gt_dir, psnr_ssim=False, lpips_model=ours, progress=False)
    assert [r["lpips"] for r in rows] == [0.0, 0.0, 0.0] and summary["lpips"] == 0.0
    assert summary["psnr"] is None and summary["lpips_net"] == "alex"


def test_full_state_dict_with_classifier_is_accepted(alexnet_weights, reference_lpips, tmp_path):
    state = torch.load(alexnet_weights, weights_only=True)
    state["classifier.6.bias"] = torch.zeros(1000)
    torch.save(state, tmp_path / "full.pth")
    model = build_lpips("alex", backbone_weights=tmp_path / "full.pth")
    x, y = torch.rand(2, 1, 3, 48, 40) * 2 - 1
    assert torch.allclose(lpips_distance(model, x, y), reference_lpips(x, y).flatten(), atol=1e-6)


def test_bad_weight_files_are_clear_errors(ours, weights, tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_lpips(backbone_weights=tmp_path / "absent.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="garbage.pth.*not a readable"):
        build_lpips(backbone_weights=tmp_path / "garbage.pth")
    # key and shape checks run before anything is loaded, so the shared model stays intact
    with pytest.raises(UserError, match=r"keys.pth: missing backbone keys features\.0\.weight"):
        load_backbone(ours, {"conv.weight": torch.zeros(1)}, "keys.pth")
    state = torch.load(weights, weights_only=True)
    state["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    with pytest.raises(UserError, match=r"shape.pth: 'features\.3\.weight'.*\(192, 64, 3, 3\).*\(192, 64, 5, 5\)"):
        load_backbone(ours, state, "shape.pth")


def test_offline_download_failure_points_to_backbone_weights(monkeypatch):
    import torchvision.models._api as tv_api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    monkeypatch.delenv(BACKBONE_ENV, raising=False)
    with pytest.raises(UserError, match="--backbone_weights"):
        build_lpips("alex")


def test_size_mismatch_names_the_pair(faces, ours):
    gt_dir, sr_dir = faces
    name = sorted(p.name for p in sr_dir.glob("*.png"))[0]
    write_rgb(sr_dir / name, np.zeros((64, 64, 3), np.uint8), "test image")
    with pytest.raises(UserError, match=rf"size mismatch.*{name}"):
        evaluate_folders(gt_dir, sr_dir, psnr_ssim=False, lpips_model=ours, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_equals_cpu(ours, weights):
    x, y = torch.rand(2, 4, 3, 64, 64) * 2 - 1
    cpu = lpips_distance(ours, x, y)
    gpu = lpips_distance(build_lpips(backbone_weights=weights, device="auto"), x, y)
    assert torch.allclose(cpu, gpu, atol=1e-4)


def test_faces_too_small_for_alexnet_are_a_clear_error(ours):
    from utils.evaluation.lpips_metric import lpips_distance

    with pytest.raises(UserError, match="at least 31x31"):
        lpips_distance(ours, torch.zeros(1, 3, 30, 30), torch.zeros(1, 3, 30, 30))
    assert lpips_distance(ours, torch.zeros(1, 3, 31, 31), torch.zeros(1, 3, 31, 31)).item() == 0.0


def test_lpips_runs_without_tf32_and_restores_the_setting(ours, monkeypatch):
    # cuDNN's TF32 default would move GPU scores by ~1e-3: LPIPS must see it off, and leave it as it was.
    seen = []
    forward = type(ours).forward
    monkeypatch.setattr(type(ours), "forward",
                        lambda self, *a, **k: seen.append(torch.backends.cudnn.allow_tf32) or forward(self, *a, **k))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    lpips_distance(ours, torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    assert seen == [False] and torch.backends.cudnn.allow_tf32 is True

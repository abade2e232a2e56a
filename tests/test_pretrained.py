"""The shipped 8x model (pretrained/HybriMamba-tiny-x8.safetensors): it loads by itself, beats bicubic on real
faces, and its output on one fixed face does not change silently."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from models import HybriMamba
from models.checkpoint import load_checkpoint, save_checkpoint
from models.pretrained import SHIPPED_MODEL
from tests.conftest import ROOT
from utils.demo.faces import astronaut_face
from utils.errors import UserError
from utils.training.export_model import export_model

SHIPPED = SHIPPED_MODEL
NETWORK_KEYS = ("embed_dim", "depth", "n_layers", "expand", "d_state", "mlp_ratio")
# sha256 of the PNG that test.py writes for the astronaut's face with the shipped model and the `torch`
# scan. Regenerate it only on purpose (a new shipped model, or a deliberate change of the network's
# arithmetic): `python -m tests.test_pretrained` prints the current value.
ASTRONAUT_SR_SHA256 = "4f042846c44c5d82b2a5a2401b4974050bbe733f1851454d2e6d96a0db8e685f"
CELEBA_BOX = (19, 63, 156, 200)
FACES = 12


def y_truncated(img):
    """BT.601 Y of RGB uint8, truncated to an integer the way the Table 1 lineage does (docs/architecture.md §5)."""
    r, g, b = (img[..., i].astype(np.int64) for i in range(3))
    # 16 + (65.481 R + 128.553 G + 24.966 B) / 255, in exact integer arithmetic (units of 1/255000).
    return 16 + (65481 * r + 128553 * g + 24966 * b) // 255000


def psnr_y(hr, sr):
    mse = np.mean((y_truncated(hr) - y_truncated(sr)).astype(np.float64) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse)


def test_shipped_model_is_small_and_carries_its_network():
    assert SHIPPED.stat().st_size < 5 * 2**20
    model = HybriMamba.from_pretrained(SHIPPED)
    assert model.config.to_dict() == {"in_chans": 3, "embed_dim": 16, "depth": 1, "n_layers": 1, "expand": 1.0,
                                      "d_state": 4, "mlp_ratio": 2.0}
    assert model.task == {"scale_factor": 8, "load_size": 128}
    assert model.provenance["iterations"] == 3127 and model.provenance["weights"] == "EMA"
    assert model.provenance["training_command"].startswith("python train.py ")
    assert model.provenance["scores"]["count"] == 780
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())


def run_test_py(lr_dir, out_dir, *extra):
    done = subprocess.run([sys.executable, "test.py", "--gpus", "0", "--dataroot", str(lr_dir), "--pretrain_model_path",
                           str(SHIPPED), "--save_as_dir", str(out_dir), "--num_threads", "0", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def test_shipped_model_beats_bicubic_on_real_celeba_faces(celeba_dir, tmp_path):
    # Every 65th validation face, cropped as data/prepare_celeba.py does and degraded with PIL here.
    paths = sorted((celeba_dir / "val").iterdir())[::65][:FACES]
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    hrs, bicubics = {}, {}
    for path in paths:
        hr = Image.open(path).convert("RGB").crop(CELEBA_BOX).resize((128, 128), Image.BICUBIC)
        lr = hr.resize((16, 16), Image.BICUBIC)
        lr.save(lr_dir / f"{path.stem}.png")
        hrs[path.stem], bicubics[path.stem] = np.asarray(hr), np.asarray(lr.resize((128, 128), Image.BICUBIC))
    run_test_py(lr_dir, tmp_path / "sr")  # no network flags: the checkpoint carries them
    sr = {stem: np.asarray(Image.open(tmp_path / "sr" / f"{stem}.png").convert("RGB")) for stem in hrs}
    model = np.mean([psnr_y(hrs[s], sr[s]) for s in hrs])
    bicubic = np.mean([psnr_y(hrs[s], bicubics[s]) for s in hrs])
    assert model > bicubic + 1.5, (model, bicubic)  # +2.04 dB on all 780 validation faces


def test_export_keeps_one_set_of_weights_and_the_network_options_only(tmp_path):
    torch.manual_seed(0)
    model = HybriMamba(embed_dim=4, depth=1, n_layers=1)
    raw = model.state_dict()
    ema = {k: v + 1 for k, v in raw.items()}
    options = {"embed_dim": 4, "depth": 1, "n_layers": 1, "expand": 1.5, "d_state": 8, "mlp_ratio": 2.0,
               "load_size": 128, "scale_factor": 8, "dataroot": "/home/someone/faces", "lr": 4e-4}
    src = tmp_path / "latest.pt"
    save_checkpoint(src, {"model": raw, "ema": ema, "optimizer": {"state": {}}, "options": options, "iteration": 7})
    assert export_model(src, tmp_path / "out.pt").provenance["weights"] == "EMA"
    out = load_checkpoint(tmp_path / "out.pt")
    assert set(out["options"]) == {"in_chans", *NETWORK_KEYS, "load_size", "scale_factor"}
    assert out["iteration"] == 7 and "optimizer" not in out and "ema" not in out
    assert all(torch.equal(out["model"][k], ema[k]) for k in raw)
    assert export_model(src, tmp_path / "raw.pt", prefer_ema=False).provenance["weights"] == "raw"
    with pytest.raises(UserError, match="is the input SRC"):
        export_model(src, src)


def test_test_sh_defaults_to_the_shipped_model(tmp_path):
    if (ROOT / "ckpt" / "Mamba-SRx8" / "latest.pt").exists():
        pytest.skip("this checkout has ckpt/Mamba-SRx8/latest.pt, which test.sh prefers to the shipped model")
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    Image.fromarray(astronaut_face(128)).resize((16, 16), Image.BICUBIC).save(lr_dir / "astronaut.png")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"  # test.sh calls `python`: this interpreter, whatever PATH holds
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key != "CKPT"}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", CUDA_VISIBLE_DEVICES="", HELEN_LR=str(lr_dir),
               CELEBA_LR=str(lr_dir), HELEN_OUT=str(tmp_path / "helen"), CELEBA_OUT=str(tmp_path / "celeba"))
    done = subprocess.run(["bash", "test.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"test.sh: using ./{SHIPPED_MODEL.relative_to(ROOT)} (" in done.stdout  # the one default, in bash too
    for out in ("helen", "celeba"):
        assert np.asarray(Image.open(tmp_path / out / "astronaut.png")).shape == (128, 128, 3)


def astronaut_sr_sha256(tmp_path):
    lr_dir = tmp_path / "astronaut_lr"
    lr_dir.mkdir()
    Image.fromarray(astronaut_face(128)).resize((16, 16), Image.BICUBIC).save(lr_dir / "astronaut.png")
    run_test_py(lr_dir, tmp_path / "astronaut_sr", "--scan_backend", "torch")
    return hashlib.sha256((tmp_path / "astronaut_sr" / "astronaut.png").read_bytes()).hexdigest()


def test_shipped_model_output_on_a_fixed_face_is_unchanged(tmp_path):
    assert astronaut_sr_sha256(tmp_path) == ASTRONAUT_SR_SHA256, (
        "the shipped model's output changed; if that is intended, update ASTRONAUT_SR_SHA256 "
        "(python -m tests.test_pretrained prints it)")


if __name__ == "__main__":
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        print(astronaut_sr_sha256(Path(folder)))

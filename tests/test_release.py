"""Release files (safetensors), from_pretrained/save_pretrained, the export tool's formats and torch.hub."""
import json
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from models import HybriMamba
from models.checkpoint import load_checkpoint, load_weights, save_checkpoint
from models.pretrained import FOLDER_FILE, SHIPPED_MODEL, read_release, weights_checksum
from tests.conftest import ROOT
from utils.demo.faces import astronaut_face
from utils.errors import UserError
from utils.training.export_model import main as export_main

TINY = {"embed_dim": 4, "depth": 1, "n_layers": 1, "expand": 1.0, "d_state": 4, "mlp_ratio": 2.0}


@pytest.fixture
def tiny(one_thread):
    torch.manual_seed(0)
    model = HybriMamba(**TINY, scan_backend="torch")
    with torch.no_grad():  # away from the init, so that a mix-up of tensors shows in the outputs
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_pretrained_then_from_pretrained_gives_the_same_network(tiny, tmp_path):
    tiny.provenance = {"training_command": "python train.py --embed_dim 4"}
    file = tiny.save_pretrained(tmp_path / "release", provenance={"iterations": 12})
    assert file == tmp_path / "release" / FOLDER_FILE
    for path in (tmp_path / "release", file):
        loaded = HybriMamba.from_pretrained(path, scan_backend="torch")
        assert not loaded.training and loaded.config == tiny.config
        assert loaded.task == {"scale_factor": 8, "load_size": 128}
        assert loaded.provenance == {"training_command": "python train.py --embed_dim 4", "iterations": 12}
        assert same_weights(loaded.state_dict(), tiny.state_dict())
    x = torch.rand(1, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), tiny.eval()(x))
    assert tiny.save_pretrained(tmp_path / "one.safetensors") == tmp_path / "one.safetensors"


def test_a_release_is_plain_safetensors_with_json_metadata(tiny, tmp_path):
    path = tiny.save_pretrained(tmp_path / "m.safetensors", provenance={"scores": {"psnr": 25.0}})
    # Read with the safetensors package alone: any safetensors reader gets the weights and the metadata.
    assert same_weights(safetensors.torch.load_file(str(path)), tiny.state_dict())
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "hybrimamba" and meta["format_version"] == "1"
    assert json.loads(meta["config"]) == tiny.config.to_dict()
    assert json.loads(meta["task"]) == {"scale_factor": 8, "load_size": 128}
    assert json.loads(meta["provenance"]) == {"scores": {"psnr": 25.0}}
    assert meta["weights_sha256"] == weights_checksum(tiny.state_dict())


def rewrite(path, tensors=None, **meta_changes):
    """Write ``path`` again with its tensors (or ``tensors``) and its metadata changed."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = {**f.metadata(), **meta_changes}
        state = tensors or {k: f.get_tensor(k) for k in f.keys()}
    safetensors.torch.save_file(state, str(path), metadata={k: v for k, v in meta.items() if v is not None})


@pytest.mark.parametrize("damage,message", [
    ("truncated", "not a readable safetensors file"),
    ("flipped byte", "do not match the checksum"),
    ("foreign", "not a HybriMamba release"),
    ("version 2", "format version '2'"),
    ("config value", "embed_dim"),
    ("config key", "unknown network option"),
    ("wrong weights", "weights do not fit"),
    ("nan weights", "non-finite values"),
])
def test_damaged_or_foreign_files_are_one_line_errors_naming_the_file(tiny, tmp_path, damage, message):
    path = tiny.save_pretrained(tmp_path / "m.safetensors")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "flipped byte":
        data = bytearray(path.read_bytes())
        data[-10] ^= 1
        path.write_bytes(bytes(data))
    elif damage == "foreign":
        safetensors.torch.save_file(tiny.state_dict(), str(path))
    elif damage == "version 2":
        rewrite(path, format_version="2")
    elif damage == "config value":
        rewrite(path, config=json.dumps({**tiny.config.to_dict(), "embed_dim": "four"}))
    elif damage == "config key":
        rewrite(path, config=json.dumps({**tiny.config.to_dict(), "heads": 2}))
    elif damage == "nan weights":  # a diverged network saved as it was: the checksum matches, the values do not
        state = {k: v.clone() for k, v in tiny.state_dict().items()}
        state["shallow.0.weight"][0, 0, 0, 0] = float("nan")
        rewrite(path, tensors=state, weights_sha256=weights_checksum(state))
    else:  # the config of a wider network than the weights, checksum made to match
        state = tiny.state_dict()
        config = json.dumps({**tiny.config.to_dict(), "embed_dim": 8})
        rewrite(path, config=config, weights_sha256=weights_checksum(state))
    with pytest.raises(UserError, match=message) as err:
        HybriMamba.from_pretrained(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_from_pretrained_names_what_to_do_with_other_paths(tiny, tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        HybriMamba.from_pretrained(tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match=r"export_model .*ckpt.pt OUT.safetensors"):
        save_checkpoint(tmp_path / "ckpt.pt", {"model": tiny.state_dict()})
        HybriMamba.from_pretrained(tmp_path / "ckpt.pt")
    tiny.save_pretrained(tmp_path / "two" / "a.safetensors")
    tiny.save_pretrained(tmp_path / "two" / "b.safetensors")
    with pytest.raises(UserError, match="2 .safetensors files and no model.safetensors"):
        HybriMamba.from_pretrained(tmp_path / "two")


def test_save_pretrained_never_replaces_a_file_it_did_not_write(tiny, tmp_path):
    foreign = tmp_path / "notes.safetensors"
    foreign.write_text("my notes")
    with pytest.raises(UserError, match="not a HybriMamba release; it is not replaced"):
        tiny.save_pretrained(foreign)
    assert foreign.read_text() == "my notes"
    ours = tiny.save_pretrained(tmp_path / "m.safetensors")
    tiny.provenance = {"iterations": 2}
    tiny.save_pretrained(ours)  # its own kind of file: replaced
    assert read_release(ours).provenance == {"iterations": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "notes.safetensors"]  # no temp files left


def training_checkpoint(tiny, path):
    """A checkpoint as train.py writes it: raw and EMA weights, the optimizer, every option."""
    ema = {k: v + 1 for k, v in tiny.state_dict().items()}
    options = {**{k: v for k, v in TINY.items()}, "load_size": 128, "scale_factor": 8, "lr": 4e-4,
               "dataroot": "/home/someone/faces/celeba_train", "name": "tiny", "ema": 0.995, "amp": "fp32",
               "explicit": ["dataroot", "embed_dim", "lr", "name"]}
    save_checkpoint(path, {"model": tiny.state_dict(), "ema": ema, "optimizer": {"state": {}}, "options": options,
                           "iteration": 40})
    return ema


def test_export_tool_writes_the_format_of_the_extension(tiny, tmp_path):
    ema = training_checkpoint(tiny, tmp_path / "latest.pt")
    (tmp_path / "metrics.json").write_text(json.dumps({"psnr": 25.5, "ssim": 0.71, "count": 3, "gt_dir": "/x/HR"}))
    assert export_main([str(tmp_path / "latest.pt"), str(tmp_path / "out.safetensors"),
                        "--scores", str(tmp_path / "metrics.json")]) == 0
    model = HybriMamba.from_pretrained(tmp_path / "out.safetensors")
    assert same_weights(model.state_dict(), ema)
    assert model.config.to_dict() == {**TINY, "in_chans": 3}
    provenance = model.provenance
    assert provenance["weights"] == "EMA" and provenance["iterations"] == 40 and provenance["source"] == "latest.pt"
    assert provenance["scores"] == {"psnr": 25.5, "ssim": 0.71, "count": 3}
    # The typed flags, with paths cut to their last part (no folder of the training machine).
    assert provenance["training_command"] == ("python train.py --dataroot celeba_train --embed_dim 4 --lr 0.0004 "
                                              "--name tiny")

    assert export_main([str(tmp_path / "out.safetensors"), str(tmp_path / "again.pt"), "--raw"]) == 0
    legacy = load_checkpoint(tmp_path / "again.pt")
    assert same_weights(legacy["model"], ema) and legacy["iteration"] == 40
    assert legacy["options"] == {**TINY, "in_chans": 3, "load_size": 128, "scale_factor": 8}

    assert export_main([str(tmp_path / "latest.pt"), str(tmp_path / "raw.safetensors"), "--raw"]) == 0
    assert same_weights(read_release(tmp_path / "raw.safetensors").state_dict, tiny.state_dict())


def test_export_tool_refusals(tiny, tmp_path):
    training_checkpoint(tiny, tmp_path / "latest.pt")
    src = str(tmp_path / "latest.pt")
    with pytest.raises(UserError, match=r"unknown format \.bin; end the name in .safetensors, .onnx, .pt"):
        export_main([src, str(tmp_path / "out.bin")])
    with pytest.raises(UserError, match="is the input SRC"):
        export_main([src, src])
    existing = tmp_path / "out.safetensors"
    existing.write_text("keep me")
    with pytest.raises(UserError, match="exists and is not a file HybriMamba wrote .*; pass --overwrite"):
        export_main([src, str(existing)])
    assert existing.read_text() == "keep me"
    export_main([src, str(existing), "--overwrite"])
    assert read_release(existing).provenance["iterations"] == 40
    with pytest.raises(UserError, match="--size and --dynamic shape an ONNX export"):
        export_main([src, str(tmp_path / "x.safetensors"), "--dynamic"])
    save_checkpoint(tmp_path / "bare.pt", tiny.state_dict())
    with pytest.raises(UserError, match="not a training checkpoint of train.py"):
        export_main([str(tmp_path / "bare.pt"), str(tmp_path / "y.safetensors")])


def test_weights_loading_accepts_a_release_but_resuming_refuses_it(tiny, tmp_path):
    path = tiny.save_pretrained(tmp_path / "m.safetensors", provenance={"weights": "EMA", "iterations": 9})
    fresh = HybriMamba(**TINY)
    assert load_weights(fresh, path) == f"EMA weights from {path} (iteration 9)"
    assert same_weights(fresh.state_dict(), tiny.state_dict())
    with pytest.raises(UserError, match="holds weights only, no training state to resume"):
        load_checkpoint(path)


def lr_faces(folder):
    """Two 16x16 LR faces: the astronaut's (real) and a grey one with a gradient (synthetic)."""
    folder.mkdir()
    Image.fromarray(astronaut_face(128)).resize((16, 16), Image.BICUBIC).save(folder / "astronaut.png")
    ramp = np.linspace(40, 220, 16 * 16 * 3).reshape(16, 16, 3).astype(np.uint8)
    Image.fromarray(ramp).save(folder / "ramp.png")


def test_test_py_gives_the_same_faces_from_safetensors_and_from_the_older_pt(tmp_path):
    release = read_release(SHIPPED_MODEL)
    legacy = tmp_path / "HybriMamba-tiny-x8.pt"  # what the export tool wrote before safetensors
    options = {k: v for k, v in release.config.to_dict().items() if k != "in_chans"}  # it stored no in_chans
    save_checkpoint(legacy, {"model": release.state_dict, "options": {**options, **release.task},
                             "iteration": 1800, "weights": "EMA"})
    lr_faces(tmp_path / "lr")
    outputs = {}
    for model in (SHIPPED_MODEL, legacy):
        out = tmp_path / model.suffix.lstrip(".")
        done = subprocess.run([sys.executable, "test.py", "--gpus", "0", "--dataroot", str(tmp_path / "lr"),
                               "--pretrain_model_path", str(model), "--save_as_dir", str(out), "--num_threads", "0",
                               "--scan_backend", "torch"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[model.suffix] = {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}
    assert list(outputs[".pt"]) == ["astronaut.png", "ramp.png"]
    assert outputs[".pt"] == outputs[".safetensors"]


HUB_SNIPPET = """
import sys, torch
root = sys.argv[1]
shipped = torch.hub.load(root, "hybrimamba_tiny_x8", source="local", scan_backend="torch")
also = torch.hub.load(root, "hybrimamba", source="local", pretrained=True, scan_backend="torch")
new = torch.hub.load(root, "hybrimamba", source="local", pretrained=False, embed_dim=8, depth=1)
x = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save({"shipped": shipped(x), "also": also(x)}, sys.argv[3])
print(shipped.training, new.training, new.config.embed_dim, new.config.depth, type(shipped).__name__)
try:
    torch.hub.load(root, "hybrimamba", source="local", pretrained=True, embed_dim=8)
except ValueError as err:
    print("refused:", err)
"""


def test_torch_hub_loads_the_shipped_model_from_the_repository(tmp_path):
    face = Image.fromarray(astronaut_face(128)).resize((16, 16), Image.BICUBIC).resize((128, 128), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(face).transpose(2, 0, 1).copy()).float()[None] / 127.5 - 1
    torch.save(x, tmp_path / "x.pt")
    # A user's own folder: nothing of the repository on sys.path but what torch.hub adds.
    args = [str(ROOT), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")]
    done = subprocess.run([sys.executable, "-c", HUB_SNIPPET, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "False True 8 1 HybriMamba"
    assert lines[1].startswith("refused: pretrained=True takes its configuration from the file")
    expected = HybriMamba.from_pretrained(SHIPPED_MODEL, scan_backend="torch")
    with torch.no_grad():
        want = expected(x)
    got = torch.load(tmp_path / "y.pt")
    # Another process, maybe another thread count: the same network up to float32 summation order.
    torch.testing.assert_close(got["shipped"], want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got["also"], want, rtol=0, atol=1e-5)
    assert not torch.equal(want, x)


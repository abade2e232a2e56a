"""ONNX: the exporter-friendly formulation computes what the network computes, and the exported graph
gives the same faces in onnxruntime as PyTorch."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import models.onnx_friendly as onnx_friendly_module
from models import HybriMamba
from models.fwm import FWM, FourierBranch
from models.image_ssm import ImageSSM
from models.onnx_friendly import (
    INPUT,
    OUTPUT,
    ChunkedImageSSM,
    RealFourierBranch,
    chunked_scan,
    onnx_friendly,
    real_irfft2,
    real_rfft2,
)
from models.pretrained import SHIPPED_MODEL
from models.selective_scan import selective_scan
from tests.conftest import ROOT, in_ci
from utils.errors import UserError
from utils.training.export_model import main as export_main

CELEBA_BOX = (19, 63, 156, 200)  # data/prepare_celeba.py's crop
FACES = 6
# The formulation runs torch's scan operator, which older torch versions (the project's floor) lack.
NO_SCAN = f"torch {torch.__version__} has no scan operator (ONNX export needs a newer torch)"
needs_scan = pytest.mark.skipif(onnx_friendly_module.scan is None, reason=NO_SCAN)


@pytest.mark.parametrize("h,w", [(8, 8), (7, 5), (6, 9), (32, 24)])
def test_real_dft_pairs_equal_torch_fft(h, w):
    torch.manual_seed(0)
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    spectrum = torch.fft.rfft2(x, norm="ortho")
    re, im = real_rfft2(x)
    torch.testing.assert_close(re, spectrum.real, rtol=0, atol=1e-12)
    torch.testing.assert_close(im, spectrum.imag, rtol=0, atol=1e-12)
    # Any half spectrum, also one that is not the transform of a real image (irfft's Hermitian rules).
    z = torch.randn_like(spectrum)
    torch.testing.assert_close(real_irfft2(z.real, z.imag, h, w), torch.fft.irfft2(z, s=(h, w), norm="ortho"),
                               rtol=0, atol=1e-12)


def test_real_fourier_branch_equals_the_complex_one_with_its_zero_bins():
    torch.manual_seed(1)
    branch = FourierBranch(4).double()
    x = torch.randn(2, 4, 12, 10, dtype=torch.float64)
    x[1, 2] = 0  # a dead channel: every bin is zero, where the phase is 1 and the amplitude network's bias shows
    torch.testing.assert_close(RealFourierBranch(branch)(x), branch(x), rtol=0, atol=1e-12)


@needs_scan
@pytest.mark.parametrize("length,chunk", [(1, 4), (5, 8), (32, 8), (100, 8), (257, 16)])
def test_chunked_scan_equals_the_sequential_float64_oracle(length, chunk):
    torch.manual_seed(length)
    bt, k, dn, n = 2, 4, 3, 5
    u = torch.randn(bt, k * dn, length, dtype=torch.float64)
    delta = torch.randn_like(u) * 0.7
    A = -torch.rand(k * dn, n, dtype=torch.float64) * 4
    B, C = (torch.randn(bt, k, n, length, dtype=torch.float64) for _ in range(2))
    D, bias = torch.randn(k * dn, dtype=torch.float64), torch.randn(k * dn, dtype=torch.float64) * 0.3
    want = selective_scan(u, delta, A, B, C, D=D, delta_bias=bias, delta_softplus=True, backend="ref")
    torch.testing.assert_close(chunked_scan(u, delta, A, B, C, D, bias, chunk=chunk), want, rtol=0, atol=1e-12)


@needs_scan
def test_onnx_friendly_copy_computes_the_network_and_leaves_the_model_alone():
    torch.manual_seed(2)
    model = HybriMamba(embed_dim=4, depth=1, n_layers=1, expand=1.0, d_state=4, scan_backend="ref").double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        friendly = onnx_friendly(model)
        x = torch.rand(2, 3, 20, 28, dtype=torch.float64) * 2 - 1  # H/4 odd: the wavelets' padding too
        torch.testing.assert_close(friendly(x), model(x), rtol=0, atol=1e-10)
    kinds = [type(m) for m in friendly.modules()]
    assert kinds.count(RealFourierBranch) == kinds.count(ChunkedImageSSM) == 7
    assert FourierBranch not in [type(m) for m in friendly.modules() if not isinstance(m, ChunkedImageSSM)]
    assert sum(isinstance(m, ImageSSM) for m in model.modules()) == 7  # the model keeps its own modules
    assert not any(isinstance(m, (RealFourierBranch, ChunkedImageSSM)) for m in model.modules())


def require_onnxruntime():
    if onnx_friendly_module.scan is None:
        pytest.skip(NO_SCAN)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        if in_ci():
            pytest.fail(f"{err.name} is missing; CI installs requirements-extra.txt", pytrace=False)
        pytest.skip(f"{err.name} is not installed (pip install {err.name})")
    return onnxruntime


def run_python(*args):
    """Run python with ``args`` from the repository root. Exports run in their own process: tracing starts
    autograd's worker threads, after which this process could no longer fork() workers that backpropagate
    (tests/test_train.py's DDP test forks)."""
    done = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def shipped_onnx(tmp_path_factory):
    """The shipped model exported by the export tool, as a user runs it, at its fixed size (B = 1, 128x128)."""
    require_onnxruntime()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    assert "wrote" in run_python("-m", "utils.training.export_model", SHIPPED_MODEL, path)
    return path


def test_onnxruntime_gives_pytorchs_faces_on_real_celeba_faces(shipped_onnx, celeba_dir):
    ort = require_onnxruntime()
    session = ort.InferenceSession(str(shipped_onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [INPUT] and [o.name for o in session.get_outputs()] == [OUTPUT]
    assert session.get_inputs()[0].shape == [1, 3, 128, 128]
    model = HybriMamba.from_pretrained(SHIPPED_MODEL, scan_backend="cpp")
    worst = 0.0
    for path in sorted((celeba_dir / "val").iterdir())[::97][:FACES]:
        hr = Image.open(path).convert("RGB").crop(CELEBA_BOX).resize((128, 128), Image.BICUBIC)
        up = hr.resize((16, 16), Image.BICUBIC).resize((128, 128), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(up).transpose(2, 0, 1).copy()).float()[None] / 127.5 - 1
        with torch.no_grad():
            want = model(x).numpy()
        got = session.run(None, {INPUT: x.numpy()})[0]
        assert np.abs(want - x.numpy()).max() > 0.05  # the network changes the face: the comparison means something
        worst = max(worst, float(np.abs(got - want).max()))
    assert worst < 1e-4, worst


def test_the_onnx_file_carries_the_release_metadata(shipped_onnx):
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(shipped_onnx), load_external_data=False).metadata_props}
    model = HybriMamba.from_pretrained(SHIPPED_MODEL)
    assert meta["format"] == "hybrimamba" and json.loads(meta["config"]) == model.config.to_dict()
    assert json.loads(meta["task"]) == model.task and json.loads(meta["provenance"]) == model.provenance
    assert meta["size"] == "1x3x128x128"


DYNAMIC_PARTS = """
import sys, torch
from torch import nn
from models.fwm import FWM
from models.image_ssm import ImageSSM
from models.onnx_friendly import INPUT, dynamic_example, onnx_friendly
parts = nn.Sequential(FWM(4), ImageSSM(4, d_state=4, dt_rank=1)).eval()
parts.load_state_dict(torch.load(sys.argv[1]))
example, shapes = dynamic_example(4)
with torch.no_grad():
    program = torch.onnx.export(onnx_friendly(parts), (example,), dynamo=True, input_names=[INPUT],
                                dynamic_shapes=shapes, verbose=False)
program.save(sys.argv[2])
"""


@needs_scan
def test_a_dynamic_graph_takes_other_sizes_and_batches(tmp_path):
    """The parts whose graph depends on the size (the Fourier and wavelet branches, the Image-SSM's scan) with
    export_onnx's dynamic shapes. (The whole network exports the same way with --dynamic, in about 6 minutes
    on 2 CPU cores, too long for the suite; measured: within 1.5e-5 of PyTorch on 20 real faces at 128x128,
    and at 64x96 (batch 2) and 136x120.)"""
    ort = require_onnxruntime()
    torch.manual_seed(3)
    parts = nn.Sequential(FWM(4), ImageSSM(4, d_state=4, dt_rank=1)).eval()
    with torch.no_grad():
        for p in parts.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    torch.save(parts.state_dict(), tmp_path / "parts.pt")
    run_python("-c", DYNAMIC_PARTS, tmp_path / "parts.pt", tmp_path / "parts.onnx")
    session = ort.InferenceSession(str(tmp_path / "parts.onnx"), providers=["CPUExecutionProvider"])
    for shape in ((1, 4, 32, 32), (3, 4, 16, 40)):
        x = torch.rand(shape) * 2 - 1
        with torch.no_grad():
            want = parts(x).numpy()
        np.testing.assert_allclose(session.run(None, {INPUT: x.numpy()})[0], want, rtol=0, atol=1e-4)


def test_a_missing_package_is_named_in_one_line():
    with pytest.raises(UserError, match="^ONNX export needs the package 'no_such_package': pip install no_such_"):
        onnx_friendly_module.require("no_such_package", "ONNX export")


def test_onnx_export_refusals(tmp_path):
    require_onnxruntime()
    with pytest.raises(UserError, match="--size 30: use a multiple of 4"):
        export_main([str(SHIPPED_MODEL), str(tmp_path / "x.onnx"), "--size", "30"])

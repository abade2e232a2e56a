"""The compiled CPU selective scan (`cpp` backend) against the sequential float64 oracle.

The first test that needs the extension builds it (about a minute on 2 cores, once per machine:
torch caches it). Tests are skipped only where there is no C++ compiler at all.
"""
import hashlib
import logging
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest
import torch

import models.selective_scan as scan_pkg
from models import HybriMamba
from models.selective_scan import cpu_kernel, resolve_backend, selective_scan
from models.selective_scan.cpu_kernel import selective_scan_cpp, vector_exp
from models.selective_scan.reference import selective_scan_ref
from tests.conftest import ROOT
from tests.test_selective_scan import assert_agree, make_inputs, relative_error, run
from utils.errors import UserError

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler")


@pytest.fixture(scope="module", autouse=True)
def built():
    reason = cpu_kernel.cpp_unavailable_reason()
    assert reason is None, f"the C++ scan did not build: {reason}"


# (bt, groups, width, n, length, chunk): the lanes of a block are 4 (float64) / 8 (float32) channels,
# 4 blocks make one work item.
CHECKPOINT_CASES = {
    "L not a multiple of T, ragged block": (2, 4, 11, 5, 77, 16),
    "L < T": (1, 4, 3, 8, 5, 32),
    "two items per group": (1, 2, 19, 3, 40, 8),
    "T = 1": (1, 4, 2, 2, 9, 1),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_float64_matches_ref_across_checkpoints(case):
    bt, groups, width, n, length, chunk = CHECKPOINT_CASES[case]
    inputs = make_inputs(bt, groups, width, n, length, seed=length)
    got = run(selective_scan_cpp, inputs, chunk=chunk)
    assert_agree(got, run(selective_scan_ref, inputs), 1e-9)


@pytest.mark.parametrize("softplus", [True, False])
def test_float64_single_group_without_skip_and_bias(softplus):
    inputs = make_inputs(bt=2, groups=1, width=6, n=4, length=50, grouped=False)
    del inputs["D"], inputs["delta_bias"]
    if not softplus:  # plain delta as step size: keep it positive so the decays stay below one
        inputs["delta"] = (inputs["delta"].detach().abs() * 0.3).requires_grad_()
    got = run(selective_scan, inputs, delta_softplus=softplus, backend="cpp")
    assert_agree(got, run(selective_scan_ref, inputs, delta_softplus=softplus), 1e-9)


def test_strong_decay_stays_finite_and_exact():
    # dt*A down to about -300 per step, and softplus of large arguments.
    inputs = make_inputs(bt=1, groups=2, width=2, n=4, length=50)
    inputs["delta"] = torch.full_like(inputs["delta"], 40.0).requires_grad_()
    got = run(selective_scan_cpp, inputs, chunk=16)
    assert all(torch.isfinite(x).all() for x in got)
    assert_agree(got, run(selective_scan_ref, inputs), 1e-9)


def test_gradcheck():
    inputs = make_inputs(bt=1, groups=2, width=3, n=2, length=7)
    names = list(inputs)
    assert torch.autograd.gradcheck(lambda *xs: selective_scan_cpp(**dict(zip(names, xs)), chunk=3),
                                    tuple(inputs.values()))


def test_float32_long_sequence():
    length = 16384
    inputs64 = make_inputs(bt=1, groups=4, width=2, n=8, length=length, seed=length)
    inputs32 = {k: v.detach().float().requires_grad_() for k, v in inputs64.items()}
    with torch.no_grad():
        assert relative_error(selective_scan_cpp(**inputs32), selective_scan_ref(**inputs64)) <= 1e-4
    # Gradients against the same kernel in float64, itself checked against the oracle above
    # (autograd through 16384 oracle steps takes too long for the suite).
    got = run(selective_scan_cpp, inputs32)
    assert got[0].dtype == torch.float32 and all(g.dtype == torch.float32 for g in got[1:])
    assert_agree(got, run(selective_scan_cpp, inputs64), 1e-4)


def test_thread_count_does_not_change_results():
    inputs = make_inputs(bt=2, groups=4, width=40, n=8, length=100, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(selective_scan_cpp, inputs)
        torch.set_num_threads(2)
        two = run(selective_scan_cpp, inputs)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_inference_path_gives_the_training_result():
    inputs = make_inputs(bt=2, groups=4, width=5, n=4, length=70, dtype=torch.float32)
    with_grad = selective_scan_cpp(**inputs)
    with torch.no_grad():
        no_grad = selective_scan_cpp(**inputs)
    with torch.inference_mode():
        inference = selective_scan_cpp(**inputs)
    assert with_grad.grad_fn is not None and no_grad.grad_fn is None
    assert torch.equal(with_grad, no_grad) and torch.equal(no_grad, inference)


def test_bfloat16_inputs_compute_in_float32():
    inputs = make_inputs(bt=2, groups=4, width=2, n=8, length=100, dtype=torch.bfloat16)
    got = run(selective_scan_cpp, inputs)
    assert got[0].dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in got[1:])
    # The same rounded inputs in float32: only the final rounding to bfloat16 differs.
    rounded = run(selective_scan_cpp, {k: v.detach().float().requires_grad_() for k, v in inputs.items()})
    assert_agree(got, rounded, 1e-2)
    assert_agree([got[0]], [rounded[0].bfloat16()], 0.0)


def test_vectorised_exp_accuracy():
    x64 = torch.linspace(-700, 700, 100_000, dtype=torch.float64)
    assert ((vector_exp(x64) - torch.exp(x64)) / torch.exp(x64)).abs().max() < 1e-15
    x32 = torch.linspace(-87, 88, 100_000, dtype=torch.float32)
    exact = torch.exp(x32.double())
    assert ((vector_exp(x32).double() - exact) / exact).abs().max() < 2e-7
    special = vector_exp(torch.tensor([float("nan"), -1e4, 0.0, -0.0, 1e-30, -1e-30, 1.0, -1.0]))
    assert special[0].isnan() and 0 <= special[1] < 1e-37
    assert torch.equal(special[2:6], torch.ones(4)) and abs(special[6] - torch.e) < 3e-7


def test_whole_network_matches_the_torch_backend():
    torch.manual_seed(0)
    model = HybriMamba(embed_dim=8, depth=1, n_layers=1, d_state=4).double()
    x = torch.randn(2, 3, 16, 12, dtype=torch.float64)
    results = {}
    for backend in ("torch", "cpp"):
        model.zero_grad()
        model.set_scan_backend(backend)
        y = model(x)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        results[backend] = [y.detach()] + [p.grad.clone() for p in model.parameters()]
    for got, expected in zip(results["cpp"], results["torch"]):
        assert relative_error(got, expected) <= 1e-9


# ---- building: a missing or failing compiler is never an error under auto ----

@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """As if never built, with an empty extension folder. The loaded extension is put back afterwards:
    loading it again in this process would make torch rebuild it under a new version name."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    monkeypatch.setattr(scan_pkg, "_logged", set())
    monkeypatch.setattr(cpu_kernel, "_loaded", None)
    return tmp_path


def test_missing_compiler_falls_back_to_torch(fresh_build, monkeypatch, caplog):
    monkeypatch.setenv("CXX", str(fresh_build / "no-such-compiler"))
    with caplog.at_level(logging.INFO, logger="hybrimamba"):
        assert resolve_backend("auto", "cpu") == "torch"
    messages = [r.getMessage() for r in caplog.records if r.name == "hybrimamba"]
    assert messages == [f"selective scan: backend 'torch' (auto on cpu; cpp unavailable: no C++ compiler: "
                        f"'{fresh_build / 'no-such-compiler'}' not found (install g++, or set CXX))"]
    with pytest.raises(UserError, match=r"--scan_backend cpp cannot run: no C\+\+ compiler") as err:
        resolve_backend("cpp", "cpu")
    assert "\n" not in str(err.value)


def test_compiler_error_is_reported_in_one_line(fresh_build, monkeypatch, caplog):
    compiler = fresh_build / "broken-c++"
    # Answers torch's version probes like g++, fails every compilation.
    compiler.write_text("#!/bin/sh\ncase \"$1\" in -*version) echo 12.2.0; exit 0;; esac\n"
                        "echo 'cpu_scan.cpp:1:1: error: simulated failure' >&2\nexit 1\n")
    compiler.chmod(compiler.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CXX", str(compiler))
    with caplog.at_level(logging.INFO, logger="hybrimamba"):
        with pytest.raises(UserError) as err:
            resolve_backend("cpp", "cpu")
        assert resolve_backend("auto", "cpu") == "torch"  # the failure is remembered, not retried
    assert str(err.value) == ("--scan_backend cpp cannot run: cpu_scan.cpp:1:1: error: simulated failure; "
                              "--scan_backend torch works everywhere")
    messages = [r.getMessage() for r in caplog.records if r.name == "hybrimamba"]
    assert messages[0].startswith("selective scan: compiling the C++ CPU kernel")
    assert messages[1].endswith("cpp unavailable: cpu_scan.cpp:1:1: error: simulated failure)")


# ---- a damaged build in the extension cache: never a crash ----
BACKENDS_OF_A_RUN = """
import logging
from models.selective_scan import resolve_backend
from utils.errors import UserError
logging.basicConfig(level=logging.INFO, format="%(message)s")
print("auto:", resolve_backend("auto", "cpu"), flush=True)
try:
    resolve_backend("cpp", "cpu")
    print("cpp: runs")
except UserError as err:
    print("cpp:", err)
"""


def backends_of_a_run(extensions):
    """A new process's 'auto' and 'cpp' backends with ``extensions`` as torch's extension folder: (exit status,
    stdout, stderr)."""
    done = subprocess.run([sys.executable, "-c", BACKENDS_OF_A_RUN], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions)})
    return done.returncode, done.stdout, done.stderr


def test_a_damaged_compiled_scan_falls_back_to_torch_instead_of_crashing(tmp_path):
    from torch.utils import cpp_extension
    name, _ = cpu_kernel.build_options()
    extensions = tmp_path / "extensions"
    build = extensions / name
    # A copy of this machine's build: up to date, so torch loads it as it is.
    shutil.copytree(cpp_extension._get_build_directory(name, verbose=False), build, ignore=shutil.ignore_patterns(
        "lock", "*.sha256"))
    library = build / f"{name}.so"
    intact = library.read_bytes()

    code, out, err = backends_of_a_run(extensions)  # loaded once in a child process, then here
    assert (code, out) == (0, "auto: cpp\ncpp: runs\n"), err[-3000:]
    stamp = build / f"{name}.so.sha256"
    assert stamp.read_text().strip() == hashlib.sha256(intact).hexdigest()

    for damage, how in (("truncated", r"ended by SIGBUS"), ("garbage", r"failed: ImportError: .*")):
        # damaged after its check (a full disk, a rebuild under this process's feet): the stamp no longer fits
        library.write_bytes(intact[:len(intact) // 2] if damage == "truncated" else os.urandom(len(intact)))
        code, out, err = backends_of_a_run(extensions)
        reason = (f"the compiled scan {re.escape(str(library))} is damaged \\(loading it in a test process {how}\\); "
                  f"delete {re.escape(str(build))} to rebuild it")
        assert code == 0, (damage, code, err[-3000:])
        assert re.fullmatch(f"auto: torch\ncpp: --scan_backend cpp cannot run: {reason}; --scan_backend torch works "
                            f"everywhere\n", out), (damage, out)
        assert re.search(f"^selective scan: backend 'torch' \\(auto on cpu; cpp unavailable: {reason}\\)$", err,
                         flags=re.M), (damage, err[-3000:])
        assert "Traceback" not in err

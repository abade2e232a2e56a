"""The triton selective-scan backend: its kernels compile for real GPUs (without one), its dispatch and
errors, its interpreter tests against the float64 oracle (tests/interpreter, in a subprocess with
TRITON_INTERPRET=1) and, on a CUDA GPU, the compiled kernels against the oracle.
"""
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models.selective_scan as scan_pkg
from models.selective_scan import resolve_backend, selective_scan, triton_backend
from models.selective_scan.reference import selective_scan_ref
from tests.image_scan_oracle import image_scan_oracle, make_image_inputs, output_and_grads, relative_errors
from tests.test_selective_scan import assert_agree, fresh_probe, make_inputs, run  # noqa: F401 (fixture)
from utils.errors import UserError

triton = pytest.importorskip("triton", reason="triton is not installed (it ships with torch's CUDA builds on Linux)")

ROOT = Path(__file__).resolve().parents[1]
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU runs the "
                               "kernels only in Triton's interpreter, tested by test_interpreter_suite)")
# Pointers of the inputs' dtype (bfloat16 under autocast); the others hold float32: parameters (A, D,
# delta_bias, dt_proj's), saved states, partial sums, and the image scan's float32 outputs and their gradients.
DATA_POINTERS = {"u_ptr", "delta_ptr", "b_ptr", "c_ptr", "y_ptr", "gy_ptr", "gu_ptr", "gdelta_ptr", "x_ptr", "xdbl_ptr"}
# The network's d_inner at its four stages (embed_dim 32 doubled, expand 1.5) and dt_rank = ceil(d_inner / 16).
STAGE_WIDTHS = (48, 96, 192, 384)


def kernel_signature(kernel, data_type):
    """Triton's signature of ``kernel``: data pointers of ``data_type``, other pointers float32, int32 sizes,
    constexpr flags."""
    def arg_type(name):
        if name.endswith("_ptr"):
            return f"*{data_type}" if name in DATA_POINTERS else "*fp32"
        return "constexpr" if name.isupper() else "i32"
    return {name: arg_type(name) for name in kernel.arg_names}


def ptxas_report(kernel, constexprs, arch, data_type, tmp_path):
    """Compile ``kernel`` to PTX and a cubin for sm_<arch> with Triton's own compiler, then ptxas -v's report."""
    from triton.backends.compiler import GPUTarget

    constexprs = {k: v for k, v in constexprs.items() if k in kernel.arg_names}
    compiled = triton.compile(triton.compiler.ASTSource(kernel, kernel_signature(kernel, data_type), constexprs),
                              target=GPUTarget("cuda", arch, 32), options={"num_warps": triton_backend.NUM_WARPS})
    ptx = compiled.asm["ptx"]
    target = re.search(rf"^\.target (sm_{arch}a?)\b", ptx, re.M)
    assert target and len(compiled.asm["cubin"]) > 1000
    ptx_file = tmp_path / "kernel.ptx"
    ptx_file.write_text(ptx)
    report = subprocess.run([triton.knobs.nvidia.ptxas.path, "-v", f"--gpu-name={target[1]}", str(ptx_file), "-o",
                             str(tmp_path / "kernel.cubin")], capture_output=True, text=True, check=True).stderr
    assert re.search(r"Used \d+ registers", report), report
    return report


def assert_hardly_spills(report):
    """At most a few words spilled to local memory."""
    assert [int(n) <= 16 for n in re.findall(r"(\d+) bytes spill stores", report)] == [True], report


@pytest.mark.skipif(INTERPRETED, reason="TRITON_INTERPRET=1 replaces the kernels by interpreted functions")
@pytest.mark.parametrize("arch, data_type, flags", [(90, "bf16", True), (80, "fp32", False)])
@pytest.mark.parametrize("kernel_name", ["scan_forward_kernel", "scan_backward_kernel"])
def test_kernels_compile_for_gpus_without_spilling(kernel_name, arch, data_type, flags, tmp_path):
    # The network's scan (N=8 states) at the default launch shape.
    from models.selective_scan import triton_kernels

    chunk, block_d, n_block = triton_backend.launch_shape(width=48, n_state=8, length=1024)
    constexprs = {"N_BLOCK": n_block, "BLOCK_D": block_d, "CHUNK": chunk, "HAS_D": flags, "HAS_BIAS": flags,
                  "SOFTPLUS": flags, "SAVE_STATES": flags}
    assert_hardly_spills(ptxas_report(getattr(triton_kernels, kernel_name), constexprs, arch, data_type, tmp_path))


@pytest.mark.skipif(INTERPRETED, reason="TRITON_INTERPRET=1 replaces the kernels by interpreted functions")
@pytest.mark.parametrize("arch, data_type", [(90, "bf16"), (80, "fp32")])
@pytest.mark.parametrize("kernel_name, width", [("image_scan_forward_kernel", 48)]
                         + [("image_scan_backward_kernel", width) for width in STAGE_WIDTHS])
def test_image_kernels_compile_for_gpus_without_spilling(kernel_name, width, arch, data_type, tmp_path):
    # The fused Image-SSM scan at each stage's launch shape: N=8 states, the stage's dt_rank (the forward's
    # code does not depend on it: R is a loop bound, not a constexpr; the backward's grad_w tile is).
    from models.selective_scan import triton_image_kernels

    chunk, block_d, n_block = triton_backend.launch_shape(width=width, n_state=8, length=128 * 128)
    rank = math.ceil(width / 16)
    constexprs = {"N_BLOCK": n_block, "BLOCK_D": block_d, "CHUNK": chunk, "SAVE_STATES": True,
                  "R_BLOCK": triton_backend._pow2(rank)}
    kernel = getattr(triton_image_kernels, kernel_name)
    assert_hardly_spills(ptxas_report(kernel, constexprs, arch, data_type, tmp_path))


@pytest.mark.parametrize("suite", ["test_triton_interpreted.py", "test_triton_image_interpreted.py"],
                         ids=["plain-scan", "image-scan"])
def test_interpreter_suite(suite):
    """tests/interpreter in Triton's interpreter: set before triton is imported, hence a subprocess."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    # -x: a broken kernel fails most tests, slowly; the first failure says enough.
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", f"tests/interpreter/{suite}"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]


def test_image_scan_oracle_agrees_with_the_project_unfused_reference():
    # The fused kernels are tested against tests/image_scan_oracle.py in the interpreter; this ties that
    # oracle to the other side of the agreed interface, image_scan's unfused path.
    image_scan = pytest.importorskip("models.selective_scan.image_scan")
    inputs = make_image_inputs(2, 3, 3, 5, 3, 2, seed=4)
    errors = relative_errors(output_and_grads(image_scan.image_selective_scan, inputs, backend="ref"),
                             output_and_grads(image_scan_oracle, inputs))
    assert max(errors.values()) < 1e-12, errors


@pytest.mark.skipif(INTERPRETED, reason="the interpreter runs the kernels on the CPU")
def test_triton_on_cpu_is_a_one_line_error():
    inputs = {k: v.detach() for k, v in make_inputs(bt=1, groups=2, width=2, n=3, length=10).items()}
    for call in (lambda: resolve_backend("triton", "cpu"), lambda: selective_scan(**inputs, backend="triton")):
        with pytest.raises(UserError) as err:
            call()
        message = str(err.value)
        assert "--scan_backend triton cannot run" in message and "TRITON_INTERPRET=1" in message
        assert "--scan_backend torch" in message and "\n" not in message
    with pytest.raises(RuntimeError, match="the triton selective scan cannot run: .*TRITON_INTERPRET=1"):
        triton_backend.selective_scan_triton(**inputs)  # called directly, not through selective_scan
    image_inputs = {k: v.detach().float() for k, v in make_image_inputs(1, 2, 2, 3, 2, 1).items()}
    with pytest.raises(RuntimeError, match=r"the triton image scan cannot run: .*TRITON_INTERPRET=1"):
        triton_backend.image_selective_scan_triton(**image_inputs)


def test_triton_runs_on_cuda_devices():
    assert triton_backend.triton_unavailable_reason("cuda") is None
    assert "need a CUDA device" in triton_backend.triton_unavailable_reason("mps")


def test_missing_triton_is_named(monkeypatch):
    monkeypatch.delitem(sys.modules, "models.selective_scan.triton_kernels", raising=False)
    monkeypatch.delattr(scan_pkg, "triton_kernels", raising=False)
    monkeypatch.setitem(sys.modules, "triton", None)  # as if not installed
    reason = triton_backend.triton_unavailable_reason("cuda")
    assert reason.startswith("triton cannot be imported") and "\n" not in reason


def test_auto_on_cuda_picks_cuda_then_triton_then_torch(monkeypatch, caplog, fresh_probe):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)
    monkeypatch.setattr(scan_pkg, "_logged", set())
    monkeypatch.setattr(scan_pkg.cpu_kernel, "cpp_unavailable_reason", lambda: "no C++ compiler (simulated)")
    with caplog.at_level(logging.INFO, logger="hybrimamba"):
        assert resolve_backend("auto", "cuda") == "triton"
        assert resolve_backend("auto", "cpu") == "torch"  # the interpreter is for tests only
        monkeypatch.setattr(scan_pkg, "triton_unavailable_reason", lambda device: "no triton here")
        assert resolve_backend("auto", "cuda") == "torch"
        with pytest.raises(UserError, match="--scan_backend triton cannot run: no triton here"):
            resolve_backend("triton", "cuda")
    messages = [r.getMessage() for r in caplog.records if r.name == "hybrimamba"]
    assert messages == [
        "selective scan: backend 'triton' (auto on cuda; cuda unavailable: mamba-ssm not installed)",
        "selective scan: backend 'torch' (auto on cpu; cpp unavailable: no C++ compiler (simulated))",
        "selective scan: backend 'torch' (auto on cuda; cuda unavailable: mamba-ssm not installed; "
        "triton unavailable: no triton here)"]
    monkeypatch.setattr(scan_pkg, "cuda_unavailable_reason", lambda device: None)
    assert resolve_backend("auto", "cuda") == "cuda"


# ---- on a CUDA GPU: the compiled kernels ----

@cuda_only
def test_triton_on_cuda_bfloat16_within_bfloat16_tolerance():
    inputs = {k: v.detach().bfloat16().cuda().requires_grad_()
              for k, v in make_inputs(bt=2, groups=4, width=12, n=8, length=300, seed=5).items()}
    got = run(selective_scan, inputs, backend="triton")
    assert got[0].dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in got[1:])
    exact = run(selective_scan_ref, {k: v.detach().double().requires_grad_() for k, v in inputs.items()})
    assert_agree(got, exact, 1e-2)


@cuda_only
def test_network_with_triton_on_cuda_matches_torch_compiled_too(monkeypatch):
    from models import HybriMamba

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    x = torch.rand(2, 3, 32, 24, device="cuda") * 2 - 1
    results = []
    for backend, compiled in (("torch", False), ("triton", False), ("triton", True)):
        torch.manual_seed(0)
        net = HybriMamba(embed_dim=8, depth=1, n_layers=1, scan_backend=backend).cuda()
        if compiled:
            net.compile()
        y = net(x)
        y.square().mean().backward()
        results.append((y.detach(), torch.cat([p.grad.flatten() for p in net.parameters()])))
    (y0, g0), *others = results
    for y, g in others:
        assert torch.allclose(y, y0, atol=1e-4, rtol=1e-4)
        assert ((g - g0).abs().max() / g0.abs().max()).item() < 1e-3


@cuda_only
@pytest.mark.parametrize("low", [(), ("x", "x_dbl")], ids=["float32", "bfloat16-x-and-x_dbl"])
def test_image_scan_on_cuda_matches_float64_oracle(low):
    # The first stage's width (Dn=48: 6 channel blocks, dt_rank 3, N=8) on a 15x13 image: 7 chunks, the last
    # partial. bfloat16 x and x_dbl as under autocast; the oracle gets the same rounded values.
    inputs = make_image_inputs(2, 48, 15, 13, 8, 3, seed=6)
    on_gpu = {k: v.detach().to("cuda", torch.bfloat16 if k in low else torch.float32).requires_grad_()
              for k, v in inputs.items()}
    got = output_and_grads(triton_backend.image_selective_scan_triton, on_gpu)
    reference = output_and_grads(image_scan_oracle, {k: v.detach().cpu().double().requires_grad_()
                                                     for k, v in on_gpu.items()})
    assert got[0].dtype == torch.float32
    errors = relative_errors(got, reference)
    assert all(err <= (1e-2 if name in low else 1e-4) for name, err in errors.items()), errors


@cuda_only
def test_image_scan_on_cuda_compiles_with_inductor_without_graph_breaks():
    inputs = {k: v.detach().float().cuda().requires_grad_() for k, v in make_image_inputs(2, 8, 6, 5, 8, 2).items()}
    compiled = torch.compile(triton_backend.image_selective_scan_triton, fullgraph=True)
    errors = relative_errors(output_and_grads(compiled, inputs),
                             output_and_grads(triton_backend.image_selective_scan_triton, inputs))
    assert max(errors.values()) <= 1e-6, errors

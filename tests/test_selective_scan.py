"""Selective-scan backends against the sequential float64 oracle, and the mamba-ssm dispatch with fakes.

Agreement is measured as max|x - ref| / max(max|ref|, 1) per tensor (a relative error scaled by
the tensor's largest entry), so one figure covers outputs and every gradient.
"""
import logging
import sys
import textwrap
import types

import pytest
import torch

import models.selective_scan as scan_pkg
from models.selective_scan import cpu_kernel, cuda_backend, cuda_unavailable_reason, resolve_backend, selective_scan
from models.selective_scan.chunked import default_block_elements, selective_scan_chunked
from models.selective_scan.reference import selective_scan_ref
from utils.errors import UserError

NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def make_inputs(bt, groups, width, n, length, dtype=torch.float64, seed=0, grouped=True):
    """Random scan inputs in mamba-ssm layout; dt spans weak to very strong decay (dt*A down to about -60)."""
    g = torch.Generator().manual_seed(seed)
    channels = groups * width

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    bc_shape = (bt, groups, n, length) if grouped else (bt, n, length)
    inputs = {
        "u": randn(bt, channels, length),
        "delta": randn(bt, channels, length) * 1.5 - 1.0,
        "A": -torch.exp(randn(channels, n) * 0.5 + torch.log(torch.arange(1.0, n + 1, dtype=torch.float64))),
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(channels),
        "delta_bias": randn(channels) * 0.5,
    }
    return {k: v.to(dtype).requires_grad_() for k, v in inputs.items()}


def run(fn, inputs, grad_seed=1, **kwargs):
    """Output and the gradients of <y, random weights> w.r.t. every tensor input (None if it has none)."""
    y = fn(**inputs, **kwargs)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64).to(y.device)
    grads = torch.autograd.grad((y.double() * weights).sum(), list(inputs.values()), allow_unused=True)
    return [y] + list(grads)


def relative_error(x, ref):
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    return ((x - ref).abs().max() / ref.abs().max().clamp(min=1.0)).item()


def assert_agree(results, reference, tol):
    for name, x, ref in zip(("y",) + NAMES, results, reference):
        assert x.shape == ref.shape, name
        err = relative_error(x, ref)
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol}"


@pytest.mark.parametrize("whole_buffers", [False, True], ids=["per-step", "whole-buffers"])
@pytest.mark.parametrize("chunk", [1, 16, 128])
def test_torch_matches_ref_float64_grouped(chunk, whole_buffers):
    # K=4 groups, L=77 is not a multiple of 16 (5 chunks, padded), 128 is one padded chunk.
    inputs = make_inputs(bt=2, groups=4, width=3, n=5, length=77)
    reference = run(selective_scan_ref, inputs)
    got = run(selective_scan_chunked, inputs, chunk=chunk, whole_buffers=whole_buffers)
    assert_agree(got, reference, 1e-9)


@pytest.mark.parametrize("softplus", [True, False])
def test_torch_matches_ref_float64_single_group_without_skip(softplus):
    inputs = make_inputs(bt=1, groups=1, width=4, n=3, length=40, grouped=False)
    del inputs["D"]
    if not softplus:  # plain delta as step size: keep it positive so the decays stay below one
        inputs["delta"] = (inputs["delta"].detach().abs() * 0.3).requires_grad_()
    reference = run(selective_scan_ref, inputs, delta_softplus=softplus)
    got = run(selective_scan, inputs, delta_softplus=softplus, backend="torch")
    assert_agree(got, reference, 1e-9)


@pytest.mark.parametrize("whole_buffers", [False, True], ids=["per-step", "whole-buffers"])
def test_strong_decay_stays_finite_and_exact(whole_buffers):
    # dt*A around -300 per step: a naive exp(-cumulative log-decay) would overflow at once.
    inputs = make_inputs(bt=1, groups=2, width=2, n=4, length=50)
    inputs["delta"] = torch.full_like(inputs["delta"], 40.0).requires_grad_()
    reference = run(selective_scan_ref, inputs)
    got = run(selective_scan_chunked, inputs, chunk=16, whole_buffers=whole_buffers)
    assert all(torch.isfinite(x).all() for x in got)
    assert_agree(got, reference, 1e-9)


@pytest.mark.parametrize("length", [1024, 4096, 16384])
def test_torch_float32_matches_float64_ref_long(length):
    inputs64 = make_inputs(bt=1, groups=4, width=1, n=8, length=length, seed=length)
    inputs32 = {k: v.detach().float().requires_grad_() for k, v in inputs64.items()}
    if length > 4096:  # outputs only: autograd through 16384 oracle steps alone takes several seconds
        with torch.no_grad():
            reference, got = [selective_scan_ref(**inputs64)], [selective_scan_chunked(**inputs32)]
    else:
        reference, got = run(selective_scan_ref, inputs64), run(selective_scan_chunked, inputs32)
    assert got[0].dtype == torch.float32
    assert_agree(got, reference, 1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("length", [77, 4096])
def test_gpu_backends_on_cuda_match_float64_ref(backend, length):
    # torch: on CUDA the chunked scan takes large blocks (one kernel per Python step), same function as
    # on the CPU. triton: the compiled kernels, with a partly filled channel block (width 12).
    inputs64 = make_inputs(bt=2, groups=4, width=12, n=8, length=length, seed=length)
    inputs32 = {k: v.detach().float().cuda().requires_grad_() for k, v in inputs64.items()}
    got = run(selective_scan, inputs32, backend=backend)
    assert got[0].is_cuda and got[0].dtype == torch.float32
    assert_agree(got, run(selective_scan_ref, inputs64), 1e-4)


def test_gpu_blocks_take_a_quarter_of_the_free_memory_within_bounds(monkeypatch):
    for free, expected in ((8_000_000_000, 125_000_000), (10**12, 1 << 28), (10**6, 1 << 22)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 10**12))
        assert default_block_elements("cuda", 16384, 64) == expected
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (8_000_000_000, 10**12))
    assert default_block_elements("cuda", 16384, 64, element_size=8) == 62_500_000  # float64: half the states


@pytest.mark.parametrize("whole_buffers", [False, True], ids=["per-step", "whole-buffers"])
def test_sub_batches_match_one_block(whole_buffers):
    inputs = make_inputs(bt=3, groups=4, width=5, n=4, length=60)
    whole = run(selective_scan_chunked, inputs, chunk=16, block_elements=1 << 30)
    per_state = 4 * 4 * 64  # K * N * padded length: states of one channel-in-group across the groups
    for block in (per_state, 2 * per_state, 5 * per_state * 2):  # channel slices, uneven slices, two items
        got = run(selective_scan_chunked, inputs, chunk=16, block_elements=block, whole_buffers=whole_buffers)
        assert_agree(got, whole, 1e-12)


def test_autocast_bfloat16_runs_in_float32():
    inputs = make_inputs(bt=2, groups=4, width=2, n=8, length=100, dtype=torch.float32)
    plain = run(selective_scan_chunked, inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = run(selective_scan_chunked, inputs)
    assert under_autocast[0].dtype == torch.float32
    assert_agree(under_autocast, plain, 0.0)  # autocast must not touch the float32 computation

    bf16 = {k: v.detach().bfloat16().requires_grad_() for k, v in inputs.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run(selective_scan_chunked, bf16)
    assert got[0].dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in got[1:])
    # Same values rounded to bfloat16 inputs: compare with float32 on the rounded inputs.
    rounded = run(selective_scan_chunked, {k: v.detach().float().requires_grad_() for k, v in bf16.items()})
    assert_agree(got, rounded, 1e-2)


def test_shapes_are_validated():
    inputs = {k: v.detach() for k, v in make_inputs(bt=1, groups=4, width=2, n=3, length=10).items()}
    with pytest.raises(ValueError, match="groups"):
        selective_scan(**{**inputs, "B": inputs["B"][:, :3], "C": inputs["C"][:, :3]})
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(**{**inputs, "A": inputs["A"][:4]})


# ---- the mamba-ssm dispatch, without a GPU ----

@pytest.fixture
def fresh_probe():
    """Forget the cached mamba-ssm probe before and after the test; drop any mamba_ssm modules it imported."""
    cuda_backend.reset_probe()
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] == "mamba_ssm":
            del sys.modules[name]
    cuda_backend.reset_probe()


@pytest.fixture
def no_cpp(monkeypatch):
    """As if the compiled CPU scan could not be built: auto on the CPU then means torch."""
    monkeypatch.setattr(cpu_kernel, "cpp_unavailable_reason", lambda: "no C++ compiler (simulated)")


@pytest.fixture
def fake_mamba(monkeypatch, fresh_probe):
    """Fake mamba_ssm modules whose selective_scan_fn checks the call layout and delegates to the oracle."""
    calls = []

    def selective_scan_fn(u, delta, A, B, C, **kwargs):
        assert set(kwargs) == {"D", "z", "delta_bias", "delta_softplus", "return_last_state"}
        assert kwargs["delta_softplus"] is True and kwargs["z"] is None and kwargs["return_last_state"] is False
        bt, channels, length = u.shape
        assert delta.shape == u.shape and A.shape[0] == channels
        assert B.dim() == 4 and B.shape == C.shape and B.shape[0] == bt and B.shape[-1] == length
        assert all(x.is_contiguous() for x in (u, delta, A, B, C))
        assert B.dtype == C.dtype == delta.dtype == u.dtype
        assert A.dtype == torch.float32
        for name in ("D", "delta_bias"):
            x = kwargs[name]
            assert x is None or (x.dtype == torch.float32 and x.shape == (channels,) and x.is_contiguous())
        calls.append(B.shape)
        return selective_scan_ref(u, delta, A, B, C, D=kwargs["D"], delta_bias=kwargs["delta_bias"],
                                  delta_softplus=True)

    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_fn = selective_scan_fn
    for name, module in (("mamba_ssm", types.ModuleType("mamba_ssm")),
                         ("mamba_ssm.ops", types.ModuleType("mamba_ssm.ops")),
                         ("mamba_ssm.ops.selective_scan_interface", interface)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_auto_picks_cuda_when_the_kernels_can_run(fake_mamba, no_cpp, monkeypatch):
    assert cuda_unavailable_reason() == (None if torch.cuda.is_available() else "no CUDA device")
    assert resolve_backend("auto", "cpu") == "torch"  # the kernels need CUDA tensors
    with pytest.raises(UserError, match="--scan_backend torch works everywhere"):
        resolve_backend("cuda", "cpu")

    monkeypatch.setattr(cuda_backend, "device_runs_kernels", lambda device: True)
    assert resolve_backend("auto", "cpu") == "cuda"
    inputs = make_inputs(bt=2, groups=4, width=2, n=3, length=20, dtype=torch.float32)
    for backend in ("auto", "cuda"):
        got = selective_scan(**inputs, backend=backend)
        torch.testing.assert_close(got, selective_scan_ref(**inputs), rtol=0, atol=0)
    single = make_inputs(bt=1, groups=1, width=2, n=3, length=20, dtype=torch.float32, grouped=False)
    selective_scan(**single, backend="cuda")
    assert fake_mamba == [torch.Size([2, 4, 3, 20])] * 2 + [torch.Size([1, 1, 3, 20])]


def test_probe_runs_once(fake_mamba, monkeypatch):
    assert cuda_backend._probed()[0] is not None
    for name in ("mamba_ssm.ops.selective_scan_interface", "mamba_ssm.ops"):
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # gone now, but the probe result is cached
    assert cuda_backend._probed()[0] is not None
    cuda_backend.reset_probe()
    assert cuda_unavailable_reason() == "mamba-ssm not installed"


BROKEN_INSTALLS = {
    "kernels not built": ("", "import selective_scan_cuda\n", "compiled kernels (selective_scan_cuda) are missing"),
    "triton missing": ("import triton\n", "", "missing module 'triton'"),  # triton blocked below
    "bad shared object": ("raise OSError('libcudart.so.12: cannot open shared object file')\n", "",
                          "OSError: libcudart.so.12"),
    "runtime error": ("raise RuntimeError('CUDA driver version is insufficient\\nmore detail')\n", "",
                      "RuntimeError: CUDA driver version is insufficient"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_INSTALLS))
def test_broken_install_gives_reason(case, tmp_path, monkeypatch, fresh_probe, no_cpp):
    package_init, interface_body, expected = BROKEN_INSTALLS[case]
    ops = tmp_path / "mamba_ssm" / "ops"
    ops.mkdir(parents=True)
    (tmp_path / "mamba_ssm" / "__init__.py").write_text(package_init)
    (ops / "__init__.py").write_text("")
    (ops / "selective_scan_interface.py").write_text(textwrap.dedent(interface_body)
                                                     + "def selective_scan_fn(*a, **k):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "triton", None)  # as if not installed
    reason = cuda_unavailable_reason()
    assert reason is not None and expected in reason and "\n" not in reason
    assert resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(UserError) as err:
        resolve_backend("cuda", "cuda")
    assert expected in str(err.value) and "--scan_backend torch" in str(err.value)


def test_not_installed_and_unknown_backend(monkeypatch, fresh_probe):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)
    assert cuda_unavailable_reason() == "mamba-ssm not installed"
    with pytest.raises(UserError, match="auto, cuda, triton, cpp, torch, ref"):
        resolve_backend("fast", "cpu")


def test_backend_logged_once_per_choice(monkeypatch, caplog, fresh_probe, no_cpp):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)
    monkeypatch.setattr(scan_pkg, "_logged", set())
    with caplog.at_level(logging.INFO, logger="hybrimamba"):
        for _ in range(3):
            resolve_backend("auto", "cpu")
        resolve_backend("ref", "cpu")
        resolve_backend("auto", "meta")
    messages = [r.getMessage() for r in caplog.records if r.name == "hybrimamba"]
    assert messages == ["selective scan: backend 'torch' (auto on cpu; cpp unavailable: no C++ compiler (simulated))",
                        "selective scan: backend 'ref' (ref on cpu)",
                        "selective scan: backend 'torch' (auto on meta; cuda unavailable: mamba-ssm not installed)"]


def test_torch_scan_alternates_between_inference_mode_and_autograd():
    inputs = {k: v.detach() for k, v in make_inputs(1, 2, 4, 3, 40, torch.float32).items()}
    with torch.inference_mode():
        first = selective_scan(**inputs, backend="torch")
    second = selective_scan(**inputs, backend="torch")
    with torch.inference_mode():
        third = selective_scan(**inputs, backend="torch")
    assert torch.equal(first, second) and torch.equal(second, third)

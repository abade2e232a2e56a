"""The fused Image-SSM scan (`cpp` kernels) and the fused network path against the unfused reference.

Reference: ``image_selective_scan`` on the `torch` backend (cross-scan copies, the chunked scan,
cross-merge), itself checked against the sequential `ref` oracle and against a loop over pixels
written from the spec; and for the network, ``set_fused(False)`` on the `torch` backend (the unfused
path, every activation kept). Sizes include non-square maps and odd sides (the network's H/4 of 20),
where a swapped height and width or a wrong column order show.
"""
import pytest
import torch
import torch.nn.functional as F

from models import HybriMamba
from models.selective_scan import cpu_kernel, image_scan
from models.selective_scan.cpu_kernel import image_selective_scan_cpp
from models.selective_scan.image_scan import image_selective_scan
from tests.test_selective_scan import relative_error

NAMES = ("y", "x", "x_dbl", "dt_proj_weight", "dt_proj_bias", "A", "D")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def built():
    reason = cpu_kernel.cpp_unavailable_reason()
    assert reason is None, f"the C++ scan did not build: {reason}"


def make_inputs(bt, d, h, w, rank, n, dtype=torch.float64, seed=0):
    """Image-scan inputs; step sizes from weak to strong decay, as in the network."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    inputs = [randn(bt, d, h, w), randn(bt, 4, rank + 2 * n, h * w) * 0.7, randn(4, d, rank) * 0.7,
              randn(4, d) - 1.5, -torch.exp(randn(4 * d, n) * 0.5), randn(4 * d)]
    return [t.to(dtype).requires_grad_() for t in inputs]


def as_network_layouts(inputs):
    """x channels-last and x_dbl pixel-major (memory (Bt, H*W, K, R+2N)), as the network makes them."""
    x, x_dbl, *parameters = (t.detach() for t in inputs)
    x = x.contiguous(memory_format=torch.channels_last)
    x_dbl = x_dbl.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    return [t.requires_grad_() for t in (x, x_dbl, *parameters)]


def run(inputs, **kwargs):
    """y and the gradients of <y, fixed random weights> w.r.t. every input."""
    fn = kwargs.pop("fn", image_selective_scan)
    y = fn(*inputs, **kwargs)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return [y] + list(torch.autograd.grad((y.double() * weights).sum(), inputs))


def assert_agree(got, want, tol):
    for name, a, b in zip(NAMES, got, want):
        assert a.shape == b.shape, name
        err = relative_error(a, b)
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol}"


def naive_image_scan(x, x_dbl, dt_w, dt_b, A, D):
    """One image, one direction, one pixel at a time, from docs/architecture.md §3.3 (float64, no autograd)."""
    _, d, h, w = x.shape
    r, n = dt_w.shape[2], A.shape[1]
    row_major = [(i, j) for i in range(h) for j in range(w)]
    col_major = [(i, j) for j in range(w) for i in range(h)]
    y = torch.zeros(d, h, w, dtype=torch.float64)
    for k, order in enumerate((row_major, col_major, row_major[::-1], col_major[::-1])):
        state = torch.zeros(d, n, dtype=torch.float64)
        a, skip = A[k * d:(k + 1) * d], D[k * d:(k + 1) * d]
        for i, j in order:
            u, proj = x[0, :, i, j], x_dbl[0, k, :, i * w + j]
            dt = F.softplus(dt_w[k] @ proj[:r] + dt_b[k])
            state = torch.exp(dt[:, None] * a) * state + (dt * u)[:, None] * proj[None, r:r + n]
            y[:, i, j] += state @ proj[r + n:] + skip * u
    return y


@pytest.mark.parametrize("h, w", [(3, 5), (4, 4), (1, 6)])
def test_the_reference_matches_a_loop_over_pixels(h, w):
    inputs = [t.detach() for t in make_inputs(1, 3, h, w, rank=2, n=3)]
    want = naive_image_scan(*inputs)
    with torch.no_grad():
        for backend in ("torch", "ref", "cpp"):
            assert relative_error(image_selective_scan(*inputs, backend=backend)[0], want) <= 1e-12, backend


# (batch, Dn, H, W, R, N, chunk): float64 blocks are 4 channels; an item holds several blocks once
# Dn > 16 blocks; chunks straddle rows and columns; L < chunk; one row; one column.
CASES = {
    "square": (2, 6, 6, 6, 2, 4, 8),
    "non-square, ragged block": (1, 5, 5, 7, 2, 3, 8),
    "wide, L not a multiple of T": (2, 3, 3, 11, 1, 2, 5),
    "tall": (1, 4, 9, 2, 3, 2, 4),
    "L < T": (1, 3, 2, 3, 2, 2, 32),
    "one row": (1, 2, 1, 7, 1, 2, 3),
    "one column": (1, 2, 7, 1, 1, 2, 3),
    "several blocks per item": (1, 70, 3, 4, 2, 2, 4),
}


@pytest.mark.parametrize("layout", ["row-major", "network"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_cpp_matches_the_unfused_reference_float64(case, layout):
    bt, d, h, w, rank, n, chunk = CASES[case]
    inputs = make_inputs(bt, d, h, w, rank, n, seed=h * w + d)
    want = run(inputs, backend="torch")
    if layout == "network":
        inputs = as_network_layouts(inputs)
    got = run(inputs, fn=image_selective_scan_cpp, chunk=chunk)
    assert_agree(got, want, 1e-9)
    # y and the gradients come in the inputs' layouts (the network's next ops read them without copies).
    assert [g.stride() for g in got[1:3]] == [t.stride() for t in inputs[:2]] and got[0].stride() == inputs[0].stride()


def test_the_unfused_reference_matches_the_sequential_oracle():
    inputs = make_inputs(2, 3, 3, 5, rank=2, n=3)
    assert_agree(run(inputs, backend="torch"), run(inputs, backend="ref"), 1e-9)


def test_gradcheck():
    inputs = make_inputs(1, 3, 2, 3, rank=2, n=2)
    assert torch.autograd.gradcheck(lambda *xs: image_selective_scan_cpp(*xs, chunk=4), tuple(inputs))


def test_float32_agrees_with_float64():
    inputs64 = make_inputs(2, 20, 16, 12, rank=3, n=8)
    inputs32 = [t.detach().float().requires_grad_() for t in inputs64]
    got = run(inputs32, backend="cpp")
    assert got[0].dtype == torch.float32 and all(g.dtype == torch.float32 for g in got[1:])
    assert_agree(got, run(inputs64, backend="cpp"), 1e-4)


def test_bfloat16_inputs_compute_in_float32():
    inputs = make_inputs(1, 8, 6, 4, rank=2, n=4, dtype=torch.bfloat16)
    got = run(inputs, backend="cpp")
    # The result is float32 (the merge's precision); the gradients come back in their inputs' dtypes.
    assert got[0].dtype == torch.float32 and all(g.dtype == torch.bfloat16 for g in got[1:])
    rounded = run([t.detach().float().requires_grad_() for t in inputs], backend="cpp")
    assert torch.equal(got[0], rounded[0])
    assert_agree(got, rounded, 1e-2)


def test_thread_count_does_not_change_results():
    inputs = make_inputs(2, 40, 9, 7, rank=2, n=8, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(inputs, backend="cpp")
        torch.set_num_threads(3)
        three = run(inputs, backend="cpp")
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, three))


def test_inference_path_gives_the_training_result():
    inputs = make_inputs(2, 5, 4, 6, rank=2, n=4, dtype=torch.float32)
    with_grad = image_selective_scan(*inputs, backend="cpp")
    with torch.no_grad():
        no_grad = image_selective_scan(*inputs, backend="cpp")
    assert with_grad.grad_fn is not None and no_grad.grad_fn is None
    assert torch.equal(with_grad, no_grad)


def test_shapes_are_checked_with_a_clear_message():
    x, x_dbl, dt_w, dt_b, A, D = make_inputs(1, 4, 3, 5, rank=2, n=3)
    with pytest.raises(ValueError, match=r"x_dbl must be \(1, 4, R\+2N=8, H\*W=15\)"):
        image_selective_scan(x, x_dbl[..., :-1], dt_w, dt_b, A, D, backend="cpp")
    with pytest.raises(ValueError, match=r"dt_proj_weight must be \(4, 4, R\)"):
        image_selective_scan(x, x_dbl, dt_w[:, :3], dt_b, A, D, backend="cpp")


def test_triton_runs_its_fused_kernel_when_it_has_one(monkeypatch):
    """The dispatcher routes to the triton module's fused entry point (with row-major tensors, the layout
    its kernels index), and float64, which triton does not compute, to the unfused path."""
    from models.selective_scan import triton_backend  # registers torch custom ops: imported where needed

    assert image_scan.fused_implementation("triton", torch.float64) is None
    calls = []
    monkeypatch.setattr(triton_backend, "image_selective_scan_triton", lambda *args: calls.append(args) or "y",
                        raising=False)
    x, x_dbl, *parameters = as_network_layouts(make_inputs(1, 4, 3, 5, rank=2, n=3))
    assert image_scan.fused_implementation("triton")(x, x_dbl, *parameters) == "y"
    assert calls[0][0].is_contiguous() and calls[0][1].is_contiguous()
    assert torch.equal(calls[0][0], x) and torch.equal(calls[0][1], x_dbl) and calls[0][2:] == tuple(parameters)
    assert image_scan.fused_implementation("cpp") is image_selective_scan_cpp
    assert all(image_scan.fused_implementation(name) is None for name in ("torch", "ref", "cuda"))


# ---- the whole network: fused (default, cpp) against unfused (torch) ----

CONFIGS = {"tiny": {"embed_dim": 8, "depth": 1, "n_layers": 1, "d_state": 4}, "paper": {}}
# Non-square, and 20 and 28 give odd sides (5, 7) at H/4.
SIZES = {"square": (16, 16), "non-square": (16, 24), "odd-quarter": (20, 28)}


def network_results(model, x, fused, backend, amp=None):
    """Output and every parameter's gradient for a fixed weighting of the output."""
    model.set_fused(fused)
    model.set_scan_backend(backend)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        y = model(x)
    weights = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)
    (y.double() * weights).sum().backward()
    return [y.detach()] + [p.grad.clone() for p in model.parameters()]


def perturbed_model(config, dtype):
    """A model whose SSM parameters are off their initial values (every term of the scan matters)."""
    torch.manual_seed(0)
    model = HybriMamba(**config).to(dtype).train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] in ("A_logs", "Ds", "dt_proj_bias", "alpha"):
                p.add_(torch.rand_like(p) * 0.5)
    return model


def assert_networks_agree(got, want, tol, names):
    bad = {}
    for name, a, b in zip(names, got, want):
        scale = b.abs().max().item()
        err = (a.double() - b.double()).abs().max().item() / scale if scale else a.abs().max().item()
        if not err <= tol:
            bad[name] = err
    assert bad == {}


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_fused_network_matches_the_unfused_path_float64(config, size):
    model = perturbed_model(CONFIGS[config], torch.float64)
    x = torch.rand(2 if config == "tiny" else 1, 3, *SIZES[size], dtype=torch.float64) * 2 - 1
    want = network_results(model, x, fused=False, backend="torch")
    got = network_results(model, x, fused=True, backend="cpp")
    assert_networks_agree(got, want, 1e-9, ["output"] + [n for n, _ in model.named_parameters()])


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_fused_network_matches_the_unfused_path_float32(config):
    model = perturbed_model(CONFIGS[config], torch.float32)
    x = torch.rand(2, 3, 20, 28) * 2 - 1
    want = network_results(model, x, fused=False, backend="torch")
    got = network_results(model, x, fused=True, backend="cpp")
    assert_networks_agree(got, want, 1e-4, ["output"] + [n for n, _ in model.named_parameters()])


def test_fused_network_under_bf16_autocast_is_as_accurate_as_the_unfused_path():
    """bf16 rounds the two paths differently (the fused kernel forms delta and the merge in float32), so
    both are compared with the float32 result: the fused path's errors are those of the unfused one."""
    model = perturbed_model(CONFIGS["tiny"], torch.float32)
    x = torch.rand(2, 3, 20, 28) * 2 - 1
    exact = network_results(model, x, fused=False, backend="torch")
    errors = {}
    for fused, backend in ((False, "torch"), (True, "cpp")):
        got = network_results(model, x, fused=fused, backend=backend, amp=torch.bfloat16)
        assert got[0].dtype == torch.float32
        # Relative to each tensor's largest entry; gradients that are exactly zero in float32 are left out.
        errors[fused] = [((a.double() - b.double()).abs().max() / b.abs().max()).item()
                         for a, b in zip(got, exact) if b.abs().max() > 0]
    unfused, fused = errors[False], errors[True]
    assert fused[0] <= 2e-2 and fused[0] <= 1.5 * unfused[0] + 1e-3  # the output
    assert sum(fused[1:]) / len(fused[1:]) <= 1.25 * sum(unfused[1:]) / len(unfused[1:])  # the gradients

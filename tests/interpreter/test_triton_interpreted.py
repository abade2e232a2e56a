"""The triton backend's kernels in Triton's interpreter (CPU tensors) against the sequential float64 oracle.

Run by tests/test_triton_scan.py in a subprocess with TRITON_INTERPRET=1 (see conftest.py here).
The interpreter runs every program element by element, so the shapes are tiny; chunk and block_d
are small so that they still cut the sequence and the channels the ways the GPU sizes do.
"""
import pytest
import torch

from models.selective_scan.reference import selective_scan_ref
from models.selective_scan.triton_backend import selective_scan_triton
from tests.test_selective_scan import assert_agree, make_inputs, run

FLOAT32_TOLERANCE = 1e-4  # as the torch backend's float32 tests
LOW_PRECISION_TOLERANCE = 1e-2

# (bt, groups, width, n, length), chunk, block_d, options
CASES = {
    "K4, L of 3 chunks, last one partial, Dn not a multiple of the block":
        ((1, 4, 3, 4, 21), 8, 2, dict()),
    "K1 (3-D B, C), L shorter than a chunk, N not a power of two, no softplus, no D":
        ((2, 1, 5, 3, 7), 16, 4, dict(grouped=False, softplus=False, drop=("D",))),
    "L of 5 whole chunks, one block per group, no delta_bias":
        ((1, 2, 2, 8, 40), 8, None, dict(drop=("delta_bias",))),
    "no softplus, neither D nor delta_bias":
        ((1, 2, 3, 4, 19), 8, 2, dict(softplus=False, drop=("D", "delta_bias"))),
}


def case_inputs(shape, grouped=True, softplus=True, drop=()):
    inputs = make_inputs(*shape, grouped=grouped)
    for name in drop:
        del inputs[name]
    if not softplus:  # plain delta as step size: keep it positive so the decays stay below one
        inputs["delta"] = (inputs["delta"].detach().abs() * 0.3).requires_grad_()
    return inputs


def as_dtype(inputs, dtype):
    return {k: v.detach().to(dtype).requires_grad_() for k, v in inputs.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_float64_ref(case):
    shape, chunk, block_d, options = CASES[case]
    inputs = case_inputs(shape, **options)
    softplus = options.get("softplus", True)
    reference = run(selective_scan_ref, inputs, delta_softplus=softplus)
    got = run(selective_scan_triton, as_dtype(inputs, torch.float32), delta_softplus=softplus, chunk=chunk,
              block_d=block_d)
    assert got[0].dtype == torch.float32
    assert_agree(got, reference, FLOAT32_TOLERANCE)


def test_strong_decay_stays_finite_and_exact():
    # dt*A around -300 per step: the decays underflow to zero, the states must not overflow.
    inputs = make_inputs(bt=1, groups=2, width=2, n=4, length=20)
    inputs["delta"] = torch.full_like(inputs["delta"], 40.0).requires_grad_()
    reference = run(selective_scan_ref, inputs)
    got = run(selective_scan_triton, as_dtype(inputs, torch.float32), chunk=8)
    assert all(torch.isfinite(x).all() for x in got)
    assert_agree(got, reference, FLOAT32_TOLERANCE)


def test_small_step_sizes_keep_their_relative_precision():
    # softplus(-10) = 4.5e-5: computed as log(1 + exp(x)) in float32 it carries a 1e-3 relative
    # error into y = C h (no D u term here to hide it).
    inputs = make_inputs(bt=1, groups=1, width=2, n=4, length=12)
    del inputs["D"]
    inputs["delta"] = (inputs["delta"].detach() * 0.1 - 10.0).requires_grad_()
    reference = run(selective_scan_ref, inputs)
    got = run(selective_scan_triton, as_dtype(inputs, torch.float32))
    for name, x, ref in zip(("y", "u", "delta", "A", "B", "C"), got, reference):
        # Relative to the tensor's own scale (assert_agree's floor of 1 would hide errors of tiny values).
        err = ((x.double() - ref).abs().max() / ref.abs().max()).item()
        assert err <= FLOAT32_TOLERANCE, f"{name}: relative error {err:.3g}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_compute_in_float32(dtype):
    inputs = as_dtype(make_inputs(bt=1, groups=2, width=3, n=4, length=20, seed=3), dtype)
    got = run(selective_scan_triton, inputs, chunk=8, block_d=2)
    assert got[0].dtype == dtype and all(g.dtype == dtype for g in got[1:])
    # The same (rounded) input values in float32: only the rounding of the results may differ.
    exact = run(selective_scan_triton, as_dtype(inputs, torch.float32), chunk=8, block_d=2)
    assert_agree(got, exact, LOW_PRECISION_TOLERANCE)


def test_only_chunk_boundary_states_are_saved():
    bt, groups, width, n, length, chunk = 2, 2, 3, 4, 24, 8
    inputs = as_dtype(make_inputs(bt, groups, width, n, length), torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(tuple(x.shape)) or x, lambda x: x):
        selective_scan_triton(**inputs, chunk=chunk)
    channels = groups * width
    assert (bt, channels, length // chunk, n) in saved
    full_states = bt * channels * n * length
    assert max(torch.Size(s).numel() for s in saved) < full_states


def test_torch_compile_traces_the_custom_ops_without_graph_breaks():
    # aot_eager: Dynamo and AOTAutograd trace the ops through their fake implementations, the
    # kernels run eagerly; fullgraph=True fails on any graph break.
    inputs = as_dtype(make_inputs(bt=1, groups=2, width=2, n=4, length=12), torch.float32)
    compiled = torch.compile(selective_scan_triton, backend="aot_eager", fullgraph=True)
    assert_agree(run(compiled, inputs, chunk=8), run(selective_scan_triton, inputs, chunk=8), 1e-6)


def test_whole_network_agrees_with_the_torch_backend():
    from models import HybriMamba

    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    results = []
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        net = HybriMamba(embed_dim=4, depth=1, n_layers=1, d_state=2, scan_backend=backend)
        y = net(x)
        y.square().mean().backward()
        results.append((y.detach(), torch.cat([p.grad.flatten() for p in net.parameters()])))
    (y_torch, g_torch), (y_triton, g_triton) = results
    assert torch.allclose(y_triton, y_torch, atol=1e-5, rtol=1e-5)
    assert ((g_triton - g_torch).abs().max() / g_torch.abs().max()).item() < 1e-4

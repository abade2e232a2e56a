"""The fused Image-SSM kernels in Triton's interpreter (CPU tensors) against the unfused float64 oracle.

Run by tests/test_triton_scan.py in a subprocess with TRITON_INTERPRET=1 (see conftest.py here). Images
are not square (a transposed column order would pass on a square one), channels and pixels are cut by
small blocks and chunks with masked tails, as the GPU sizes cut them.
"""
import pytest
import torch

from models.selective_scan.triton_backend import image_selective_scan_triton
from tests.image_scan_oracle import NAMES, image_scan_oracle, make_image_inputs, output_and_grads, relative_errors

FLOAT32_TOLERANCE = 1e-4
BFLOAT16_TOLERANCE = 1e-2  # gradients returned in bfloat16: 8 bits of mantissa

# (B, Dn, H, W, N, R), chunk, block_d
CASES = {
    "4x6, L of 2 chunks the last partial, Dn=5 in blocks of 4 (masked tail)": ((2, 5, 4, 6, 4, 2), 16, 4),
    "3x5, L of 4 chunks the last partial, N=3 and R=3 not powers of two": ((1, 3, 3, 5, 3, 3), 4, 2),
    "5x3, the default launch shape (one chunk longer than L), R=1": ((1, 8, 5, 3, 2, 1), None, None),
}


def as_dtypes(inputs, dtypes):
    return {k: v.detach().to(dtypes.get(k, torch.float32)).requires_grad_() for k, v in inputs.items()}


def assert_within(errors, tolerances):
    bad = {name: f"{err:.3g}" for name, err in errors.items() if err > tolerances.get(name, FLOAT32_TOLERANCE)}
    assert not bad, f"relative errors above tolerance: {bad}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_float64_oracle(case):
    shape, chunk, block_d = CASES[case]
    inputs = make_image_inputs(*shape)
    reference = output_and_grads(image_scan_oracle, inputs)
    got = output_and_grads(image_selective_scan_triton, as_dtypes(inputs, {}), chunk=chunk, block_d=block_d)
    assert got[0].dtype == torch.float32
    assert_within(relative_errors(got, reference), {})


@pytest.mark.parametrize("low", [("x", "x_dbl"), NAMES], ids=["autocast-like", "all-bfloat16"])
def test_bfloat16_inputs_are_computed_in_float32(low):
    # Under autocast x and x_dbl come in bfloat16, the parameters stay float32. The oracle gets the same
    # rounded values: only the bfloat16 gradients may differ by their rounding, y (float32) not at all.
    dtypes = dict.fromkeys(low, torch.bfloat16)
    inputs = as_dtypes(make_image_inputs(1, 3, 4, 6, 4, 2, seed=3), dtypes)
    rounded = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    reference = output_and_grads(image_scan_oracle, rounded)
    got = output_and_grads(image_selective_scan_triton, inputs, chunk=16, block_d=2)
    assert got[0].dtype == torch.float32
    assert [g.dtype for g in got[1:]] == [inputs[name].dtype for name in NAMES]
    assert_within(relative_errors(got, reference), dict.fromkeys(low, BFLOAT16_TOLERANCE))


def test_only_inputs_and_chunk_boundary_states_are_saved():
    bt, channels, height, width, n, rank, chunk = 2, 3, 4, 6, 4, 2, 8
    inputs = as_dtypes(make_image_inputs(bt, channels, height, width, n, rank), {})
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(tuple(x.shape)) or x, lambda x: x):
        y = image_selective_scan_triton(**inputs, chunk=chunk)
    states = (bt, 4 * channels, height * width // chunk, n)
    assert sorted(saved) == sorted([*(tuple(v.shape) for v in inputs.values()), states])
    with torch.no_grad():  # the kernel variant that saves no states
        assert torch.equal(image_selective_scan_triton(**inputs, chunk=chunk), y)


def test_float64_is_refused_in_one_line():
    inputs = make_image_inputs(1, 2, 2, 3, 2, 1)
    with pytest.raises(ValueError, match=r"^the triton image scan computes in float32: .*torch, ref or cpp backend"):
        image_selective_scan_triton(**inputs)


def test_shapes_are_validated():
    inputs = as_dtypes(make_image_inputs(1, 2, 2, 3, 2, 1), {})
    inputs["x_dbl"] = inputs["x_dbl"][..., :-1]
    with pytest.raises(ValueError, match=r"x_dbl must be \(1, 4, R\+2N=5, H\*W=6\), got \(1, 4, 5, 5\)"):
        image_selective_scan_triton(**inputs)


def test_torch_compile_traces_the_custom_ops_without_graph_breaks():
    # aot_eager: Dynamo and AOTAutograd trace the ops through their fake implementations, the kernels run eagerly.
    inputs = as_dtypes(make_image_inputs(1, 2, 3, 4, 2, 2), {})
    compiled = torch.compile(image_selective_scan_triton, backend="aot_eager", fullgraph=True)
    errors = relative_errors(output_and_grads(compiled, inputs, chunk=8),
                             output_and_grads(image_selective_scan_triton, inputs, chunk=8))
    assert max(errors.values()) <= 1e-6, errors

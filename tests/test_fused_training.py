"""The fused training path's modules against their reference (unfused) versions, and what it keeps.

Each fused module computes the reference's function with a hand-written or recomputing backward:
the Fourier branch (spectrum recomputed, gradient written out), the Haar transforms (adjoints as
backward), the symmetry step (a*y + c*flip(y)). They must agree with the reference in float64 to
1e-12 in value and gradient, on odd sizes and on flat inputs (exactly-zero spectrum bins). The
network-level check of the whole path (fused against unfused) is tests/test_image_scan.py.
"""
import pytest
import torch

from models import HybriMamba
from models.fwm import FourierBranch, WaveletBranch
from models.image_ssm import SymmetryEnhancement
from tests.test_selective_scan import relative_error

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = [(2, 5, 6, 8), (1, 4, 5, 7), (2, 3, 4, 1), (1, 2, 1, 5)]


def perturbed(module):
    torch.manual_seed(0)
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return module


def outputs_and_gradients(module, x, fused):
    """The module's output and the gradients of <output, fixed weights> w.r.t. x and every parameter."""
    module.fused = fused
    x = x.detach().requires_grad_()
    y = module(x)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=y.dtype)
    return [y] + list(torch.autograd.grad((y * weights).sum(), [x, *module.parameters()]))


def assert_fused_matches_reference(module, x):
    fused, reference = (outputs_and_gradients(module, x, f) for f in (True, False))
    for got, want in zip(fused, reference):
        assert got.shape == want.shape and relative_error(got, want) <= 1e-12


@pytest.mark.parametrize("shape", SHAPES)
def test_fourier_branch_matches_the_reference(shape):
    module = perturbed(FourierBranch(shape[1]))
    assert_fused_matches_reference(module, torch.randn(*shape, dtype=torch.float64))


def test_fourier_branch_on_a_flat_image():
    """Every bin but the mean is exactly zero: the phase is 1 there, and no gradient flows through it."""
    module = perturbed(FourierBranch(3))
    x = torch.full((1, 3, 6, 5), 0.7, dtype=torch.float64)
    assert_fused_matches_reference(module, x)
    assert all(torch.isfinite(g).all() for g in outputs_and_gradients(module, x, True))


def test_fourier_branch_gradcheck():
    module = perturbed(FourierBranch(2))
    module.fused = True
    assert torch.autograd.gradcheck(module, (torch.randn(1, 2, 3, 5, dtype=torch.float64, requires_grad=True),))


def test_fourier_branch_keeps_its_input_and_two_amplitude_maps():
    """Autograd's version keeps complex spectra (three times the input); the fused one x and the conv outputs."""
    module = FourierBranch(4)
    x = torch.randn(1, 4, 16, 16, requires_grad=True)
    kept = {}
    for fused in (True, False):
        module.fused = fused
        kept[fused] = saved_bytes(lambda: module(x), exclude=[x, *module.parameters()])
    assert kept[True] == 2 * 4 * 16 * 9 * 4  # two (1, 4, 16, 16 // 2 + 1) float32 maps
    assert kept[False] > 4 * kept[True]


@pytest.mark.parametrize("shape", SHAPES)
def test_wavelet_branch_matches_the_reference(shape):
    module = perturbed(WaveletBranch(shape[1]))
    assert_fused_matches_reference(module, torch.randn(*shape, dtype=torch.float64))


def test_wavelet_branch_gradcheck():
    module = perturbed(WaveletBranch(2))
    module.fused = True
    assert torch.autograd.gradcheck(module, (torch.randn(1, 2, 3, 5, dtype=torch.float64, requires_grad=True),))


def test_symmetry_matches_the_reference():
    module = SymmetryEnhancement().double()
    with torch.no_grad():
        module.alpha.fill_(-0.8)
    assert_fused_matches_reference(module, torch.randn(2, 3, 4, 5, dtype=torch.float64))


def saved_bytes(forward, exclude=()):
    """Bytes of the unique storages autograd keeps for the backward of ``forward()`` (minus ``exclude``)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(storages.values())


def network_saved_bytes(fused, checkpointing=False):
    torch.manual_seed(0)
    model = HybriMamba(embed_dim=8, depth=2, n_layers=2, d_state=4)
    model.set_fused(fused)
    model.set_activation_checkpointing(checkpointing)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    return saved_bytes(lambda: model(x), exclude=list(model.parameters()))


def test_the_fused_path_keeps_a_third_of_the_unfused_activations():
    """What the backward keeps after a forward (paper configuration at 128x128: 0.59 against 2.12 GiB per
    image, bench/bench_memory.py); here a small network, where the fixed parts weigh more."""
    fused, unfused = network_saved_bytes(True), network_saved_bytes(False)
    assert fused < 0.4 * unfused


def test_activation_checkpointing_still_cuts_what_the_fused_path_keeps():
    assert network_saved_bytes(True, checkpointing=True) < 0.25 * network_saved_bytes(True)

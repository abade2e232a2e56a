"""The network against tests/network_oracle.py, a float64 functional version written from the spec alone.

Every parameter is perturbed first (no zero bias, no unit gain, SSM parameters off their init), so
each term of the spec moves the output. The whole network and every part of it (compared on the
inputs the part received inside the network) must agree to 1e-9 in float64.
"""
import math

import pytest
import torch

from models import HybriMamba
from tests import network_oracle as oracle

TOL = 1e-9
# Sizes whose sides never equal a channel count of the configuration (so a tensor's layout is
# unambiguous); 20x28 and 8x12 give odd sides at H/4 or W/4, where the Haar transform pads.
CASES = {
    "tiny": (dict(embed_dim=8, depth=1, n_layers=1), (2, 20, 28)),
    "paper": ({}, (1, 8, 12)),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def perturbed_float64_model(config, seed=0):
    """The project's model in float64 with every parameter moved off its initial value."""
    torch.manual_seed(seed)
    model = HybriMamba(**config, scan_backend="torch").double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_logs"):
                p.add_(torch.rand_like(p) * 0.5)
            elif p.dim() >= 2:  # weights: noise scaled by the entries of one output row (a conv's fan-in)
                p.add_(torch.randn_like(p) * 0.5 / p[0].numel() ** 0.5)
            else:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def part_prefixes(params):
    """(oracle part, prefix) for every part of the network, from the state_dict names."""
    parts = [("down", f"down{i}") for i in (1, 2)] + [("up", f"up{i}") for i in (1, 2)]
    for name in params:
        if name.endswith(".norm1.weight"):
            block = name[:-len(".norm1.weight")]
            parts += [("hybrimamba_block", block), ("lem", f"{block}.lem")]
            if block.endswith(".blocks.0"):
                parts.append(("stage", block[:-len(".blocks.0")]))
        elif name.endswith(".block.in_proj.weight"):
            layer = name[:-len(".block.in_proj.weight")]
            parts += [("mamba_layer", layer), ("mamba_block", f"{layer}.block"), ("fwm", f"{layer}.block.fwm"),
                      ("image_ssm", f"{layer}.block.ssm")]
    return parts


def to_layout(x, channels, layout):
    """A 4-D tensor whose channel axis (1 or 3) holds ``channels`` entries, in ``layout``."""
    first, last = x.shape[1] == channels, x.shape[3] == channels
    assert first != last, f"cannot tell the layout of {tuple(x.shape)} with {channels} channels"
    bchw = x if first else x.permute(0, 3, 1, 2)
    return bchw if layout == "BCHW" else bchw.permute(0, 2, 3, 1)


def capture_parts(model, parts, x):
    """Run the model once; the (input, output) each part received, keyed by prefix."""
    seen, handles = {}, []
    for _, prefix in parts:
        def hook(module, inputs, output, prefix=prefix):
            seen[prefix] = (inputs[0].detach(), output.detach())
        handles.append(model.get_submodule(prefix).register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return out, seen


def max_error(got, want):
    assert got.shape == want.shape
    return (got - want).abs().max().item()


class Case:
    """One configuration run through the network: its float64 parameters, input, output, and the
    (input, output) of every part; printed by name only when a test fails."""

    def __init__(self, name, params, x, out, parts, seen):
        self.name, self.params, self.x, self.out, self.parts, self.seen = name, params, x, out, parts, seen

    def __repr__(self):
        return f"<{self.name} configuration>"


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    config, (batch, h, w) = CASES[request.param]
    model = perturbed_float64_model(config)
    params = oracle.float64_params(model)
    x = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    parts = part_prefixes(params)
    out, seen = capture_parts(model, parts, x)
    return Case(request.param, params, x, out, parts, seen)


def test_whole_network_matches_the_oracle(case):
    want = oracle.network(case.params, case.x)
    # The output is the input plus a residual of order one, so an absolute 1e-9 is tight.
    assert 0.5 < (want - case.x).abs().max().item() < 100
    assert max_error(case.out, want) <= TOL


def test_every_part_matches_the_oracle_on_its_own_input(case):
    params, parts, seen = case.params, case.parts, case.seen
    assert {kind for kind, _ in parts} == set(oracle.PARTS)
    errors = {}
    for kind, prefix in parts:
        fn, layout = oracle.PARTS[kind]
        given, produced = seen[prefix]
        if kind in ("down", "up"):  # convolutions on (B, C, H, W) that change the channel count
            got, want = produced, fn(params, prefix, given)
        else:
            channels = channel_count(params, kind, prefix)
            got, want = to_layout(produced, channels, layout), fn(params, prefix, to_layout(given, channels, layout))
        errors[prefix] = max_error(got, want)
    assert len(errors) == len(parts)
    bad = {prefix: err for prefix, err in errors.items() if not err <= TOL}
    assert bad == {}


def channel_count(params, kind, prefix):
    """The channel count of the tensors a part takes and returns, from its parameters' shapes."""
    if kind == "stage":
        return params[f"{prefix}.blocks.0.norm1.weight"].numel()
    if kind == "hybrimamba_block":
        return params[f"{prefix}.norm1.weight"].numel()
    if kind == "mamba_layer":
        return params[f"{prefix}.norm.weight"].numel()
    if kind == "mamba_block":
        return params[f"{prefix}.out_proj.weight"].shape[0]
    if kind == "lem":
        return params[f"{prefix}.project_out.weight"].shape[0]
    if kind == "fwm":
        return params[f"{prefix}.wavelet.high_conv.weight"].shape[0]
    return params[f"{prefix}.Ds"].numel() // 4   # image_ssm: four directions of d_inner channels


def test_the_oracles_haar_is_pytorch_wavelets():
    """The oracle's own Haar against the spec's reference, odd sides included."""
    from pytorch_wavelets import DWTForward, DWTInverse

    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    ll, highs = oracle.haar_dwt(x)
    yl, yh = DWTForward(J=1, wave="haar", mode="zero").double()(x)
    # pytorch_wavelets keeps its filters in float32.
    assert max_error(ll, yl) < 1e-6 and max_error(torch.stack(highs, dim=2), yh[0]) < 1e-6
    bands = [b * (i + 2) for i, b in enumerate(highs)]
    inverse = DWTInverse(wave="haar", mode="zero").double()((ll, [torch.stack(bands, dim=2)]))
    assert max_error(oracle.haar_idwt(ll, bands), inverse) < 1e-6
    assert max_error(oracle.haar_idwt(ll, highs)[..., :5, :6], x) < 1e-12


def test_the_oracles_scan_by_hand():
    """One channel, one state, three steps: h = e^(dt a) h + dt b u, y = c h + d u, worked out by hand."""
    u = torch.tensor([[[1.0, 2.0, -1.0]]], dtype=torch.float64)
    dt = torch.tensor([[[0.5, 1.0, 2.0]]], dtype=torch.float64)
    a = torch.tensor([[-2.0]], dtype=torch.float64)
    b = torch.tensor([[[1.0, 0.5, 3.0]]], dtype=torch.float64)
    c = torch.tensor([[[2.0, -1.0, 1.0]]], dtype=torch.float64)
    d = torch.tensor([0.25], dtype=torch.float64)
    h1 = 0.5 * 1.0 * 1.0
    h2 = math.exp(-2.0) * h1 + 1.0 * 0.5 * 2.0
    h3 = math.exp(-4.0) * h2 + 2.0 * 3.0 * -1.0
    want = [2 * h1 + 0.25, -h2 + 0.5, h3 - 0.25]
    assert oracle.sequential_scan(u, dt, a, b, c, d)[0, 0].tolist() == pytest.approx(want, abs=1e-15)

"""param.py and the complexity counts behind it."""
import json
import math
import subprocess
import sys
from collections import Counter

import pytest
import torch

from models import HybriMamba
from models.complexity import count_complexity
from models.selective_scan import cpu_kernel
from tests.conftest import ROOT

TINY_ARGS = ["--embed_dim", "8", "--depth", "1", "--n_layers", "1"]


CONFIG = dict(embed_dim=8, depth=1, n_layers=1)
SIZE = (12, 20)  # H/4 x W/4 = 3 x 5: odd, so the Haar transform pads there
STAGES = ("enc0", "enc1", "enc2", "bottleneck", "dec1", "dec2", "dec3")


def stage_shapes(c, h, w):
    """(name, width, H, W) of every Stage (docs/architecture.md §2)."""
    widths = (c, 2 * c, 4 * c, 4 * c, 8 * c, 4 * c, 2 * c)
    scales = (1, 2, 4, 4, 4, 2, 1)
    return [(name, d, h // s, w // s) for name, d, s in zip(STAGES, widths, scales)]


def thop_by_hand(c, h, w, depth=1, n_layers=1, expand=1.5, mlp_ratio=2.0):
    """thop's MACs per (top-level part, layer kind) for a 1 x 3 x h x w input.

    thop's rules: Conv2d = output elements x (Cin / groups) x k^2 (no bias term); Linear = output
    elements x in_features; LayerNorm = 4 x input elements; AdaptiveAvgPool2d = (pooled pixels + 1)
    x output elements; activations, PixelShuffle and custom modules (RMSNorm, the symmetry term) 0.
    """
    macs = Counter()

    def conv(part, k, cin, cout, oh, ow, groups=1):
        macs[part, "Conv2d"] += oh * ow * cout * (cin // groups) * k * k

    def linear(part, fin, fout, tokens):
        macs[part, "Linear"] += tokens * fout * fin

    def layer_norm(part, d, tokens):
        macs[part, "LayerNorm"] += 4 * d * tokens

    def stage(part, d, sh, sw):
        tokens, di, squeezed, hidden = sh * sw, int(expand * d), max(d // 16, 1), int(mlp_ratio * d)
        for _ in range(depth):
            layer_norm(part, d, tokens)
            layer_norm(part, d, tokens)
            for _ in range(n_layers):
                linear(part, d, 2 * di, tokens)                                # in_proj
                conv(part, 1, di, di, sh, sw // 2 + 1)                         # FFT amplitude: 1x1, GELU, 1x1
                conv(part, 1, di, di, sh, sw // 2 + 1)
                conv(part, 3, di, di, 3 * math.ceil(sh / 2), math.ceil(sw / 2))  # LH, HL, HH bands
                conv(part, 3, di, di, sh, sw, groups=di)                       # depthwise
                layer_norm(part, di, tokens)                                   # out_norm
                linear(part, di, d, tokens)                                    # out_proj
            conv(part, 1, d, 2 * d, sh, sw)                                    # LEM
            conv(part, 3, d, d, sh, sw, groups=d)
            macs[part, "AdaptiveAvgPool2d"] += (tokens + 1) * d
            conv(part, 1, d, squeezed, 1, 1)
            conv(part, 1, squeezed, d, 1, 1)
            layer_norm(part, d, tokens)
            linear(part, d, hidden, tokens)
            linear(part, hidden, d, tokens)
            conv(part, 1, d, d, sh, sw)

    conv("shallow", 3, 3, c, h, w)
    for name, d, sh, sw in stage_shapes(c, h, w):
        stage(name, d, sh, sw)
    for part, cin, cout, sh, sw in (("down1", c, 2 * c, h, w), ("down2", 2 * c, 4 * c, h // 2, w // 2)):
        conv(part, 4, cin, cin, sh // 2, sw // 2, groups=cin)
        conv(part, 1, cin, cout, sh // 2, sw // 2)
    for part, cin, cout, sh, sw in (("up1", 8 * c, 2 * c, h // 4, w // 4), ("up2", 4 * c, c, h // 2, w // 2)):
        conv(part, 3, cin, cin, sh, sw, groups=cin)
        conv(part, 1, cin, 4 * cout, sh, sw)
    conv("reconstruct", 3, 2 * c, 3, h, w)
    return macs


def functional_flops_by_hand(c, h, w, depth=1, n_layers=1, expand=1.5, d_state=8):
    """FLOPs per (stage, op) of what thop cannot see, by the conventions param.py documents:
    per-direction projections 2 x MACs (x_proj: K L D (R + 2N), dt_proj: K L R D with K = 4 directions);
    the scan 9 L (K D) N + (K D) L; each of rfft2 and irfft2 2.5 N log2(N) per channel of N pixels;
    the Haar DWT and its inverse 4 per value they output (the padded size at odd sides)."""
    flops = Counter()
    for name, d, sh, sw in stage_shapes(c, h, w):
        tokens, di, rank, n = sh * sw, int(expand * d), math.ceil(d / 16), d_state
        padded = di * (sh + sh % 2) * (sw + sw % 2)
        for _ in range(depth * n_layers):
            projections = 4 * tokens * di * (rank + 2 * n) + 4 * tokens * rank * di
            flops[name, "Image-SSM projections (x_proj, dt_proj)"] += 2 * projections
            flops[name, "selective scan"] += 9 * tokens * 4 * di * n + 4 * di * tokens
            flops[name, "FFT (rfft2 + irfft2)"] += 2 * 2.5 * di * tokens * math.log2(tokens)
            flops[name, "Haar DWT + IDWT"] += 4 * padded + 4 * padded
    return flops


def per_part(counts):
    totals = Counter()
    for (part, _), value in counts.items():
        totals[part] += value
    return totals


def per_kind(counts):
    totals = Counter()
    for (_, kind), value in counts.items():
        totals[kind] += value
    return totals


def thop_per_layer_kind(model, size):
    """thop's own MACs for each (top-level part, module class) of the model."""
    import thop

    _, _, layers = thop.profile(model.eval(), inputs=(torch.randn(1, 3, *size),), verbose=False, ret_layer_info=True)
    counts = Counter()

    def visit(path, info):
        ops, _, children = info
        if children:
            for name, child in children.items():
                visit(f"{path}.{name}", child)
        elif ops:
            counts[path.split(".")[1], type(model.get_submodule(path[1:])).__name__] += ops

    for name, info in layers.items():
        visit(f".{name}", info)
    return counts


def test_thop_counts_each_layer_kind_as_computed_by_hand():
    model = HybriMamba(**CONFIG)
    model.set_fused(False)  # thop counts module calls; the fused Fourier branch runs its 1x1 convs as bmm
    assert thop_per_layer_kind(model, SIZE) == thop_by_hand(8, *SIZE)


def test_complexity_totals_by_hand():
    model = HybriMamba(**CONFIG)
    stats = count_complexity(model, size=SIZE)
    thop_macs, functional = thop_by_hand(8, *SIZE), functional_flops_by_hand(8, *SIZE)
    assert stats["params"] == sum(p.numel() for p in model.parameters())
    assert sum(stats["params_per_stage"].values()) == stats["params"]
    assert sum(stats["params_per_kind"].values()) == stats["params"]

    total = sum(thop_macs.values())
    assert stats["ops_per_kind"]["thop (conv/linear/norm)"] == (total, 2 * total)
    assert stats["thop_macs_per_stage"] == per_part(thop_macs)
    for kind, flops in per_kind(functional).items():
        assert stats["ops_per_kind"][kind][1] == pytest.approx(flops, rel=1e-12), kind
        assert stats["ops_per_kind"][kind][0] == pytest.approx(flops / 2, rel=1e-12), kind
    assert set(stats["ops_per_kind"]) == {"thop (conv/linear/norm)", *per_kind(functional)}
    functional_per_stage = per_part(functional)
    for part, (macs, flops) in stats["ops_per_stage"].items():
        thop_part = per_part(thop_macs)[part]
        assert flops == pytest.approx(2 * thop_part + functional_per_stage[part], rel=1e-12), part
        assert macs == pytest.approx(thop_part + functional_per_stage[part] / 2, rel=1e-12), part
    expected_flops = 2 * total + sum(functional.values())
    assert stats["flops"] == pytest.approx(expected_flops, rel=1e-12)
    assert stats["macs"] == pytest.approx(expected_flops / 2, rel=1e-12)


def test_param_script_json_and_table():
    out = subprocess.run([sys.executable, "param.py", *TINY_ARGS, "--size", "16", "24", "--json", "--repeats", "1"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout)
    model = HybriMamba(embed_dim=8, depth=1, n_layers=1)
    assert stats["params"] == sum(p.numel() for p in model.parameters())
    assert stats["input"] == [1, 3, 16, 24] and stats["latency_s"] > 0
    assert stats["scan_backend"] == ("cpp" if cpu_kernel.cpp_unavailable_reason() is None else "torch")  # auto on CPU
    flops = 2 * sum(thop_by_hand(8, 16, 24).values()) + sum(functional_flops_by_hand(8, 16, 24).values())
    assert stats["flops"] == pytest.approx(flops, rel=1e-12) and stats["macs"] == pytest.approx(flops / 2, rel=1e-12)
    table = subprocess.run([sys.executable, "param.py", *TINY_ARGS, "--size", "16", "16", "--no_latency"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "paper 15.1 M" in table and "paper 19.7 G" in table and "selective scan" in table


def test_param_script_rejects_sizes_not_multiple_of_four():
    out = subprocess.run([sys.executable, "param.py", *TINY_ARGS, "--size", "30", "30"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "multiples of 4" in out.stderr.strip().splitlines()[-1]


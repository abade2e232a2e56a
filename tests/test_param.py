"""param.py and the complexity counts behind it."""
import json
import math
import subprocess
import sys

from models import HybriMamba
from models.complexity import count_complexity
from tests.conftest import ROOT

TINY_ARGS = ["--embed_dim", "8", "--depth", "1", "--n_layers", "1"]


def expected_scan_flops(c, size, n=8, expand=1.5, n_layers=1, depth=1):
    """9*B*L*D*N + B*D*L per Image-SSM call, D = 4 directions x d_inner, summed over the stages."""
    h, w = size
    stages = [(c, 1), (2 * c, 2), (4 * c, 4), (4 * c, 4), (8 * c, 4), (4 * c, 2), (2 * c, 1)]
    total = 0
    for dim, factor in stages:
        length, d = (h // factor) * (w // factor), 4 * int(expand * dim)
        total += depth * n_layers * (9 * length * d * n + d * length)
    return total


def expected_fft_flops(c, size, expand=1.5):
    h, w = size
    stages = [(c, 1), (2 * c, 2), (4 * c, 4), (4 * c, 4), (8 * c, 4), (4 * c, 2), (2 * c, 1)]
    total = 0.0
    for dim, factor in stages:
        pixels = (h // factor) * (w // factor)
        total += 2 * 2.5 * int(expand * dim) * pixels * math.log2(pixels)
    return total


def test_complexity_counts_params_scan_and_fft():
    model = HybriMamba(embed_dim=8, depth=1, n_layers=1)
    stats = count_complexity(model, size=(32, 48))
    assert stats["params"] == sum(p.numel() for p in model.parameters())
    assert sum(stats["params_per_stage"].values()) == stats["params"]
    assert sum(stats["params_per_kind"].values()) == stats["params"]
    assert stats["ops_per_kind"]["selective scan"][1] == expected_scan_flops(8, (32, 48))
    assert math.isclose(stats["ops_per_kind"]["FFT (rfft2 + irfft2)"][1], expected_fft_flops(8, (32, 48)))
    # The first conv: 3 -> 8 channels, 3x3, at every pixel.
    assert stats["ops_per_kind"]["thop (conv/linear/norm)"][0] >= 27 * 8 * 32 * 48
    assert math.isclose(stats["flops"], sum(f for _, f in stats["ops_per_kind"].values()))


def test_param_script_json_and_table():
    out = subprocess.run([sys.executable, "param.py", *TINY_ARGS, "--size", "16", "24", "--json", "--repeats", "1"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout)
    model = HybriMamba(embed_dim=8, depth=1, n_layers=1)
    assert stats["params"] == sum(p.numel() for p in model.parameters())
    assert stats["input"] == [1, 3, 16, 24] and stats["latency_s"] > 0 and stats["scan_backend"] == "torch"
    table = subprocess.run([sys.executable, "param.py", *TINY_ARGS, "--size", "16", "16", "--no_latency"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "paper 15.1 M" in table and "paper 19.7 G" in table and "selective scan" in table


def test_param_script_rejects_sizes_not_multiple_of_four():
    out = subprocess.run([sys.executable, "param.py", *TINY_ARGS, "--size", "30", "30"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "multiples of 4" in out.stderr.strip().splitlines()[-1]


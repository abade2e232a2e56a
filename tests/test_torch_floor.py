"""The torch floor: requirements.txt, tests/torch_floor.sh (which proves it, before each release) and the
README state the same version, and the CPU paths do not load what needs a newer torch."""
import re
import subprocess
import sys

from tests.conftest import ROOT

LOADED = """
import sys, torch
from models import HybriMamba
HybriMamba(embed_dim=4, depth=1, n_layers=1)(torch.zeros(1, 3, 8, 8))
print("models.selective_scan.triton_backend" in sys.modules)
"""


def test_the_floor_is_stated_once_in_requirements_the_script_and_the_readme():
    requirement = re.search(r"^torch>=(\d+\.\d+)(,.*)?$", (ROOT / "requirements.txt").read_text(), flags=re.M)
    assert requirement, "requirements.txt names no torch floor"
    floor = requirement.group(1)
    assert re.search(rf"^FLOOR_TORCH={re.escape(floor)}\.\d+$", (ROOT / "tests" / "torch_floor.sh").read_text(),
                     flags=re.M)
    assert f"torch ≥ {floor}" in (ROOT / "README.md").read_text()


def test_the_cpu_network_does_not_import_the_triton_backend():
    # Its module registers torch custom ops, which need torch 2.4; the cpp, torch and ref scans must not need it.
    done = subprocess.run([sys.executable, "-c", LOADED], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"

#!/usr/bin/env bash
# The torch floor of requirements.txt, proven: a brand-new venv with the floor's torch and torchvision
# and the rest of requirements.txt, then the test suite on the CPU. Not part of .ci/run: PyPI's Linux
# torch wheels are CUDA builds, about 3 GB with their nvidia libraries. Run it before each release:
#
#     bash tests/torch_floor.sh                 # the floor (FLOOR_TORCH below)
#     bash tests/torch_floor.sh 2.5.1 0.20.1    # another torch / torchvision pair
#
# KEEP_VENV=DIR keeps the venv in DIR (a rerun reuses it). The Triton backend's tests run only with a
# Triton that has triton.knobs (the one of CI's torch): older Tritons' interpreter cannot run the kernels
# on the CPU (torch 2.4.1's Triton 3.0 fails on NumPy 2 scalars), so there the backend is unverified.
set -euo pipefail
FLOOR_TORCH=2.4.1
FLOOR_TORCHVISION=0.19.1
torch_version=${1:-$FLOOR_TORCH}
torchvision_version=${2:-$FLOOR_TORCHVISION}
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
venv=${KEEP_VENV:-$(mktemp -d)/venv}
[ -n "${KEEP_VENV:-}" ] || trap 'rm -rf "$(dirname "$venv")"' EXIT
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# torch before 2.3 was built against NumPy 1 and cannot run beside NumPy 2.
numpy=$("$venv/bin/python" -c "import sys; v = tuple(map(int, sys.argv[1].split('.')[:2])); \
print('numpy<2' if v < (2, 3) else 'numpy')" "$torch_version")
"$venv/bin/pip" install --quiet "torch==$torch_version" "torchvision==$torchvision_version" "$numpy" \
    -r "$repo/requirements.txt"
"$venv/bin/pip" install --quiet --no-deps -r "$repo/requirements-test.txt"  # as make test does
bash "$repo/tests/install_extras.sh" "$venv/bin/pip" --quiet                   # as make test does
cd "$repo"
"$venv/bin/python" -c "import torch, torchvision, numpy; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'numpy', numpy.__version__)"
skip=()
"$venv/bin/python" -c "import triton.knobs" 2> /dev/null \
    || skip=(--ignore tests/test_triton_scan.py --ignore tests/interpreter)
TORCH_EXTENSIONS_DIR="$venv/torch_extensions" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    "${skip[@]}" tests
echo "torch floor: the suite passes with torch $torch_version"

#!/usr/bin/env bash
# A fresh machine, as far as one can be had here: a clean clone of the committed tree and a
# brand-new venv from requirements.txt and requirements-extra.txt alone. Catches a requirement that is
# missing or broken.
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone --quiet "$repo" "$work/clone"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --upgrade pip
"$work/venv/bin/pip" install --quiet -r "$work/clone/requirements.txt"
bash "$work/clone/tests/install_extras.sh" "$work/venv/bin/pip" --quiet
cd "$work/clone"
for script in train.py test.py psnr_ssim.py calc_lpips.py param.py enhance.py; do
  "$work/venv/bin/python" "$script" --help > /dev/null
  echo "fresh machine: $script --help ok"
done
"$work/venv/bin/python" - <<'PY'
import importlib, pkgutil
for package in ("models", "data", "options", "utils"):
    for info in pkgutil.walk_packages([package], prefix=package + "."):
        if not info.name.endswith(".__main__"):  # running it is the demo itself
            importlib.import_module(info.name)
import pytorch_wavelets, lpips, thop, skimage, cv2, tensorboard  # noqa: F401
print("fresh machine: every module imports")
import numpy as np
from utils.photo import FaceDetector
FaceDetector().detect(np.zeros((64, 64, 3), np.uint8))  # MTCNN's packaged weights load and run here
print("fresh machine: the face detector runs")
PY
"$work/venv/bin/python" param.py
echo "fresh machine: ok"

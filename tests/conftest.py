"""Shared fixtures: the repository root on sys.path, the optional ../shared data folder, one-thread modules."""
import hashlib
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("HYBRIMAMBA_SHARED", ROOT.parent / "shared"))


def in_ci():
    """True when the environment variable CI is set (as CI services and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def shared_path(*parts):
    """A path under the shared data folder; if it is absent, skip the test with the reason, or fail
    it under CI, where a lost data folder must not turn into a green run with tests skipped."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        reason = f"{path} is absent (real data lives beside the repository in development and CI only)"
        if in_ci():
            pytest.fail(f"{reason}; CI needs it: put it there or point HYBRIMAMBA_SHARED at it", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture
def celeba_dir():
    """Real CelebA aligned faces (178x218 JPEG, folders train/ and val/) from ../shared/data."""
    return shared_path("data", "celeba_align")


@pytest.fixture
def alexnet_weights():
    """The real ImageNet AlexNet conv weights LPIPS needs, for offline tests."""
    return shared_path("weights", "alexnet_imagenet_features.pth")


def file_hashes(*roots):
    """sha256 of every file under ``roots``, keyed by path: compare before/after to prove nothing changed."""
    return {path: hashlib.sha256(path.read_bytes()).hexdigest()
            for root in roots for path in sorted(Path(root).rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny tensors: more threads only add overhead, and CI shares
    its two cores between jobs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

"""Shared fixtures: the repository root on sys.path and the optional ../shared data folder."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("HYBRIMAMBA_SHARED", ROOT.parent / "shared"))


def shared_path(*parts):
    """A path under the shared data folder, or skip the test with the reason it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real data lives beside the repository in development and CI only)")
    return path


@pytest.fixture
def celeba_dir():
    """Real CelebA aligned faces (178x218 JPEG, folders train/ and val/) from ../shared/data."""
    return shared_path("data", "celeba_align")


@pytest.fixture
def alexnet_weights():
    """The real ImageNet AlexNet conv weights LPIPS needs, for offline tests."""
    return shared_path("weights", "alexnet_imagenet_features.pth")

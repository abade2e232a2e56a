"""The shared-data lookup: a skip with its reason on a developer's machine, an error under CI."""
import pytest

from tests.conftest import shared_path


@pytest.mark.parametrize("value", ["true", "1"])
def test_missing_shared_data_fails_under_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="no_such_folder is absent.*CI needs it"):
        shared_path("no_such_folder")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_missing_shared_data_skips_outside_ci(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="no_such_folder is absent"):
        shared_path("no_such_folder")

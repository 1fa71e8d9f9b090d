"""Tests run anywhere: the shared models and data are found through $EDGEPACK_SHARED or ../shared."""
from __future__ import annotations

import importlib

import pytest

import tests.helpers as helpers


@pytest.fixture
def reload_helpers(monkeypatch):
    def load(value: str | None):
        if value is None:
            monkeypatch.delenv("EDGEPACK_SHARED", raising=False)
        else:
            monkeypatch.setenv("EDGEPACK_SHARED", value)
        return importlib.reload(helpers)

    yield load
    monkeypatch.undo()
    importlib.reload(helpers)  # as the rest of the suite saw it


def test_shared_folder_comes_from_the_environment_or_beside_the_checkout(reload_helpers, tmp_path):
    assert reload_helpers(str(tmp_path)).SHARED == tmp_path
    assert reload_helpers(None).SHARED == helpers.REPO.parent / "shared"


def test_the_skip_reason_says_how_to_get_the_data(reload_helpers, tmp_path):
    module = reload_helpers(str(tmp_path / "absent"))
    reason = module.requires_shared.kwargs["reason"]
    assert module.requires_shared.args == (True,)  # skipped
    assert str(tmp_path / "absent") in reason and "EDGEPACK_SHARED" in reason and "../shared" in reason

"""Fixtures shared by the integration suites."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(params=["embedded", "embedded-raw", "replset"])
def source(
    request: pytest.FixtureRequest,
    tmp_path: Any,
    mongo_db_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    """The source URL: the embedded engine, the embedded engine read as raw BSON (warp's
    PyMongo path: C conversion), and a real replica set when one is available."""
    if request.param.startswith("embedded"):
        if request.param == "embedded-raw":
            from tests.support.raw_source import read_raw

            read_raw(monkeypatch)
        yield f"mongoeco://{tmp_path / 'source.sqlite'}"
    else:
        yield request.getfixturevalue("replset_url")

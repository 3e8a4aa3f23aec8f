"""Fixtures shared by the integration suites."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(params=["embedded", "replset"])
def source(request: pytest.FixtureRequest, tmp_path: Any, mongo_db_name: str) -> Iterator[str]:
    """The source URL: the embedded engine, and a real replica set when one is available."""
    if request.param == "embedded":
        yield f"mongoeco://{tmp_path / 'source.sqlite'}"
    else:
        yield request.getfixturevalue("replset_url")

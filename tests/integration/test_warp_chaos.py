"""Nothing is lost under concurrent writer processes while warp is killed at random moments.

The short version of ``make soak``: one seed per source (the embedded engine with the demo's
history size, and the replica-set test server over TCP). The oracle reads the source with its
own client and PostgreSQL with SQL (``tests/support/chaos.py``), never Cartridge's converter.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.chaos import run_chaos

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize(("backend", "seed"), [("embedded", 7), ("replset", 11)])
def test_chaos_writers_and_kills(backend: str, seed: int, pg_url: str, tmp_path: Path) -> None:
    result = run_chaos(backend, seed, pg_url, tmp_path, seconds=20)
    print(result.line())
    assert result.kills >= 2, "warp was killed while the writers wrote"
    assert result.documents > 500
    assert result.ok, (
        f"{result.line()}\n missing {result.missing[:10]}\n extra {result.extra[:10]}\n"
        f" stale {result.stale[:10]}\n warp log: {Path(result.warp_log).read_text()[-4000:]}"
    )

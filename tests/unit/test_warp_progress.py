"""A snapshot copy's progress: rows/s and ETA per collection, in the log every few seconds and
in what each batch carries to Dagster (the asset's ``snapshot_*`` metadata)."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from cartridge_dagster.warp import runner
from cartridge_dagster.warp.runner import _Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(runner.time, "monotonic", clock)
    return clock


def test_progress_is_logged_every_few_seconds_with_rate_and_eta(clock: Clock) -> None:
    progress = _Progress("orders", 0, 10_000, started=clock.now, logged=clock.now)
    with capture_logs() as logs:
        clock.now += 1.0
        first = progress.update(1_000, done=False)  # 1 s in: not logged yet (every 5 s)
        clock.now += 4.0
        second = progress.update(5_000, done=False)  # 5 s in: 1,000 rows/s, 5,000 to go
        clock.now += 1.0
        progress.update(6_000, done=False)  # 1 s after the last line: not logged
    assert first == {
        "copied": 1_000,
        "total": 10_000,
        "rows_per_s": 1000.0,
        "eta_s": 9.0,
        "done": False,
    }
    assert second["rows_per_s"] == 1000.0 and second["eta_s"] == 5.0
    lines = [e for e in logs if e["event"] == "warp.snapshot.progress"]
    assert lines == [
        {
            "event": "warp.snapshot.progress",
            "log_level": "info",
            "table": "orders",
            "copied": 5_000,
            "total": 10_000,
            "rows_per_s": 1000.0,
            "eta_s": 5.0,
        }
    ]


def test_done_is_logged_with_the_rate_and_no_time_left(clock: Clock) -> None:
    progress = _Progress("orders", 2_000, None, started=clock.now, logged=clock.now)  # resumed
    with capture_logs() as logs:
        clock.now += 2.0
        info = progress.update(6_000, done=True)
    assert info["eta_s"] == 0.0 and info["total"] is None
    assert info["rows_per_s"] == 2000.0  # rows copied in this run only
    done: list[dict[str, Any]] = [e for e in logs if e["event"] == "warp.snapshot.done"]
    assert [(e["table"], e["copied"], e["rows_per_s"], e["seconds"]) for e in done] == [
        ("orders", 6_000, 2000.0, 2.0)
    ]


def test_an_estimate_below_the_copied_count_never_gives_a_negative_eta(clock: Clock) -> None:
    progress = _Progress("events", 0, 100, started=clock.now, logged=clock.now)  # it grew
    clock.now += 1.0
    info = progress.update(500, done=False)
    assert info["total"] == 500 and info["eta_s"] == 0.0

"""Logs carry context and never secrets; /metrics and /health answer over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from cartridge_dagster.observability import (
    HealthState,
    MetricsServer,
    bind_context,
    configure_logging,
    get_logger,
)


def test_json_logs_carry_context_and_redact_urls(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info", force=True)
    log = get_logger("test")
    with bind_context(run_id="r1", schema="shop", table="orders"):
        log.info("batch_applied", rows=10, target="postgresql://loader:hunter2@db:5432/x")
    log.debug("hidden")  # below the level
    configure_logging("console", "info", force=True)
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    assert len(lines) == 1
    event = lines[0]
    assert event["event"] == "batch_applied"
    assert (event["run_id"], event["schema"], event["table"], event["rows"]) == (
        "r1",
        "shop",
        "orders",
        10,
    )
    assert event["target"] == "postgresql://***@db:5432/x"
    assert "timestamp" in event


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_metrics_and_health_endpoints() -> None:
    registry = CollectorRegistry()
    events = Counter("cartridge_test_events", "events", ["table"], registry=registry)
    events.labels(table="orders").inc(3)
    health = HealthState()
    with MetricsServer(0, health=health, registry=registry) as server:
        base = f"http://127.0.0.1:{server.port}"
        status, body = _get(base + "/metrics")
        assert status == 200
        assert b'cartridge_test_events_total{table="orders"} 3.0' in body
        health.set("warp/shop", ok=True)
        status, body = _get(base + "/health")
        assert status == 200
        assert json.loads(body)["status"] == "ok"
        health.set("warp/shop", ok=False, reason="sink unreachable")
        status, body = _get(base + "/health")
        assert status == 503
        payload = json.loads(body)
        assert payload["components"]["warp/shop"]["reason"] == "sink unreachable"
        assert _get(base + "/nope")[0] == 404


def test_processes_sharing_a_stream_never_run_lines_together() -> None:
    """`make demo`: several processes log to one terminal; each event is one whole line."""
    import os
    import subprocess
    import sys

    child = (
        "import sys\n"
        "from cartridge_dagster.observability import configure_logging, get_logger\n"
        "configure_logging('json', 'info')\n"
        "log = get_logger('t')\n"
        "for i in range(400):\n"
        "    log.info('tick', proc=sys.argv[1], i=i, pad='x' * 60)\n"
    )
    read_end, write_end = os.pipe()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", child, str(n)], stderr=write_end, env=env)
        for n in range(4)
    ]
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read().decode()
    assert all(p.wait(timeout=60) == 0 for p in procs)
    events = [json.loads(line) for line in out.splitlines()]  # a run-together line fails here
    assert len(events) == 1600
    assert {(e["proc"], e["i"]) for e in events} == {
        (str(n), i) for n in range(4) for i in range(400)
    }

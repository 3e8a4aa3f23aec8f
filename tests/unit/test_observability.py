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

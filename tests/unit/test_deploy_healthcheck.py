"""The image's HEALTHCHECK against real listeners: warp's /health server and a TCP port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from cartridge_dagster.deploy.healthcheck import check, main
from cartridge_dagster.observability import HealthState, MetricsServer


@pytest.fixture
def health_server() -> Iterator[tuple[MetricsServer, HealthState]]:
    health = HealthState()
    server = MetricsServer(host="127.0.0.1", port=0, health=health).start()
    try:
        yield server, health
    finally:
        server.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_http_target_follows_warps_health(
    health_server: tuple[MetricsServer, HealthState],
) -> None:
    server, health = health_server
    url = f"http://127.0.0.1:{server.port}/health"
    health.set("warp/shop", ok=True)
    assert check(url) == (True, f"{url}: HTTP 200")
    health.set("warp/shop", ok=False, reason="source unreachable")
    ok, reason = check(url)
    assert not ok and "HTTP 503" in reason


def test_tcp_target_needs_a_listener() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert check(f"grpc://127.0.0.1:{port}")[0] is True
    ok, reason = check(f"grpc://127.0.0.1:{_free_port()}", timeout=1)
    assert not ok and "127.0.0.1" in reason


def test_unknown_scheme_and_refused_http_are_unhealthy() -> None:
    assert check("ftp://127.0.0.1:21")[0] is False
    assert check(f"http://127.0.0.1:{_free_port()}/health", timeout=1)[0] is False


def test_all_targets_must_pass(
    health_server: tuple[MetricsServer, HealthState], capsys: pytest.CaptureFixture[str]
) -> None:
    server, health = health_server
    health.set("warp/shop", ok=True)
    good = f"http://127.0.0.1:{server.port}/health"
    assert main([good]) == 0
    assert main([good, f"tcp://127.0.0.1:{_free_port()}"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ok") and out[-1].startswith("FAIL")


def test_module_entry_point_reads_the_environment_as_docker_runs_it(
    health_server: tuple[MetricsServer, HealthState],
) -> None:
    server, health = health_server
    health.set("warp/shop", ok=True)
    env = {**os.environ, "CARTRIDGE_HEALTHCHECK": f"http://127.0.0.1:{server.port}/health"}
    cmd = [sys.executable, "-m", "cartridge_dagster.deploy.healthcheck"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    health.set("warp/shop", ok=False, reason="lagging")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1 and "HTTP 503" in proc.stdout
    # The probe runs every 30 s: it loads the standard library only (no dagster, no pydantic).
    probe = (
        "import sys, cartridge_dagster.deploy.healthcheck; "
        "print(sorted({'dagster', 'pydantic', 'yaml'} & set(sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    assert proc.stdout.strip() == "[]"


def _non_loopback_address() -> str | None:
    """An address of this machine other than loopback (the "pod IP"), when it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # UDP connect sends nothing
            address: str = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_metrics_server_answers_on_the_pod_address_when_told_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pods set CARTRIDGE_METRICS_HOST=0.0.0.0: the kubelet probes the pod IP, not loopback."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to probe")
    health = HealthState()
    health.set("warp/shop", ok=True)
    local_only = MetricsServer(port=0, health=health).start()
    try:
        assert check(f"http://127.0.0.1:{local_only.port}/health")[0] is True
        assert check(f"http://{address}:{local_only.port}/health", timeout=1)[0] is False
    finally:
        local_only.stop()
    monkeypatch.setenv("CARTRIDGE_METRICS_HOST", "0.0.0.0")
    pod = MetricsServer(port=0, health=health).start()
    try:
        assert check(f"http://{address}:{pod.port}/health")[0] is True
    finally:
        pod.stop()

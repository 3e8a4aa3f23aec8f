"""A rendered standalone warp Deployment, run the way its container would run.

No cluster here, so this does what the kubelet does with the pod spec: the ConfigMap's file at
the mount path, the Secret's keys as environment variables, the container's own env, command and
args; then it probes ``readinessProbe``/``livenessProbe`` on the pod's address (not loopback) and
scrapes ``/metrics`` on the annotated port, checks the data landed in the warehouse named only in
the Secret, and stops the container with SIGTERM within ``terminationGracePeriodSeconds``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml

from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.demo.seed import DemoSizes, seed_demo
from cartridge_dagster.deploy import render
from cartridge_dagster.deploy.healthcheck import check
from cartridge_dagster.deploy.k8s import CONFIG_FILE, STATE_DIR
from tests.conftest import run
from tests.support.services import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _pod_address() -> str:
    """This machine's non-loopback address, standing in for the pod IP (loopback if none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # UDP connect sends nothing
            address: str = probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"
    return address


async def _seed(url: str) -> None:
    async with mongo_session(url) as conn:
        await seed_demo(conn.database("shop"), sizes=DemoSizes.scaled(0.01), seed=7)


def test_standalone_warp_pod_spec_runs_probes_and_lands_data(pg_url: str, tmp_path: Path) -> None:
    source = f"mongoeco://{tmp_path / 'shop.sqlite'}"
    run(_seed(source))
    port = _free_port()
    config = tmp_path / "cartridge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"type": "mongodb", "connection_string": source},
                "destination": {"connection_string": pg_url},
                "schemas": [
                    {
                        "name": "shop",
                        "source_database": "shop",
                        "include": ["orders", "customers"],
                        "warp": {"metrics_port": port},
                    }
                ],
            }
        )
    )
    out = tmp_path / "rendered"
    render(config, out)
    deployment = yaml.safe_load((out / "standalone" / "warp-shop.yaml").read_text())
    pod: dict[str, Any] = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    config_map = yaml.safe_load((out / "manifests" / "cartridge-config.yaml").read_text())

    # Volumes: the ConfigMap's file where the container expects it; the state dir writable.
    mounted = tmp_path / "etc-cartridge" / "cartridge.yaml"
    mounted.parent.mkdir()
    mounted.write_text(config_map["data"]["cartridge.yaml"])
    args = [str(mounted) if a == CONFIG_FILE else a for a in container["args"]]
    (env_map,) = [
        d["data"]
        for d in yaml.safe_load_all((out / "manifests" / "cartridge-env.yaml").read_text())
        if d
    ]
    env = {**env_map, **{e["name"]: e["value"] for e in container["env"]}}
    env["CARTRIDGE_CONFIG"] = str(mounted)
    env["HOME"] = str(tmp_path)
    # The Secret (envFrom) — the only place the connection strings exist.
    assert container["envFrom"] == [
        {"configMapRef": {"name": "cartridge-env"}},
        {"secretRef": {"name": "cartridge-secrets"}},
    ]
    env["CARTRIDGE_SOURCE__CONNECTION_STRING"] = source
    env["CARTRIDGE_DESTINATION__CONNECTION_STRING"] = pg_url
    env["CARTRIDGE_STATE_DIR"] = str(tmp_path / "state")  # the emptyDir at STATE_DIR
    assert STATE_DIR in {m["mountPath"] for m in container["volumeMounts"]}
    assert source not in mounted.read_text() and pg_url not in mounted.read_text()

    process_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CARTRIDGE_")},
        **env,
        "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
    }
    log = (tmp_path / "warp.log").open("w")
    proc = subprocess.Popen(
        [*container["command"], *args], env=process_env, stdout=log, stderr=subprocess.STDOUT
    )
    address = _pod_address()
    try:
        readiness = container["readinessProbe"]["httpGet"]
        url = f"http://{address}:{readiness['port']}{readiness['path']}"
        deadline = time.monotonic() + 120
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _ = check(url, timeout=2)
            if ready:
                break
            time.sleep(0.5)
        assert ready, f"readiness never passed: {(tmp_path / 'warp.log').read_text()[-2000:]}"
        liveness = container["livenessProbe"]["httpGet"]
        assert check(f"http://{address}:{liveness['port']}{liveness['path']}")[0]
        annotations = pod["metadata"]["annotations"]
        scrape = (
            f"http://{address}:{annotations['prometheus.io/port']}"
            f"{annotations['prometheus.io/path']}"
        )
        with urllib.request.urlopen(scrape, timeout=5) as response:
            assert b"# TYPE" in response.read()

        # The snapshot lands in the warehouse that only the Secret named.
        landed = 0
        while time.monotonic() < deadline and landed == 0:
            conn = psycopg2.connect(pg_url)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT to_regclass('raw_shop.orders') IS NOT NULL")
                    row = cur.fetchone()
                    if row and row[0]:
                        cur.execute("SELECT count(*) FROM raw_shop.orders")
                        counted = cur.fetchone()
                        landed = int(counted[0]) if counted else 0
            finally:
                conn.close()
            if landed == 0:
                time.sleep(1)
        assert landed > 0, (tmp_path / "warp.log").read_text()[-2000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=pod["spec"]["terminationGracePeriodSeconds"])
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        log.close()
    assert rc == 0, f"warp did not stop cleanly on SIGTERM (rc={rc})"

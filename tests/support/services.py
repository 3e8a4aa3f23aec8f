"""Real services for tests.

Order of choice, for each service: an explicit environment URI/DSN → testcontainers when a
Docker engine answers → the local service the project starts itself (PostgreSQL from installed
binaries; the embedded MongoDB engine). Nothing here mocks a database.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@functools.cache
def docker_engine_available() -> bool:
    """True when a Docker engine answers (the client alone is not enough)."""
    if shutil.which("docker") is None:
        return False
    try:
        proc = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def replset_mongo_uri() -> tuple[str | None, str]:
    """An explicitly configured replica set (``CARTRIDGE_TEST_MONGO_URI``), or None and why.

    The fixtures then try a testcontainers replica set when a Docker engine answers, and
    otherwise start the project's replica-set test server (:mod:`tests.support.replset`)."""
    uri = os.environ.get("CARTRIDGE_TEST_MONGO_URI")
    if uri:
        return uri, "CARTRIDGE_TEST_MONGO_URI"
    return None, "no CARTRIDGE_TEST_MONGO_URI"


def container_replset() -> tuple[str, object] | None:
    """A single-node replica set in a ``mongo`` container when a Docker engine answers:
    ``(uri, container)`` (stop the container when done), or None."""
    if not docker_engine_available():
        return None
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    container = (
        DockerContainer(os.environ.get("CARTRIDGE_TEST_MONGO_IMAGE", "mongo:7"))
        .with_command("--replSet rs0 --bind_ip_all")
        .with_exposed_ports(27017)
    )
    container.start()
    wait_for_logs(container, "Waiting for connections", timeout=120)
    host = container.get_container_host_ip()
    port = int(container.get_exposed_port(27017))
    config = f"{{_id: 'rs0', members: [{{_id: 0, host: '{host}:{port}'}}]}}"
    container.exec(["mongosh", "--quiet", "--eval", f"rs.initiate({config})"])
    return f"mongodb://{host}:{port}/?replicaSet=rs0", container

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
    """A URI of a true MongoDB replica set, or None and the reason there is none."""
    uri = os.environ.get("CARTRIDGE_TEST_MONGO_URI")
    if uri:
        return uri, "CARTRIDGE_TEST_MONGO_URI"
    if docker_engine_available():
        return None, "a Docker engine answers but no replica-set container is configured"
    return None, (
        "no MongoDB replica set here: set CARTRIDGE_TEST_MONGO_URI to one "
        "(or run where a Docker engine answers)"
    )

"""The container's HEALTHCHECK: ``python -m cartridge_dagster.deploy.healthcheck``.

Checks the targets in ``$CARTRIDGE_HEALTHCHECK`` (comma-separated), by default the gRPC code
server the image runs (``grpc://127.0.0.1:3030``):

- ``http://HOST:PORT/PATH``: healthy on HTTP 200 (warp's ``/health`` answers 503 with reasons
  when a component is unhealthy);
- ``grpc://HOST:PORT`` or ``tcp://HOST:PORT``: healthy when the port accepts a connection.

Standard library only, so a check costs milliseconds, not a Dagster import. Exit status 0 is
healthy and 1 is not, as Docker expects; one line on stdout says why.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from urllib.parse import urlsplit

__all__ = ["DEFAULT_TARGET", "check", "main"]

DEFAULT_TARGET = "grpc://127.0.0.1:3030"
TIMEOUT_SECONDS = 4.0


def _check_http(url: str, timeout: float) -> tuple[bool, str]:
    request = urllib.request.Request(url, method="GET")  # noqa: S310 - scheme checked by caller
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url}: {reason}"
    return status == 200, f"{url}: HTTP {status}"


def _check_tcp(url: str, timeout: float) -> tuple[bool, str]:
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        return False, f"{url}: needs host and port"
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
            pass
    except OSError as exc:
        return False, f"{url}: {exc.strerror or exc}"
    return True, f"{url}: accepting connections"


def check(target: str, timeout: float = TIMEOUT_SECONDS) -> tuple[bool, str]:
    """Whether one target is healthy, and a one-line reason."""
    scheme = urlsplit(target).scheme
    if scheme in ("http", "https"):
        return _check_http(target, timeout)
    if scheme in ("grpc", "tcp"):
        return _check_tcp(target, timeout)
    return False, f"{target}: unsupported scheme (use http://, grpc:// or tcp://)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    spec = ",".join(args) or os.environ.get("CARTRIDGE_HEALTHCHECK") or DEFAULT_TARGET
    targets = [t.strip() for t in spec.split(",") if t.strip()]
    healthy = True
    for target in targets:
        ok, reason = check(target)
        healthy = healthy and ok
        sys.stdout.write(("ok   " if ok else "FAIL ") + reason + "\n")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())

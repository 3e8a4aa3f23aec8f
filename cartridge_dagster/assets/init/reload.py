"""Reloading the code location after generated models changed (Dagster's GraphQL API).

The running webserver (``dagster dev`` or production) is told to reload the location through
``DagsterGraphQLClient.reload_repository_location`` — the supported mechanism behind the UI's
"Reload" button — so new dbt models appear as assets without a restart. Where the webserver is:
``$DAGSTER_WEBSERVER_URL`` (default ``http://127.0.0.1:3000``).
"""

import os
from typing import Any
from urllib.parse import urlsplit

__all__ = ["reload_code_location", "webserver_address"]

DEFAULT_WEBSERVER = "http://127.0.0.1:3000"
DEFAULT_LOCATION = "cartridge"


def webserver_address() -> tuple[str, int, bool]:
    url = os.environ.get("DAGSTER_WEBSERVER_URL", DEFAULT_WEBSERVER)
    parts = urlsplit(url)
    https = parts.scheme == "https"
    return parts.hostname or "127.0.0.1", parts.port or (443 if https else 80), https


def reload_code_location(
    location: str | None = None, *, run_location: str | None = None, log: Any = None
) -> str:
    """Ask the webserver to reload ``location``; returns what happened (never raises)."""
    import requests
    from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

    name = location or run_location or DEFAULT_LOCATION
    host, port, https = webserver_address()
    try:
        client = DagsterGraphQLClient(host, port_number=port, use_https=https, timeout=30)
        info = client.reload_repository_location(name)
    except (DagsterGraphQLClientError, requests.RequestException, OSError) as exc:
        message = f"webserver not reachable at {host}:{port} ({type(exc).__name__})"
        if log is not None:
            log.warning(f"code location {name!r} not reloaded: {message}")
        return f"skipped: {message}"
    status = str(getattr(info.status, "value", info.status))
    if log is not None:
        log.info(f"code location {name!r} reload: {status}")
    if status != "SUCCESS":
        return f"{status}: {getattr(info, 'message', '')}"
    return "reloaded"

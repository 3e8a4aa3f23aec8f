"""Reloading the code location after generated models changed (Dagster's GraphQL API).

The running webserver (``dagster dev`` or production) is told to reload the location with the
``reloadRepositoryLocation`` mutation — the supported mechanism behind the UI's "Reload" button —
so new dbt models appear as assets without a restart. Where the webserver is:
``$DAGSTER_WEBSERVER_URL`` (default ``http://127.0.0.1:3000``).

A reload takes as long as loading the location (importing it, building the dbt assets): 38 s to
2 minutes on a loaded demo machine. The mutation answers only when it is done, so it is sent with
a short timeout and then the location's entry is polled (``loadStatus``, ``updatedTimestamp``,
the load error) until it is loaded again, or ``$CARTRIDGE_RELOAD_TIMEOUT_SECONDS`` (default 300)
pass. The result says which: reloaded, failed (with the location's error), still loading, or the
webserver not reachable at all. ``CARTRIDGE_CODE_LOCATION_RELOAD=off`` turns it off (the demo's
first start, which builds the graph in process before any webserver runs): the result is then
``not needed: …``.
"""

import os
import time
from typing import Any
from urllib.parse import urlsplit

__all__ = ["reload_code_location", "webserver_address"]

DEFAULT_WEBSERVER = "http://127.0.0.1:3000"
DEFAULT_LOCATION = "cartridge"
DEFAULT_TIMEOUT_SECONDS = 300.0
#: How long the mutation is waited for before polling takes over (it goes on on the server).
MUTATION_WAIT_SECONDS = 10.0
POLL_SECONDS = 2.0

RELOAD = """
mutation Reload($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) {
    __typename
    ... on WorkspaceLocationEntry { loadStatus locationOrLoadError { __typename
        ... on PythonError { message } } }
    ... on ReloadNotSupported { message }
    ... on RepositoryLocationNotFound { message }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""

ENTRY = """
query Entry($name: String!) {
  workspaceLocationEntryOrError(name: $name) {
    __typename
    ... on WorkspaceLocationEntry { loadStatus updatedTimestamp locationOrLoadError { __typename
        ... on PythonError { message } } }
    ... on PythonError { message }
  }
}
"""


def webserver_address() -> tuple[str, int, bool]:
    url = os.environ.get("DAGSTER_WEBSERVER_URL", DEFAULT_WEBSERVER)
    parts = urlsplit(url)
    https = parts.scheme == "https"
    return parts.hostname or "127.0.0.1", parts.port or (443 if https else 80), https


def _timeout() -> float:
    raw = os.environ.get("CARTRIDGE_RELOAD_TIMEOUT_SECONDS", "")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_SECONDS
    except ValueError:
        return DEFAULT_TIMEOUT_SECONDS


def _entry_outcome(entry: dict[str, Any]) -> str | None:
    """A loaded entry's outcome (``reloaded`` or ``FAILURE: …``); None while it loads."""
    if entry.get("loadStatus") != "LOADED":
        return None
    loaded = entry.get("locationOrLoadError") or {}
    if loaded.get("__typename") == "RepositoryLocation":
        return "reloaded"
    return f"FAILURE: {loaded.get('message', 'the location did not load')}".strip()


def reload_code_location(
    location: str | None = None, *, run_location: str | None = None, log: Any = None
) -> str:
    """Ask the webserver to reload ``location`` and wait until it has; returns what happened
    (``reloaded``, ``FAILURE: …``, ``timed out: …`` or ``skipped: …``; never raises)."""
    import requests

    name = location or run_location or DEFAULT_LOCATION
    if os.environ.get("CARTRIDGE_CODE_LOCATION_RELOAD", "").lower() in ("off", "0", "false"):
        off = "not needed: CARTRIDGE_CODE_LOCATION_RELOAD=off (no webserver to tell)"
        if log is not None:
            log.info(f"code location {name!r} reload: {off}")
        return off
    host, port, https = webserver_address()
    url = f"{'https' if https else 'http'}://{host}:{port}/graphql"
    timeout = _timeout()
    started = time.time()
    deadline = time.monotonic() + timeout

    def post(query: str, wait: float) -> dict[str, Any]:
        resp = requests.post(
            url, json={"query": query, "variables": {"name": name}}, timeout=(5.0, wait)
        )
        resp.raise_for_status()
        body = resp.json()
        if body.get("errors"):
            raise ValueError(str(body["errors"])[:300])
        return dict(body["data"])

    def report(outcome: str) -> str:
        if log is not None:
            took = time.time() - started
            if outcome == "reloaded":
                log.info(f"code location {name!r} reloaded in {took:.0f}s")
            else:
                log.warning(f"code location {name!r} reload: {outcome} (after {took:.0f}s)")
        return outcome

    outcome: str | None = None
    try:
        result = post(RELOAD, MUTATION_WAIT_SECONDS)["reloadRepositoryLocation"]
    except requests.Timeout:
        result = None  # the reload goes on on the server: poll the location's entry
    except (requests.RequestException, OSError, ValueError) as exc:
        return report(f"skipped: webserver not reachable at {host}:{port} ({type(exc).__name__})")
    if result is not None:
        kind = result.get("__typename")
        if kind != "WorkspaceLocationEntry":
            return report(f"FAILURE: {kind}: {result.get('message', '')}".strip())
        outcome = _entry_outcome(result)
    while outcome is None:
        if time.monotonic() > deadline:
            return report(f"timed out: still loading after {timeout:.0f}s")
        time.sleep(POLL_SECONDS)
        try:
            entry = post(ENTRY, 10.0)["workspaceLocationEntryOrError"]
        except (requests.RequestException, OSError, ValueError):
            continue  # a busy webserver: ask again until the deadline
        if entry is None:
            return report(f"FAILURE: no code location named {name!r}")
        if entry.get("__typename") != "WorkspaceLocationEntry":
            return report(f"FAILURE: {entry.get('message', entry.get('__typename'))}")
        # an entry loaded before the request is the old one: wait for the reload's
        if float(entry.get("updatedTimestamp") or 0.0) >= started:
            outcome = _entry_outcome(entry)
    return report(outcome)

"""Cancel the runs in progress through the Dagster webserver and wait until they have ended.

``make demo`` calls it on Ctrl-C/SIGTERM before stopping ``dagster dev``: a run told to stop
through Dagster (``terminateRuns``, what the UI's Terminate button sends) ends CANCELED, while a
run worker merely killed with its process group ends FAILED ("interrupted unexpectedly") and is
shown again at the next start. Usage: ``python scripts/cancel_runs.py URL [TIMEOUT_SECONDS]``.
Prints one line per outcome; exit status 0 unless the webserver could not be asked.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

IN_PROGRESS = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"]
RUNS = """
query Runs($statuses: [RunStatus!]) {
  runsOrError(filter: {statuses: $statuses}) { ... on Runs { results { runId jobName status } } }
}
"""
TERMINATE = """
mutation Terminate($ids: [String!]!) {
  terminateRuns(runIds: $ids, terminatePolicy: SAFE_TERMINATE) { __typename }
}
"""


def graphql(url: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    if not url.startswith(("http://", "https://")):
        raise RuntimeError(f"not a webserver URL: {url!r}")
    req = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
        f"{url.rstrip('/')}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        body = json.loads(resp.read())
    if body.get("errors"):
        raise RuntimeError(str(body["errors"])[:300])
    return dict(body["data"])


def in_progress(url: str) -> list[dict[str, str]]:
    data = graphql(url, RUNS, {"statuses": IN_PROGRESS})["runsOrError"]
    return list(data.get("results") or [])


def main(url: str, timeout: float) -> int:
    try:
        runs = in_progress(url)
        if runs:
            graphql(url, TERMINATE, {"ids": [r["runId"] for r in runs]})
    except (OSError, urllib.error.URLError, RuntimeError) as exc:
        print(f"could not cancel the runs in progress: {exc}", file=sys.stderr)
        return 1
    if not runs:
        return 0
    names = ", ".join(sorted({r["jobName"] for r in runs}))
    print(f"==> canceling {len(runs)} run(s) in progress ({names})", flush=True)
    deadline = time.monotonic() + timeout
    left = runs
    while left and time.monotonic() < deadline:
        time.sleep(1)
        try:
            left = in_progress(url)
        except (OSError, urllib.error.URLError, RuntimeError):
            continue
    if left:
        print(f"{len(left)} run(s) still stopping after {timeout:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 60.0))

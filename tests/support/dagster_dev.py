"""Run the real `dagster dev` (webserver + daemon) for end-to-end tests, and talk GraphQL to it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.services import REPO

LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PipelineNotFoundError { message }
  }
}
"""

RUN_STATUS = """
query Run($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } }
}
"""

LOCATION = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError { __typename
      ... on RepositoryLocation { repositories { name
          assetNodes { assetKey { path } }
          jobs { name }
          sensors { name sensorState { status } } } }
      ... on PythonError { message } } } } } }
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DagsterDev:
    """A running `dagster dev` with helpers to query it."""

    def __init__(self, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.port = port
        self.proc = proc
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        req = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": dict(variables or {})}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            data = json.loads(resp.read())
        if data.get("errors"):
            raise AssertionError(f"GraphQL errors: {data['errors']}")
        return dict(data["data"])

    def location(self) -> dict[str, Any]:
        entries = self.graphql(LOCATION)["workspaceOrError"]["locationEntries"]
        return dict(entries[0])

    def repository(self) -> dict[str, Any]:
        loc = self.location()["locationOrLoadError"]
        assert loc["__typename"] == "RepositoryLocation", loc
        return dict(loc["repositories"][0])

    def asset_keys(self) -> set[str]:
        return {"/".join(n["assetKey"]["path"]) for n in self.repository()["assetNodes"]}

    def launch(
        self,
        job: str = "__ASSET_JOB",
        *,
        assets: list[list[str]] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        selector: dict[str, Any] = {
            "repositoryLocationName": "cartridge",
            "repositoryName": self.repository()["name"],
            "pipelineName": job,
        }
        if assets is not None:
            selector["assetSelection"] = [{"path": p} for p in assets]
        params = {
            "selector": selector,
            "mode": "default",
            "executionMetadata": {
                "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]
            },
        }
        result = self.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return str(result["run"]["runId"])

    def run_status(self, run_id: str) -> str:
        return str(self.graphql(RUN_STATUS, {"runId": run_id})["runOrError"]["status"])

    def wait_run(self, run_id: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.run_status(run_id)
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                return status
            time.sleep(1)
        raise AssertionError(f"run {run_id} still {status} after {timeout}s; log: {self.log}")


@contextmanager
def dagster_dev(
    config: Path,
    home: Path,
    *,
    env: Mapping[str, str] | None = None,
    instance_yaml: str | None = None,
    timeout: float = 180,
) -> Iterator[DagsterDev]:
    """Start `dagster dev` on a free port with ``config``; stop its whole process group after."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(
        instance_yaml or (REPO / "deploy" / "local" / "dagster.yaml").read_text()
    )
    port = free_port()
    log = home / "dagster-dev.log"
    full_env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "CARTRIDGE_CONFIG": str(config),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DAGSTER_WEBSERVER_URL": f"http://127.0.0.1:{port}",
        **(env or {}),
    }
    dagster = str(Path(sys.executable).parent / "dagster")
    # dagster dev started from a non-interactive shell ignores SIGINT: reset the dispositions.
    launcher = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
        "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
        "os.execv(sys.argv[1], sys.argv[1:])\n"
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                launcher,
                dagster,
                "dev",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-w",
                str(REPO / "workspace.yaml"),
            ],
            cwd=REPO,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dev = DagsterDev(port, proc, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"dagster dev exited: {log.read_text()[-3000:]}")
            try:
                entry = dev.location()
                if entry["loadStatus"] == "LOADED":
                    break
            except (OSError, KeyError, IndexError, AssertionError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"dagster dev not ready: {log.read_text()[-3000:]}")
            time.sleep(1)
        yield dev
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with_suppress_kill(proc)


def with_suppress_kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait(timeout=30)

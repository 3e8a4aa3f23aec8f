"""The replica-set test server (see :mod:`tests.support.replset.server`), started as a process.

:func:`start` launches ``python -m tests.support.replset.server`` on a free port of 127.0.0.1
and returns a handle with its URI once it answers; :meth:`ReplicaSetProcess.stop` ends it
(SIGTERM, then SIGKILL), :meth:`ReplicaSetProcess.kill` kills it at once (a crash), and
:meth:`ReplicaSetProcess.restart` starts it again on the same port and data (a restart).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.services import REPO

__all__ = ["ReplicaSetProcess", "is_test_server", "start"]

#: URIs of the test servers this process started (a real server stores what they cannot).
_STARTED: set[str] = set()


def is_test_server(uri: str) -> bool:
    """Whether ``uri`` is a replica-set test server (data in the embedded engine, which cannot
    store dates past Python's ``datetime`` range, or NUL in field names: no server can)."""
    return uri in _STARTED


@dataclass
class ReplicaSetProcess:
    data: Path
    port: int
    uri: str
    history: int
    max_event_bytes: int | None
    users: tuple[str, ...] = ()
    proc: subprocess.Popen[str] | None = field(default=None, repr=False)

    def _args(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "tests.support.replset.server",
            "--data",
            str(self.data),
            "--port",
            str(self.port),
            "--history",
            str(self.history),
        ]
        if self.max_event_bytes is not None:
            args += ["--max-event-bytes", str(self.max_event_bytes)]
        for user in self.users:
            args += ["--user", user]
        return args

    def launch(self, timeout: float = 60.0) -> None:
        log = open(self.data / "server.log", "a")  # noqa: SIM115 - the process owns it
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            self._args(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("ready "):
                self.uri = line.split(" ", 1)[1].strip()
                self.port = int(self.uri.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
                _STARTED.add(self.uri)
                return
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError(
            f"the replica-set test server did not start (exit {self.proc.poll()}); see "
            f"{self.data / 'server.log'}: {(self.data / 'server.log').read_text()[-2000:]}"
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.launch()


def start(
    data: Path,
    *,
    history: int = 100_000,
    max_event_bytes: int | None = None,
    users: tuple[str, ...] = (),
) -> ReplicaSetProcess:
    """Start a server on ``data`` (created if missing) and wait until it listens.
    ``users``: ``NAME:PASSWORD`` accounts; with any, clients must authenticate."""
    data.mkdir(parents=True, exist_ok=True)
    handle = ReplicaSetProcess(data, 0, "", history, max_event_bytes, users)
    handle.launch()
    return handle

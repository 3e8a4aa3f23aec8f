"""A real local PostgreSQL server, started from installed binaries.

``LocalPostgres(base_dir)`` keeps a data directory and a ``state.json`` under ``base_dir``
(``.cartridge/postgres`` by default). ``up()`` is idempotent: it initialises the cluster once,
starts it on a free port (the preferred one when free) and creates the ``cartridge`` database;
``down()`` stops it; ``status()`` tells. It works as a normal user and as root: initdb and pg_ctl
refuse root, so as root they run as an unprivileged user (``postgres`` when it exists) through
``runuser``, and the data directory moves to a place that user can enter when needed.

The server listens on 127.0.0.1 only, trusts local connections (a development server), and has
``wal_level=logical`` so logical replication is available.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cartridge_dagster.errors import ServiceError

__all__ = ["LocalPostgres", "PostgresStatus", "find_bin_dir"]

DEFAULT_PORT = 55432
#: Where the data directory goes when the server's user cannot enter the project directory.
ROOT_FALLBACK_DIR = "/var/tmp"  # noqa: S108 - a per-project, per-user directory, mode 0700
SUPERUSER = "cartridge"
DATABASE = "cartridge"


def find_bin_dir() -> Path:
    """Directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Order: ``$CARTRIDGE_PG_BIN``; Debian/Ubuntu ``/usr/lib/postgresql/<ver>/bin`` (newest);
    ``initdb`` on ``PATH``; common Homebrew and source-install prefixes.
    """
    candidates: list[Path] = []
    if env := os.environ.get("CARTRIDGE_PG_BIN"):
        candidates.append(Path(env))
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += [Path(p) for p in debian]
    if which := shutil.which("initdb"):
        candidates.append(Path(which).parent)
    candidates += [Path(p) for p in sorted(glob.glob("/opt/homebrew/opt/postgresql@*/bin"))]
    candidates += [Path("/usr/local/pgsql/bin"), Path("/usr/local/bin")]
    for cand in candidates:
        if (cand / "initdb").exists() and (cand / "pg_ctl").exists():
            return cand
    raise ServiceError(
        "no PostgreSQL server binaries found (initdb, pg_ctl)",
        hint="install them (Debian: apt-get install postgresql; macOS: brew install postgresql) "
        "or set CARTRIDGE_PG_BIN to their directory, or point destination.connection_string "
        "at an existing server",
    )


def _free_port(preferred: int | None) -> int:
    def available(port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

    if preferred and available(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresStatus:
    running: bool
    port: int | None
    data_dir: str | None
    url: str | None
    log_file: str | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class LocalPostgres:
    """A PostgreSQL cluster owned by this project, under ``base_dir``."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str] = ".cartridge/postgres",
        *,
        preferred_port: int | None = DEFAULT_PORT,
        durable: bool = True,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.preferred_port = preferred_port
        self.durable = durable
        self.state_file = self.base_dir / "state.json"

    # ------------------------------------------------------------------ state

    def _state(self) -> dict[str, object]:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_state(self, **state: object) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        tmp.replace(self.state_file)

    # ------------------------------------------------------------------ users

    @staticmethod
    def _run_as() -> str | None:
        """The unprivileged user to run the server as, when we are root."""
        if os.geteuid() != 0:
            return None
        for name in (os.environ.get("CARTRIDGE_PG_USER"), "postgres", "nobody"):
            if not name:
                continue
            try:
                pwd.getpwnam(name)
            except KeyError:
                continue
            return name
        raise ServiceError("running as root and no unprivileged user to run PostgreSQL as")

    def _cmd(self, argv: list[str], user: str | None) -> list[str]:
        if user is None:
            return argv
        if shutil.which("runuser"):
            return ["runuser", "-u", user, "--", *argv]
        return ["su", user, "-s", "/bin/sh", "-c", " ".join(_sh_quote(a) for a in argv)]

    def _user_can_enter(self, user: str, path: Path) -> bool:
        probe = subprocess.run(
            self._cmd(["test", "-x", str(path)], user), capture_output=True, check=False
        )
        return probe.returncode == 0

    def _data_dir(self, user: str | None) -> Path:
        state = self._state()
        if isinstance(state.get("data_dir"), str):
            return Path(str(state["data_dir"]))
        preferred = self.base_dir / "data"
        if user is None:
            return preferred
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self._user_can_enter(user, self.base_dir):
            return preferred
        # The project lives where the server's user cannot enter (e.g. under /root).
        digest = hashlib.sha1(str(self.base_dir).encode(), usedforsecurity=False).hexdigest()[:12]
        return Path(ROOT_FALLBACK_DIR) / f"cartridge-postgres-{digest}" / "data"

    # ------------------------------------------------------------------ lifecycle

    def _run(self, argv: list[str], user: str | None, what: str, timeout: float = 120) -> str:
        try:
            proc = subprocess.run(
                self._cmd(argv, user),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ServiceError(f"PostgreSQL {what} timed out after {timeout:.0f}s") from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise ServiceError(f"PostgreSQL {what} failed: " + " | ".join(detail))
        return proc.stdout

    def _initdb(self, bin_dir: Path, data_dir: Path, user: str | None) -> None:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        data_dir.mkdir(mode=0o700, exist_ok=True)
        if user is not None:
            pw = pwd.getpwnam(user)
            os.chown(data_dir.parent, pw.pw_uid, pw.pw_gid)
            os.chown(data_dir, pw.pw_uid, pw.pw_gid)
        self._run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            user,
            "initdb",
        )
        conf = data_dir / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as fh:
            fh.write("\n# cartridge\ninclude_if_exists = 'cartridge.conf'\n")

    def _write_runtime_conf(self, data_dir: Path, port: int, user: str | None) -> None:
        lines = [
            "listen_addresses = '127.0.0.1'",
            f"port = {port}",
            "unix_socket_directories = ''",
            "wal_level = logical",
            "max_wal_senders = 10",
            "max_replication_slots = 10",
            "max_connections = 200",
            "shared_buffers = 128MB",
            "logging_collector = off",
        ]
        if not self.durable:
            lines += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        path = data_dir / "cartridge.conf"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        if user is not None:
            pw = pwd.getpwnam(user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _pg_running(self, bin_dir: Path, data_dir: Path, user: str | None) -> bool:
        if not (data_dir / "PG_VERSION").exists():
            return False
        proc = subprocess.run(
            self._cmd([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "status"], user),
            capture_output=True,
            check=False,
        )
        return proc.returncode == 0

    def up(self, *, timeout: float = 60) -> PostgresStatus:
        """Start the server if it is not running; create the database. Idempotent."""
        bin_dir = find_bin_dir()
        user = self._run_as()
        data_dir = self._data_dir(user)
        state = self._state()
        log_file = data_dir.parent / "postgres.log"
        if self._pg_running(bin_dir, data_dir, user) and isinstance(state.get("port"), int):
            return self.status()
        if not (data_dir / "PG_VERSION").exists():
            if data_dir.exists() and any(data_dir.iterdir()):
                raise ServiceError(f"{data_dir} exists but is not a PostgreSQL data directory")
            self._initdb(bin_dir, data_dir, user)
        old_port = state.get("port")
        port = _free_port(old_port if isinstance(old_port, int) else self.preferred_port)
        self._write_runtime_conf(data_dir, port, user)
        if user is not None and log_file.exists():
            pw = pwd.getpwnam(user)
            os.chown(log_file, pw.pw_uid, pw.pw_gid)
        self._run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data_dir),
                "-l",
                str(log_file),
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ],
            user,
            "start",
            timeout=timeout + 10,
        )
        self._save_state(
            port=port, data_dir=str(data_dir), bin_dir=str(bin_dir), log_file=str(log_file)
        )
        self._create_database(port, timeout)
        return self.status()

    def _create_database(self, port: int, timeout: float) -> None:
        """Create the ``cartridge`` database with psql (stdlib only: no driver needed)."""
        psql = str(Path(str(self._state()["bin_dir"])) / "psql")
        base = [psql, "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, "-d", "postgres"]
        deadline = time.monotonic() + timeout
        while True:
            probe = subprocess.run(
                [*base, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise ServiceError(f"PostgreSQL did not accept connections: {probe.stderr.strip()}")
            time.sleep(0.1)
        if probe.stdout.strip() != "1":
            self._run([*base, "-c", f'CREATE DATABASE "{DATABASE}"'], None, "create database")

    def down(self, *, timeout: float = 60) -> bool:
        """Stop the server. Returns whether it was running."""
        state = self._state()
        if not state:
            return False
        bin_dir = Path(str(state.get("bin_dir") or find_bin_dir()))
        data_dir = Path(str(state["data_dir"]))
        user = self._run_as()
        if not self._pg_running(bin_dir, data_dir, user):
            return False
        self._run(
            [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"],
            user,
            "stop",
            timeout=timeout,
        )
        return True

    def restart(self, *, mode: str = "fast") -> PostgresStatus:
        """Stop (``fast`` or ``immediate``, i.e. crash-like) and start again on the same port."""
        state = self._state()
        bin_dir = Path(str(state["bin_dir"]))
        data_dir = Path(str(state["data_dir"]))
        user = self._run_as()
        self._run(
            [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", mode, "-w", "stop"], user, "stop"
        )
        return self.up()

    def destroy(self) -> None:
        """Stop and delete the data directory (tests)."""
        self.down()
        state = self._state()
        data_dir = state.get("data_dir")
        if isinstance(data_dir, str):
            fallback = data_dir.startswith(ROOT_FALLBACK_DIR + "/")
            shutil.rmtree(Path(data_dir).parent if fallback else data_dir, True)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    def status(self) -> PostgresStatus:
        state = self._state()
        if not state:
            return PostgresStatus(False, None, None, None, None)
        data_dir = Path(str(state["data_dir"]))
        running = self._pg_running(Path(str(state["bin_dir"])), data_dir, self._run_as())
        port = state.get("port")
        url = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}" if port else None
        return PostgresStatus(
            running,
            port if isinstance(port, int) else None,
            str(data_dir),
            url,
            str(state.get("log_file")),
        )

    def require_url(self) -> str:
        """The URL of the running server, or a clear error telling how to start it."""
        status = self.status()
        if not status.running or status.url is None:
            raise ServiceError(
                f"the local PostgreSQL ({self.base_dir}) is not running",
                hint="start it with `cartridge services up` (make demo does this for you)",
            )
        return status.url


def _sh_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)

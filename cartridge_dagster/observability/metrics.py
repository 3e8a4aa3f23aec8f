"""A small HTTP server for Prometheus ``/metrics`` and a JSON ``/health``.

(``http.server`` and ``prometheus_client`` are imported when a server is made: a process that
only keeps a :class:`HealthState` does not load them.)

Warp runs one per process (``:8000`` by default). ``/health`` (and ``/ready``) answers 200 while
every registered component is ready and healthy, and 503 otherwise, with the reasons;
``/live`` answers 200 unless a component is unhealthy (one that is still starting is alive).
Components are set (:meth:`HealthState.set`) or probed when asked (:meth:`HealthState.watch`:
a callable computed from timestamps, so a stalled event loop cannot keep reporting "ok").

It binds to ``127.0.0.1`` unless ``$CARTRIDGE_METRICS_HOST`` says otherwise: containers set
``0.0.0.0`` so the kubelet's probes and Prometheus reach it on the pod's address.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

    from prometheus_client import CollectorRegistry

__all__ = ["HealthState", "MetricsServer", "Probe"]

#: What a component reports when asked: (ready, healthy, reason).
Probe = Callable[[], tuple[bool, bool, str]]


@dataclass
class HealthState:
    """Thread-safe component health: ``set("warp/shop", ok=False, reason="…")``, or a probe
    evaluated on every request: ``watch("warp/shop", probe)``."""

    _components: dict[str, tuple[bool, bool, str, float]] = field(default_factory=dict)
    _probes: dict[str, Probe] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, component: str, *, ok: bool, reason: str = "", ready: bool = True) -> None:
        with self._lock:
            self._probes.pop(component, None)
            self._components[component] = (ready, ok, reason, time.time())

    def watch(self, component: str, probe: Probe) -> None:
        with self._lock:
            self._components.pop(component, None)
            self._probes[component] = probe

    def remove(self, component: str) -> None:
        with self._lock:
            self._components.pop(component, None)
            self._probes.pop(component, None)

    def snapshot(self, *, liveness: bool = False) -> tuple[bool, dict[str, Any]]:
        """``(ok, body)``: ok when every component is healthy (and ready, unless ``liveness``)."""
        with self._lock:
            items = dict(self._components)
            probes = dict(self._probes)
        now = time.time()
        states: dict[str, tuple[bool, bool, str, float]] = dict(items)
        for name, probe in probes.items():
            try:
                ready, healthy, reason = probe()
            except Exception as exc:  # noqa: BLE001 - a failing probe is an unhealthy component
                ready, healthy, reason = False, False, f"health probe failed: {exc}"
            states[name] = (ready, healthy, reason, now)
        healthy = all(ok for _, ok, _, _ in states.values())
        ready = all(r for r, _, _, _ in states.values())
        status = "unhealthy" if not healthy else ("ok" if ready else "starting")
        body = {
            "status": status,
            "components": {
                name: {"ok": ok, "ready": r, "reason": reason, "since": since}
                for name, (r, ok, reason, since) in sorted(states.items())
            },
        }
        return (healthy if liveness else healthy and ready), body


class MetricsServer:
    """Serve ``/metrics`` and ``/health`` on ``host:port`` in a daemon thread."""

    def __init__(
        self,
        port: int = 8000,
        host: str | None = None,
        *,
        health: HealthState | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        # only a process that serves pays for these imports (http.server, prometheus_client)
        from http.server import ThreadingHTTPServer

        from prometheus_client import REGISTRY

        self.health = health or HealthState()
        self.registry = registry if registry is not None else REGISTRY
        host = host or os.environ.get("CARTRIDGE_METRICS_HOST") or "127.0.0.1"
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        from http.server import BaseHTTPRequestHandler

        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = generate_latest(outer.registry)
                    self._send(200, CONTENT_TYPE_LATEST, body)
                elif path in ("/health", "/healthz", "/ready", "/live"):
                    ok, payload = outer.health.snapshot(liveness=path == "/live")
                    self._send(200 if ok else 503, "application/json", json.dumps(payload).encode())
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # keep stderr for structured logs

        return Handler

    def start(self) -> MetricsServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="cartridge-metrics", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

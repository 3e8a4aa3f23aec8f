"""A small HTTP server for Prometheus ``/metrics`` and a JSON ``/health``.

Warp runs one per process (``:8000`` by default). ``/health`` answers 200 while every registered
component reports healthy and 503 otherwise, with the reasons, so Kubernetes liveness and
readiness probes can use it.

It binds to ``127.0.0.1`` unless ``$CARTRIDGE_METRICS_HOST`` says otherwise: containers set
``0.0.0.0`` so the kubelet's probes and Prometheus reach it on the pod's address.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

__all__ = ["HealthState", "MetricsServer"]


@dataclass
class HealthState:
    """Thread-safe component health: ``set("warp/shop", ok=False, reason="…")``."""

    _components: dict[str, tuple[bool, str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, component: str, *, ok: bool, reason: str = "") -> None:
        with self._lock:
            self._components[component] = (ok, reason, time.time())

    def remove(self, component: str) -> None:
        with self._lock:
            self._components.pop(component, None)

    def snapshot(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            items = dict(self._components)
        healthy = all(ok for ok, _, _ in items.values())
        body = {
            "status": "ok" if healthy else "unhealthy",
            "components": {
                name: {"ok": ok, "reason": reason, "since": since}
                for name, (ok, reason, since) in sorted(items.items())
            },
        }
        return healthy, body


class MetricsServer:
    """Serve ``/metrics`` and ``/health`` on ``host:port`` in a daemon thread."""

    def __init__(
        self,
        port: int = 8000,
        host: str | None = None,
        *,
        health: HealthState | None = None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.health = health or HealthState()
        self.registry = registry
        host = host or os.environ.get("CARTRIDGE_METRICS_HOST") or "127.0.0.1"
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = generate_latest(outer.registry)
                    self._send(200, CONTENT_TYPE_LATEST, body)
                elif path in ("/health", "/healthz", "/ready"):
                    ok, payload = outer.health.snapshot()
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

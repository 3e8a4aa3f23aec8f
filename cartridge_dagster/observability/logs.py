"""structlog, configured once: console output locally, JSON lines in production.

Context (``run_id``, ``schema``, ``table``, ``batch``) is bound with :func:`bind_context` and
appears on every event logged inside it. Payloads and secrets are never logged: a processor
redacts any URL credentials that slip into an event.

structlog's package imports rich (with pygments and attrs) when rich is installed, to offer
rich tracebacks in its console renderer; that is ~100 ms of CPU in a fresh process, paid by
every ``cartridge warp run`` before its first read. The chain below formats exceptions itself
(``format_exc_info``, before the renderer), so the renderer never draws a rich traceback:
:func:`_import_structlog` imports structlog with rich hidden, unless rich is already loaded.
colorama (~5 ms) is hidden the same way except on Windows, the only place structlog needs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, MutableMapping
from types import ModuleType
from typing import Any, Literal

from cartridge_dagster.errors import redact_url


def _import_structlog() -> ModuleType:
    """structlog, imported without rich when rich is not loaded yet (see the module doc), and
    without colorama off Windows (structlog writes the same ANSI codes itself there).

    A ``None`` in ``sys.modules`` makes ``import rich`` raise ImportError, which structlog's
    modules catch (their fallback when rich is not installed); the entry is removed straight
    after, so rich imports normally for everything else."""
    if "structlog" in sys.modules:
        import structlog

        return structlog
    hidden = [m for m in ("rich", "colorama") if m not in sys.modules]
    if os.name == "nt" and "colorama" in hidden:
        hidden.remove("colorama")
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import structlog
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]
    return structlog


_structlog: ModuleType | None = None


def _sl() -> ModuleType:
    """structlog, imported when first needed (:func:`_import_structlog`): a module that only
    creates its logger at import (``log = get_logger(...)``) does not pay for it. ``warp run``
    asks for its first reads before it configures logging (``warp.early``)."""
    global _structlog
    if _structlog is None:
        _structlog = _import_structlog()
    return _structlog


__all__ = ["bind_context", "configure_logging", "get_logger"]

_configured: tuple[str, str] | None = None


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if isinstance(value, str) and "://" in value:
            event_dict[key] = redact_url(value)
    return event_dict


class _StderrLogger:
    """Writes to whatever ``sys.stderr`` is *now* (test runners and Dagster swap it).

    One ``write`` per event, newline included: ``print`` writes the message and its newline in
    two calls, so with several processes on one terminal (``make demo``: warp, traffic, the
    daemon) another process's line landed between them, mid-line."""

    def msg(self, message: str) -> None:
        stream = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _stderr_logger_factory(*_args: Any) -> _StderrLogger:
    return _StderrLogger()


def configure_logging(
    fmt: Literal["console", "json"] = "console",
    level: str = "info",
    *,
    force: bool = False,
) -> None:
    """Configure structlog (idempotent unless ``force``). Logs go to stderr."""
    global _configured
    if _configured == (fmt, level) and not force:
        return
    structlog = _sl()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_stderr_logger_factory,
        cache_logger_on_first_use=False,
    )
    _configured = (fmt, level)


class _Logger:
    """structlog's logger ``name``, made when it is first used (structlog imported then)."""

    __slots__ = ("_initial", "_name", "_proxy")

    def __init__(self, name: str | None, initial: dict[str, Any]) -> None:
        self._name, self._initial, self._proxy = name, initial, None

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        proxy = self._proxy
        if proxy is None:
            proxy = self._proxy = _sl().get_logger(self._name, **self._initial)
        return getattr(proxy, attr)


def get_logger(name: str | None = None, **initial: Any) -> Any:
    return _Logger(name, initial)


@contextlib.contextmanager
def bind_context(**values: Any) -> Iterator[None]:
    """Bind ``run_id``/``schema``/``table``/… for everything logged inside the block."""
    contextvars = _sl().contextvars
    tokens = contextvars.bind_contextvars(**values)
    try:
        yield
    finally:
        contextvars.reset_contextvars(**tokens)

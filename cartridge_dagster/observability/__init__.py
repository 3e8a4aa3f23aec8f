"""Logs (structlog) and the Prometheus metrics / health HTTP endpoint.

The metrics side (``prometheus_client``, ``http.server``) is imported when first asked for:
``from cartridge_dagster.observability import get_logger`` does not pay for it.
"""

from typing import TYPE_CHECKING, Any

from cartridge_dagster.observability.logs import bind_context, configure_logging, get_logger

if TYPE_CHECKING:
    from cartridge_dagster.observability.metrics import HealthState, MetricsServer, Probe

__all__ = [
    "HealthState",
    "MetricsServer",
    "Probe",
    "bind_context",
    "configure_logging",
    "get_logger",
]


def __getattr__(name: str) -> Any:
    if name in ("HealthState", "MetricsServer", "Probe"):
        from cartridge_dagster.observability import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

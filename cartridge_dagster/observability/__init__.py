"""Logs (structlog) and the Prometheus metrics / health HTTP endpoint."""

from cartridge_dagster.observability.logs import bind_context, configure_logging, get_logger
from cartridge_dagster.observability.metrics import HealthState, MetricsServer, Probe

__all__ = [
    "HealthState",
    "MetricsServer",
    "Probe",
    "bind_context",
    "configure_logging",
    "get_logger",
]

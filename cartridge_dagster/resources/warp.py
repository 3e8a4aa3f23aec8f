"""The warp resource: builds the core runner for one schema from the Cartridge config.

It holds the config *path*, never a secret: connection strings are read at run time from the
config and the environment (``CARTRIDGE_SOURCE__CONNECTION_STRING``…). ``runner()`` is the one
narrow method a test replaces.
"""

import asyncio

import dagster as dg

from cartridge_dagster.config import CartridgeSettings, load_settings
from cartridge_dagster.observability import configure_logging
from cartridge_dagster.warp.runner import RunObserver, WarpRunner

__all__ = ["WarpResource"]


class WarpResource(dg.ConfigurableResource):  # type: ignore[misc]
    """Runs warp (snapshot, then change streams) for a configured schema."""

    config_path: str

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """A run worker logs as the CLI does (format, level, URL credentials redacted)."""
        obs = self.settings().observability
        configure_logging(obs.log_format, obs.log_level)

    def settings(self) -> CartridgeSettings:
        return load_settings(self.config_path)

    def runner(
        self,
        schema: str,
        *,
        stop: asyncio.Event | None = None,
        stop_when_idle: float | None = None,
        observer: RunObserver | None = None,
        run_id: str | None = None,
    ) -> WarpRunner:
        settings = self.settings()
        return WarpRunner(
            settings,
            settings.get_schema(schema),
            stop=stop,
            stop_when_idle=stop_when_idle,
            observer=observer,
            run_id=run_id,
        )

"""The Cartridge config, MongoDB source and PostgreSQL warehouse as Dagster resources.

Each exposes one narrow method a test can replace: ``settings()``, ``connection()``, ``url()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
import dagster as dg
from pydantic import PrivateAttr

from cartridge_dagster.config import CartridgeSettings, load_settings
from cartridge_dagster.connectors.mongo import MongoConnection, mongo_session
from cartridge_dagster.connectors.postgres import pg_connection
from cartridge_dagster.observability import configure_logging

__all__ = ["CartridgeResource", "MongoResource", "PostgresResource"]


class CartridgeResource(dg.ConfigurableResource):  # type: ignore[misc]
    """The validated Cartridge configuration."""

    config_path: str

    _settings: CartridgeSettings | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """A run worker logs as the CLI does (format, level, URL credentials redacted)."""
        obs = self.settings().observability
        configure_logging(obs.log_format, obs.log_level)

    def settings(self) -> CartridgeSettings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
        return self._settings


class MongoResource(dg.ConfigurableResource):  # type: ignore[misc]
    """The MongoDB source. ``connection_string`` overrides the config's global ``source`` (use
    ``dg.EnvVar``); a schema with a ``source`` of its own reads that one."""

    config_path: str
    connection_string: str | None = None

    def url(self, schema: str | None = None) -> str:
        settings = load_settings(self.config_path)
        own = schema is not None and settings.get_schema(schema).source is not None
        if self.connection_string and not own:
            return self.connection_string
        if schema is None:
            return settings.source.url(settings.state_path)
        return settings.source_url(schema)

    @contextlib.asynccontextmanager
    async def connection(self, schema: str | None = None) -> AsyncIterator[MongoConnection]:
        settings = load_settings(self.config_path)
        source = settings.source if schema is None else settings.source_for(schema)
        async with mongo_session(
            self.url(schema), timeout_seconds=source.connect_timeout_seconds
        ) as conn:
            yield conn


class PostgresResource(dg.ConfigurableResource):  # type: ignore[misc]
    """The PostgreSQL warehouse. ``connection_string`` overrides the config (use ``dg.EnvVar``)."""

    config_path: str
    connection_string: str | None = None

    def url(self) -> str:
        if self.connection_string:
            return self.connection_string
        return load_settings(self.config_path).destination_url()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        async with pg_connection(self.url()) as conn:
            yield conn

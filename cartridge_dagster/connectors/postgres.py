"""asyncpg connections to the warehouse, with one clear error when it cannot be reached."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from cartridge_dagster.errors import CartridgeError, ConnectionFailed, TerminalError, redact_url

__all__ = ["connect", "create_pool", "pg_connection"]


#: What retrying cannot fix: a wrong password or user, a database that does not exist.
_REFUSED = (
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # bad user, bad password
    asyncpg.exceptions.InvalidCatalogNameError,  # no such database
    asyncpg.exceptions.InsufficientPrivilegeError,
)


def _unreachable(url: str, exc: BaseException) -> CartridgeError:
    reason = redact_url(str(exc)) or type(exc).__name__
    if isinstance(exc, _REFUSED):
        return TerminalError(
            f"PostgreSQL at {redact_url(url)} refused the connection: {reason}",
            hint="check the user, password and database name in destination.connection_string",
        )
    return ConnectionFailed(
        f"cannot connect to PostgreSQL at {redact_url(url)}: {reason}",
        hint="check destination.connection_string; for the local server run "
        "`cartridge services up`",
    )


async def connect(url: str, *, timeout: float = 10.0, **kwargs: Any) -> asyncpg.Connection:
    """One connection; raises :class:`ConnectionFailed` (no traceback) when unreachable."""
    try:
        return await asyncpg.connect(url, timeout=timeout, **kwargs)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _unreachable(url, exc) from None


async def create_pool(
    url: str, *, min_size: int = 1, max_size: int = 4, timeout: float = 10.0, **kwargs: Any
) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, timeout=timeout, **kwargs
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _unreachable(url, exc) from None
    assert pool is not None
    return pool


@contextlib.asynccontextmanager
async def pg_connection(
    url: str, *, timeout: float = 10.0, application_name: str | None = None
) -> AsyncIterator[asyncpg.Connection]:
    """``async with pg_connection(url) as conn:`` — always closed. ``application_name``
    names the session in ``pg_stat_activity`` (unless the URL names it)."""
    kwargs: dict[str, Any] = {}
    if application_name is not None and "application_name=" not in url:
        kwargs["server_settings"] = {"application_name": application_name}
    conn = await connect(url, timeout=timeout, **kwargs)
    try:
        yield conn
    finally:
        await conn.close()

"""A small TCP proxy for disconnect tests: put it between a client and a server, then cut.

``cut()`` aborts every open connection (the client sees a reset mid-conversation, as after a
network partition or a server restart); while the proxy is down, new connections are accepted
and aborted at once; ``restore()`` lets them through again. ``outage_after(n, seconds)`` does
the same from inside the data path, once ``n`` more bytes went from the server to the client,
so a test can cut a connection in the middle of a snapshot or a change stream deterministically.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

__all__ = ["TcpProxy", "proxied_mongo_uri"]


@dataclass(eq=False)  # hashed by identity
class _Pair:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.server):
            transport = writer.transport
            if not transport.is_closing():
                transport.abort()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.down = False
        self.cuts = 0  # how many times connections were cut
        self.refused = 0  # connections aborted while down
        self.bytes_down = 0  # bytes forwarded from the server to clients
        self._pairs: set[_Pair] = set()
        self._server: asyncio.Server | None = None
        self._trigger: tuple[int, float] | None = None  # (at bytes_down, seconds down)
        self._restore_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets, "proxy not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self._pairs)

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._restore_task is not None:
            self._restore_task.cancel()
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ faults

    def cut(self) -> int:
        """Abort every open connection; returns how many there were."""
        pairs, self._pairs = self._pairs, set()
        for pair in pairs:
            pair.abort()
        if pairs:
            self.cuts += 1
        return len(pairs)

    def go_down(self) -> None:
        """Cut every connection and refuse new ones until :meth:`restore`."""
        self.down = True
        self.cut()

    def restore(self) -> None:
        self.down = False

    async def outage(self, seconds: float) -> None:
        """Cut everything, stay down for ``seconds``, come back."""
        self.go_down()
        await asyncio.sleep(seconds)
        self.restore()

    def outage_after(self, nbytes: int, seconds: float) -> None:
        """Go down once ``nbytes`` more bytes went from the server to the client, for
        ``seconds`` (from within the data path: the cut lands mid-reply)."""
        self._trigger = (self.bytes_down + nbytes, seconds)

    @property
    def armed(self) -> bool:
        return self._trigger is not None

    def _check_trigger(self) -> None:
        if self._trigger is None or self.bytes_down < self._trigger[0]:
            return
        seconds = self._trigger[1]
        self._trigger = None
        self.go_down()

        async def later() -> None:
            await asyncio.sleep(seconds)
            self.restore()

        self._restore_task = asyncio.create_task(later())

    # ------------------------------------------------------------------ data path

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        pair.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, pair, downstream=False)),
            asyncio.create_task(self._pump(up_reader, writer, pair, downstream=True)),
        ]
        await asyncio.gather(*pair.tasks, return_exceptions=True)
        self._pairs.discard(pair)
        pair.abort()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: _Pair,
        *,
        downstream: bool,
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if pair not in self._pairs:
                    break  # cut while reading: drop what arrived
                if downstream and self._trigger is not None:
                    # cut inside this reply: forward only part of it
                    room = self._trigger[0] - self.bytes_down
                    if 0 < room < len(data):
                        writer.write(data[:room])
                        self.bytes_down += room
                        self._check_trigger()
                        break
                writer.write(data)
                await writer.drain()
                if downstream:
                    self.bytes_down += len(data)
                    self._check_trigger()
        except (ConnectionError, OSError):
            pass
        finally:
            pair.abort()
            with contextlib.suppress(Exception):
                writer.close()


def proxied_mongo_uri(uri: str, port: int) -> str:
    """``uri`` pointed at ``127.0.0.1:port`` with a direct connection (no replica-set
    discovery, which would bypass the proxy); credentials, database and options are kept."""
    scheme, sep, rest = uri.partition("://")
    if scheme != "mongodb" or not sep:
        raise ValueError("the proxy needs a mongodb:// URI (not mongodb+srv://)")
    before_query, _, query = rest.partition("?")
    authority, _, path = before_query.partition("/")
    creds, at, _hosts = authority.rpartition("@")
    options = [
        o
        for o in query.split("&")
        if o and o.split("=", 1)[0].lower() not in ("replicaset", "directconnection")
    ]
    options.append("directConnection=true")
    prefix = f"{creds}{at}" if at else ""
    return f"mongodb://{prefix}127.0.0.1:{port}/{path}?{'&'.join(options)}"

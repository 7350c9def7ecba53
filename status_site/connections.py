"""Connection limits for both servers: idle and slow-header timeouts, and a cap on open connections.

aiohttp closes a connection whose request header is not complete within `keepalive_timeout` of its
opening or of its last answer (the timer is armed at connect and after each response, and partial
header bytes do not reset it), so one setting, http_idle_seconds, bounds both idle keep-alive and
slowloris-style headers. aiohttp has no connection cap, so the sites wrap its protocol factory in a
gate: beyond http_max_connections in all, or http_max_connections_per_client from one address, a new
connection gets a one-line 503 and is closed before any request is read.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 33\r\n"
    b"Retry-After: 5\r\nConnection: close\r\n\r\ntoo many connections; retry later\n"
)


class ConnectionGate:
    """Open connections counted per client address; one gate per server port."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.open_by_client: Counter[str] = Counter()

    def admit(self, client: str) -> bool:
        total = sum(self.open_by_client.values())
        if total >= self.max_total or self.open_by_client[client] >= self.max_per_client:
            return False
        self.open_by_client[client] += 1
        return True

    def release(self, client: str) -> None:
        self.open_by_client[client] -= 1
        if self.open_by_client[client] <= 0:
            del self.open_by_client[client]

    def protocol(self, inner: asyncio.Protocol) -> asyncio.Protocol:
        return _GatedProtocol(self, inner)


class _GatedProtocol(asyncio.Protocol):
    """Passes every transport event to aiohttp's request handler once the gate admitted the peer."""

    def __init__(self, gate: ConnectionGate, inner: asyncio.Protocol) -> None:
        self._gate = gate
        self._inner = inner
        self._client: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self._gate.admit(client):
            assert isinstance(transport, asyncio.Transport)
            transport.write(BUSY_RESPONSE)
            transport.close()
            return
        self._client = client
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._client is None:
            return
        self._gate.release(self._client)
        self._client = None
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._client is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._client is not None else None

    def pause_writing(self) -> None:
        if self._client is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._client is not None:
            self._inner.resume_writing()


class GatedTCPSite(web.TCPSite):
    """web.TCPSite whose connections pass the gate first.

    start() is TCPSite.start with the runner's protocol factory wrapped (aiohttp offers no hook for
    it); it uses TCPSite's own attributes, so aiohttp is pinned below 4 in pyproject.toml.
    """

    def __init__(self, runner: web.BaseRunner, host: str, port: int, gate: ConnectionGate) -> None:
        super().__init__(runner, host, port)
        self.gate = gate

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server: Callable[[], Any] | None = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self.gate.protocol(server()), self._host, self._port, backlog=self._backlog
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

"""Connection limits for both servers: idle and slow-header timeouts, and caps on open connections.

aiohttp closes a connection whose request header is not complete within `keepalive_timeout` of its
opening or of its last answer (the timer is armed at connect and after each response, and partial
header bytes do not reset it), so one setting, http_idle_seconds, bounds both idle keep-alive and
slowloris-style headers. aiohttp has no connection cap, so the sites wrap its protocol factory in a
gate that counts open connections:

- in all (http_max_connections), and per network (http_max_connections_per_network): an IPv4 client
  counts in its /24 and an IPv6 one in its /64, since whoever floods from one address usually holds the
  addresses around it too;
- a reserve (http_reserved_connections) of the total that only trusted connections may use: those
  from 127.0.0.1 or ::1 (the operator's own tools: `curl localhost`, monitors, a local proxy) and those
  on which a request carried the valid API token, plus, for RECENT_TOKEN_SECONDS, new connections from
  an address that sent the valid token. The rest of 127.0.0.0/8 counts as an ordinary network here
  (it is this machine, but nothing uses it by default); it stays loopback for write access (guards.py).
  Trusted connections count only towards the total, never towards a network's cap.

When a newcomer finds no room, the gate closes a connection that is waiting for a request (it has
not yet sent a complete request header: never had one, or idle after its last answer) rather than
refusing the newcomer. It takes one of the newcomer's own network when that network is full, else
one of the network holding the most ordinary connections; within the network, of the address holding
the most; the oldest of those. So a flood loses its own connections first, and a client with one
or two keeps them. An ordinary newcomer never closes a trusted connection; a trusted newcomer closes
an ordinary one if it can, else the oldest waiting trusted one. A connection in the middle of a
request is never closed. Only when nothing can be closed is the newcomer refused, with a one-line
503, before any request is read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 33\r\n"
    b"Retry-After: 5\r\nConnection: close\r\n\r\ntoo many connections; retry later\n"
)
REFUSED_LINGER_SECONDS = 2.0  # a refused connection is held this long at most for the 503 to arrive
# Addresses whose connections may use the reserve: what local tools connect from.
RESERVED_ADDRESSES = frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})
# A browser tab of a token holder opens new connections every few seconds; its address stays trusted
# this long after the last request that carried the valid token.
RECENT_TOKEN_SECONDS = 600.0
RECENT_TOKEN_ADDRESSES = 1024  # remembered at most (oldest forgotten first)


@dataclass(frozen=True)
class ConnectionLimits:
    total: int
    per_network: int
    reserved: int  # of total, only for trusted connections


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def network_of(client: str) -> str:
    """The network a client is counted in: '192.0.2.7' -> '192.0.2.0/24', '2001:db8::1' -> its /64,
    '::ffff:192.0.2.7' -> '192.0.2.0/24'; anything else (a Unix socket) counts on its own."""
    address = _address(client)
    if address is None:
        return client
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def reserved_address(client: str) -> bool:
    return _address(client) in RESERVED_ADDRESSES


class ConnectionGate:
    """Open connections of one server port, counted in all and per network, with a trusted reserve."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._open: dict[_GatedProtocol, None] = {}  # in the order they opened: the oldest first
        # Ordinary (untrusted) connections only: per network, and per address in opening order.
        self._by_network: Counter[str] = Counter()
        self._addresses: dict[str, set[str]] = {}  # network -> its addresses with connections
        self._by_address: dict[str, dict[_GatedProtocol, None]] = {}
        self._ordinary = 0
        self._token_addresses: OrderedDict[str, float] = OrderedDict()  # address -> when last proven

    def trusted_address(self, client: str) -> bool:
        if reserved_address(client):
            return True
        proven = self._token_addresses.get(client)
        return proven is not None and time.monotonic() - proven < RECENT_TOKEN_SECONDS

    def admit(self, connection: _GatedProtocol) -> bool:
        """Count the newcomer in, closing connections that wait for a request to make room."""
        while not self._has_room(connection):
            victim = self._victim_for(connection)
            if victim is None:
                return False
            victim.evict()
        self._open[connection] = None
        if not connection.trusted:
            self._add_ordinary(connection)
        return True

    def release(self, connection: _GatedProtocol) -> None:
        if connection not in self._open:  # already evicted
            return
        del self._open[connection]
        if not connection.trusted:
            self._remove_ordinary(connection)

    def prove_token(self, connection: _GatedProtocol) -> None:
        """A request on this connection carried the valid token: trust it, and its address for a while."""
        self._token_addresses[connection.client] = time.monotonic()
        self._token_addresses.move_to_end(connection.client)
        while len(self._token_addresses) > RECENT_TOKEN_ADDRESSES:
            self._token_addresses.popitem(last=False)
        if connection.trusted:
            return
        if connection in self._open:
            self._remove_ordinary(connection)
        connection.trusted = True

    def _add_ordinary(self, connection: _GatedProtocol) -> None:
        self._ordinary += 1
        self._by_network[connection.network] += 1
        self._addresses.setdefault(connection.network, set()).add(connection.client)
        self._by_address.setdefault(connection.client, {})[connection] = None

    def _remove_ordinary(self, connection: _GatedProtocol) -> None:
        self._ordinary -= 1
        network, client = connection.network, connection.client
        self._by_network[network] -= 1
        if self._by_network[network] <= 0:
            del self._by_network[network]
        of_client = self._by_address[client]
        del of_client[connection]
        if not of_client:
            del self._by_address[client]
            self._addresses[network].discard(client)
            if not self._addresses[network]:
                del self._addresses[network]

    def _has_room(self, newcomer: _GatedProtocol) -> bool:
        limits = self.limits
        if len(self._open) >= limits.total:
            return False
        if newcomer.trusted:
            return True
        return (
            self._ordinary < limits.total - limits.reserved
            and self._by_network[newcomer.network] < limits.per_network
        )

    def _victim_for(self, newcomer: _GatedProtocol) -> _GatedProtocol | None:
        if not newcomer.trusted and self._by_network[newcomer.network] >= self.limits.per_network:
            return self._most_crowded([newcomer.network])
        victim = self._most_crowded(self._by_network)
        if victim is None and newcomer.trusted:  # only trusted connections wait: the oldest of them
            return next((connection for connection in self._open if connection.awaiting_request()), None)
        return victim

    def _most_crowded(self, networks: Iterable[str]) -> _GatedProtocol | None:
        """The oldest waiting ordinary connection of the network, then the address, with the most open
        connections: a flood loses its own connections long before a client with one or two loses any.
        Costs a sort of the networks and of one network's addresses, not a scan of every connection."""
        for network in sorted(networks, key=self._by_network.__getitem__, reverse=True):
            addresses = self._addresses.get(network, ())
            for client in sorted(addresses, key=lambda address: len(self._by_address[address]), reverse=True):
                for connection in self._by_address[client]:  # oldest first
                    if connection.awaiting_request():
                        return connection
        return None

    def protocol(self, inner: RequestHandler) -> asyncio.Protocol:
        return _GatedProtocol(self, inner)


class _GatedProtocol(asyncio.Protocol):
    """Passes every transport event to aiohttp's request handler once the gate admitted the peer."""

    def __init__(self, gate: ConnectionGate, inner: RequestHandler) -> None:
        self._gate = gate
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._admitted = False
        self.client = "?"
        self.network = "?"
        self.trusted = False

    def awaiting_request(self) -> bool:
        """True until the peer sends a complete request header, and again once its answer is written
        and the handler waits for the next request (keep-alive). aiohttp offers no public view of this,
        so it reads RequestHandler's state (aiohttp is pinned below 4; the flood tests prove it)."""
        handler = self._inner
        if handler._request_in_progress or handler._messages:
            return False
        if handler._request_count == 0:  # no complete request header yet
            return True
        waiter = handler._waiter  # set while start() waits for the next request
        return waiter is not None and not waiter.done()

    def evict(self) -> None:
        """Close a connection that is waiting for a request, to make room for a newcomer."""
        self._gate.release(self)
        if self._transport is not None:
            if self._transport.get_write_buffer_size():
                self._transport.abort()  # a peer that does not read its last answer
            else:
                self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self.network = network_of(self.client)
        self.trusted = self._gate.trusted_address(self.client)
        if not self._gate.admit(self):
            self._turn_away(transport)
            return
        self._admitted = True
        self._transport = transport
        self._inner.connection_made(transport)

    @staticmethod
    def _turn_away(transport: asyncio.Transport) -> None:
        """The one-line 503, then a half close: closing at once, with the client's request unread,
        would make the kernel send a reset that can destroy the 503 before the client reads it. The
        client's bytes are dropped (data_received) until it closes, or for at most REFUSED_LINGER_SECONDS."""
        transport.write(BUSY_RESPONSE)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(REFUSED_LINGER_SECONDS, transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._gate.release(self)
        self._transport = None
        self._inner.connection_lost(exc)

    def prove_token(self) -> None:
        if self._admitted:
            self._gate.prove_token(self)

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if not self._admitted:
            return False  # close a refused one
        self._inner.eof_received()  # aiohttp's handler returns None: the transport closes itself
        return None

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()


def prove_token(request: web.Request) -> None:
    """Called for a request that carried the valid API token: its connection may use the reserve."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    if isinstance(protocol, _GatedProtocol):
        protocol.prove_token()


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

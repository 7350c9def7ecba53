"""A real notification receiver for the tests: an aiohttp server on a loopback port, in its own thread.

It records every request (path, headers, body) and answers as told: "ok" (200), "500", or "slow" (holds
the request for `slow_seconds` before answering 200). Stop it and start it again on the same port to
play a receiver that is down for a while.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    port: int
    mode: str = "ok"
    slow_seconds: float = 60.0
    received: list[Received] = field(default_factory=list)
    attempts: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        if self.mode == "500":
            return web.Response(status=500, text="receiver broken")
        if self.mode == "slow":
            await asyncio.sleep(self.slow_seconds)
        self.received.append(Received(request.path, dict(request.headers), body))
        return web.Response(text="ok")

    def start(self) -> Receiver:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, shutdown_timeout=0.5)
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=f"receiver-{self.port}")
        self._thread.start()
        assert ready.wait(10), "the receiver did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def on(self, path: str) -> list[Received]:
        return [item for item in self.received if item.path == path]


def verify_signature(item: Received, secret: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), item.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(item.headers.get("X-Restorer-Signature", ""), expected)

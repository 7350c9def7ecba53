"""A tiny response cache for the hot polling endpoints.

Fifty open pages poll the same job; within RESPONSE_TTL_SECONDS they share one answer, and requests
that arrive while it is being computed wait for that one computation (single flight) instead of each
opening the database. The worker reports progress a few times a second at most, so a quarter second
of staleness is invisible; writes made through this API clear the cache at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

RESPONSE_TTL_SECONDS = 0.25
MAX_ENTRIES = 2048


class ResponseCache:
    def __init__(self) -> None:
        self._items: dict[str, tuple[float, Any]] = {}
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._generation = 0

    async def get(self, key: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        now = time.monotonic()
        hit = self._items.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        generation = self._generation
        try:
            value = await compute()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so an unawaited future never logs it
            raise
        else:
            future.set_result(value)
            if generation == self._generation and RESPONSE_TTL_SECONDS > 0:
                if len(self._items) >= MAX_ENTRIES:
                    self._items = {k: v for k, v in self._items.items() if v[0] > now}
                self._items[key] = (time.monotonic() + RESPONSE_TTL_SECONDS, value)
            return value
        finally:
            self._inflight.pop(key, None)

    def clear(self) -> None:
        """After a write: nothing computed before it may be served after it."""
        self._items.clear()
        self._generation += 1

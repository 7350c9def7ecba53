"""A tiny response cache for the hot polling endpoints.

Fifty open pages poll the same job; within RESPONSE_TTL_SECONDS they share one answer, and requests
that arrive while it is being computed wait for that one computation (single flight) instead of each
opening the database. The worker reports progress a few times a second at most, so a quarter second
of staleness is invisible; writes made through this API clear the cache at once.

Answers are kept as their JSON text, so the cache knows what it holds: at most MAX_BYTES in all (a
limit=500 listing is about 1.2 MB) and MAX_ENTRIES entries. Callers key it on normalised parameters,
so distinct query strings for the same answer cannot fill it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

RESPONSE_TTL_SECONDS = 0.25
MAX_ENTRIES = 256
MAX_BYTES = 16 * 1024 * 1024
MAX_ITEM_BYTES = MAX_BYTES // 4  # a bigger answer is shared in flight but not kept


class ResponseCache:
    def __init__(self, max_bytes: int = MAX_BYTES, max_entries: int = MAX_ENTRIES) -> None:
        self._items: dict[str, tuple[float, str]] = {}  # oldest first
        self._inflight: dict[str, asyncio.Future[str]] = {}
        self._generation = 0
        self._bytes = 0
        self._max_bytes = max_bytes
        self._max_entries = max_entries

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str, compute: Callable[[], Awaitable[str]]) -> str:
        hit = self._items.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
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
                self._keep(key, value)
            return value
        finally:
            self._inflight.pop(key, None)

    def _keep(self, key: str, value: str) -> None:
        if len(value) > MAX_ITEM_BYTES:
            return
        self._drop(key)
        now = time.monotonic()
        for old in [k for k, (expires, _) in self._items.items() if expires <= now]:
            self._drop(old)
        while self._items and (
            self._bytes + len(value) > self._max_bytes or len(self._items) >= self._max_entries
        ):
            self._drop(next(iter(self._items)))
        self._items[key] = (now + RESPONSE_TTL_SECONDS, value)
        self._bytes += len(value)

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= len(item[1])

    def clear(self) -> None:
        """After a write: nothing computed before it may be served after it."""
        self._items.clear()
        self._bytes = 0
        self._generation += 1

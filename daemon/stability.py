"""When is a file in the inbox completely written? When its size and mtime have stopped changing.

Scanners, SMB copies and FTP uploads write a file in pieces, and nothing tells a watcher that the last
piece has arrived (inotify's close-after-write does not exist on network shares). The rule every
watch-folder daemon converges on (paperless-ngx's consumer included): a file is complete once its size
AND mtime have been the same for `seconds`. The tracker holds only that rule: it never touches the disk
(callers pass what they stat'ed) and takes its clock as an argument, so it is tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class _Seen:
    size: int
    mtime: float
    since: float  # clock time this (size, mtime) pair was first seen


class StabilityTracker:
    """Files seen but not yet stable, keyed by name."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._seen: dict[str, _Seen] = {}

    def see(self, key: str, size: int, mtime: float) -> bool:
        """Record a look at `key`; True once it has looked like this for `seconds` (a change restarts
        the wait)."""
        now = self._clock()
        seen = self._seen.get(key)
        if seen is None or (seen.size, seen.mtime) != (size, mtime):
            self._seen[key] = _Seen(size, mtime, now)
            return self.seconds <= 0
        return now - seen.since >= self.seconds

    def forget(self, key: str) -> None:
        """Stop tracking `key` (recorded as a job, deleted, renamed away, or unreadable)."""
        self._seen.pop(key, None)

    def seconds_until_due(self) -> float | None:
        """How long until the earliest tracked file may be stable; None when nothing is tracked."""
        if not self._seen:
            return None
        first = min(seen.since for seen in self._seen.values())
        return max(0.0, first + self.seconds - self._clock())

    def __contains__(self, key: object) -> bool:
        return key in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._seen))

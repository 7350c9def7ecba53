"""The outbox's free space: pause the work while it is (nearly) full, resume it when space returns.

Two things pause it: a check finds less free than min_free_mb, or a worker could not publish for lack of
space (on_disk_full: then the bar is what that output needed, plus 10 %, so the same job does not fail
again at once). While paused, intake records no new jobs and the workers claim none; health says why.
When a check finds the bar cleared, the jobs that failed for lack of space go back to the queue and the
work resumes. The checks run off the event loop (statvfs on a hung NFS mount blocks): `check` is blocking.

What pausing means is the caller's (the service pauses intake and the pool): `pause(reason)` and `resume()`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from daemon.beneath import free_bytes
from daemon.health import HealthState
from daemon.settings import Settings
from daemon.store import JobStore

log = logging.getLogger(__name__)

NEEDED_MARGIN = 1.1  # after a failed publish, wait for what it needed and a tenth more


class OutboxSpace:
    """Thread-safe enough for its use: `check` runs in one executor thread at a time, and on_disk_full on
    the event loop only records a number and pauses (both idempotent)."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        health: HealthState,
        pause: Callable[[str], None],
        resume: Callable[[], None],
        free_space: Callable[[Path], int] = free_bytes,
    ) -> None:
        self.settings = settings
        self.store = store
        self.health = health
        self._pause = pause
        self._resume = resume
        self._free_space = free_space
        self._needed_bytes = 0
        self.paused = False

    def on_disk_full(self, needed_bytes: int, message: str) -> None:
        """A worker could not publish: pause until `needed_bytes` (and min_free_mb) are free."""
        self._needed_bytes = needed_bytes
        self._pause_for(f"the outbox is full ({message}); waiting for free space")

    def check(self) -> None:
        """Read the outbox's free space and writability into health; pause or resume. Blocking."""
        outbox = Path(self.settings.outbox)
        try:
            free = self._free_space(outbox)
            writable = os.access(outbox, os.W_OK)
        except OSError as exc:
            self.health.update(outbox_writable=False, outbox_error=str(exc))
            return
        self.health.update(
            outbox_free_bytes=free,
            outbox_writable=writable,
            outbox_error=None if writable else "permission denied",
        )
        threshold = max(self.settings.min_free_bytes, int(self._needed_bytes * NEEDED_MARGIN))
        if free < threshold and not self.paused:
            mb_free, limit = free // (1024 * 1024), self.settings.min_free_mb
            self._pause_for(f"the outbox has {mb_free} MB free, below min_free_mb={limit}")
        elif free >= threshold and self.paused:
            self.paused = False
            self._needed_bytes = 0
            requeued = self.store.requeue_failed("disk-full", "retried automatically after space returned")
            log.info("outbox has space again (%d MB free): resuming, requeued %s", free >> 20, requeued)
            self._resume()

    def _pause_for(self, reason: str) -> None:
        self.paused = True
        self._pause(reason)

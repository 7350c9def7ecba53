"""Queue positions and ETAs.

The rate is the mean seconds per input megapixel of recent done jobs (ReadModel.rate). A waiting job's
input size comes from its file's header (PIL reads only the header, no pixels), cached by file
version; jobs whose header cannot be read (gone, damaged, hostile: any file a share user drops may be)
or claims more than max_input_megapixels count as the mean size of recent jobs.

eta(job) = what is left of the running job + the work of every job ahead + its own work; a queued
job's work starts no earlier than the next run window (run_hours), and has no ETA while the queue is
paused (nobody knows when it will be resumed).
The running job's remainder uses its measured speed once it has made progress, else the rate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor, Future, wait
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from status_site.files import locate, open_checked, open_header
from status_site.problems import Problem

if TYPE_CHECKING:
    from daemon import Job, ReadModel, Settings

log = logging.getLogger(__name__)

HEADER_CACHE_SIZE = 4096
HEADERS_READ_PER_CALL = 200  # beyond this many queued jobs, the rest count at the mean size
RATE_TTL_SECONDS = 5.0
HEADER_WAIT_SECONDS = 0.5


class MegapixelCache:
    """Input megapixels by file version (path, size, mtime); thread-safe, bounded.

    Headers are read in the file pool and waited for at most HEADER_WAIT_SECONDS: on a slow or hung
    share the estimate goes on with the mean size rather than holding up the answer, and a header
    still being read is never asked for twice.
    """

    def __init__(self, file_executor: Executor, size: int = HEADER_CACHE_SIZE) -> None:
        self._file_executor = file_executor
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, int, float], float | None] = OrderedDict()
        self._reading: dict[tuple[str, int, float], Future[float | None]] = {}

    def megapixels(self, job: Job, settings: Settings) -> float | None:
        if job.input_megapixels:  # a retried job that finished before: its size is on record
            return job.input_megapixels
        key = (job.input_path, job.size_bytes, job.mtime)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            reading = self._reading.get(key)
            started = reading is None
            if reading is None:
                reading = self._file_executor.submit(_read_header_megapixels, job, settings)
                self._reading[key] = reading
        if started:
            # Outside the lock: a read that already finished runs the callback right here.
            reading.add_done_callback(lambda done: self._store(key, done))
        done, _ = wait([reading], timeout=HEADER_WAIT_SECONDS)
        return _answer(reading) if done else None

    def _store(self, key: tuple[str, int, float], done: Future[float | None]) -> None:
        # Runs once per read: the one place a read that raised is logged.
        error = None if done.cancelled() else done.exception()
        if error is not None:
            log.warning("reading the header of %s failed; its size counts as unknown", key[0], exc_info=error)
        with self._lock:
            self._reading.pop(key, None)
            if done.cancelled():
                return
            self._items[key] = _answer(done)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def _answer(read: Future[float | None]) -> float | None:
    """A finished header read's megapixels. One that raised is unknown, and is cached as unknown: any
    file in the inbox may be hostile, and an error nobody foresaw in a parser must cost that job its
    estimate, never the listing of every job (issue 18, item 4)."""
    if read.cancelled() or read.exception() is not None:
        return None
    return read.result()


def _read_header_megapixels(job: Job, settings: Settings) -> float | None:
    """The input's size from its header, or None (unknown) for a file that is gone, unreadable, or
    claims more pixels than the pipeline takes: that job fails at once, it is no work ahead of others."""
    # open_header parses the header without Pillow's own bomb check, so big photos are sized too, and
    # turns every header it cannot read (bombs included) into a Problem.
    try:
        # Opened beneath its folder like every other read of a job's file: a folder swapped for a link
        # between locate and open is refused, not followed.
        with open_checked(locate(job, "input", settings)) as handle, open_header(handle) as image:
            megapixels = image.width * image.height / 1e6
    except (Problem, OSError, ValueError):
        return None
    return megapixels if megapixels <= settings.max_input_megapixels else None


class Estimator:
    def __init__(self, reads: ReadModel, settings: Settings, file_executor: Executor) -> None:
        self.reads = reads
        self.settings = settings
        self.cache = MegapixelCache(file_executor)
        self._rate_lock = threading.Lock()
        self._rate: tuple[float, float | None, float] | None = None  # (when, rate, mean megapixels)

    def rate(self) -> tuple[float | None, float]:
        """(seconds per megapixel or None, mean input megapixels); cached briefly, it moves slowly."""
        with self._rate_lock:
            cached = self._rate
        if cached is not None and time.monotonic() - cached[0] < RATE_TTL_SECONDS:
            return cached[1], cached[2]
        measured = self.reads.rate()
        rate, mean_mp = measured.seconds_per_megapixel, measured.mean_input_megapixels or 1.0
        with self._rate_lock:
            self._rate = (time.monotonic(), rate, mean_mp)
        return rate, mean_mp

    def estimate(
        self, queue: list[Job], now: datetime | None = None, extra_ahead: int = 0
    ) -> dict[int, float | None]:
        """ETA in seconds for each job of `queue` (running first, then queued in claim order).

        extra_ahead: queued jobs not in `queue` that run before its last job (they count at mean size).
        """
        rate, mean_mp = self.rate()
        if rate is None:
            return {job.id: None for job in queue}
        now = now or datetime.now(UTC)
        start_wait = self.start_wait(now)
        etas: dict[int, float | None] = {}
        elapsed_total = 0.0
        for index, job in enumerate(queue):
            if job.state == "queued":
                if start_wait is None:  # paused: no queued job starts until someone resumes
                    etas[job.id] = None
                    continue
                # Queued work starts once the running jobs are done AND the next run window is open.
                elapsed_total = max(elapsed_total, start_wait)
            if index < HEADERS_READ_PER_CALL:
                megapixels = self.cache.megapixels(job, self.settings) or mean_mp
            else:
                megapixels = mean_mp
            work = megapixels * rate
            if job.state == "processing":
                work = _remaining(job, work, now)
            if index == len(queue) - 1:
                work += extra_ahead * mean_mp * rate
            elapsed_total += work
            etas[job.id] = round(elapsed_total, 1)
        return etas

    def start_wait(self, now: datetime) -> float | None:
        """Seconds before a queued job may start (quiet hours), or None while the queue is paused."""
        if self.reads.queue_pause().paused:
            return None
        return self.settings.run_wait_seconds(now)


def _remaining(job: Job, expected: float, now: datetime) -> float:
    """Seconds left for a running job: its own measured pace once it has visibly progressed."""
    progress = min(max(job.progress or 0.0, 0.0), 1.0)
    if job.started_at is not None and progress >= 0.05:
        elapsed = max((now - job.started_at).total_seconds(), 0.0)
        return max(elapsed * (1.0 - progress) / progress, 0.0)
    return max(expected * (1.0 - progress), 0.0)

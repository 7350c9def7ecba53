"""Queue positions and ETAs.

The rate is the mean seconds per input megapixel of recent done jobs (ReadModel.rate), taken from those that
ran the same model chain when there are any (models differ ~30x in cost): else, for a chain, the sum of its
steps' own rates when each step has run alone (a step after an upscaler sees more pixels than this counts);
else the rate of all recent jobs, once per step. A waiting job's
input size is the one admission read from its header at intake and stored with the job
(input_megapixels): no queued file is ever opened to answer a listing, so no file a share user drops
(a pixel bomb, a hung share) can slow or break it. A job without one (queued before sizes were stored)
counts as the mean size of recent jobs.

eta(job) = what is left of the running job + the work of every job ahead + its own work; a queued
job's work starts no earlier than the next run window (run_hours), and has no ETA while the queue is
paused (nobody knows when it will be resumed).
The running job's remainder uses its measured speed once it has made progress, else the rate.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from daemon import model_chain_of

if TYPE_CHECKING:
    from daemon import Job, Rate, ReadModel, Settings

RATE_TTL_SECONDS = 5.0


class Estimator:
    def __init__(self, reads: ReadModel, settings: Settings) -> None:
        self.reads = reads
        self.settings = settings
        self._rate_lock = threading.Lock()
        self._rate: tuple[float, Rate] | None = None  # (when measured, the rates)

    def rate(self) -> Rate:
        """The measured rates; cached briefly, they move slowly."""
        with self._rate_lock:
            cached = self._rate
        if cached is not None and time.monotonic() - cached[0] < RATE_TTL_SECONDS:
            return cached[1]
        measured = self.reads.rate()
        with self._rate_lock:
            self._rate = (time.monotonic(), measured)
        return measured

    def estimate(
        self, queue: list[Job], now: datetime | None = None, extra_ahead: int = 0
    ) -> dict[int, float | None]:
        """ETA in seconds for each job of `queue` (running first, then queued in claim order).

        extra_ahead: queued jobs not in `queue` that run before its last job (they count at mean size).
        """
        measured = self.rate()
        rate, mean_mp = measured.seconds_per_megapixel, measured.mean_input_megapixels or 1.0
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
            work = (job.input_megapixels or mean_mp) * job_rate(job, measured)
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


def job_rate(job: Job, measured: Rate) -> float:
    """Seconds per input megapixel for this job's model chain (see the module docstring)."""
    overall = measured.seconds_per_megapixel or 0.0
    chain = model_chain_of(job.options.get("model", ""))
    same = measured.per_chain.get(chain)
    if same is not None:
        return same
    steps = [measured.per_chain.get((model,)) for model in chain]
    if all(step is not None for step in steps):
        return sum(step for step in steps if step is not None)
    return overall * len(chain)


def _remaining(job: Job, expected: float, now: datetime) -> float:
    """Seconds left for a running job: its own measured pace once it has visibly progressed."""
    progress = min(max(job.progress or 0.0, 0.0), 1.0)
    if job.started_at is not None and progress >= 0.05:
        elapsed = max((now - job.started_at).total_seconds(), 0.0)
        return max(elapsed * (1.0 - progress) / progress, 0.0)
    return max(expected * (1.0 - progress), 0.0)

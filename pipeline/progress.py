"""The pipeline's progress stages: their names, the order they run in, and each one's share of a file.

restore_bytes reports on_progress(stage, done, total) for these stages, in this order (a stage with
nothing to do, like faces-restore when no face was found, may be skipped, never revisited). Callers turn
that into one 0..1 fraction with stage_spans(); they hold no stage list of their own.

The weights are typical shares of the wall time of a photo on CPU with faces on: the upscale dominates;
restoring a face costs about a tenth.

run_with_heartbeats keeps reporting while one long blocking call (a decode, an encode) runs, so a
supervisor that restarts silent workers can tell a slow step from a stuck one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pipeline.types import ProgressCallback

log = logging.getLogger(__name__)

STAGE_WEIGHTS: dict[str, float] = {
    "decode": 0.03,  # load_image: header checks, decode, orientation
    "faces-detect": 0.04,  # face detection on the input
    "faces-restore": 0.10,  # each aligned face through the face network (before the upscale)
    "upscale": 0.78,  # the tiled super-resolution (alpha tiles continue the same count)
    "encode": 0.05,  # encode_image (reported once faces are pasted and the output resized)
}


def stage_spans() -> dict[str, tuple[float, float]]:
    """Where each stage sits on a file's 0..1 progress bar: (start, end), contiguous, in run order."""
    spans: dict[str, tuple[float, float]] = {}
    start = 0.0
    for stage, weight in STAGE_WEIGHTS.items():
        end = min(1.0, start + weight)
        spans[stage] = (round(start, 6), round(end, 6))
        start = end
    return spans


# -- heartbeats while one long call runs --------------------------------------------------------------------

TICK_SECONDS = 1.0  # how often a long step reports that it is still running
# A step that has not finished after its deadline stops reporting, so whoever watches the progress (the
# daemon's hang_seconds) can tell a stuck encoder from a slow one. Generous on purpose: over ten times the
# slowest encode measured on a busy small CPU (docs/performance.md, "Encode rates"). Pillow's 8-bit TIFF
# encoder holds the GIL, so it cannot tick; it is fast enough that only a photo far beyond any real one
# would reach the default hang_seconds.
STEP_BASE_SECONDS = 120.0
STEP_SECONDS_PER_MEGAPIXEL = 5.0

T = TypeVar("T")


def step_deadline(pixels: int) -> float:
    """Seconds a decode or encode of `pixels` may report heartbeats for before it counts as stuck."""
    return STEP_BASE_SECONDS + STEP_SECONDS_PER_MEGAPIXEL * pixels / 1_000_000


@dataclass
class _Outcome(Generic[T]):
    done: threading.Event = field(default_factory=threading.Event)
    value: T | None = None
    error: BaseException | None = None

    def run(self, step: Callable[[], T]) -> None:
        try:
            self.value = step()
        except BaseException as error:  # handed to the caller unchanged
            self.error = error
        finally:
            self.done.set()


def run_with_heartbeats(
    step: Callable[[], T], on_progress: ProgressCallback | None, stage: str, deadline_seconds: float
) -> T:
    """step() in a thread while this thread reports on_progress(stage, 0, 1) every TICK_SECONDS, so one
    long blocking call (OpenCV and Pillow release the GIL) does not look like a hung worker. The
    callback always runs on the calling thread (it may own a database connection).

    After deadline_seconds the reports stop and the step is waited for in silence: a genuinely stuck
    encoder then looks hung, as it should. An exception in step() is raised unchanged.

    An exception from on_progress (the daemon's JobCancelled) cannot interrupt a C encoder. The step is
    let finish while the reports go on (their further exceptions are dropped), then that first exception
    is raised and the step's result or error is dropped. So a cancel takes effect once the step's memory
    is free (one job at a time stays true), and honouring a cancel never gets a worker killed as hung.
    """
    if on_progress is None:
        return step()
    outcome: _Outcome[T] = _Outcome()
    worker = threading.Thread(target=outcome.run, args=(step,), name=f"pipeline-{stage}", daemon=True)
    worker.start()
    deadline = time.monotonic() + deadline_seconds
    raised: Exception | None = None
    while not outcome.done.wait(TICK_SECONDS):
        if time.monotonic() > deadline:
            log.warning(
                "%s still running after %.0f s: no more heartbeats until it ends", stage, deadline_seconds
            )
            outcome.done.wait()
            break
        try:
            on_progress(stage, 0, 1)
        except Exception as error:
            raised = raised or error
    if raised is not None:  # cancelled: the step's result, or error, no longer matters
        raise raised
    if outcome.error is not None:
        raise outcome.error
    return outcome.value  # type: ignore[return-value]  # set when the step returned

"""The pipeline's progress stages: their names, the order they run in, and each one's share of a file.

restore_bytes reports on_progress(stage, done, total) for these stages, in this order (a stage with
nothing to do, like faces-restore when no face was found, may be skipped, never revisited). Callers turn
that into one 0..1 fraction with stage_spans(); they hold no stage list of their own.

The weights are typical shares of the wall time of a photo on CPU with faces on: the upscale dominates;
restoring a face costs about a tenth.
"""

from __future__ import annotations

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


def overall_fraction(stage: str, done: int, total: int) -> float:
    """One on_progress call as a fraction of the whole file (an unknown stage raises KeyError)."""
    start, end = stage_spans()[stage]
    within = done / total if total > 0 else 1.0
    return start + (end - start) * min(max(within, 0.0), 1.0)

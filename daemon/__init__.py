"""The daemon: state and lifecycle. It owns the settings, the SQLite job store and its read model, the
inbox watcher, the worker process, the publish protocol and the health snapshot; it runs the pipeline
but knows nothing of HTTP.

The names below are its public surface: status_site imports only these (an import-linter contract in
pyproject.toml checks it). The modules behind them are the daemon's own business:

    settings.py    Settings: the one settings model (TOML < RESTORER_* environment < flags)
    store.py       JobStore: the jobs table's schema, migrations and every write
    readmodel.py   ReadModel: every read (queue order and positions, listings, stats), read-only
    intake.py      Intake: inbox events and scans -> stable files -> jobs, through admission and
                   enqueue_file, the one path from a complete file in the inbox to a job (uploads use it too)
    admission.py   admit: whether a file may become a job (intake and uploads), built on pipeline.probe
    watcher.py     the inbox observers: native inotify, or polling through beneath.py on network shares
    originals.py   where a job's original is, disposal (archive/delete/keep), moves to failed/
    retention.py   archive_days / failed_days: old archived originals and failed files deleted, jobs marked
    job_loop.py    a slot's job loop: claim -> restore -> publish -> finish -> dispose of the original
    worker_pool.py the supervised worker processes (local, or the Ray client) that run the job loops
    names.py       the file-name rules for every name the daemon creates (safe_file_name)
    beneath.py     every file operation under the inbox, outbox, failed and archive folders: folder
                   descriptors reached from the root without following a link (the only module that
                   touches those folders; tests/test_beneath_only.py)
    publish.py     temp file + fsync + rename into a folder, never overwriting
    health.py      HealthState: the ok / degraded / down snapshot the API and page show; queue_state
    schedule.py    quiet hours (run_hours): pure window arithmetic with an injected clock and zone
    outbox_space.py  pause the work while the outbox is (nearly) full, resume and requeue when space returns
    fsinfo.py, sdnotify.py   mount types (network shares) and systemd notifications

The composition root (app/) wires these together and may reach behind this surface.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # _HOMES below, for type checkers and import-linter (test_layers.py: the lists agree)
    from daemon.admission import IMAGE_SUFFIXES, Admitted, Ignored, Refused, admit, media_type
    from daemon.beneath import NotAFileError, lstat_beneath, open_beneath
    from daemon.health import HealthState, queue_state
    from daemon.intake import FileVersion, enqueue_file
    from daemon.names import safe_file_name
    from daemon.originals import Location as OriginalLocation
    from daemon.originals import absence_reason as original_absence_reason
    from daemon.originals import location as original_location
    from daemon.publish import DiskFullError, PublishError, publish_bytes, publish_file
    from daemon.readmodel import (
        STATES,
        Job,
        JobNotFoundError,
        JobPage,
        JobQueryError,
        QueuePause,
        QueuePlace,
        Rate,
        ReadModel,
        StoreError,
        model_chain_of,
        queue_positions,
    )
    from daemon.settings import Settings
    from daemon.store import AddResult, JobStore

# Public name -> (module, name there). Imported on first use, not with the package: `restorer restore`
# needs the settings only, and the store, the read model and SQLAlchemy cost ~0.2 s of its start-up
# (docs/performance.md, "Fixed cost").
_HOMES: dict[str, tuple[str, str]] = {
    **{
        name: ("daemon.admission", name)
        for name in ("IMAGE_SUFFIXES", "Admitted", "Ignored", "Refused", "admit", "media_type")
    },
    "NotAFileError": ("daemon.beneath", "NotAFileError"),
    "lstat_beneath": ("daemon.beneath", "lstat_beneath"),
    "open_beneath": ("daemon.beneath", "open_beneath"),
    "HealthState": ("daemon.health", "HealthState"),
    "queue_state": ("daemon.health", "queue_state"),
    "FileVersion": ("daemon.intake", "FileVersion"),
    "enqueue_file": ("daemon.intake", "enqueue_file"),
    "safe_file_name": ("daemon.names", "safe_file_name"),
    "OriginalLocation": ("daemon.originals", "Location"),
    "original_absence_reason": ("daemon.originals", "absence_reason"),
    "original_location": ("daemon.originals", "location"),
    "DiskFullError": ("daemon.publish", "DiskFullError"),
    "PublishError": ("daemon.publish", "PublishError"),
    "publish_bytes": ("daemon.publish", "publish_bytes"),
    "publish_file": ("daemon.publish", "publish_file"),
    **{
        name: ("daemon.readmodel", name)
        for name in (
            "STATES",
            "Job",
            "JobNotFoundError",
            "JobPage",
            "JobQueryError",
            "QueuePause",
            "QueuePlace",
            "Rate",
            "ReadModel",
            "StoreError",
            "model_chain_of",
            "queue_positions",
        )
    },
    "Settings": ("daemon.settings", "Settings"),
    "AddResult": ("daemon.store", "AddResult"),
    "JobStore": ("daemon.store", "JobStore"),
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'daemon' has no attribute {name!r}")
    module, attribute = _HOMES[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # looked up once
    return value


__all__ = [
    "IMAGE_SUFFIXES",
    "STATES",
    "AddResult",
    "Admitted",
    "DiskFullError",
    "FileVersion",
    "HealthState",
    "Ignored",
    "Job",
    "JobNotFoundError",
    "JobPage",
    "JobQueryError",
    "JobStore",
    "NotAFileError",
    "OriginalLocation",
    "PublishError",
    "QueuePause",
    "QueuePlace",
    "Rate",
    "ReadModel",
    "Refused",
    "Settings",
    "StoreError",
    "admit",
    "enqueue_file",
    "lstat_beneath",
    "media_type",
    "model_chain_of",
    "open_beneath",
    "original_absence_reason",
    "original_location",
    "publish_bytes",
    "publish_file",
    "queue_positions",
    "queue_state",
    "safe_file_name",
]

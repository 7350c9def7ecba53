"""The daemon: state and lifecycle. It owns the settings, the SQLite job store and its read model, the
inbox watcher, the worker process, the publish protocol and the health snapshot; it runs the pipeline
but knows nothing of HTTP.

The names below are its public surface: status_site imports only these (an import-linter contract in
pyproject.toml checks it). The modules behind them are the daemon's own business:

    settings.py    Settings: the one settings model (TOML < RESTORER_* environment < flags)
    store.py       JobStore: the jobs table's schema, migrations and every write
    readmodel.py   ReadModel: every read (queue order and positions, listings, stats), read-only
    watcher.py     the intake: inbox events and scans -> stable files -> jobs
    intake.py      enqueue_file: the one path from a complete file in the inbox to a job
    originals.py   where a job's original is, disposal (archive/delete/keep), moves to failed/
    worker.py      the worker process: claim -> restore -> publish -> finish -> dispose of the original
    names.py       the file-name rules for every name the daemon creates (safe_file_name)
    publish.py     temp file + fsync + rename into a folder, never overwriting
    health.py      HealthState: the ok / degraded / down snapshot the API and page show
    fsinfo.py, sdnotify.py   mount types (network shares) and systemd notifications

The composition root (app/) wires these together and may reach behind this surface.
"""

from daemon.health import HealthState
from daemon.intake import FileVersion, enqueue_file
from daemon.names import safe_file_name
from daemon.originals import Location as OriginalLocation
from daemon.originals import absence_reason as original_absence_reason
from daemon.originals import location as original_location
from daemon.publish import DiskFullError, publish_bytes, publish_file
from daemon.readmodel import (
    STATES,
    Job,
    JobNotFoundError,
    JobPage,
    JobQueryError,
    QueuePlace,
    Rate,
    ReadModel,
    StoreError,
    queue_positions,
)
from daemon.settings import Settings
from daemon.store import AddResult, JobStore

# The pipeline's bounds on an image's shape: uploads refuse exactly what the worker would.
from pipeline import MAX_ASPECT as IMAGE_MAX_ASPECT
from pipeline import MAX_SIDE as IMAGE_MAX_SIDE

__all__ = [
    "IMAGE_MAX_ASPECT",
    "IMAGE_MAX_SIDE",
    "STATES",
    "AddResult",
    "DiskFullError",
    "FileVersion",
    "HealthState",
    "Job",
    "JobNotFoundError",
    "JobPage",
    "JobQueryError",
    "JobStore",
    "OriginalLocation",
    "QueuePlace",
    "Rate",
    "ReadModel",
    "Settings",
    "StoreError",
    "enqueue_file",
    "original_absence_reason",
    "original_location",
    "publish_bytes",
    "publish_file",
    "queue_positions",
    "safe_file_name",
]

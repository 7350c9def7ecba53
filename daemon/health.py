"""What the daemon knows about itself right now, for the API, the page, the log and sd_notify.

One HealthState lives in the service process. The watcher, the worker supervisor and the disk checks
update it; `snapshot()` turns it into a dict with an overall "status":

    down      the daemon cannot restore anything (starting up, worker dead, stopping)
    degraded  it restores, but something needs attention (watcher dead, inbox unreachable,
              outbox not writable or full, intake paused, polling because inotify failed)
    ok        everything works

and "reasons": one sentence per problem, in words a user can act on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.messages import EngineAccount
    from daemon.readmodel import QueuePause
    from daemon.settings import Settings


@dataclass
class _Health:
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    ready: bool = False
    stopping: bool = False
    # Intake.
    watch_mode: str | None = None  # "native" | "polling"
    watch_mode_reason: str | None = None  # why auto chose it, or why we fell back
    watcher_alive: bool = False
    watcher_error: str | None = None
    watcher_restarts: int = 0
    inbox_reachable: bool = True
    inbox_error: str | None = None
    inbox_filesystem: str | None = None
    last_scan_at: str | None = None
    pending_files: int = 0  # seen, waiting to be stable
    intake_paused: bool = False
    intake_paused_reason: str | None = None
    too_deep_folders: list[str] = field(default_factory=list)  # skipped: nested beyond the depth limit
    # Output.
    outbox_writable: bool = True
    outbox_error: str | None = None
    outbox_free_bytes: int | None = None
    # Worker.
    worker_state: str = "not started"  # not started | loading models | idle | busy | restarting | stopped
    worker_alive: bool = False
    worker_pid: int | None = None
    worker_heartbeat_age_s: float | None = None
    worker_restarts: int = 0
    worker_error: str | None = None
    current_job_id: int | None = None  # the first running job (one-worker clients); see `workers`
    # The pool: executor "local" | "ray", one entry per slot (id, device, state, job_id, pid,
    # heartbeat_age_s), and for Ray the cluster's state (state, address, nodes, actors, error).
    executor: str = "local"
    workers: list[dict[str, Any]] = field(default_factory=list)
    cluster: dict[str, Any] | None = None
    # Engine, as the worker reported it after warm-up.
    backend: str | None = None
    device: str | None = None
    precision: str | None = None
    backend_reason: str | None = None
    models: list[dict[str, Any]] = field(default_factory=list)
    # Notifications (daemon/notify.py): targets, pending, failing_targets (redacted keys), last_error.
    # A dead receiver shows here, not in "reasons": it does not keep photos from being restored.
    notifications: dict[str, Any] = field(default_factory=dict)


class HealthState:
    """Thread-safe; every setter takes the lock, `snapshot()` returns a copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _Health()
        self._heartbeat: float | None = None  # time.monotonic() of the worker's last sign of life

    def update(self, **fields: Any) -> None:
        with self._lock:
            for name, value in fields.items():
                if not hasattr(self._state, name):
                    raise AttributeError(f"HealthState has no field {name!r}")
                setattr(self._state, name, value)

    def get(self, name: str) -> Any:
        with self._lock:
            return getattr(self._state, name)

    # Named helpers for the common transitions (they keep the reason text in one place).

    def worker_beat(self) -> None:
        with self._lock:
            self._heartbeat = time.monotonic()

    def worker_of(self, job_id: int) -> str | None:
        """The slot running this job, if any (the API's job JSON names it)."""
        with self._lock:
            return next((w["id"] for w in self._state.workers if w.get("job_id") == job_id), None)

    def heartbeat_age(self) -> float | None:
        with self._lock:
            return None if self._heartbeat is None else time.monotonic() - self._heartbeat

    def pause_intake(self, reason: str) -> None:
        self.update(intake_paused=True, intake_paused_reason=reason)

    def resume_intake(self) -> None:
        self.update(intake_paused=False, intake_paused_reason=None)

    def set_engine(self, engine: EngineAccount) -> None:
        self.update(
            backend=engine.backend,
            device=engine.device,
            precision=engine.precision,
            backend_reason=engine.reason,
        )
        if engine.models is not None:  # only the warm-up account lists them; a job's report does not
            self.update(models=[dict(model) for model in engine.models])

    def reasons(self) -> tuple[str, list[str]]:
        with self._lock:
            s = self._state
            down: list[str] = []
            degraded: list[str] = []
            if s.stopping:
                down.append("the service is stopping")
            elif not s.ready:
                down.append(f"starting up (worker: {s.worker_state})")
            elif s.cluster is not None and s.cluster.get("state") == "unreachable":
                # The queue is kept and the Ray client reconnects with backoff: nothing is lost.
                degraded.append(
                    f"Ray cluster unreachable: {s.cluster.get('error') or s.cluster.get('address')}"
                )
            elif not s.worker_alive:
                down.append(f"the worker process is not running ({s.worker_error or s.worker_state})")
            if s.ready and not s.stopping:
                if not s.inbox_reachable:
                    degraded.append(f"the inbox is unreachable: {s.inbox_error}")
                if not s.watcher_alive:
                    degraded.append(f"the folder watcher is not running: {s.watcher_error or 'unknown'}")
                elif s.watcher_error:
                    degraded.append(s.watcher_error)
                if not s.outbox_writable:
                    degraded.append(f"the outbox is not writable: {s.outbox_error}")
                if s.intake_paused:
                    degraded.append(f"intake is paused: {s.intake_paused_reason}")
                if s.too_deep_folders:
                    degraded.append(
                        "inbox folders nested too deep are skipped (move their photos up): "
                        + ", ".join(folder[:80] for folder in s.too_deep_folders[:3])
                    )
                connected = s.cluster is not None and s.cluster.get("state") == "connected"
                if connected and s.workers and all(w.get("state") == "waiting" for w in s.workers):
                    degraded.append("no Ray node has room for a restore actor (check the nodes' resources)")
        if down:
            return "down", down + degraded
        return ("degraded", degraded) if degraded else ("ok", [])

    def snapshot(self) -> dict[str, Any]:
        status, reasons = self.reasons()
        with self._lock:
            data = asdict(self._state)
            age = None if self._heartbeat is None else time.monotonic() - self._heartbeat
        data["worker_heartbeat_age_s"] = None if age is None else round(age, 3)
        data["status"] = status
        data["reasons"] = reasons
        return data


def queue_state(pause: QueuePause, settings: Settings, now: datetime) -> dict[str, Any]:
    """The queue's part of health: the user's pause (who, when, how) and quiet hours (the next run).

    `queue_waiting_reason` is one sentence when no new job may start now, else None.
    """
    opening = settings.next_run(now)
    reason = None
    if pause.paused:
        how = "running jobs went back to the queue" if pause.mode == "now" else "after the current photo"
        when = pause.at.isoformat(timespec="seconds") if pause.at else "an unknown time"
        reason = f"paused by {pause.by or 'someone'} at {when} ({how}); resume to run queued jobs"
    elif opening is not None:
        reason = f"quiet hours ({', '.join(settings.run_hours)}): next run at {opening:%H:%M}"
    return {
        "queue_paused": pause.paused,
        "queue_pause_mode": pause.mode,
        "queue_paused_by": pause.by,
        "queue_paused_at": pause.at.isoformat(timespec="seconds") if pause.at else None,
        "queue_run_hours": list(settings.run_hours),
        "queue_next_run_at": opening.isoformat(timespec="minutes") if opening else None,
        "queue_waiting_reason": reason,
    }

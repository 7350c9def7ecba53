"""GET /metrics in the Prometheus text exposition format (version 0.0.4).

Everything is read from the daemon's read model and the health snapshot at scrape time. Totals
derived from the job table are gauges, not counters: a retried job leaves `done`, so they can go down.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from status_site.context import SiteContext

HEALTH_STATES = ("ok", "degraded", "down")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self, name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float | None]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if value is None:
                continue
            label_text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
            self.lines.append(
                f"{name}{{{label_text}}} {_number(value)}" if labels else f"{name} {_number(value)}"
            )

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render(ctx: SiteContext, now: datetime) -> str:
    """Blocking (store queries): call it in the thread pool."""
    stats = ctx.reads.stats(now=now, hours=1, days=1)
    health: dict[str, Any] = ctx.health.snapshot()
    queue = ctx.reads.queue(1)
    running = queue[0] if queue and queue[0].state == "processing" else None
    out = _Writer()
    out.metric(
        "restorer_jobs",
        "gauge",
        "Jobs in the job store by state.",
        [({"state": state}, count) for state, count in stats["counts"].items()],
    )
    done = stats["done_total"]
    out.metric("restorer_done_images", "gauge", "Jobs in state done.", [({}, done["images"])])
    out.metric(
        "restorer_done_input_megapixels",
        "gauge",
        "Input megapixels of done jobs.",
        [({}, done["megapixels"])],
    )
    out.metric(
        "restorer_done_busy_seconds",
        "gauge",
        "Work seconds spent on done jobs.",
        [({}, done["busy_seconds"])],
    )
    out.metric(
        "restorer_seconds_per_megapixel",
        "gauge",
        "Mean work seconds per input megapixel over recent done jobs.",
        [({}, stats["seconds_per_megapixel"])],
    )
    last_hour = stats["per_hour"][-1] if stats["per_hour"] else {"images": 0, "megapixels": 0.0}
    out.metric(
        "restorer_images_this_hour",
        "gauge",
        "Images finished in the current hour.",
        [({}, last_hour["images"])],
    )
    out.metric(
        "restorer_current_job_progress",
        "gauge",
        "Progress 0..1 of the job being restored (absent when idle).",
        [({"job_id": str(running.id)}, running.progress)] if running else [],
    )
    status = health.get("status", "down")
    out.metric(
        "restorer_health_status",
        "gauge",
        "1 for the daemon's current health status, 0 for the others.",
        [({"status": state}, 1 if state == status else 0) for state in HEALTH_STATES],
    )
    for name, key, help_text in (
        ("restorer_worker_alive", "worker_alive", "1 when the worker process is running."),
        ("restorer_watcher_alive", "watcher_alive", "1 when the inbox watcher is running."),
        ("restorer_inbox_reachable", "inbox_reachable", "1 when the inbox folder can be read."),
        ("restorer_outbox_writable", "outbox_writable", "1 when the outbox folder can be written."),
        ("restorer_intake_paused", "intake_paused", "1 when intake is paused (see /api/v1/health)."),
    ):
        if key in health:
            out.metric(name, "gauge", help_text, [({}, 1 if health[key] else 0)])
    for name, key, kind, help_text in (
        ("restorer_outbox_free_bytes", "outbox_free_bytes", "gauge", "Free bytes on the outbox filesystem."),
        (
            "restorer_worker_heartbeat_age_seconds",
            "worker_heartbeat_age_s",
            "gauge",
            "Seconds since the worker's last heartbeat.",
        ),
        ("restorer_worker_restarts_total", "worker_restarts", "counter", "Worker process restarts."),
        ("restorer_watcher_restarts_total", "watcher_restarts", "counter", "Inbox watcher restarts."),
    ):
        value = health.get(key)
        if isinstance(value, int | float):
            out.metric(name, kind, help_text, [({}, value)])
    return out.text()

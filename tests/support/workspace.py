"""Looking at what a daemon left in its folders and its database."""

from __future__ import annotations

from pathlib import Path

from daemon.store import Job, JobStore


def files_under(root: Path) -> list[str]:
    """Every file below root, as sorted posix paths relative to it."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def jobs(root: Path) -> list[Job]:
    """The jobs the daemon under root recorded (up to 2,000), oldest first, from its own database."""
    store = JobStore(root / "state" / "jobs.sqlite3")
    try:
        return store.list(limit=2000, order="oldest").jobs
    finally:
        store.close()


def jobs_by_input(root: Path) -> dict[str, Job]:
    return {job.input_path: job for job in jobs(root)}

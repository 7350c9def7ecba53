"""`restorer jobs list|show ID|retry ID|cancel ID`: the job store from the command line.

It opens the same SQLite file as the running daemon (WAL: safe while it runs). Retry and cancel are
idempotent; a running job's cancel is a request the worker honours at its next progress step.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from app.flags import command_parser, settings_from_args
from daemon import STATES

if TYPE_CHECKING:
    from daemon import JobStore


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = command_parser(sub, "jobs", "list, inspect, retry or cancel jobs", ("state_dir",))
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="newest jobs first")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--limit", type=int, default=50)
    for name, text in (("show", "one job in full"), ("retry", "queue again"), ("cancel", "cancel")):
        action = actions.add_parser(name, help=text)
        action.add_argument("id", type=int)
    parser.set_defaults(run=run)


def _store(args: argparse.Namespace) -> JobStore:
    from daemon import JobStore

    settings = settings_from_args(args)
    if not settings.db_path.exists():
        raise SystemExit(
            f"no job database at {settings.db_path} (has `restorer serve` run with this config?)"
        )
    return JobStore(settings.db_path)


def _table(jobs: list[Any]) -> str:
    rows = [("ID", "STATE", "TRIES", "PROGRESS", "DETECTED", "INPUT", "OUTPUT / ERROR")]
    for job in jobs:
        detected = job.detected_at.strftime("%Y-%m-%d %H:%M:%S") if job.detected_at else ""
        outcome = job.error or job.output_path or job.note or ""
        progress = f"{job.progress * 100:.0f}%" if job.state == "processing" else ""
        rows.append((str(job.id), job.state, str(job.attempts), progress, detected, job.input_path, outcome))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _show(job: Any, position: int | None) -> str:
    data = job.to_dict()
    data["queue_position"] = position
    width = max(len(key) for key in data)
    lines = []
    for key, value in data.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, indent=2, sort_keys=True).replace("\n", "\n" + " " * (width + 2))
        lines.append(f"{key.ljust(width)}  {'' if value is None else value}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from daemon import JobNotFoundError

    store = _store(args)
    try:
        if args.action == "list":
            jobs = store.list(state=args.state, limit=args.limit).jobs
            print(json.dumps([j.to_dict() for j in jobs], indent=2) if args.json else _table(jobs))
            return 0
        if args.action == "show":
            job = store.get_or_raise(args.id)
        elif args.action == "retry":
            job = store.retry(args.id)
        else:
            job = store.cancel(args.id)
        if args.json:
            print(json.dumps({**job.to_dict(), "queue_position": store.queue_position(job.id)}, indent=2))
        elif args.action == "show":
            print(_show(job, store.queue_position(job.id)))
        else:
            wording = "cancel requested (it stops at its next step)" if job.cancel_requested else job.state
            print(f"job {job.id}: {wording}")
        return 0
    except JobNotFoundError as exc:
        print(f"restorer jobs: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()

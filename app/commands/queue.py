"""`restorer queue pause [--now] | resume | status | first ID`: the queue of the RUNNING daemon.

Unlike `restorer jobs` (which opens the job database), this talks to the daemon's API on this machine:
a resume or a "first" must wake idle workers at once, and a pause "now" must reach the running job;
only the daemon can do that. It sends the API token when one is configured (RESTORER_API_TOKEN,
api_token_file or the config file), else it is a loopback client, which the API lets write.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from app.flags import command_parser, settings_from_args

USER_AGENT = "restorer-cli"  # health shows "paused by CLI ..."
WILDCARDS = ("0.0.0.0", "::", "")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = command_parser(
        sub, "queue", "pause, resume or reorder the running daemon's queue", ("bind", "api_port")
    )
    parser.add_argument("--url", help="the daemon's API (default: http://<bind or 127.0.0.1>:<api_port>)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    pause = actions.add_parser("pause", help="no new job starts (after the current photo by default)")
    pause.add_argument("--now", action="store_true", help="running jobs go back to the queue, first in line")
    actions.add_parser("resume", help="queued jobs start again")
    actions.add_parser("status", help="paused or not, by whom and when; quiet hours")
    first = actions.add_parser("first", help="move a queued job to the front of the queue")
    first.add_argument("id", type=int)
    parser.set_defaults(run=run)


def _base_url(args: argparse.Namespace, bind: str, port: int) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    host = "127.0.0.1" if bind in WILDCARDS else bind
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def _call(url: str, token: str | None, body: dict[str, Any] | None) -> dict[str, Any]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    method = "GET" if body is None else "POST"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())  # the API answers with JSON objects
    return answer


def _describe(state: dict[str, Any]) -> str:
    if state.get("queue_waiting_reason"):
        return f"queue: {state['queue_waiting_reason']}"
    return "queue: running"


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    base = _base_url(args, settings.bind, settings.api_port)
    token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    paths: dict[str, tuple[str, dict[str, Any] | None]] = {
        "pause": ("/api/v1/queue/pause", {"when": "now" if getattr(args, "now", False) else "after-current"}),
        "resume": ("/api/v1/queue/resume", {}),
        "status": ("/api/v1/health", None),
        "first": (f"/api/v1/jobs/{getattr(args, 'id', 0)}/prioritize", {}),
    }
    path, body = paths[args.action]
    try:
        answer = _call(base + path, token, body)
    except urllib.error.HTTPError as exc:
        if exc.code == 503 and args.action == "status":  # health says "down": still an answer
            answer = json.loads(exc.read())
        else:
            detail = _problem_detail(exc)
            print(f"restorer queue {args.action}: {exc.code} {detail}", file=sys.stderr)
            return 1
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(
            f"restorer queue: no daemon answers at {base} ({reason}); is `restorer serve` running?",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps(answer, indent=2))
    elif args.action == "first":
        moved = "moved to the front" if answer.get("changed") else "already first"
        print(f"job {answer['id']}: {moved} (queue position {answer.get('queue_position')})")
    else:
        print(_describe(answer))
    return 0


def _problem_detail(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("detail") or exc.reason)
    except (ValueError, OSError):
        return str(exc.reason)

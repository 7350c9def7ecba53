"""`restorer serve`: watch the inbox, restore into the outbox, serve the status page and the API."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from app.flags import command_parser, settings_from_args

if TYPE_CHECKING:
    from daemon.job_loop import ProcessorFactory

log = logging.getLogger(__name__)

# The settings `restorer serve` takes as flags; everything else comes from --config or RESTORER_*.
SERVE_FIELDS = (
    *("inbox", "outbox", "failed_dir", "archive_dir", "state_dir", "weights_dir"),
    *("bind", "api_port", "site_port"),
    *("watch_mode", "poll_seconds", "rescan_seconds", "stability_seconds", "duplicate_content"),
    *("max_attempts", "originals", "hang_seconds", "stop_grace_seconds"),
    *("model", "backend", "device", "precision"),
    *("executor", "workers", "ray_address", "ray_actors", "ray_token_file"),
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    summary = "run the watch-folder daemon (watcher, worker, status page and API)"
    parser = command_parser(sub, "serve", summary, SERVE_FIELDS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, processor_factory: ProcessorFactory | None = None) -> int:
    """processor_factory: the per-job stage (default: the real pipeline); only tests pass another."""
    import asyncio

    from pydantic import ValidationError

    from app.service import serve

    try:
        settings = settings_from_args(args)
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return 2
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            log.error("invalid setting %s: %s", where, error["msg"])
        return 2
    if settings.executor == "ray":
        from daemon.ray_token import RayTokenError, check_ray_token

        try:
            check_ray_token(settings.ray_token_file)  # before anything starts: the driver child needs it
        except RayTokenError as exc:
            log.error("%s", exc)
            return 2
    if processor_factory is None:
        return asyncio.run(serve(settings))
    return asyncio.run(serve(settings, processor_factory))

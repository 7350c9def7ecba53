"""`restorer serve`: watch the inbox, restore into the outbox, serve the status page and the API."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# Flag -> settings field. Everything else comes from the TOML file or RESTORER_* variables.
PATH_FLAGS = ["inbox", "outbox", "failed_dir", "archive_dir", "state_dir", "weights_dir"]
VALUE_FLAGS: dict[str, type] = {
    "bind": str,
    "api_port": int,
    "site_port": int,
    "poll_seconds": float,
    "rescan_seconds": float,
    "stability_seconds": float,
    "hang_seconds": float,
    "max_attempts": int,
    "stop_grace_seconds": float,
    "model": str,
}
CHOICE_FLAGS: dict[str, list[str]] = {
    "watch_mode": ["auto", "native", "polling"],
    "originals": ["archive", "delete", "keep"],
    "backend": ["auto", "openvino", "torch"],
    "device": ["auto", "cpu", "cuda"],
    "precision": ["auto", "fp32", "bf16", "fp16"],
    "duplicate_content": ["skip", "process"],
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _help(name: str) -> str:
    return f"overrides `{name}` (env RESTORER_{name.upper()})"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the watch-folder daemon (watcher, worker, status page and API)",
        description="Precedence: defaults < --config FILE < RESTORER_* environment < these flags.",
    )
    parser.add_argument("--config", type=Path, help="TOML settings file (see config/restorer.example.toml)")
    for name in PATH_FLAGS:
        parser.add_argument(_flag(name), dest=name, type=Path, metavar="DIR", help=_help(name))
    for name, kind in VALUE_FLAGS.items():
        parser.add_argument(
            _flag(name), dest=name, type=kind, metavar=kind.__name__.upper(), help=_help(name)
        )
    for name, choices in CHOICE_FLAGS.items():
        parser.add_argument(_flag(name), dest=name, choices=choices, help=_help(name))
    parser.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace):  # -> Settings (import kept inside for a fast --help)
    from daemon.settings import Settings

    flags = {name: getattr(args, name, None) for name in [*PATH_FLAGS, *VALUE_FLAGS, *CHOICE_FLAGS]}
    return Settings.load(args.config, **flags)


def run(args: argparse.Namespace) -> int:
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
    return asyncio.run(serve(settings))

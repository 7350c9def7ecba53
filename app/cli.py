"""`restorer`: the one console script. Each subcommand lives in app/commands/<name>.py and exposes
`add_parser(subparsers)` and `run(args) -> int`. Heavy imports (torch, openvino) happen inside `run`,
so `restorer --help` and `restorer jobs list` stay instant."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from daemon.logs import configure_logging

COMMANDS = ["serve", "restore", "weights", "jobs", "queue", "eval", "bench", "cluster"]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: only the named command's module is imported (the store and SQLAlchemy for
    `jobs`, aiohttp for `serve` stay out of a `restorer restore` start-up: docs/performance.md); every
    command's when none is named (`restorer --help`)."""
    parser = argparse.ArgumentParser(prog="restorer", description="Neural Image Restore")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    named = next((arg for arg in argv or [] if not arg.startswith("-")), None)
    for name in [named] if named in COMMANDS else COMMANDS:
        module = importlib.import_module(f"app.commands.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    configure_logging(
        logging.DEBUG if args.verbose else logging.INFO, "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""`restorer`: the one console script. Each subcommand lives in app/commands/<name>.py and exposes
`add_parser(subparsers)` and `run(args) -> int`. Heavy imports (torch, openvino) happen inside `run`,
so `restorer --help` and `restorer jobs list` stay instant."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from daemon.logs import configure_logging

COMMANDS = ["serve", "restore", "weights", "jobs", "eval", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="restorer", description="Neural Image Restore")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"app.commands.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(
        logging.DEBUG if args.verbose else logging.INFO, "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

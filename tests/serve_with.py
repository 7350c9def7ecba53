"""Tests-only launcher: `restorer serve` with another per-job stage in the worker process.

    python -m tests.serve_with tests.daemon_processors:CopyProcessor [-v] serve --config FILE ...

The daemon itself never reads a processor from its settings or environment: a production
`restorer serve` always runs the real pipeline. This launcher is how a test runs the real service,
as a real process, around a cheap stage (the factory is passed to the worker process by reference).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from app.cli import build_parser
from app.commands import serve as serve_command
from daemon import beneath
from daemon.job_loop import ProcessorFactory


def load_factory(spec: str) -> ProcessorFactory:
    module_name, _, attribute = spec.partition(":")
    factory: ProcessorFactory = getattr(importlib.import_module(module_name), attribute)
    return factory


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    factory = load_factory(argv[0])
    args = build_parser().parse_args(argv[1:])
    if args.command != "serve":
        print("tests.serve_with runs only the serve command", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger(__name__).warning("worker stage: %s (test launcher, not the real pipeline)", argv[0])
    if os.environ.get("TESTS_NO_OPENAT2") == "1":  # as on a kernel (or seccomp profile) without openat2
        beneath.use_openat2(False)
        logging.getLogger(__name__).warning("folders resolved with the O_NOFOLLOW chain, not openat2")
    return serve_command.run(args, processor_factory=factory)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

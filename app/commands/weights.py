"""`restorer weights`: which models are usable here, where their weights come from, and what to do.

States: available (a user file in the weights folder), converted (embedded ncnn weights already converted
into the state directory's cache), embedded (converted automatically on first use), missing (the user must
add the official file; the line says which and where it comes from), refused (a model file of the user's
that spandrel does not recognise, that would run code when loaded, or that OpenVINO cannot convert: the
reason is printed). Any model file spandrel recognises is listed with its architecture, scale, size and
sha256 (pipeline/user_models.py). Nothing is downloaded, except by
`restorer weights fetch NAME...`, which the user runs (app/weights_fetch.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from app.flags import command_parser, settings_from_args

if TYPE_CHECKING:
    from pipeline import ModelStatus


def add_parser(sub: argparse._SubParsersAction) -> None:
    summary = "list models: available / converted / missing, source, license, what to do"
    parser = command_parser(sub, "weights", summary, ("weights_dir", "state_dir"))
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(run=run)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    fetch = command_parser(
        actions,
        "fetch",
        "download official weight files (e.g. GFPGANv1.4) into the weights folder",
        ("weights_dir",),
        description="Download official weight files into the weights folder: progress, resume after a "
        "cut connection, sha256 checked before the file appears under its real name.",
    )
    fetch.add_argument("names", nargs="+", metavar="NAME", help="model ids, as `restorer weights` lists them")
    fetch.add_argument(
        "--mirror",
        default=None,
        metavar="URL",
        help="base URL of a mirror holding the same file names (default: the official release URLs)",
    )
    fetch.set_defaults(run=run_fetch)


def run(args: argparse.Namespace) -> int:
    from pipeline import model_statuses

    settings = settings_from_args(args)
    statuses = model_statuses(settings.weights_dir, settings.cache_dir)
    if args.json:
        print(json.dumps([status.to_dict() for status in statuses], indent=2))
        return 0
    print(f"weights folder: {settings.weights_dir}    conversion cache: {settings.cache_dir / 'weights'}")
    header = ("MODEL", "PURPOSE", "STATE", "SOURCE", "LICENSE")
    rows = [(s.spec.id, _purpose(s), s.state, s.source, s.spec.license) for s in statuses]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print(_line(header, widths))
    for row, status in zip(rows, statuses, strict=True):
        print(_line(row, widths))
        if status.spec.user:
            print(f"    {_user_facts(status)}")
        if status.reason:
            print(f"    refused: {status.reason}")
        if status.action:
            print(f"    -> {status.action}")
    default = next((s for s in statuses if s.spec.id == settings.model), None)
    if default is None or default.state in ("missing", "refused"):
        what = "unknown" if default is None else default.state
        print(f"\nthe configured model {settings.model} is {what}: restores will fail until it is added")
        return 1
    return 0


def _user_facts(status: ModelStatus) -> str:
    """A user file's line: what spandrel found, its size and sha256 (to compare with where it came from)."""
    found = f"{status.spec.arch} x{status.spec.scale}" if status.spec.arch else "not recognised"
    size = f"{(status.size_bytes or 0) / 1e6:.1f} MB"
    return f"{found}, {size}, sha256 {status.sha256}, licence: {status.spec.license}"


def run_fetch(args: argparse.Namespace) -> int:
    from app.weights_fetch import FetchError, fetch
    from pipeline import UnknownModelError, get_spec

    settings = settings_from_args(args)
    try:
        specs = [get_spec(name) for name in args.names]
    except UnknownModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failed = 0
    for spec in specs:
        try:
            result = fetch(spec, settings.weights_dir, mirror=args.mirror, progress=sys.stderr)
        except FetchError as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
            continue
        verb = "downloaded" if result.downloaded else "already there"
        print(f"{spec.id}: {verb}: {result.path} (sha256 {result.sha256[:16]}..., official)")
    if failed == 0 and any(spec.purpose == "face" for spec in specs):
        print("face restoration uses it from the next job (the status page's list updates after a restart)")
    return 1 if failed else 0


def _line(cells: tuple[str, ...], widths: list[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def _purpose(status: ModelStatus) -> str:
    return "-" if status.state == "refused" else status.spec.purpose

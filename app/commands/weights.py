"""`restorer weights`: which models are usable here, where their weights come from, and what to do.

States: available (a user file in the weights folder), converted (embedded ncnn weights already converted
into the state directory's cache), embedded (converted automatically on first use), missing (the user must
add the official file; the line says which and where it comes from), refused (a model file of the user's
that spandrel does not recognise, that would run code when loaded, or that OpenVINO cannot convert: the
reason is printed). Any model file spandrel recognises is listed with its architecture, scale, size and
sha256 (pipeline/user_models.py). Nothing is downloaded, except by `restorer weights fetch NAME...`, which
the user runs (app/weights_fetch.py). `restorer weights convert` makes the OpenVINO IR of the weights
present now, where torch is installed (the torch-free container image cannot convert; its converter
service runs this, docs/deploy.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from app.flags import command_parser, settings_from_args

if TYPE_CHECKING:
    from pipeline import ModelStatus


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    convert = command_parser(
        actions,
        "convert",
        "convert weight files to OpenVINO IR now, into the cache the daemon reads (needs torch)",
        ("weights_dir", "state_dir"),
        description="Convert weights to OpenVINO IR ahead of use, as the worker would on first use: for "
        "a daemon without torch (the container image), run this where torch is installed, on the same "
        "weights folder and state folder.",
    )
    convert.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="model ids, or MTCNN for the face detector (default: every weight file in the weights folder)",
    )
    convert.set_defaults(run=run_convert)


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
    by_id = {status.spec.id: status for status in statuses}
    unusable = [
        (model_id, by_id[model_id].state if model_id in by_id else "unknown")
        for model_id in settings.model
        if model_id not in by_id or by_id[model_id].state in ("missing", "refused")
    ]
    for model_id, what in unusable:
        print(f"\nthe configured model {model_id} is {what}: restores will fail until it is added")
    return 1 if unusable else 0


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


def run_convert(args: argparse.Namespace) -> int:
    from pipeline import RestoreError, UnknownModelError, convert_ahead, get_spec, model_statuses

    settings = settings_from_args(args)
    engine, options = settings.engine_config(), settings.restore_options()
    if args.names:
        try:
            names = [
                name if name == "MTCNN" else get_spec(name, settings.weights_dir, settings.cache_dir).id
                for name in args.names
            ]
        except UnknownModelError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    else:
        statuses = model_statuses(settings.weights_dir, settings.cache_dir)
        # The user's own files: the embedded networks and the face detector ship converted with a
        # torch-free installation, and are converted on first use by one with torch.
        names = [
            s.spec.id for s in statuses if s.state == "available" and s.spec.purpose != "denoise-companion"
        ]
    if not names:
        print(f"no weight files in {settings.weights_dir}: nothing to convert")
    failed = 0
    for name in names:
        try:
            print(f"{name}: {convert_ahead(name, engine, options)}", flush=True)
        except RestoreError as error:
            print(f"error: {name}: {error}", file=sys.stderr)
            failed += 1
    folder = settings.cache_dir / "openvino" / "ir"
    print(f"OpenVINO IR in {folder}; the daemon uses it from its next model load")
    return 1 if failed else 0


def _line(cells: tuple[str, ...], widths: list[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def _purpose(status: ModelStatus) -> str:
    return "-" if status.state == "refused" else status.spec.purpose

"""Command-line flags made from the one settings model (daemon.Settings).

Each command lists the Settings fields it takes (`command_parser(sub, name, summary, FIELDS)`): every
field becomes a flag named after it (`state_dir` -> `--state-dir`) with its type (a Literal gives
choices; int, float, str, Path; a bool gives `--x` and `--no-x`) and its description as help, plus
`--config FILE`. `settings_from_args(args)` then builds Settings with the same precedence everywhere:
defaults < --config FILE < RESTORER_* environment < flags (a flag not given changes nothing).
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo

from daemon import Settings

# Spellings older than the generated ones; scripts use them, so they keep working.
EXTRA_SPELLINGS: dict[str, tuple[str, ...]] = {
    "output_format": ("--format",),
    "denoise_strength": ("--denoise",),
    "faces": ("--no-face",),
}
# What commands that run the engine on their own (bench, eval) take.
ENGINE_FIELDS = ("model", "backend", "precision", "tile")
SCALAR_TYPES: dict[type, str] = {int: "N", float: "X", str: "TEXT", Path: "DIR"}  # type -> metavar


PRECEDENCE = "Precedence: defaults < --config FILE < RESTORER_* environment < these flags."


def command_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    fields: Sequence[str],
    description: str = PRECEDENCE,
) -> argparse.ArgumentParser:
    """A subcommand's parser with the settings flags it takes (see add_settings_flags)."""
    parser = sub.add_parser(
        name, help=summary, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_settings_flags(parser, fields)
    return parser


def add_settings_flags(parser: argparse.ArgumentParser, fields: Sequence[str]) -> None:
    """Add `--config` and one flag per named Settings field; settings_from_args reads them back."""
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML settings file (see config/restorer.example.toml)"
    )
    for name in fields:
        _add_field_flag(parser, name, Settings.model_fields[name])
    parser.set_defaults(settings_fields=tuple(fields))


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from --config, the environment and the flags a command declared (unset ones: None)."""
    flags = {name: getattr(args, name) for name in args.settings_fields}
    return Settings.load(args.config, **flags)


def _add_field_flag(parser: argparse.ArgumentParser, name: str, field: FieldInfo) -> None:
    kind = _without_none(field.annotation)
    spellings = ["--" + name.replace("_", "-"), *EXTRA_SPELLINGS.get(name, ())]
    help_text = f"{field.description} [RESTORER_{name.upper()}]"
    if kind is bool:
        _add_bool_flags(parser, name, spellings, help_text)
    elif get_origin(kind) is Literal:
        parser.add_argument(*spellings, dest=name, choices=get_args(kind), help=help_text)
    elif _number_or_word(kind):  # e.g. `int | Literal["auto"]`: the settings model parses the text
        words = "|".join(w for arg in get_args(kind) if get_origin(arg) is Literal for w in get_args(arg))
        parser.add_argument(*spellings, dest=name, type=str, metavar=f"N|{words}", help=help_text)
    elif get_origin(kind) is tuple:  # a list setting (the model chain): "A,B", split by the settings model
        parser.add_argument(*spellings, dest=name, type=str, metavar="ID[,ID...]", help=help_text)
    elif kind in SCALAR_TYPES:
        metavar = "FILE" if name.endswith("_file") else SCALAR_TYPES[kind]  # a Path is a folder unless named
        parser.add_argument(*spellings, dest=name, type=kind, metavar=metavar, help=help_text)
    else:
        raise TypeError(f"settings field {name} ({field.annotation}) has no command-line form")


def _add_bool_flags(parser: argparse.ArgumentParser, name: str, spellings: list[str], help_text: str) -> None:
    # Two flags on one dest, so "not given" stays None and the file or environment decides.
    negative = [s for s in spellings if s.startswith("--no-")]
    positive = [s for s in spellings if not s.startswith("--no-")]
    negative.insert(0, "--no-" + positive[0].removeprefix("--"))
    parser.add_argument(*positive, dest=name, action="store_const", const=True, help=help_text)
    parser.add_argument(
        *negative, dest=name, action="store_const", const=False, help=f"the opposite of {positive[0]}"
    )


def _number_or_word(kind: Any) -> bool:
    if get_origin(kind) not in (Union, types.UnionType):
        return False
    args = get_args(kind)
    return int in args and all(arg is int or get_origin(arg) is Literal for arg in args)


def _without_none(annotation: Any) -> Any:
    """`int | None` -> int; anything else unchanged."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [arg for arg in get_args(annotation) if arg is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation

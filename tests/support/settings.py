"""Settings for a daemon under a test's root folder: its five folders, loopback on ports the OS picks,
and intervals short enough that a file is picked up in well under a second."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from daemon.settings import Settings

FOLDERS = {
    "inbox": "inbox",
    "outbox": "outbox",
    "failed_dir": "failed",
    "archive_dir": "archive",
    "state_dir": "state",
}
LOOPBACK = {"bind": "127.0.0.1", "api_port": 0, "site_port": 0}
QUICK_TIMINGS = {
    "stability_seconds": 0.3,
    "poll_seconds": 0.2,
    "rescan_seconds": 600,
    "heartbeat_seconds": 0.5,
    "min_free_mb": 0,  # a full test disk must not pause the queue
}


def folders(root: Path) -> dict[str, Path]:
    """The daemon's folders under root, by setting name (not made)."""
    return {name: root / folder for name, folder in FOLDERS.items()}


def make_folders(root: Path) -> dict[str, Path]:
    made = folders(root)
    for folder in made.values():
        folder.mkdir(parents=True, exist_ok=True)
    return made


def make_settings(root: Path, **overrides: Any) -> Settings:
    """Settings on root's folders, loopback, quick timings; overrides win. The four photo folders are made
    (the state folder is the daemon's to make)."""
    settings = Settings.load(None, **{**folders(root), **LOOPBACK, **QUICK_TIMINGS, **overrides})
    for folder in (settings.inbox, settings.outbox, settings.failed_dir, settings.archive_dir):
        Path(folder).mkdir(parents=True, exist_ok=True)
    return settings


def serve_config(root: Path, *, quick: bool = True, **overrides: Any) -> str:
    """The restorer.toml of make_settings (quick=False: the production intervals), for `restorer serve`."""
    values: dict[str, Any] = {**folders(root), **LOOPBACK, **(QUICK_TIMINGS if quick else {}), **overrides}
    return "".join(f"{name} = {_toml(value)}\n" for name, value in values.items())


def _toml(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # strings, numbers and lists of them read the same in TOML

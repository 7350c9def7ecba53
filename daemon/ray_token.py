"""The Ray cluster's shared token: one home for how it is checked and handed to Ray.

Ray (2.60) authenticates every gRPC call to its control plane (GCS, raylets, workers) with a token when
RAY_AUTH_MODE=token: a process reads it from RAY_AUTH_TOKEN, else from the file RAY_AUTH_TOKEN_PATH names,
else ~/.ray/auth_token. Here it is always the file (`ray_token_file`): the token's text never travels in
an environment variable (readable in /proc/<pid>/environ), on a command line or in a log; only the path
does. Every machine of the cluster holds the same file. A node or driver without it cannot join or call
anything: the GCS answers "InvalidAuthToken" (tests/test_ray_token.py).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import MutableMapping
from pathlib import Path

from daemon.settings import read_secret_file

MIN_RAY_TOKEN_CHARS = 16
MAKE_A_TOKEN = (
    "make one with `restorer cluster token FILE` (or `(umask 077; openssl rand -hex 32 > FILE)`) and copy "
    "the same file to every machine of the cluster"
)


class RayTokenError(Exception):
    """The Ray token file is missing, unreadable, empty or too short. The message never holds the token."""


def check_ray_token(path: Path | None) -> Path:
    """The token file, checked: readable, and holding at least MIN_RAY_TOKEN_CHARS characters."""
    if path is None:
        raise RayTokenError(f"the Ray cluster needs a token: set ray_token_file; {MAKE_A_TOKEN}")
    try:
        text = read_secret_file(path, "ray_token_file")  # the one reader of `*_file` secrets
    except ValueError as exc:
        raise RayTokenError(f"the Ray token: {exc}; {MAKE_A_TOKEN}") from None
    if len(text) < MIN_RAY_TOKEN_CHARS:
        raise RayTokenError(
            f"the Ray token file {path} holds only {len(text)} characters (at least {MIN_RAY_TOKEN_CHARS} "
            f"needed); {MAKE_A_TOKEN}"
        )
    return path


def ray_auth_env(path: Path) -> dict[str, str]:
    """What a Ray process (node, driver) needs in its environment to use the token in `path`."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path.resolve())}


def use_ray_token(path: Path | None, environ: MutableMapping[str, str] = os.environ) -> None:
    """Set up `environ` (before Ray is imported) so Ray authenticates with the token file, and only it:
    a RAY_AUTH_TOKEN inherited from elsewhere would win over the file in Ray's loader."""
    checked = check_ray_token(path)
    environ.pop("RAY_AUTH_TOKEN", None)
    environ.update(ray_auth_env(checked))


def write_new_token(path: Path) -> None:
    """A new random token in a new file only its owner may read (never overwrites one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(secrets.token_hex(32) + "\n")

"""`restorer weights fetch`: download official weight files into the weights folder, on the user's request.

This is the only code in the project that downloads weights, and only the user runs it (the daemon never
does). For each model: the official URL from the registry (pipeline/models.py), or the same file name under
a mirror; the bytes go into `.<name>.part` beside the target, resumed with an HTTP Range request after a cut
connection (also in a later run); the sha256 is checked against the registry; only then is the file fsynced
and renamed to its real name. A wrong file is deleted: nothing unverified is ever left under a name the
daemon loads.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import BinaryIO, TextIO

from pipeline import ModelSpec

CHUNK = 1 << 20
ATTEMPTS = 4  # one download plus three resumes after a cut connection, within one run
TIMEOUT_SECONDS = 60  # per read: a stalled connection counts as cut


class FetchError(Exception):
    """A download that could not be completed or verified; the message says what to do."""


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    downloaded: bool  # False: the verified file was already there


def source_url(spec: ModelSpec, mirror: str | None) -> str:
    """The official URL, or the same file name under a mirror's base URL."""
    if mirror is None:
        return spec.source_url
    return f"{mirror.rstrip('/')}/{spec.source_url.rsplit('/', 1)[-1]}"


def fetch(
    spec: ModelSpec,
    weights_dir: Path,
    *,
    mirror: str | None = None,
    progress: TextIO | None = None,  # where the progress bar goes (the CLI passes stderr)
    attempts: int = ATTEMPTS,
    pause: Callable[[float], None] = time.sleep,
) -> Fetched:
    """Download `spec`'s official file into weights_dir (see the module docstring)."""
    if spec.sha256 is None:
        raise FetchError(
            f"{spec.id}: no verified sha256 is known for this file, so it cannot be fetched safely; "
            f"download it yourself from {spec.source_url} into {weights_dir}/"
        )
    name = spec.filenames[0]
    target, part = weights_dir / name, weights_dir / f".{name}.part"
    if target.exists():
        actual = _sha256_of(target)
        if actual == spec.sha256:
            return Fetched(target, actual, downloaded=False)
        raise FetchError(
            f"{target} exists but is not the official file (sha256 {actual[:16]}...); "
            "move it away to fetch the official one"
        )
    weights_dir.mkdir(parents=True, exist_ok=True)
    url = source_url(spec, mirror)
    for attempt in range(1, attempts + 1):
        try:
            _download(url, part, progress, label=name)
            break
        except (OSError, HTTPException) as error:  # URLError, timeouts and resets are OSErrors
            if isinstance(error, urllib.error.HTTPError) and error.code not in (408, 429, 500, 502, 503, 504):
                part.unlink(missing_ok=True)
                raise FetchError(f"{url}: HTTP {error.code} {error.reason}") from None
            if attempt == attempts:
                have = part.stat().st_size if part.exists() else 0
                raise FetchError(
                    f"{url}: {error}; {have} bytes kept in {part}: run the same command again to resume"
                ) from None
            _say(progress, f"\n{name}: connection lost ({error}); resuming (try {attempt + 1}/{attempts})\n")
            pause(min(2.0 * attempt, 10.0))
    actual = _sha256_of(part)
    if actual != spec.sha256:
        part.unlink()
        raise FetchError(
            f"{name} from {url} has sha256 {actual}, expected {spec.sha256}: deleted, nothing was written. "
            "The server sent a different file (a wrong mirror, or the release changed)."
        )
    _publish(part, target)
    return Fetched(target, actual, downloaded=True)


def _download(url: str, part: Path, progress: TextIO | None, *, label: str) -> None:
    """Fill `part` with the whole file, continuing from its current size when the server allows."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "neural-image-restore weights fetch"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing after `have`: the part is already complete
            return
        raise
    with response:
        resumed = response.status == 206 and _range_start(response.headers.get("Content-Range")) == have
        if have and not resumed:
            have = 0  # the server ignored the Range request: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with part.open("ab" if resumed else "wb") as sink:
            _copy(response, sink, have, total, progress, label)
    if total is not None and part.stat().st_size < total:
        raise ConnectionResetError(f"the connection closed after {part.stat().st_size} of {total} bytes")


def _copy(
    source: BinaryIO, sink: BinaryIO, have: int, total: int | None, progress: TextIO | None, label: str
) -> None:
    shown = 0.0
    while block := source.read(CHUNK):
        sink.write(block)
        have += len(block)
        if progress is not None and time.monotonic() - shown > 0.5:
            shown = time.monotonic()
            _say(progress, _bar(label, have, total))
    if progress is not None:
        _say(progress, _bar(label, have, total) + "\n")


def _bar(label: str, have: int, total: int | None) -> str:
    if not total:
        return f"\r{label}: {have / 1e6:.1f} MB"
    done = have / total
    filled = int(done * 30)
    bar = "#" * filled + "." * (30 - filled)
    return f"\r{label}: [{bar}] {done:6.1%} {have / 1e6:.1f}/{total / 1e6:.1f} MB"


def _say(stream: TextIO | None, text: str) -> None:
    if stream is not None:
        stream.write(text)
        stream.flush()


def _range_start(content_range: str | None) -> int | None:
    """The first byte of `bytes START-END/TOTAL`, or None."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    start = content_range[6:].split("-", 1)[0]
    return int(start) if start.isdigit() else None


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _publish(part: Path, target: Path) -> None:
    """fsync the verified file, rename it into place, fsync the folder: a crash leaves old or new."""
    with part.open("rb") as handle:
        os.fsync(handle.fileno())
    part.chmod(0o644)
    os.replace(part, target)
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)

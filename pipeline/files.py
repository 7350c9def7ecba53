"""Files the pipeline writes into its cache (converted weights, OpenVINO IR, their records): hashed the
same way and written atomically the same way, so a crash never leaves a half file under a real name."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_target(target: Path) -> Iterator[Path]:
    """A temporary path beside `target` to write to; renamed onto `target` when the block succeeds,
    removed when it fails. Beside it (same folder, same file system) so the rename is atomic; the pid
    in the name keeps two processes converting the same thing from writing into one file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.stem}.{os.getpid()}.tmp{target.suffix}")
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(target: Path, text: str) -> None:
    with atomic_target(target) as temporary:
        temporary.write_text(text)

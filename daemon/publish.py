"""Putting files where people look, without anyone ever seeing half of one.

publish_bytes: write a temp file in the destination folder (same filesystem), fsync it, give it the
configured mode and group (fchmod, so the umask does not matter), link it to its final name, fsync the
folder. The final name never overwrites: a taken name gets " (1)", " (2)", ... before the extension.
The no-overwrite step is os.link (atomic, fails if the name exists); shares that refuse hard links
(some SMB servers) fall back to an existence check + os.replace.

move_file: move an original (archive, failed dir) with the same no-overwrite rule; across filesystems
it copies through publish's temp-file protocol, then removes the source.

Temp files are named TEMP_PREFIX + random hex; they start with a dot, so the watcher ignores them in
the inbox, and remove_stale_temp_files clears what a crash left behind.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from daemon.beneath import NotAFileError, ensure_folder_beneath, kind_of
from daemon.names import NAME_MAX_BYTES, safe_file_name, split_extension

TEMP_PREFIX = ".restorer-tmp-"
COPY_CHUNK = 1024 * 1024
_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class PublishError(OSError):
    """A file could not be published or moved; str(e) says which and why."""


class DiskFullError(PublishError):
    """The destination filesystem is full (ENOSPC or quota). `needed_bytes`: what we tried to write."""

    def __init__(self, message: str, needed_bytes: int) -> None:
        super().__init__(errno.ENOSPC, message)
        self.needed_bytes = needed_bytes

    def __str__(self) -> str:
        return str(self.strerror)


def resolve_group(group: str | None) -> int | None:
    """A group name or number -> gid (None: leave the group alone). Raises ValueError if unknown."""
    if group is None or group == "":
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"output group {group!r} does not exist on this machine") from None


def dir_mode_for(file_mode: int) -> int:
    """Folders we create: the file mode plus x wherever it grants r, so share users can enter them."""
    return file_mode | ((file_mode & 0o444) >> 2)


def ensure_dir(path: Path, mode: int | None = None, gid: int | None = None) -> None:
    """mkdir -p, giving each folder we create the mode and group (existing ones are left alone)."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        if mode is not None:
            os.chmod(folder, dir_mode_for(mode))
        if gid is not None:
            os.chown(folder, -1, gid)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # some network filesystems refuse; harmless
            raise
    finally:
        os.close(fd)


def _fit_name(stem: str, suffix: str) -> str:
    """stem + suffix, cutting the stem (on a character boundary) to fit NAME_MAX bytes."""
    budget = NAME_MAX_BYTES - len(suffix.encode())
    encoded = stem.encode()
    if len(encoded) > budget:
        stem = encoded[:budget].decode("utf-8", errors="ignore")
    return stem + suffix


def candidate_names(name: str) -> Iterator[str]:
    """name, then 'stem (1).ext', 'stem (2).ext', ... each within NAME_MAX bytes.

    The name first goes through daemon.names' rules: names come from share users and uploaders, and
    the folders are SMB shares (no control characters, no reserved Windows names, <= 255 bytes)."""
    stem, ext = split_extension(safe_file_name(name))
    yield _fit_name(stem, ext)
    number = 1
    while True:
        yield _fit_name(stem, f" ({number}){ext}")
        number += 1


def _temp_path(dest_dir: Path) -> Path:
    return dest_dir / f"{TEMP_PREFIX}{secrets.token_hex(8)}"


def _disk_full(exc: OSError, where: Path, needed: int) -> DiskFullError:
    return DiskFullError(f"no space left on the filesystem of {where} (needed {needed} bytes)", needed)


def _link_no_overwrite(temp: Path, dest_dir: Path, name: str) -> Path:
    """Give `temp` the first free name from candidate_names(name); remove `temp`."""
    for candidate in candidate_names(name):
        final = dest_dir / candidate
        try:
            os.link(temp, final)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in _NO_HARDLINKS:
                raise
            if final.exists() or final.is_symlink():
                continue
            os.replace(temp, final)  # no hard links here: check-then-replace (a tiny race we accept)
            return final
        os.unlink(temp)
        return final
    raise AssertionError("unreachable")


def publish_bytes(
    data: bytes, dest_dir: Path, name: str, mode: int, group: str | None, *, root: Path | None = None
) -> Path:
    """Atomically create dest_dir/name (or a free variant) holding `data`; return its path.

    root: the folder dest_dir lies in (outbox, failed, archive): no folder between them may be a
    symlink (share users can plant one), so nothing is ever written outside root."""
    return _publish(dest_dir, name, mode, group, len(data), lambda fd: _write_all(fd, data), root)


def publish_file(
    source: BinaryIO,
    dest_dir: Path,
    name: str,
    mode: int,
    group: str | None,
    *,
    root: Path | None = None,
) -> Path:
    """publish_bytes for data too big to hold in memory (an upload spooled to disk, a large restored
    output encoded into a scratch file), copied in chunks."""

    def copy(fd: int) -> None:
        source.seek(0)
        while chunk := source.read(COPY_CHUNK):
            _write_all(fd, chunk)

    return _publish(dest_dir, name, mode, group, os.fstat(source.fileno()).st_size, copy, root)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _publish(
    dest_dir: Path,
    name: str,
    mode: int,
    group: str | None,
    size: int,
    write: Callable[[int], None],
    root: Path | None = None,
) -> Path:
    gid = resolve_group(group)
    _ensure_dir_within(root, dest_dir, mode, gid)
    temp = _temp_path(dest_dir)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write(fd)
            os.fsync(fd)
            os.fchmod(fd, mode)  # after writing: the umask never applies to fchmod
            if gid is not None:
                os.fchown(fd, -1, gid)
        finally:
            os.close(fd)
        final = _link_no_overwrite(temp, dest_dir, name)
        fsync_dir(dest_dir)
        return final
    except OSError as exc:
        _remove_quietly(temp)
        if exc.errno in _DISK_FULL:
            raise _disk_full(exc, dest_dir, size) from exc
        raise
    except BaseException:
        _remove_quietly(temp)
        raise


def _ensure_dir_within(root: Path | None, dest_dir: Path, mode: int | None, gid: int | None) -> None:
    if root is None:
        ensure_dir(dest_dir, mode, gid)
        return
    try:
        ensure_folder_beneath(root, dest_dir, mode, gid)
    except NotAFileError as exc:
        raise PublishError(
            exc.errno, f"refused to write into {dest_dir}: {exc.strerror} (a link planted in the share?)"
        ) from None


def move_file(
    src: Path,
    dest_dir: Path,
    name: str,
    mode: int | None = None,
    group: str | None = None,
    *,
    root: Path | None = None,
) -> Path:
    """Move the regular file `src` to dest_dir/name (or a free variant) without overwriting; works across
    filesystems. A symlink is never followed (the link itself would be moved; callers remove those)."""
    gid = resolve_group(group)
    _ensure_dir_within(root, dest_dir, mode, gid)
    for candidate in candidate_names(name):
        final = dest_dir / candidate
        try:
            os.link(src, final, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno == errno.EXDEV or exc.errno in _NO_HARDLINKS:
                return _copy_then_remove(src, dest_dir, name, mode, group)
            raise
        os.unlink(src)
        fsync_dir(dest_dir)
        return final
    raise AssertionError("unreachable")


def _copy_then_remove(src: Path, dest_dir: Path, name: str, mode: int | None, group: str | None) -> Path:
    gid = resolve_group(group)
    temp = _temp_path(dest_dir)
    try:
        # O_NOFOLLOW + fstat: what is copied is the regular file itself, never what a link points at.
        source_fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(source_fd, "rb") as source, open(temp, "xb") as target:
            if not stat.S_ISREG(os.fstat(source_fd).st_mode):
                raise NotAFileError(str(src), kind_of(os.fstat(source_fd).st_mode))
            shutil.copyfileobj(source, target, 1024 * 1024)
            target.flush()
            os.fsync(target.fileno())
        shutil.copystat(src, temp, follow_symlinks=False)
        if mode is not None:
            os.chmod(temp, mode)
        if gid is not None:
            os.chown(temp, -1, gid)
        final = _link_no_overwrite(temp, dest_dir, name)
        fsync_dir(dest_dir)
    except OSError as exc:
        _remove_quietly(temp)
        if exc.errno in _DISK_FULL:
            raise _disk_full(exc, dest_dir, src.stat().st_size) from exc
        raise
    os.unlink(src)  # only once the copy is safely in place
    return final


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def remove_stale_temp_files(root: Path) -> int:
    """Delete temp files a crash left under `root` (an explicit stack, never recursion: a share user's
    1,000-deep folder must not stop the service from starting; symlinked folders are not entered)."""
    removed = 0
    if not root.is_dir():
        return 0
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.name.startswith(TEMP_PREFIX):
                _remove_quietly(Path(entry.path))
                removed += 1
    return removed


def free_bytes(path: Path) -> int:
    """Free bytes for an unprivileged writer on the filesystem holding `path`."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize

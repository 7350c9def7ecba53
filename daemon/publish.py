"""Putting files where people look, without anyone ever seeing half of one, and never through a link.

publish_bytes: write a temp file in the destination folder (same filesystem), fsync it, give it the
configured mode and group (fchmod, so the umask does not matter), link it to its final name, fsync the
folder. The final name never overwrites: a taken name gets " (1)", " (2)", ... before the extension.
The no-overwrite step is a hard link (atomic, fails if the name exists); shares that refuse hard links
(some SMB servers) fall back to renameat2(RENAME_NOREPLACE), or an existence check + rename.

move_file: move an original (to archive/ or failed/) with the same no-overwrite rule, only if it is still
the file that was read (device + inode); across filesystems it copies through the temp-file protocol, then
removes the source.

Every step acts on folder descriptors from daemon.beneath, reached from the configured root without
following a link: a folder a share user swaps for a link at any moment is never written through.

Temp files are named TEMP_PREFIX + random hex; they start with a dot, so the watcher ignores them in
the inbox, and remove_stale_temp_files clears what a crash left behind.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from daemon.beneath import (
    FileIdentity,
    Folder,
    NotAFileError,
    ReplacedError,
    free_bytes,
    kind_of,
    make_root,
    open_folder,
    open_parent,
    walk,
)
from daemon.names import NAME_MAX_BYTES, safe_file_name, split_extension

__all__ = [
    "COPY_CHUNK",
    "TEMP_PREFIX",
    "DiskFullError",
    "PublishError",
    "Published",
    "ReplacedError",
    "candidate_names",
    "free_bytes",
    "move_file",
    "publish_bytes",
    "publish_file",
    "remove_stale_temp_files",
    "resolve_group",
]

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


@dataclass(frozen=True)
class Published:
    """Where a file was published, and which file it is (what a later move or delete must find there)."""

    path: Path
    identity: FileIdentity
    mtime: float  # as os.stat gives it, what the intake compares


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


def _disk_full(where: Path, needed: int) -> DiskFullError:
    return DiskFullError(f"no space left on the filesystem of {where} (needed {needed} bytes)", needed)


def _link_no_overwrite(folder: Folder, temp: str, name: str) -> str:
    """Give the file `temp` in `folder` the first free name from candidate_names(name); `temp` goes."""
    for candidate in candidate_names(name):
        try:
            folder.link_from(folder, temp, candidate)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in _NO_HARDLINKS:
                raise
            try:
                folder.rename_from(folder, temp, candidate)  # no hard links here: rename, never replacing
            except FileExistsError:
                continue
            return candidate
        folder.unlink(temp)
        return candidate
    raise AssertionError("unreachable")


def _destination(root: Path | None, dest_dir: Path, mode: int | None, gid: int | None) -> Folder:
    """The folder to publish into, made if missing. root: the configured folder dest_dir lies in (outbox,
    failed, archive, inbox): nothing between them may be a link. None: dest_dir is itself a folder someone
    chose (restore -o), made by its path."""
    if root is None:
        make_root(dest_dir, mode, gid)
        return open_folder(dest_dir)
    try:
        return open_folder(root, dest_dir.relative_to(root).as_posix(), create=True, mode=mode, gid=gid)
    except NotAFileError as exc:
        raise PublishError(
            exc.errno, f"refused to write into {dest_dir}: {exc.strerror} (a link planted in the share?)"
        ) from None
    except ValueError:
        raise PublishError(errno.EXDEV, f"{dest_dir} is not inside {root}") from None


def publish_bytes(
    data: bytes, dest_dir: Path, name: str, mode: int, group: str | None, *, root: Path | None = None
) -> Path:
    """Atomically create dest_dir/name (or a free variant) holding `data`; return its path.

    root: the folder dest_dir lies in (outbox, failed, archive, inbox): no folder between them may be a
    link (share users can plant one, or swap one in at any moment), so nothing is written outside root."""
    return _publish(dest_dir, name, mode, group, len(data), lambda fd: _write_all(fd, data), root).path


def publish_file(
    source: IO[bytes], dest_dir: Path, name: str, mode: int, group: str | None, *, root: Path | None = None
) -> Published:
    """publish_bytes for data too big to hold in memory (an upload spooled to disk, a large restored
    output encoded into a scratch file), copied in chunks."""

    def copy(fd: int) -> None:
        source.seek(0)
        while chunk := source.read(COPY_CHUNK):
            _write_all(fd, chunk)

    return _publish(dest_dir, name, mode, group, os.fstat(source.fileno()).st_size, copy, root)


def _write_all(fd: int, data: bytes | memoryview) -> None:
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
) -> Published:
    gid = resolve_group(group)
    written: list[os.stat_result] = []

    def fill(fd: int) -> None:
        write(fd)
        os.fsync(fd)
        os.fchmod(fd, mode)  # after writing: the umask never applies to fchmod
        if gid is not None:
            os.fchown(fd, -1, gid)
        written.append(os.fstat(fd))

    with _destination(root, dest_dir, mode, gid) as folder:
        final = _new_file(folder, name, fill, size)
        return Published(dest_dir / final, FileIdentity.of(written[0]), written[0].st_mtime)


def _new_file(folder: Folder, name: str, fill: Callable[[int], None], size: int) -> str:
    """The temp-file protocol: `fill` writes (and fsyncs) a new temp file, which is then linked to `name`
    or the first free variant of it (never overwriting) and the folder synced; on any error the temp file
    goes. Returns the final name."""
    temp, fd = folder.create_temp(TEMP_PREFIX)
    try:
        try:
            fill(fd)
        finally:
            os.close(fd)
        final = _link_no_overwrite(folder, temp, name)
        folder.sync()
    except OSError as exc:
        _remove_quietly(folder, temp)
        if exc.errno in _DISK_FULL:
            raise _disk_full(folder.path, size) from exc
        raise
    except BaseException:
        _remove_quietly(folder, temp)
        raise
    return final


def move_file(
    source_root: Path,
    source_relative: str,
    dest_dir: Path,
    name: str,
    mode: int | None = None,
    group: str | None = None,
    *,
    root: Path,
    expected: FileIdentity | None = None,
) -> Path:
    """Move the regular file source_root/source_relative to dest_dir/name (or a free variant) below `root`,
    without overwriting; works across filesystems. Nothing on either side is reached through a link.
    expected: the file that was read; if another one stands there now, ReplacedError and nothing moves.
    Without it, the entry found is moved if it is a regular file (NotAFileError otherwise)."""
    gid = resolve_group(group)
    source, source_name = open_parent(source_root, source_relative)
    with source:
        if expected is None:
            status = source.entry(source_name)
            if not stat.S_ISREG(status.st_mode):
                raise NotAFileError(source_relative, kind_of(status.st_mode))
            expected = FileIdentity.of(status)
        with _destination(root, dest_dir, mode, gid) as dest:
            for candidate in candidate_names(name):
                try:
                    dest.link_from(source, source_name, candidate, expected)
                except FileExistsError:
                    continue
                except OSError as exc:
                    if exc.errno == errno.EXDEV or exc.errno in _NO_HARDLINKS:
                        return _copy_then_remove(source, source_name, dest, name, mode, gid, expected)
                    raise
                _unlink_source(source, source_name, expected)
                dest.sync()
                return dest_dir / candidate
    raise AssertionError("unreachable")


def _unlink_source(source: Folder, name: str, expected: FileIdentity) -> None:
    """The moved file's old name goes; if something else took that name meanwhile, it stays (its own job)."""
    with contextlib.suppress(FileNotFoundError, ReplacedError):
        source.unlink(name, expected)
    source.sync()


def _copy_then_remove(
    source: Folder,
    source_name: str,
    dest: Folder,
    name: str,
    mode: int | None,
    gid: int | None,
    expected: FileIdentity,
) -> Path:
    """move_file across filesystems: copy through the temp-file protocol, then remove the source."""
    source_fd = source.open_regular(source_name)  # a link, FIFO or device is never opened
    with os.fdopen(source_fd, "rb") as reading:
        status = os.fstat(source_fd)
        if not expected.same_file(status):
            raise ReplacedError(source.relative_of(source_name))

        def fill(fd: int) -> None:
            while chunk := reading.read(COPY_CHUNK):
                _write_all(fd, chunk)
            os.fsync(fd)
            os.utime(fd, ns=(status.st_atime_ns, status.st_mtime_ns))
            os.fchmod(fd, stat.S_IMODE(status.st_mode) if mode is None else mode)
            if gid is not None:
                os.fchown(fd, -1, gid)

        final = _new_file(dest, name, fill, status.st_size)
    _unlink_source(source, source_name, expected)  # only once the copy is safely in place
    return dest.path / final


def _remove_quietly(folder: Folder, name: str) -> None:
    with contextlib.suppress(OSError):
        folder.unlink(name)


def remove_stale_temp_files(root: Path) -> int:
    """Delete temp files a crash left under `root` (an explicit stack, never recursion: a share user's
    1,000-deep folder must not stop the service from starting; linked folders are not entered)."""
    removed = 0
    try:
        for folder, entries in walk(root):
            for name, status in entries:
                if name.startswith(TEMP_PREFIX) and not stat.S_ISDIR(status.st_mode):
                    with contextlib.suppress(FileNotFoundError):
                        folder.unlink(name)
                        removed += 1
    except OSError:
        return removed  # the folder itself is missing or unreadable: nothing to clear
    return removed

"""File access that stays beneath a folder other people can write into, and never follows a link there.

The inbox, and the outbox, failed and archive folders, are often shares: anyone who can write them can
plant a symlink (`holiday.jpg -> /etc/restorer/restorer.toml`, or a folder `album -> /etc`) or a FIFO,
socket or device node. The daemon usually runs with more rights than those users, so it must never
read or write through such an entry:

- `open_beneath` walks root/relative one component at a time with O_NOFOLLOW (openat), so a symlink
  anywhere below root, folder or file, is refused (ELOOP/ENOTDIR), never followed; O_NONBLOCK keeps a
  FIFO from blocking the open;
- `read_regular` checks fstat of the opened descriptor: only a regular file is read;
- `ensure_folder_beneath` creates folders below root and refuses to pass through a symlinked folder.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

READ_CHUNK = 1024 * 1024


class NotAFileError(OSError):
    """An entry that is not a plain file or folder where one must be; `kind` says what it is."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(errno.EPERM, f"{path} is a {kind}")
        self.kind = kind


@dataclass(frozen=True)
class FileIdentity:
    """Which file was read: a replaced file has another inode, a rewritten one another size or mtime."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, status: os.stat_result) -> FileIdentity:
        return cls(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def kind_of(mode: int) -> str:
    """What an lstat mode is, in words for a reason text."""
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node"
    if stat.S_ISDIR(mode):
        return "folder"
    return "regular file" if stat.S_ISREG(mode) else "special file"


def _parts(relative: str) -> tuple[str, ...]:
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise NotAFileError(relative, "path leading outside its folder")
    return parts


def _open_folder_chain(root: Path, folders: tuple[str, ...]) -> int:
    """A descriptor for root/folders..., each component opened with O_NOFOLLOW below root."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in folders:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                child = os.open(name, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
                    raise NotAFileError(name, kind_of(mode) + ", not a folder") from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def lstat_beneath(root: Path, relative: str) -> os.stat_result:
    """lstat of root/relative, refusing a symlinked folder on the way."""
    parts = _parts(relative)
    folder = _open_folder_chain(root, parts[:-1])
    try:
        return os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
    finally:
        os.close(folder)


def open_beneath(root: Path, relative: str) -> int:
    """A read-only descriptor of root/relative, a regular file reached without following any link."""
    parts = _parts(relative)
    folder = _open_folder_chain(root, parts[:-1])
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(parts[-1], flags, dir_fd=folder)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EOPNOTSUPP):  # link, socket, device
                mode = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False).st_mode
                raise NotAFileError(relative, kind_of(mode)) from None
            raise
    finally:
        os.close(folder)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):  # a FIFO or device opens fine: fstat of what was opened decides
        os.close(fd)
        raise NotAFileError(relative, kind_of(mode))
    return fd


def read_regular(root: Path, relative: str, max_bytes: int | None = None) -> tuple[bytes, FileIdentity]:
    """The whole content of root/relative and the identity of the file it came from."""
    fd = open_beneath(root, relative)
    with os.fdopen(fd, "rb") as handle:
        identity = FileIdentity.of(os.fstat(handle.fileno()))
        if max_bytes is not None and identity.size > max_bytes:
            raise FileTooLargeError(relative, identity.size, max_bytes)
        limit = -1 if max_bytes is None else max_bytes + 1
        data = handle.read(limit)
    if max_bytes is not None and len(data) > max_bytes:  # it grew while being read
        raise FileTooLargeError(relative, len(data), max_bytes)
    return data, identity


class FileTooLargeError(OSError):
    def __init__(self, path: str, size: int, limit: int) -> None:
        super().__init__(errno.EFBIG, f"{path} is {size} bytes, more than the {limit} byte limit")
        self.size = size
        self.limit = limit


def ensure_folder_beneath(root: Path, folder: Path, mode: int | None = None, gid: int | None = None) -> None:
    """mkdir -p of `folder` (at or below root); every component below root must be a real folder, not a
    symlink a share user planted. Folders created get `mode` (with x where it has r) and `gid`."""
    relative = folder.relative_to(root)
    current = root
    for name in relative.parts:
        current = current / name
        try:
            status = os.lstat(current)
        except FileNotFoundError:
            try:
                os.mkdir(current)
            except FileExistsError:
                status = os.lstat(current)  # raced with another creator: check what is there now
            else:
                if mode is not None:
                    os.chmod(current, mode | ((mode & 0o444) >> 2))
                if gid is not None:
                    os.chown(current, -1, gid)
                continue
        if not stat.S_ISDIR(status.st_mode):
            raise NotAFileError(str(current), kind_of(status.st_mode) + ", not a folder")

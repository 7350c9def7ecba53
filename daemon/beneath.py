"""Everything the daemon does under the inbox, outbox, failed and archive folders, done relative to folder
descriptors reached from the configured root without following any link. The one home of these primitives:
no other module in daemon/ or status_site/ touches those folders by path (tests/test_beneath_only.py).

The four folders are often shares: anyone who can write them can plant a symlink (`holiday.jpg ->
/etc/restorer/restorer.toml`, a folder `album -> /etc`) or a FIFO, socket or device node, and can swap a
folder for a link at any moment (renameat2 RENAME_EXCHANGE) while the daemon works in it. The daemon usually
runs with more rights than those users, so nothing it does there may go through a link:

- `open_folder(root, relative)` returns a `Folder`, a descriptor of root/relative. It is reached with
  openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) where the kernel has it, else one component at a time with
  openat(O_NOFOLLOW | O_DIRECTORY) (kernels before 5.6, or seccomp profiles that refuse openat2). A link on
  the way is refused (NotAFileError). Once open, the descriptor is the folder itself: a link swapped in at
  its name later is never reached.
- Every operation on an entry is a `Folder` method on one name in it (lstat, open, create, link, rename,
  unlink, list): *at* the descriptor, so no path is walked again after the check.
- `unlink` and `link_from` compare the entry's device and inode with the file that was read before acting:
  a file swapped in meanwhile is left alone (ReplacedError). What may still race is the entry itself, inside
  a folder the daemon holds open: at worst another entry of that same folder is unlinked, which its writer
  could do anyway; a hard link is checked again after it is made, before anything relies on it.
- `read_regular` checks fstat of the opened descriptor: only a regular file is read (a FIFO cannot block).

The configured root itself is opened by its path (it may be a link the administrator set up, e.g.
/srv/inbox -> /mnt/nas/inbox): the people writing into the share can change what is in it, not where it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType

_SYS_OPENAT2 = 437  # one number on every Linux architecture since 5.1's unified table
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: a FIFO never blocks
_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}
_libc = ctypes.CDLL(None, use_errno=True)


class NotAFileError(OSError):
    """An entry that is not a plain file or folder where one must be; `kind` says what it is."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(errno.EPERM, f"{path} is a {kind}")
        self.kind = kind


class ReplacedError(OSError):
    """The entry is no longer the file that was read (another file was swapped in): left alone."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.ESTALE, f"{path} is no longer the file that was read; left alone")


class FileTooLargeError(OSError):
    def __init__(self, path: str, size: int, limit: int) -> None:
        super().__init__(errno.EFBIG, f"{path} is {size} bytes, more than the {limit} byte limit")
        self.size = size
        self.limit = limit


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

    def same_file(self, status: os.stat_result) -> bool:
        """Is `status` this very file (device and inode; it may have been touched since)?"""
        return (status.st_dev, status.st_ino) == (self.device, self.inode)


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


# -- resolving below a root ------------------------------------------------------------------------------


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_openat2_usable: bool | None = None  # None: not tried yet


def use_openat2(enabled: bool | None) -> None:
    """Force the O_NOFOLLOW chain (False), openat2 (True), or find out on first use (None). For tests, and
    for a worker process whose parent already knows."""
    global _openat2_usable
    _openat2_usable = enabled


def openat2_in_use() -> bool:
    """Whether folders are resolved with openat2 here (tried once; False on ENOSYS or a seccomp EPERM)."""
    if _openat2_usable is None:
        root = os.open("/", _FOLDER_FLAGS)
        try:
            os.close(_openat2(root, ".", _FOLDER_FLAGS))
        except OSError:
            pass  # _openat2 settles _openat2_usable on ENOSYS/EPERM
        finally:
            os.close(root)
    return bool(_openat2_usable)


def _openat2(dir_fd: int, relative: str, flags: int) -> int:
    """openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS: a link, `..` or absolute path on the way fails."""
    global _openat2_usable
    how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS)
    fd = _libc.syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(relative)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd >= 0:
        _openat2_usable = True
        return int(fd)
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EPERM) and not _openat2_usable:
        _openat2_usable = False  # an old kernel, or a seccomp profile that refuses it: the chain then
    raise OSError(error, os.strerror(error), relative)


def _parts(relative: str | PurePosixPath, allow_empty: bool = False) -> tuple[str, ...]:
    path = PurePosixPath(relative)
    parts = tuple(part for part in path.parts if part != ".")
    bad = path.is_absolute() or any(part in ("", "..") or "/" in part for part in parts)
    if bad or (not parts and not allow_empty):
        raise NotAFileError(str(relative), "path leading outside its folder")
    return parts


def _open_root(root: Path) -> int:
    return os.open(root, _FOLDER_FLAGS)


def _step(fd: int, name: str, create: bool, mode: int | None, gid: int | None) -> int:
    """Open the folder `name` in `fd` with O_NOFOLLOW (a link is refused, never followed); create it first
    when asked (it gets `mode`, with x where it has r, and `gid`, set on the opened descriptor)."""
    made = False
    if create:
        try:
            os.mkdir(
                name, 0o700 if mode is not None else 0o777, dir_fd=fd
            )  # the umask applies without a mode
            made = True
        except FileExistsError:
            pass
    try:
        child = os.open(name, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            mode_found = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
            raise NotAFileError(name, kind_of(mode_found) + ", not a folder") from None
        raise
    if made:
        try:
            if mode is not None:
                os.fchmod(child, mode | ((mode & 0o444) >> 2))
            if gid is not None:
                os.fchown(child, -1, gid)
        except BaseException:
            os.close(child)
            raise
    return child


def _open_chain(root_fd: int, parts: tuple[str, ...], create: bool, mode: int | None, gid: int | None) -> int:
    """A descriptor of the folder root/parts..., one component at a time (never closes root_fd)."""
    fd = os.dup(root_fd)
    try:
        for name in parts:
            child = _step(fd, name, create, mode, gid)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_below(root_fd: int, parts: tuple[str, ...], create: bool, mode: int | None, gid: int | None) -> int:
    if not parts:
        return os.dup(root_fd)
    if openat2_in_use():
        try:
            return _openat2(root_fd, "/".join(parts), _FOLDER_FLAGS)
        except OSError as exc:
            # A link on the way (ELOOP, EXDEV), a file where a folder should be (ENOTDIR), a folder to make
            # (ENOENT), or openat2 refused here: the chain says which, makes what is missing, or succeeds
            # (the link was swapped back meanwhile: then what it opens is the real folder, just as safe).
            if exc.errno not in (
                errno.ELOOP,
                errno.EXDEV,
                errno.ENOTDIR,
                errno.ENOENT,
                errno.ENOSYS,
                errno.EPERM,
            ):
                raise
            if exc.errno == errno.ENOENT and not create:
                raise
    return _open_chain(root_fd, parts, create, mode, gid)


def open_folder(
    root: Path,
    relative: str | PurePosixPath = "",
    *,
    create: bool = False,
    mode: int | None = None,
    gid: int | None = None,
) -> Folder:
    """The folder root/relative, reached without following any link (NotAFileError if one is on the way).
    create: make the missing folders (each gets `mode` with x where it has r, and `gid`)."""
    parts = _parts(relative, allow_empty=True)
    root_fd = _open_root(root)
    try:
        fd = _open_below(root_fd, parts, create, mode, gid)
    finally:
        os.close(root_fd)
    return Folder(fd, Path(root), PurePosixPath(*parts) if parts else PurePosixPath())


def make_root(path: Path, mode: int | None = None, gid: int | None = None) -> None:
    """mkdir -p of a configured folder itself (an administrator's path, links allowed): the folders made get
    `mode` (with x where it has r) and `gid`. Below it, only `open_folder(..., create=True)` makes folders."""
    missing: list[Path] = []
    current = path
    while not os.path.lexists(current) and current.parent != current:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue
        if mode is not None:
            os.chmod(folder, mode | ((mode & 0o444) >> 2))
        if gid is not None:
            os.chown(folder, -1, gid)


def stat_root(root: Path) -> os.stat_result:
    """stat of a configured folder itself (following an administrator's link to it)."""
    return os.stat(root)


def free_bytes(root: Path) -> int:
    """Free bytes for an unprivileged writer on the filesystem holding the configured folder `root`."""
    stats = os.statvfs(root)
    return stats.f_bavail * stats.f_frsize


# -- a folder held open ----------------------------------------------------------------------------------


class Folder:
    """An open folder below a root, reached without following a link. Every method acts on one name in it,
    relative to the descriptor, so a link swapped in anywhere above is never followed."""

    def __init__(self, fd: int, root: Path, relative: PurePosixPath) -> None:
        self.fd = fd
        self.root = root
        self.relative = relative

    @property
    def path(self) -> Path:
        """Where this folder is by name (for messages and records, never to reach it again)."""
        return self.root / self.relative

    def relative_of(self, name: str) -> str:
        """The posix path of `name` in this folder, relative to the root."""
        return (self.relative / name).as_posix()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Folder:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def entry(self, name: str) -> os.stat_result:
        """lstat of `name` here: a link is reported as a link, never followed."""
        return os.stat(_name(name), dir_fd=self.fd, follow_symlinks=False)

    def entries(self) -> list[tuple[str, os.stat_result]]:
        """(name, lstat) of every entry here; an entry gone before its lstat is left out."""
        found = []
        with os.scandir(self.fd) as listing:
            names = [entry.name for entry in listing]
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                found.append((name, self.entry(name)))
        return found

    def subfolder(
        self, name: str, *, create: bool = False, mode: int | None = None, gid: int | None = None
    ) -> Folder:
        """The folder `name` in this one (never through a link)."""
        return Folder(_step(self.fd, _name(name), create, mode, gid), self.root, self.relative / name)

    def open_regular(self, name: str) -> int:
        """A read-only descriptor of the regular file `name` here (NotAFileError for a link, FIFO, socket,
        device or folder: fstat of what was opened decides)."""
        try:
            fd = os.open(_name(name), _READ_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EOPNOTSUPP):  # link, socket, device
                mode = self.entry(name).st_mode
                raise NotAFileError(self.relative_of(name), kind_of(mode)) from None
            raise
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise NotAFileError(self.relative_of(name), kind_of(mode))
        return fd

    def create_temp(self, prefix: str) -> tuple[str, int]:
        """(name, write descriptor) of a new file, mode 0600, that did not exist (O_EXCL: never a link's
        target)."""
        while True:
            name = f"{prefix}{secrets.token_hex(8)}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                return name, os.open(name, flags, 0o600, dir_fd=self.fd)
            except FileExistsError:
                continue

    def link_from(
        self, source: Folder, source_name: str, name: str, expected: FileIdentity | None = None
    ) -> None:
        """Give the file `source_name` of `source` the new name `name` here (a hard link; the entry itself is
        linked, never a link's target). FileExistsError if `name` is taken. With `expected`, the new link
        must be that very file, else it is removed again and ReplacedError raised."""
        if expected is not None and not expected.same_file(source.entry(source_name)):
            raise ReplacedError(source.relative_of(source_name))
        os.link(
            _name(source_name), _name(name), src_dir_fd=source.fd, dst_dir_fd=self.fd, follow_symlinks=False
        )
        if expected is not None and not expected.same_file(self.entry(name)):
            # Swapped between the check and the link: whatever was linked never stays here.
            self.unlink(name)
            raise ReplacedError(source.relative_of(source_name))

    def rename_from(self, source: Folder, source_name: str, name: str) -> None:
        """Rename `source_name` of `source` to `name` here, never replacing an existing `name`
        (renameat2 RENAME_NOREPLACE; where the filesystem lacks it, check then rename)."""
        renameat2 = getattr(_libc, "renameat2", None)  # glibc 2.28+; musl has it too
        result, error = -1, errno.ENOSYS
        if renameat2 is not None:
            result = renameat2(
                ctypes.c_int(source.fd),
                ctypes.c_char_p(os.fsencode(_name(source_name))),
                ctypes.c_int(self.fd),
                ctypes.c_char_p(os.fsencode(_name(name))),
                ctypes.c_uint(_RENAME_NOREPLACE),
            )
            error = ctypes.get_errno()
        if result == 0:
            return
        if error not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(error, os.strerror(error), self.relative_of(name))
        with contextlib.suppress(FileNotFoundError):
            self.entry(name)
            raise FileExistsError(errno.EEXIST, "name taken", self.relative_of(name))
        os.rename(
            _name(source_name), _name(name), src_dir_fd=source.fd, dst_dir_fd=self.fd
        )  # a tiny race we accept

    def unlink(self, name: str, expected: FileIdentity | None = None) -> None:
        """Remove the entry `name` here (a link itself, never its target). With `expected`, only if it is
        still that very file (ReplacedError otherwise; FileNotFoundError when it is gone)."""
        if expected is not None and not expected.same_file(self.entry(name)):
            raise ReplacedError(self.relative_of(name))
        os.unlink(_name(name), dir_fd=self.fd)

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # some network filesystems refuse; harmless
                raise


def _name(name: str) -> str:
    """A single entry name (never a path): `/` or `..` would leave the folder descriptor's folder."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise NotAFileError(name, "path leading outside its folder")
    return name


# -- whole paths below a root ----------------------------------------------------------------------------


def open_parent(
    root: Path, relative: str, *, create: bool = False, mode: int | None = None, gid: int | None = None
) -> tuple[Folder, str]:
    """(the folder holding root/relative, the entry's name in it)."""
    parts = _parts(relative)
    return open_folder(
        root, PurePosixPath(*parts[:-1]) if len(parts) > 1 else "", create=create, mode=mode, gid=gid
    ), parts[-1]


def lstat_beneath(root: Path, relative: str) -> os.stat_result:
    """lstat of root/relative, refusing a link anywhere on the way."""
    folder, name = open_parent(root, relative)
    with folder:
        return folder.entry(name)


def open_beneath(root: Path, relative: str) -> int:
    """A read-only descriptor of root/relative, a regular file reached without following any link."""
    folder, name = open_parent(root, relative)
    with folder:
        return folder.open_regular(name)


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


def unlink_beneath(root: Path, relative: str, expected: FileIdentity | None = None) -> None:
    """Remove the entry root/relative (never through a link; with `expected`, only that very file)."""
    folder, name = open_parent(root, relative)
    with folder:
        folder.unlink(name, expected)


def walk(
    root: Path,
    start: str = "",
    descend: Callable[[str], bool] | None = None,
    on_error: Callable[[str, OSError], None] | None = None,
) -> Iterator[tuple[Folder, list[tuple[str, os.stat_result]]]]:
    """(folder, its entries) for root/start and every folder below it that `descend(relative)` allows, an
    explicit stack (never recursion: a share user's 1,000-deep tree costs no stack). A link is an entry,
    never a way in; a folder that cannot be opened any more is passed to `on_error` (start: raised)."""
    stack = [start]
    while stack:
        relative = stack.pop()
        try:
            folder = open_folder(root, relative)
        except OSError as exc:
            if relative == start:
                raise
            if on_error is not None:
                on_error(relative, exc)
            continue
        with folder:
            try:
                entries = folder.entries()
            except OSError as exc:
                if relative == start:
                    raise
                if on_error is not None:
                    on_error(relative, exc)
                continue
            yield folder, entries
        for name, status in entries:
            child = f"{relative}/{name}" if relative else name
            if stat.S_ISDIR(status.st_mode) and (descend is None or descend(child)):
                stack.append(child)

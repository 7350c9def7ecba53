"""Which filesystem a path lives on, read from /proc/self/mountinfo.

Two decisions depend on it: SQLite's WAL does not work over a network filesystem (the job DB must be
local), and inotify sees nothing another SMB/NFS client writes (the inbox must be polled there).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")

# Filesystems where another machine may write (inotify blind) and where SQLite locking is unreliable.
NETWORK_FS_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "smb2",
        "ncpfs",
        "afs",
        "9p",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "fuse.rclone",
        "fuse.s3fs",
        "fuse.davfs",
        "davfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ocfs2",
        "gfs2",
        "vboxsf",
        "virtiofs",
        "fuse.juicefs",
    }
)


@dataclass(frozen=True)
class MountInfo:
    mount_point: str
    fs_type: str
    source: str

    @property
    def is_network(self) -> bool:
        return self.fs_type in NETWORK_FS_TYPES


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \040 \011 \012 \134.
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def parse_mountinfo(text: str) -> list[MountInfo]:
    mounts: list[MountInfo] = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 5 or len(fields) < sep + 3:
            continue
        mounts.append(MountInfo(_unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2])))
    return mounts


def _existing_ancestor(path: Path) -> Path:
    # A folder that does not exist yet will be created on its nearest existing ancestor's filesystem.
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.resolve()


def mount_of(path: Path, mountinfo_file: Path | None = None) -> MountInfo | None:
    """The mount holding `path` (the longest mount point that prefixes it); None if unreadable."""
    try:
        text = (mountinfo_file or MOUNTINFO).read_text()
    except OSError:
        return None
    target = str(_existing_ancestor(path))
    best: MountInfo | None = None
    # Later lines win ties: a mount stacked over another at the same point hides it.
    for mount in parse_mountinfo(text):
        point = mount.mount_point.rstrip("/") or "/"
        inside = target == point or target.startswith(point + "/") or point == "/"
        if inside and (best is None or len(point) >= len(best.mount_point.rstrip("/") or "/")):
            best = mount
    return best


def is_network_filesystem(path: Path, mountinfo_file: Path | None = None) -> bool:
    mount = mount_of(path, mountinfo_file)
    return mount is not None and mount.is_network


def describe(path: Path, mountinfo_file: Path | None = None) -> str:
    mount = mount_of(path, mountinfo_file)
    if mount is None:
        return "unknown filesystem"
    return f"{mount.fs_type} at {mount.mount_point} ({mount.source})"

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

# FUSE filesystems known to hold only this machine's files. Any other FUSE type is treated as a network
# filesystem: gvfs, smbnetfs, rclone's many names, sshfs forks all mount remote shares, the FUSE daemon
# learns of another machine's writes only when asked, and inotify never hears of them. Polling a local
# FUSE folder by mistake costs a stat per file per poll; watching a remote one natively loses photos.
KNOWN_LOCAL_FUSE_TYPES = frozenset(
    {
        "fuseblk",  # ntfs-3g, exfat-fuse: a local block device
        "fuse.lxcfs",
        "fuse.fuse-overlayfs",
        "fuse.bindfs",
        "fuse.mergerfs",
        "fuse.portal",  # the xdg document portal: local files handed to sandboxed apps
        "fuse.squashfuse",
        "fuse.snapfuse",
        "fuse.encfs",
        "fuse.gocryptfs",
        "fuse.ntfs-3g",
        "fuse.exfat",
        "fuse.vmhgfs-fuse",  # VMware shared folders from the same host
    }
)


@dataclass(frozen=True)
class MountInfo:
    mount_point: str
    fs_type: str
    source: str

    @property
    def is_network(self) -> bool:
        return self.network_reason is not None

    @property
    def network_reason(self) -> str | None:
        """Why this mount counts as a network filesystem, or None for a local one."""
        if self.fs_type in NETWORK_FS_TYPES:
            return "network filesystem"
        if _is_fuse(self.fs_type) and self.fs_type not in KNOWN_LOCAL_FUSE_TYPES:
            return "FUSE filesystem not known to be local, so treated as a network share"
        return None


def _is_fuse(fs_type: str) -> bool:
    return fs_type in ("fuse", "fuseblk") or fs_type.startswith("fuse.")


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


def network_reason(path: Path, mountinfo_file: Path | None = None) -> str | None:
    """Why `path` counts as being on a network filesystem, or None when it is local (or unknown)."""
    mount = mount_of(path, mountinfo_file)
    return None if mount is None else mount.network_reason


def describe(path: Path, mountinfo_file: Path | None = None) -> str:
    mount = mount_of(path, mountinfo_file)
    if mount is None:
        return "unknown filesystem"
    return f"{mount.fs_type} at {mount.mount_point} ({mount.source})"

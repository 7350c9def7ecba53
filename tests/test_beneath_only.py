"""Only daemon/beneath.py touches the inbox, outbox, failed and archive folders (issue 18, item 1).

Everything in daemon/ and status_site/ that creates, links, renames, unlinks, moves, lists or opens a file
there goes through daemon.beneath's folder descriptors, so a folder swapped for a link is never followed.
This test reads the source (AST) and fails on any call that acts on a file by path outside beneath.py:
os.open/link/unlink/rename/replace/mkdir/scandir/stat/..., os.path.exists/realpath/..., shutil.*, open(),
and the pathlib methods that touch the disk. The few that remain act on other folders (the state folder,
the package's own static files, /proc/self/mountinfo, a configured path itself) and are listed below with
the reason; a new one fails here until it goes through daemon.beneath or is added with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OWNER = REPO / "daemon" / "beneath.py"
OS_CALLS = {
    "open", "link", "unlink", "remove", "rename", "renames", "replace", "mkdir", "makedirs", "rmdir",
    "removedirs", "scandir", "listdir", "walk", "fwalk", "stat", "lstat", "chmod", "chown", "lchown", "utime",
    "truncate", "symlink", "readlink", "access", "statvfs", "mkfifo", "mknod",
}  # fmt: skip
OS_PATH_CALLS = {
    "exists",
    "lexists",
    "isfile",
    "isdir",
    "islink",
    "realpath",
    "getsize",
    "getmtime",
    "samefile",
}
PATH_METHODS = {
    "unlink", "rename", "mkdir", "rmdir", "touch", "write_bytes", "write_text", "read_bytes", "read_text",
    "open", "stat", "lstat", "exists", "is_file", "is_dir", "is_symlink", "iterdir", "glob", "rglob", "chmod",
    "symlink_to", "hardlink_to", "resolve", "readlink", "lchmod", "samefile",
}  # fmt: skip
# "file: call" -> why it is not a touch of the four folders by path.
ALLOWED = {
    "daemon/publish.py: folder.unlink(temp)": "a Folder method, by descriptor",
    "daemon/publish.py: folder.unlink(name)": "a Folder method, by descriptor",
    "daemon/publish.py: source.unlink(name, expected)": "a Folder method, by descriptor",
    "daemon/publish.py: os.utime(fd, ns=(status.st_atime_ns, status.st_mtime_ns))": "on a descriptor",
    "daemon/fsinfo.py: path.exists()": "finds the mount point of a configured folder itself",
    "daemon/fsinfo.py: path.resolve()": "the mount point of a configured folder itself",
    "daemon/fsinfo.py: (mountinfo_file or MOUNTINFO).read_text()": "/proc/self/mountinfo",
    "daemon/readmodel.py: db_path.resolve()": "the state folder's database",
    "daemon/store.py: db_path.parent.mkdir(parents=True, exist_ok=True)": "the state folder",
    "daemon/settings.py: path.expanduser().resolve()": "a configured path itself",
    "daemon/settings.py: path.is_file()": "the configuration file",
    "daemon/settings.py: Path(config_file).is_file()": "the configuration file",
    "daemon/settings.py: path.read_text(encoding='utf-8')": "the configuration file",
    "daemon/ray_token.py: path.resolve()": "the configured Ray token file's own path",
    "daemon/ray_token.py: os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 384)": (
        "`restorer cluster token FILE`: a new token file where the operator asks"
    ),
    "daemon/schedule.py: open(localtime, 'rb')": "/etc/localtime, the host's time zone for run_hours",
    "daemon/workers.py: gpus_dir.iterdir()": "/proc/driver/nvidia/gpus",
    "status_site/page.py: folder.iterdir()": "the package's own static files",
    "status_site/page.py: entry.read_bytes()": "the package's own static files",
    "status_site/uploads.py: spool_dir.mkdir(parents=True, exist_ok=True)": "the upload spool (state folder)",
    "status_site/uploads.py: os.statvfs(spool_dir)": "the upload spool (state folder)",
}


def _call_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return "open()" if func.id == "open" else None
    if not isinstance(func, ast.Attribute):
        return None
    owner = func.value
    if isinstance(owner, ast.Name) and owner.id == "os" and func.attr in OS_CALLS:
        return f"os.{func.attr}"
    if isinstance(owner, ast.Name) and owner.id == "shutil":
        return f"shutil.{func.attr}"
    is_os_path = (
        isinstance(owner, ast.Attribute) and isinstance(owner.value, ast.Name) and owner.value.id == "os"
    )
    if is_os_path and owner.attr == "path" and func.attr in OS_PATH_CALLS:  # type: ignore[union-attr]
        return f"os.path.{func.attr}"
    return f".{func.attr}()" if func.attr in PATH_METHODS else None


def file_calls() -> dict[str, str]:
    """'file: call source' -> the kind of call, for every call that may touch a file by path."""
    found = {}
    for package in ("daemon", "status_site"):
        for source in sorted((REPO / package).rglob("*.py")):
            if source == OWNER:
                continue
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.Call) and (kind := _call_name(node)) is not None:
                    found[f"{source.relative_to(REPO).as_posix()}: {ast.unparse(node)}"] = kind
    return found


def test_only_daemon_beneath_touches_files_by_path() -> None:
    unexpected = {call: kind for call, kind in file_calls().items() if call not in ALLOWED}
    assert not unexpected, (
        "these act on files by path outside daemon/beneath.py; go through daemon.beneath (open_folder, "
        "Folder, open_beneath, ...) so a folder swapped for a link is never followed, or add them to "
        f"ALLOWED with the reason they do not touch the four folders: {unexpected}"
    )


def test_the_allowed_list_has_no_stale_entries() -> None:
    assert set(ALLOWED) <= set(file_calls()), set(ALLOWED) - set(file_calls())


def test_the_check_sees_a_call_by_path() -> None:
    calls = [_call_name(node) for node in ast.walk(ast.parse(SAMPLE)) if isinstance(node, ast.Call)]
    assert calls == ["os.rename", "os.path.exists", "shutil.move", ".unlink()", "open()"]


SAMPLE = """
os.rename(inbox / "a", archive / "a")
os.path.exists(path)
shutil.move(a, b)
path.unlink()
open(path, "rb")
"""

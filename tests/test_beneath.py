"""daemon.beneath and the publish protocol on it, on real folders, with openat2 and with the O_NOFOLLOW chain
(a kernel without openat2, or a seccomp profile that refuses it): each primitive refuses a link anywhere on
the way, acts on the folder it opened even after that folder's name is swapped for a link, and never
moves or deletes a file other than the one that was read (issue 18, item 1)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import beneath
from daemon.beneath import FileIdentity, NotAFileError, ReplacedError, open_folder, unlink_beneath
from daemon.publish import TEMP_PREFIX, PublishError, move_file, publish_bytes, remove_stale_temp_files

SECRET = b"outside the folder"
_libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture(params=["openat2", "chain"])
def resolver(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "openat2" and not beneath.openat2_in_use():
        pytest.skip("no openat2 here")
    beneath.use_openat2(request.param == "openat2")
    yield request.param
    beneath.use_openat2(None)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ with album/photo.jpg, and outside/ holding a file of the same name."""
    (tmp_path / "root" / "album").mkdir(parents=True)
    (tmp_path / "root" / "album" / "photo.jpg").write_bytes(b"photo")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "photo.jpg").write_bytes(SECRET)
    return tmp_path


def swap(first: Path, second: Path) -> None:
    """renameat2(RENAME_EXCHANGE), as a share user can."""
    if _libc.renameat2(-100, os.fsencode(first), -100, os.fsencode(second), 2) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")


def test_openat2_is_used_where_the_kernel_has_it() -> None:
    beneath.use_openat2(None)
    uname = os.uname().release.split(".")
    if (int(uname[0]), int(uname[1])) < (5, 6):
        pytest.skip("kernel older than 5.6")
    assert beneath.openat2_in_use()


@pytest.mark.usefixtures("resolver")
def test_a_link_anywhere_on_the_way_is_refused(tree: Path) -> None:
    root = tree / "root"
    (root / "linked").symlink_to(tree / "outside")
    (root / "album" / "deeper").symlink_to(tree / "outside")
    for relative in ("linked", "album/deeper", "../outside", "/etc", "album/../../outside"):
        with pytest.raises(NotAFileError):
            open_folder(root, relative).close()
    with pytest.raises(NotAFileError, match="symbolic link, not a folder"):
        beneath.read_regular(root, "linked/photo.jpg")
    with pytest.raises(NotAFileError, match="symbolic link"):
        open_folder(root, "linked/new", create=True).close()
    assert sorted(p.name for p in (tree / "outside").iterdir()) == ["photo.jpg"]


@pytest.mark.usefixtures("resolver")
def test_folders_made_below_the_root_get_the_mode(tree: Path) -> None:
    old = os.umask(0o077)
    try:
        with open_folder(tree / "root", "a/b/c", create=True, mode=0o640) as folder:
            assert folder.relative_of("x") == "a/b/c/x"
    finally:
        os.umask(old)
    assert stat.S_IMODE((tree / "root" / "a" / "b").stat().st_mode) == 0o750


@pytest.mark.usefixtures("resolver")
def test_a_folder_held_open_is_the_real_one_whatever_is_swapped_in_at_its_name(tree: Path) -> None:
    root = tree / "root"
    (root / ".park").mkdir()
    (root / ".park" / "album").symlink_to(tree / "outside")
    with open_folder(root, "album") as album:
        swap(root / "album", root / ".park" / "album")  # root/album is now a link to outside/
        identity = FileIdentity.of(album.entry("photo.jpg"))
        album.unlink("photo.jpg", identity)
        name, fd = album.create_temp(TEMP_PREFIX)
        os.close(fd)
        album.unlink(name)
    assert (tree / "outside" / "photo.jpg").read_bytes() == SECRET
    assert sorted(p.name for p in (tree / "outside").iterdir()) == ["photo.jpg"]
    assert list((root / ".park" / "album").iterdir()) == []  # the real folder, emptied


@pytest.mark.usefixtures("resolver")
def test_unlink_and_move_leave_a_file_swapped_in_alone(tree: Path) -> None:
    root = tree / "root"
    read = FileIdentity.of((root / "album" / "photo.jpg").stat())
    (root / "album" / "photo.jpg").rename(root / "kept.jpg")  # still alive: its inode cannot be reused
    (root / "album" / "photo.jpg").write_bytes(b"someone else's")  # another inode at the same name
    with pytest.raises(ReplacedError):
        unlink_beneath(root, "album/photo.jpg", read)
    with pytest.raises(ReplacedError):
        move_file(root, "album/photo.jpg", root / "archive", "photo.jpg", root=root, expected=read)
    assert (root / "album" / "photo.jpg").read_bytes() == b"someone else's"
    assert not (root / "archive" / "photo.jpg").exists()


@pytest.mark.usefixtures("resolver")
def test_move_and_publish_refuse_a_folder_swapped_for_a_link(tree: Path) -> None:
    root = tree / "root"
    (root / "archive").mkdir()
    (root / ".park").mkdir()
    (root / ".park" / "album").symlink_to(tree / "outside")
    swap(root / "album", root / ".park" / "album")
    with pytest.raises(NotAFileError):
        move_file(root, "album/photo.jpg", root / "archive", "photo.jpg", root=root)
    with pytest.raises(PublishError, match="symbolic link"):
        publish_bytes(b"x", root / "album", "new.jpg", 0o644, None, root=root)
    assert sorted(p.name for p in (tree / "outside").iterdir()) == ["photo.jpg"]
    assert list((root / "archive").iterdir()) == []


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "other"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)])


@pytest.mark.usefixtures("resolver")
def test_a_move_across_filesystems_copies_by_descriptor_and_checks_the_identity(
    tree: Path, other_filesystem: Path
) -> None:
    root = tree / "root"
    source = root / "album" / "photo.jpg"
    os.utime(source, ns=(1_000_000_000, 2_000_000_000))
    read = FileIdentity.of(source.stat())
    os.link(source, root / "kept.jpg")  # keeps its inode alive: a new file cannot reuse the number
    moved = move_file(root, "album/photo.jpg", other_filesystem / "album", "photo.jpg", root=other_filesystem)
    assert moved.read_bytes() == b"photo" and moved.stat().st_mtime_ns == 2_000_000_000
    assert not source.exists()
    source.write_bytes(b"a new one")
    with pytest.raises(ReplacedError):
        move_file(
            root, "album/photo.jpg", other_filesystem, "photo.jpg", root=other_filesystem, expected=read
        )
    assert source.read_bytes() == b"a new one"
    assert sorted(p.name for p in other_filesystem.iterdir()) == ["album"]  # no temp file left


@pytest.fixture
def deep_folder(tree: Path) -> Iterator[Path]:
    """root/d/d/... 1,000 levels (deeper than Python's recursion limit) with a temp file at the bottom,
    built and removed by descriptors: os.makedirs, shutil.rmtree and pytest's own cleanup recurse."""
    chain = [os.open(tree / "root", os.O_RDONLY)]
    for _ in range(1000):
        os.mkdir("d", dir_fd=chain[-1])
        chain.append(os.open("d", os.O_RDONLY, dir_fd=chain[-1]))
        if len(chain) > 2:
            os.close(chain.pop(-2))
    os.close(os.open(f"{TEMP_PREFIX}deadbeef", os.O_WRONLY | os.O_CREAT, dir_fd=chain[-1]))
    for fd in chain:
        os.close(fd)
    yield tree / "root"
    chain = [os.open(tree / "root", os.O_RDONLY)]
    with contextlib.suppress(FileNotFoundError):
        while True:
            chain.append(os.open("d", os.O_RDONLY, dir_fd=chain[-1]))
    for name in os.listdir(chain[-1]):
        os.unlink(name, dir_fd=chain[-1])
    while len(chain) > 1:
        os.close(chain.pop())
        os.rmdir("d", dir_fd=chain[-1])
    os.close(chain[0])


@pytest.mark.usefixtures("resolver")
def test_stale_temp_files_are_cleared_without_entering_linked_folders_or_recursing(
    tree: Path, deep_folder: Path
) -> None:
    (tree / "outside" / f"{TEMP_PREFIX}theirs").write_bytes(b"not ours")
    (deep_folder / "linked").symlink_to(tree / "outside")
    assert remove_stale_temp_files(deep_folder) == 1
    assert (tree / "outside" / f"{TEMP_PREFIX}theirs").exists()


@pytest.mark.parametrize("refusal", [errno.ENOSYS, errno.EPERM])
def test_a_kernel_or_seccomp_profile_without_openat2_falls_back_to_the_chain(
    tree: Path, monkeypatch: pytest.MonkeyPatch, refusal: int
) -> None:
    """Kernels before 5.6 answer ENOSYS; Docker's older seccomp profiles answer EPERM. The one syscall is
    replaced by that answer here (no such kernel in CI); everything else is the real thing."""

    class NoOpenat2:
        renameat2 = _libc.renameat2

        @staticmethod
        def syscall(*_args: object) -> int:
            ctypes.set_errno(refusal)
            return -1

    beneath.use_openat2(None)
    monkeypatch.setattr(beneath, "_libc", NoOpenat2)
    try:
        assert not beneath.openat2_in_use()
        (tree / "root" / "linked").symlink_to(tree / "outside")
        with pytest.raises(NotAFileError):
            open_folder(tree / "root", "linked").close()
        assert beneath.read_regular(tree / "root", "album/photo.jpg")[0] == b"photo"
    finally:
        beneath.use_openat2(None)

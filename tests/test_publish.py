"""The publish protocol on real folders (and a real, tiny tmpfs for the disk-full case)."""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from daemon.publish import (
    TEMP_PREFIX,
    DiskFullError,
    candidate_names,
    move_file,
    publish_bytes,
    remove_stale_temp_files,
)
from tests.support.waiting import wait_for


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_publish_creates_file_with_content_and_no_temp_left(tmp_path: Path) -> None:
    final = publish_bytes(b"restored", tmp_path / "out" / "sub", "a.png", 0o664, None)
    assert final == tmp_path / "out" / "sub" / "a.png" and final.read_bytes() == b"restored"
    assert [p.name for p in final.parent.iterdir()] == ["a.png"]


def test_name_collisions_never_overwrite(tmp_path: Path) -> None:
    names = [publish_bytes(str(n).encode(), tmp_path, "photo.jpg", 0o644, None).name for n in range(3)]
    assert names == ["photo.jpg", "photo (1).jpg", "photo (2).jpg"]
    assert (tmp_path / "photo.jpg").read_bytes() == b"0"


def test_255_byte_name_collision_stays_within_name_max(tmp_path: Path) -> None:
    name = "é" * 125 + "a.jpg"
    first = publish_bytes(b"1", tmp_path, name, 0o644, None)
    second = publish_bytes(b"2", tmp_path, name, 0o644, None)
    assert first.name == name and len(second.name.encode()) <= 255 and second.name.endswith(" (1).jpg")
    longer = next(candidate_names("é" * 125 + "a.tiff"))  # a longer extension than the input had
    assert len(longer.encode()) <= 255 and longer.endswith(".tiff")


def test_output_mode_and_group_applied_whatever_the_umask(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid() if os.getgid() != 0 else 1)  # any group other than ours
    old = os.umask(0o077)
    try:
        final = publish_bytes(b"x", tmp_path / "new" / "deep", "a.png", 0o664, group.gr_name)
    finally:
        os.umask(old)
    assert stat.S_IMODE(final.stat().st_mode) == 0o664
    assert final.stat().st_gid == group.gr_gid
    folder = final.parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o775 and folder.stat().st_gid == group.gr_gid


def test_unknown_output_group_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        publish_bytes(b"x", tmp_path, "a.png", 0o664, "no-such-group-xyz")


def test_anything_watching_the_outbox_never_sees_a_partial_file(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    payload = os.urandom(512 * 1024)
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()

    class Check(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            path = Path(os.fsdecode(event.dest_path or event.src_path))
            if event.is_directory or path.name.startswith(TEMP_PREFIX) or event.event_type == "deleted":
                return
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                return
            with lock:
                seen.append((path.name, size))

    observer = Observer()
    observer.schedule(Check(), str(outbox))
    observer.start()
    try:
        for n in range(10):
            publish_bytes(payload, outbox, f"{n}.png", 0o644, None)
        # Events arrive on the observer's thread: wait for the last one before stopping it (under load it
        # can lag behind the publish that caused it).
        wait_for(lambda: len({name for name, _ in list(seen)}) == 10, timeout=10)
    finally:
        observer.stop()
        observer.join()
    assert {name for name, _ in seen} == {f"{n}.png" for n in range(10)}
    assert all(size == len(payload) for _, size in seen)


def test_outbox_full_raises_disk_full_and_leaves_nothing_behind(small_tmpfs: Path) -> None:
    publish_bytes(b"a" * 20_000, small_tmpfs, "fits.png", 0o644, None)
    with pytest.raises(DiskFullError) as caught:
        publish_bytes(b"b" * 200_000, small_tmpfs, "too-big.png", 0o644, None)
    assert caught.value.needed_bytes == 200_000 and "no space left" in str(caught.value)
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["fits.png"]


def test_move_file_across_filesystems_without_overwriting(tmp_path: Path, small_tmpfs: Path) -> None:
    (tmp_path / "orig.jpg").write_bytes(b"original")
    (small_tmpfs / "orig.jpg").write_bytes(b"someone else's")
    moved = move_file(tmp_path, "orig.jpg", small_tmpfs, "orig.jpg", root=small_tmpfs)
    assert moved.name == "orig (1).jpg" and moved.read_bytes() == b"original"
    assert not (tmp_path / "orig.jpg").exists()
    assert (small_tmpfs / "orig.jpg").read_bytes() == b"someone else's"


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / f"{TEMP_PREFIX}deadbeef").write_bytes(b"half")
    (tmp_path / f"{TEMP_PREFIX}cafe").write_bytes(b"half")
    (tmp_path / "keep.png").write_bytes(b"whole")
    assert remove_stale_temp_files(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["keep.png"]

"""The inbox on real network shares, not faked mount tables (issue 19 item 4).

Two setups people run:
- The daemon on the NAS: Samba exports the inbox and a real SMB client (smbclient) writes photos into
  it in pieces, with macOS `._` companions and an Office-style temp file renamed into place. The inbox is
  a local folder here, so inotify sees what smbd writes.
- The daemon on a GPU box with the NAS folder mounted through FUSE (sshfs against an sshd on loopback):
  files written on the server side never reach inotify, so `watch_mode = auto` must poll, say why in
  health, and still make each photo exactly one job. The same mount under a FUSE type outside the known
  list (`-o subtype=`) shows that unknown `fuse.*` types are polled too, and so is a real smbnetfs mount
  of the Samba server (`fuse.smbnetfs`, outside today's list; it needs 127.0.0.1:445 free).

Each photo must become exactly one job whose recorded hash is the complete file's: a job made from a
half-written file would carry another hash (and the finished file a second job). Intake runs in-process
with its real observer and a real SQLite store, no worker (as in test_watcher.py), so counts are exact.
The kernel SMB client (`mount -t cifs`) is tried and skipped with the reason where the kernel lacks it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_processors import fake_photo
from tests.share_support import (
    SSHD,
    SambaServer,
    SmbnetfsMount,
    SshfsMount,
    port_is_free,
    skip_unless_available,
)
from tests.support.waiting import wait_for
from tests.test_watcher import Harness

STABILITY = 1.0  # longer than any pause between two pieces below, as on a real share
PIECE_PAUSE = 0.25
UPLOAD_STABILITY = 4.0  # longer than the slow SMB uploads below take from first to last byte


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def jobs_by_path(h: Harness) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for job in h.store.list(limit=1000).jobs:
        found.setdefault(job.input_path, []).append(job.content_sha256)
    return found


def photo_pieces(seed: str, count: int, size: int = 2560) -> list[bytes]:
    body = (hashlib.sha512(seed.encode()).digest() * (size // 64 + 1))[:size]
    return [fake_photo(body) if n == 0 else body for n in range(count)]


@pytest.fixture
def samba(tmp_path: Path) -> Iterator[tuple[SambaServer, Harness]]:
    skip_unless_available("smbd", "smbclient")
    h = Harness(tmp_path, "auto", stability_seconds=UPLOAD_STABILITY)
    server = SambaServer(tmp_path / "samba", h.inbox)
    yield server, h
    h.stop()
    server.stop()


def slow_upload(server: SambaServer, fifo: Path, remote: str, pieces: list[bytes]) -> threading.Thread:
    """smbclient puts `remote` from a FIFO that a thread feeds one 64 KiB piece every 0.1 s: the file sits
    on the share half-written (smbclient holds back part of the stream) until the last piece is sent."""
    os.mkfifo(fifo)
    client = server.client(f"put {fifo} {remote}")

    def feed() -> None:
        with open(fifo, "wb", buffering=0) as pipe:
            for piece in pieces:
                pipe.write(piece)
                time.sleep(0.1)
        output, _ = client.communicate(timeout=60)
        assert client.returncode == 0, output

    thread = threading.Thread(target=feed)
    thread.start()
    return thread


def test_photos_written_over_smb_in_pieces_become_one_job_each_never_half_written(
    samba: tuple[SambaServer, Harness], tmp_path: Path
) -> None:
    server, h = samba
    intake = h.start()
    assert intake.mode == "native"  # the daemon runs on the NAS: smbd writes a local folder
    staging = tmp_path / "client-side"
    staging.mkdir()
    # macOS writes an AppleDouble companion next to every file it copies onto a share; Office saves to
    # a temp name, then renames it over the real name.
    (staging / "appledouble").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 80)
    edited = fake_photo(b"saved by an editor " * 50)
    (staging / "edited").write_bytes(edited)
    setup = server.client(
        f"mkdir album; put {staging / 'appledouble'} ._scan-1.jpg; "
        f"put {staging / 'appledouble'} album/._scan-2.jpg; "
        f"put {staging / 'edited'} ~WRL0001.tmp; rename ~WRL0001.tmp edited.jpg"
    )
    output, _ = setup.communicate(timeout=60)
    assert setup.returncode == 0, output

    uploads = {name: photo_pieces(name, 20, size=65536) for name in ("scan-1.jpg", "album/scan-2.jpg")}
    threads = [
        slow_upload(server, staging / f"fifo-{n}", name, pieces)
        for n, (name, pieces) in enumerate(uploads.items())
    ]
    half_written: set[int] = set()
    while any(thread.is_alive() for thread in threads):
        target = h.inbox / "scan-1.jpg"
        if target.exists():
            half_written.add(target.stat().st_size)
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    full_size = sum(map(len, uploads["scan-1.jpg"]))
    assert any(0 < size < full_size for size in half_written), half_written  # the hazard was real

    expected = {name: b"".join(pieces) for name, pieces in uploads.items()} | {"edited.jpg": edited}
    wait_for(lambda: set(jobs_by_path(h)) == set(expected), timeout=30)
    h.settle(UPLOAD_STABILITY + 1)
    assert jobs_by_path(h) == {path: [sha256(data)] for path, data in expected.items()}
    assert all(job.state == "queued" for job in h.store.list(limit=1000).jobs)  # none refused


@pytest.fixture
def sshfs_inbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Harness]]:
    skip_unless_available("sshfs", "fusermount", "ssh-keygen", SSHD, fuse=True)
    server_dir = tmp_path / "nas-disk"
    server_dir.mkdir()
    mount = SshfsMount(tmp_path / "sshd", server_dir, tmp_path / "inbox", subtype=request.param)
    try:
        h = Harness(tmp_path, "auto", stability_seconds=STABILITY)
        yield server_dir, h
        h.stop()
    finally:
        mount.stop()


@pytest.mark.parametrize(
    ("sshfs_inbox", "fs_type", "why"),
    [
        (None, "fuse.sshfs", "network filesystem"),
        ("rclone-variant", "fuse.rclone-variant", "FUSE filesystem not known to be local"),
    ],
    indirect=["sshfs_inbox"],
)
def test_files_written_on_the_server_side_of_a_fuse_mount_are_polled_and_become_one_job_each(
    sshfs_inbox: tuple[Path, Harness], fs_type: str, why: str
) -> None:
    server_dir, h = sshfs_inbox
    intake = h.start()
    assert intake.mode == "polling"
    reason = h.health.get("watch_mode_reason")
    assert why in reason and fs_type in reason, reason
    assert h.health.get("inbox_filesystem").startswith(fs_type)

    expected: dict[str, bytes] = {}
    (server_dir / "album").mkdir()
    with open(server_dir / "album" / "slow.jpg", "wb") as handle:  # the NAS writes it in pieces
        for piece in photo_pieces("slow", 6):
            handle.write(piece)
            handle.flush()
            time.sleep(PIECE_PAUSE)
    expected["album/slow.jpg"] = (server_dir / "album" / "slow.jpg").read_bytes()
    (server_dir / "._slow.jpg").write_bytes(b"\x00\x05\x16\x07")  # ignored
    (server_dir / "copy.jpg.part").write_bytes(fake_photo(b"copied then renamed"))
    (server_dir / "copy.jpg.part").rename(server_dir / "copy.jpg")
    expected["copy.jpg"] = (server_dir / "copy.jpg").read_bytes()

    wait_for(lambda: set(jobs_by_path(h)) == set(expected), timeout=40)
    h.settle(3 * STABILITY)
    assert jobs_by_path(h) == {path: [sha256(data)] for path, data in expected.items()}


def test_an_smbnetfs_mount_is_polled_as_an_unknown_fuse_type_and_server_writes_become_one_job_each(
    tmp_path: Path,
) -> None:
    skip_unless_available("smbd", "smbnetfs", "fusermount", fuse=True)
    if not port_is_free(445):
        pytest.skip("127.0.0.1:445 is taken: smbnetfs (libsmbclient) only dials port 445")
    server_dir = tmp_path / "nas-disk"
    server_dir.mkdir()
    server = SambaServer(tmp_path / "samba", server_dir, port=445)
    mount = SmbnetfsMount(tmp_path / "home", tmp_path / "network")
    try:
        (server_dir / "old.jpg").write_bytes(fake_photo(b"there before the daemon"))
        h = Harness(tmp_path, "auto", stability_seconds=STABILITY, inbox=tmp_path / "network/127.0.0.1/inbox")
        try:
            intake = h.start()
            assert intake.mode == "polling"
            reason = h.health.get("watch_mode_reason")
            assert "FUSE filesystem not known to be local" in reason and "fuse.smbnetfs" in reason, reason
            (server_dir / "new.jpg.part").write_bytes(fake_photo(b"written on the NAS"))
            (server_dir / "new.jpg.part").rename(server_dir / "new.jpg")
            expected = {name: (server_dir / name).read_bytes() for name in ("old.jpg", "new.jpg")}
            wait_for(lambda: set(jobs_by_path(h)) == set(expected), timeout=40)
            h.settle(3 * STABILITY)
            assert jobs_by_path(h) == {path: [sha256(data)] for path, data in expected.items()}
        finally:
            h.stop()
    finally:
        mount.stop()
        server.stop()


def test_kernel_smb_client_mount_is_polled(tmp_path: Path) -> None:
    skip_unless_available("smbd", "mount")
    if "cifs" not in Path("/proc/filesystems").read_text().split() and not Path("/sbin/mount.cifs").exists():
        pytest.skip("this kernel has no cifs filesystem (not in /proc/filesystems) and no mount.cifs")
    server = SambaServer(tmp_path / "samba", tmp_path / "nas-disk")
    (tmp_path / "nas-disk").mkdir(exist_ok=True)
    (tmp_path / "inbox").mkdir()
    options = f"port={server.port},guest,vers=3.0"
    try:
        mounted = subprocess.run(
            ["mount", "-t", "cifs", "//127.0.0.1/inbox", str(tmp_path / "inbox"), "-o", options],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if mounted.returncode != 0:
            pytest.skip(f"mount -t cifs refused here: {mounted.stderr.strip()}")
        h = Harness(tmp_path, "auto", stability_seconds=STABILITY)
        try:
            assert h.start().mode == "polling"
            data = fake_photo(b"from the NAS side")
            (tmp_path / "nas-disk" / "nas.jpg").write_bytes(data)
            wait_for(lambda: jobs_by_path(h) == {"nas.jpg": [sha256(data)]}, timeout=30)
        finally:
            h.stop()
            subprocess.run(["umount", "-l", str(tmp_path / "inbox")], check=False)
    finally:
        server.stop()

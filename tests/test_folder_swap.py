"""Folders swapped for symlinks while a real `restorer serve` works (issue 18, item 1).

A share user can flip a folder the daemon is working in with a symlink to a folder outside its four
folders (renameat2 RENAME_EXCHANGE, the link parked in a dot-folder the watcher ignores), as often as
they like. Reading was already safe (open_beneath); archiving, deleting, moving to failed/ and publishing
acted later by path name and followed the swapped parent folder. This test runs the real daemon while a
thread swaps inbox/, failed/, archive/ and outbox folders for links in a tight loop, during dozens of
drops, duplicates, retries from failed/ and uploads, and checks that nothing outside the four folders is
read, moved, deleted, copied into them or served: inotify on the outside folder sees no file event, its
files keep their bytes and inodes, and neither its bytes nor the daemon's environment (/proc/self/environ,
with the API token) appear in any file under the four folders or in any answer of the API.

On the code before the fix (main at 5a9382f) it failed in every mode: uploads wrote their temp file and the
photo through the linked preset folder into the folder outside. With the /proc/self swap left out (the old
watcher listed /proc/self through the link and stalled), duplicates' disposal also moved files from outside
into archive/ and served them (archive) or deleted them (delete), and an output was published through a
linked outbox folder.
"""

from __future__ import annotations

import ctypes
import functools
import os
import random
import stat
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import beneath
from tests.daemon_processors import fake_photo
from tests.support.serve import ServeProcess
from tests.support.site import png_bytes
from tests.support.waiting import wait_for
from tests.support.workspace import jobs, jobs_by_input

TOKEN = "folder-swap-token-" + uuid.uuid4().hex
SECRET = b"SECRET-OUTSIDE-THE-FOUR-FOLDERS:"
ROUNDS = 10  # each round: a new photo, a duplicate, a /proc/self duplicate, a refused file retried, an upload
FOLDERS = ("inbox", "outbox", "failed", "archive")
AT_FDCWD = -100
RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(first: Path, second: Path) -> None:
    """Atomically swap two directory entries (renameat2 RENAME_EXCHANGE), as an attacker on the share can."""
    if _libc.renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), str(first))


class FolderSwapper:
    """Flips each real folder with a link parked in a dot-folder beside it, one thread per folder in a tight
    loop: the link stands in the folder's place for HOLD seconds, then the real folder is back for REST
    seconds (random in those ranges). When the daemon removes a link it found in a folder's place, the
    pair is set up again."""

    HOLD = (0.002, 0.010)
    REST = (0.010, 0.040)
    # /proc/self is a deep tree: a daemon that lists through the link (today's watcher did) needs time
    # between swaps to get anything else done.
    SLOW_REST = (0.100, 0.300)

    def __init__(self, pairs: list[tuple[Path, Path, str]]) -> None:
        self.pairs = pairs  # (where the real folder is, where its link is parked, what the link points at)
        self.stop = threading.Event()
        self.swaps = 0
        for place, parked, target in pairs:
            parked.parent.mkdir(exist_ok=True)
            place.mkdir(exist_ok=True)
            parked.symlink_to(target)
        self.threads = [
            threading.Thread(target=self._swap, args=(pair, seed), name="folder-swapper", daemon=True)
            for seed, pair in enumerate(pairs)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _swap(self, pair: tuple[Path, Path, str], seed: int) -> None:
        place, parked, target = pair
        chance = random.Random(seed)
        while not self.stop.is_set():
            try:
                exchange(place, parked)  # the link now stands where the folder was
                time.sleep(chance.uniform(*self.HOLD))
                exchange(place, parked)  # and the folder is back
                self.swaps += 1
            except OSError:
                self._repair(place, parked, target)
            time.sleep(chance.uniform(*(self.SLOW_REST if target.startswith("/proc") else self.REST)))

    def _repair(self, place: Path, parked: Path, target: str) -> None:
        if not place.is_dir() or place.is_symlink():
            if place.is_symlink():
                place.unlink()
            if parked.is_dir() and not parked.is_symlink():
                parked.rename(place)
            else:
                place.mkdir(exist_ok=True)
        if not os.path.lexists(parked):
            parked.symlink_to(target)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        for place, parked, target in self.pairs:
            self._repair(place, parked, target)
            assert place.is_dir() and not place.is_symlink() and parked.is_symlink()


EVENT_NAMES = {
    0x1: "read",
    0x2: "written",
    0x4: "attributes changed",
    0x8: "closed after writing",
    0x20: "opened",
    0x40: "moved away",
    0x80: "moved in",
    0x100: "created",
    0x200: "deleted",
}


class OutsideWatch:
    """inotify on the folder outside: every open, read, write, move, delete or creation of a file in it."""

    MASK = sum(EVENT_NAMES)
    ISDIR = 0x40000000

    def __init__(self, folder: Path) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        assert _libc.inotify_add_watch(self.fd, os.fsencode(folder), self.MASK) >= 0

    def file_events(self) -> list[tuple[str, int]]:
        """(file name, mask) of each event on a file in the folder so far (listing the folder itself is not
        counted: names are not contents)."""
        events: list[tuple[str, int]] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return events
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
                offset += 16 + length
                if name and not mask & self.ISDIR:
                    events.append((name, mask))

    def close(self) -> None:
        os.close(self.fd)


class Drops:
    """Writes into a real inbox folder through a descriptor held on it: whatever the swapper has put in
    its place, the test's own files land in the real folder."""

    def __init__(self, folder: Path) -> None:
        self.fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)

    def write(self, name: str, data: bytes) -> None:
        temp = f".{name}.part"  # junk to the watcher until renamed: never seen half-written
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=self.fd)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def close(self) -> None:
        os.close(self.fd)


def secrets_outside(outside: Path, names: list[str]) -> dict[str, tuple[bytes, int]]:
    """Files outside the four folders named like the ones the test drops, readable by their owner only."""
    made = {}
    for name in names:
        data = SECRET + name.encode() + b"\n"
        path = outside / name
        path.write_bytes(data)
        path.chmod(0o600)
        made[name] = (data, path.stat().st_ino)
    return made


@functools.cache
def api_port(serve: ServeProcess) -> int:
    return serve.api_port()  # read from its log once: the swapping makes that log long


def call(
    serve: ServeProcess, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{api_port(serve)}{path}",
        data=body,
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def upload(serve: ServeProcess, name: str, data: bytes, preset: str) -> tuple[int, bytes]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="preset"\r\n\r\n{preset}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return call(
        serve, "POST", "/api/v1/jobs", body, **{"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )


def regular_files(folder: Path) -> Iterator[Path]:
    """Every regular file under folder, never through a link."""
    for current, _folders, files in os.walk(folder, followlinks=False):
        for name in files:
            path = Path(current) / name
            if stat.S_ISREG(os.lstat(path).st_mode):
                yield path


def finished(root: Path, expected: int) -> bool:
    found = jobs(root)
    return len(found) >= expected and all(job.state in ("done", "failed", "cancelled") for job in found)


@pytest.mark.parametrize(
    ("originals", "resolver"), [("archive", "openat2"), ("delete", "O_NOFOLLOW chain"), ("keep", "openat2")]
)
def test_folders_swapped_for_links_during_drops_duplicates_retries_and_uploads_leak_nothing(
    root: Path, serves: list[ServeProcess], originals: str, resolver: str
) -> None:
    if resolver == "openat2" and not beneath.openat2_in_use():
        pytest.skip("this kernel (or its seccomp profile) has no openat2; the chain runs in the delete case")
    outside = root / "outside"
    outside.mkdir()
    names = [f"t{i}.jpg" for i in range(ROUNDS)] + [f"r{i}.jpg" for i in range(ROUNDS)]
    secrets = secrets_outside(outside, names)
    chain = resolver != "openat2"
    serve = ServeProcess(
        root,
        {"RESTORER_API_TOKEN": TOKEN, "TESTS_NO_OPENAT2": "1" if chain else "0"},
        "--originals",
        originals,
        processor="tests.daemon_processors:" + ("CopyWithoutOpenat2" if chain else "CopyProcessor"),
    )
    serves.append(serve)
    serve.wait_ready()
    assert ("O_NOFOLLOW chain, not openat2" in serve.output()) == chain
    for folder in ("inbox/album", "inbox/proc", "inbox/2x"):
        (root / folder).mkdir()
    seed = fake_photo(b"the photo every duplicate copies")
    (root / "inbox" / "seed.jpg").write_bytes(seed)
    wait_for(lambda: (job := jobs_by_input(root).get("seed.jpg")) is not None and job.state == "done")
    swapper = FolderSwapper(
        [
            (root / "inbox" / "album", root / "inbox" / ".park" / "album", str(outside)),
            (root / "inbox" / "2x", root / "inbox" / ".park" / "2x", str(outside)),
            (root / "failed" / "album", root / "failed" / ".park" / "album", str(outside)),
            (root / "archive" / "album", root / "archive" / ".park" / "album", str(outside)),
            (root / "outbox" / "album", root / "outbox" / ".park" / "album", str(outside)),
            (root / "inbox" / "proc", root / "inbox" / ".park" / "proc", "/proc/self"),
        ]
    )
    watch = OutsideWatch(outside)
    album, proc = Drops(root / "inbox" / "album"), Drops(root / "inbox" / "proc")  # before any swap
    try:
        swapper.start()
        uploads, unfinished = run_workload(serve, root, seed, album, proc)
    finally:
        swapper.finish()
        album.close()
        proc.close()
    events = watch.file_events()
    watch.close()
    problems = leaks(serve, root, outside, secrets, events)
    assert problems == [], f"{len(problems)} leaks ({swapper.swaps} swaps):\n" + "\n".join(problems[:60])
    assert unfinished is None, unfinished
    _nothing_lost(root, uploads, originals)
    assert serve.health()["status"] in ("ok", "degraded")
    assert serve.terminate() == 0, serve.output()[-3000:]


def run_workload(
    serve: ServeProcess, root: Path, seed: bytes, album: Drops, proc: Drops
) -> tuple[list[tuple[int, bytes]], str | None]:
    """ROUNDS rounds of: a new photo, a duplicate named like a file outside, a duplicate named like
    /proc/self/environ, a file intake refuses (set aside in failed/album) then retried, an upload into the
    2x preset folder. Returns the upload answers and, when the jobs did not all finish, where they stand."""
    uploads: list[tuple[int, bytes]] = []
    retried: set[str] = set()
    for i in range(ROUNDS):
        album.write(f"u{i}.jpg", fake_photo(b"new photo %d" % i))
        album.write(f"t{i}.jpg", seed)
        proc.write("environ", seed)
        album.write(f"r{i}.jpg", b"SLOW0.2|not an image at intake, restored when retried %d" % i)
        uploads.append(upload(serve, f"t{i}.png", png_bytes(seed=i), "2x"))
        retry_refused(serve, root, retried)
        time.sleep(0.15)
    deadline = time.monotonic() + 120  # generous: a loaded 2-core CI box; a pass returns at once
    while time.monotonic() < deadline:
        if retry_refused(serve, root, retried) == ROUNDS and finished(root, 1 + 3 * ROUNDS):
            return uploads, None
        time.sleep(0.2)
    table = "\n".join(f"{j.id} {j.input_path} {j.state} {j.original} {j.error} {j.note}" for j in jobs(root))
    return uploads, f"not all jobs finished within 120 s:\n{table}"


def leaks(
    serve: ServeProcess,
    root: Path,
    outside: Path,
    secrets: dict[str, tuple[bytes, int]],
    events: list[tuple[str, int]],
) -> list[str]:
    """Every sign that something outside the four folders was read, moved, deleted, written, copied in or
    served."""
    seen: dict[str, set[str]] = {}
    for name, mask in events:
        seen.setdefault(name, set()).update(what for bit, what in EVENT_NAMES.items() if mask & bit)
    found = [f"outside/{name}: {', '.join(sorted(what))}" for name, what in seen.items()]
    for name, (data, inode) in secrets.items():
        path = outside / name
        if not path.exists() or path.read_bytes() != data or path.stat().st_ino != inode:
            found.append(f"outside/{name} was moved, deleted or changed")
    found += [f"outside/{p.name} was created" for p in outside.iterdir() if p.name not in secrets]
    forbidden = (SECRET, TOKEN.encode())
    for folder in FOLDERS:
        for path in regular_files(root / folder):
            if any(mark in path.read_bytes() for mark in forbidden):
                found.append(f"{path.relative_to(root)} holds bytes from outside")
    for job in jobs(root):
        for which in ("input", "output"):
            _status, body = call(serve, "GET", f"/api/v1/jobs/{job.id}/{which}")
            if any(mark in body for mark in forbidden):
                found.append(f"GET job {job.id} ({job.input_path}) {which} served bytes from outside")
    return found


def retry_refused(serve: ServeProcess, root: Path, retried: set[str]) -> int:
    """Retry each file intake refused (set aside in failed/album, or left in the inbox when failed/album was
    a link at that moment); how many were retried so far."""
    for path, job in jobs_by_input(root).items():
        if path.startswith("album/r") and job.state == "failed" and job.attempts == 0 and path not in retried:
            retried.add(path)
            assert call(serve, "POST", f"/api/v1/jobs/{job.id}/retry")[0] == 200
    return len(retried)


def _nothing_lost(root: Path, uploads: list[tuple[int, bytes]], originals: str) -> None:
    """Every file the test dropped or uploaded is still somewhere in the four folders (restored into the
    outbox, or left where it was when a link stood in the way), every job came to an end, an upload refused
    says why, and each kind of operation under attack really happened (the test is not vacuous)."""
    contents = {path.read_bytes() for folder in FOLDERS for path in regular_files(root / folder)}
    for i in range(ROUNDS):
        assert fake_photo(b"new photo %d" % i) in contents, i
        assert b"SLOW0.2|not an image at intake, restored when retried %d" % i in contents, i
    for status, body in uploads:
        assert status == 202 or (status == 409 and b"link" in body), (status, body[:300])
    found = jobs(root)
    done = [job for job in found if job.state == "done"]
    duplicates = [
        job for job in found if job.state == "cancelled" and job.input_path.startswith(("album/t", "proc/"))
    ]
    disposed = {"archive": "archived", "delete": "deleted", "keep": "inbox"}[originals]
    exercised = {
        "photos restored": sum(job.input_path.startswith("album/u") for job in done),
        "duplicates disposed of": sum(job.original == disposed for job in duplicates),
        "refused files retried and restored": sum(job.input_path.startswith("album/r") for job in done),
        "uploads accepted": sum(status == 202 for status, _ in uploads),
    }
    assert all(exercised.values()), exercised

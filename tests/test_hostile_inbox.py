"""The inbox is a share other people write into (issue 9, file side): a real `restorer serve` (the copy
stage in its worker) against links, special files, planted folders and files replaced mid-restore.
Each test failed on the code before the fix."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_processors import fake_photo
from tests.support.serve import ServeProcess
from tests.support.waiting import wait_for
from tests.support.workspace import files_under, jobs, jobs_by_input

SECRET = b'api_token = "s3cret-token-of-the-server"\n'


def start(
    serves: list[ServeProcess], root: Path, *extra: str, settings: dict[str, Any] | None = None
) -> ServeProcess:
    serve = ServeProcess(root, None, *extra, settings=settings)
    serves.append(serve)
    serve.wait_ready()
    return serve


def states(root: Path) -> dict[str, str]:
    return {path: job.state for path, job in jobs_by_input(root).items()}


def job_states(root: Path) -> list[str]:
    return [job.state for job in jobs(root)]


def contents_under(folder: Path) -> list[bytes]:
    return [path.read_bytes() for path in folder.rglob("*") if path.is_file() and not path.is_symlink()]


def get(serve: ServeProcess, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{serve.api_port()}{path}", timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_symlink_to_a_secret_with_failed_on_another_filesystem_leaks_nothing(
    root: Path, serves: list[ServeProcess]
) -> None:
    secret = root / "server-secret.toml"
    secret.write_bytes(SECRET)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root / "failed")], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        serve = start(serves, root)
        (root / "inbox" / "holiday.jpg").symlink_to(secret)
        job = wait_for(
            lambda: (j := jobs_by_input(root).get("holiday.jpg")) is not None and j.state == "failed" and j
        )
        assert "symbolic link" in job.error and job.failure_kind == "bad-input"
        reason = (
            wait_for(lambda: (root / "failed" / "holiday.jpg.error.txt").is_file())
            and (root / "failed" / "holiday.jpg.error.txt").read_text()
        )
        assert "copy the photo itself, not a link" in reason.lower()
        # Not in failed/ (today: the EXDEV copy put the secret's bytes there), not in the outbox, not served.
        for folder in ("inbox", "outbox", "failed", "archive"):
            assert all(SECRET not in data for data in contents_under(root / folder)), folder
        status, body = get(serve, f"/api/v1/jobs/{job.id}/input")
        assert status == 404 and SECRET not in body
        assert not os.path.lexists(root / "inbox" / "holiday.jpg")  # the link itself was removed
        assert secret.read_bytes() == SECRET  # ... and never its target
        assert serve.health()["status"] == "ok"
        assert serve.terminate() == 0
    finally:
        for serve in serves:
            serve.cleanup()
        subprocess.run(["umount", "-l", str(root / "failed")])


def test_fifo_and_socket_in_the_inbox_are_refused_and_the_daemon_goes_on(
    root: Path, serves: list[ServeProcess]
) -> None:
    serve = start(serves, root)
    os.mkfifo(root / "inbox" / "pipe.jpg")  # today: the hash read blocks the intake thread for good
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(root / "inbox" / "sock.jpg"))
    try:
        (root / "inbox" / "photo.jpg").write_bytes(fake_photo(b"a real photo"))
        expected = {"pipe.jpg": "failed", "sock.jpg": "failed", "photo.jpg": "done"}
        wait_for(lambda: states(root) == expected)
        wait_for(lambda: len(files_under(root / "failed")) == 2)  # the reasons follow the failed rows
    finally:
        listener.close()
    found = jobs_by_input(root)
    assert "named pipe (FIFO)" in found["pipe.jpg"].error
    assert "socket" in found["sock.jpg"].error
    assert files_under(root / "failed") == ["pipe.jpg.error.txt", "sock.jpg.error.txt"]
    assert files_under(root / "inbox") == [] and files_under(root / "outbox") == ["photo.bin"]
    assert serve.terminate() == 0


def test_a_symlinked_folder_planted_in_the_outbox_is_never_written_through(
    root: Path, serves: list[ServeProcess]
) -> None:
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    (root / "outbox" / "album").symlink_to(elsewhere)  # a share user's trap
    serve = start(serves, root)
    (root / "inbox" / "album").mkdir()
    (root / "inbox" / "album" / "a.jpg").write_bytes(fake_photo(b"a photo"))
    job = wait_for(
        lambda: (j := jobs_by_input(root).get("album/a.jpg")) is not None and j.state == "failed" and j
    )
    assert "symbolic link" in job.error and "original is still in the inbox" in job.error
    assert list(elsewhere.iterdir()) == []
    assert files_under(root / "inbox") == ["album/a.jpg"]
    assert serve.terminate() == 0


@pytest.mark.parametrize("originals", ["delete", "archive"])
def test_a_scan_saved_again_mid_restore_is_not_lost(
    root: Path, serves: list[ServeProcess], originals: str
) -> None:
    serve = start(serves, root, "--originals", originals)
    scan = root / "inbox" / "scan.jpg"
    scan.write_bytes(fake_photo(b"SLOW1.5|first scan"))
    # Progress means the worker has read the first scan and is restoring it.
    wait_for(lambda: (job := jobs_by_input(root).get("scan.jpg")) is not None and job.progress > 0)
    scan.write_bytes(fake_photo(b"second scan, saved over the first while it is restored"))
    wait_for(lambda: job_states(root) == ["done", "done"], timeout=30)
    outputs = sorted((root / "outbox").iterdir())
    assert sorted(path.read_bytes() for path in outputs) == [
        fake_photo(b"SLOW1.5|first scan"),
        fake_photo(b"second scan, saved over the first while it is restored"),
    ]
    assert [path.name for path in outputs] == ["scan (1).bin", "scan.bin"]
    assert (root / "outbox" / "scan.bin").read_bytes() == fake_photo(b"SLOW1.5|first scan")
    assert files_under(root / "inbox") == []
    if originals == "archive":
        assert [p.read_bytes() for p in (root / "archive").iterdir()] == [
            fake_photo(b"second scan, saved over the first while it is restored")
        ]
    assert serve.terminate() == 0


def test_an_oversized_file_and_a_large_video_are_refused_unread(
    root: Path, serves: list[ServeProcess]
) -> None:
    serve = start(serves, root, settings={"max_input_mb": 64})
    with open(root / "inbox" / "huge.jpg", "wb") as huge:  # sparse: 80 MB without writing them
        huge.truncate(80 * 1024 * 1024)
    video = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * (20 * 1024 * 1024)  # an MP4 header, 20 MB
    (root / "inbox" / "holiday.mp4.jpg").write_bytes(video)
    (root / "inbox" / "photo.jpg").write_bytes(fake_photo(b"a real photo"))
    wait_for(lambda: states(root) == {"huge.jpg": "failed", "holiday.mp4.jpg": "failed", "photo.jpg": "done"})
    wait_for(lambda: len(files_under(root / "failed")) == 4)  # the reasons follow the failed rows
    found = jobs_by_input(root)
    assert "more than the 64 MB limit" in found["huge.jpg"].error
    assert "not an image" in found["holiday.mp4.jpg"].error
    # Refused from its size and first bytes: the identity recorded is the entry's, not a content hash.
    assert found["holiday.mp4.jpg"].content_sha256 != hashlib.sha256(video).hexdigest()
    assert files_under(root / "failed") == [
        "holiday.mp4.jpg",
        "holiday.mp4.jpg.error.txt",
        "huge.jpg",
        "huge.jpg.error.txt",
    ]
    assert "max_input_mb" in (root / "failed" / "huge.jpg.error.txt").read_text()
    assert serve.terminate() == 0


def test_kill_9_between_publish_and_finish_leaves_exactly_one_output(
    root: Path, serves: list[ServeProcess]
) -> None:
    serve = ServeProcess(root, None, processor="tests.daemon_processors:KillBeforeFinish")
    serves.append(serve)
    serve.wait_ready()
    (root / "inbox" / "a.jpg").write_bytes(fake_photo(b"a photo"))
    job = wait_for(
        lambda: (j := jobs_by_input(root).get("a.jpg")) is not None and j.state == "done" and j, timeout=60
    )
    assert (root / "state" / "killed-at-finish").exists()  # the worker really died after publishing
    assert job.attempts == 2 and "recorded, not restored again" in job.note
    assert files_under(root / "outbox") == ["a.bin"]  # today: a second run publishes "a (1).bin"
    assert files_under(root / "archive") == ["a.jpg"] and files_under(root / "inbox") == []
    assert serve.terminate() == 0


def test_kill_9_between_finish_and_dispose_loses_no_original(root: Path, serves: list[ServeProcess]) -> None:
    serve = ServeProcess(root, None, processor="tests.daemon_processors:KillBeforeDispose")
    serves.append(serve)
    serve.wait_ready()
    (root / "inbox" / "a.jpg").write_bytes(fake_photo(b"a photo"))
    wait_for(lambda: (root / "state" / "killed-at-dispose").exists(), timeout=60)
    wait_for(lambda: get(serve, "/api/v1/health")[0] == 200, timeout=60)  # the worker came back
    job = jobs_by_input(root)["a.jpg"]
    assert job.state == "done" and job.attempts == 1
    assert files_under(root / "outbox") == ["a.bin"]
    assert files_under(root / "inbox") == ["a.jpg"]  # not disposed, not lost, never processed again
    assert serve.terminate() == 0


def test_a_small_text_file_named_jpg_is_refused_at_intake_and_never_reaches_a_worker(
    root: Path, serves: list[ServeProcess]
) -> None:
    serve = start(serves, root)
    notes = b"shopping list: milk, eggs, film for the old camera\n"
    (root / "inbox" / "notes.jpg").write_bytes(notes)
    # Junk rules come first: these are ignored, not refused, even though they are no images either.
    (root / "inbox" / ".notes.jpg").write_bytes(notes)
    (root / "inbox" / "notes.jpg.part").write_bytes(notes)
    (root / "inbox" / "photo.jpg").write_bytes(fake_photo(b"a real photo"))
    wait_for(lambda: states(root) == {"notes.jpg": "failed", "photo.jpg": "done"})
    wait_for(lambda: len(files_under(root / "failed")) == 2)  # the reason follows the failed row
    wait_for(lambda: jobs_by_input(root)["photo.jpg"].original != "inbox")  # disposed of after "done"
    refused = jobs_by_input(root)["notes.jpg"]
    assert refused.failure_kind == "bad-input" and "not an image" in refused.error
    assert refused.attempts == 0  # no worker ever claimed it
    assert refused.content_sha256 != hashlib.sha256(notes).hexdigest()
    assert files_under(root / "failed") == ["notes.jpg", "notes.jpg.error.txt"]
    assert (root / "failed" / "notes.jpg").read_bytes() == notes
    assert "This is not a picture file" in (root / "failed" / "notes.jpg.error.txt").read_text()
    assert "notes.jpg (attempt" not in serve.output()  # what the worker logs for each job it runs
    assert files_under(root / "inbox") == [".notes.jpg", "notes.jpg.part"]
    assert serve.terminate() == 0

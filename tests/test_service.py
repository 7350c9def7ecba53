"""`restorer serve` as a real process: crashes, signals, sd_notify, bursts, poison files, disk full.

The pipeline stage is the cheap test processor (tests/daemon_processors.py) except in the real-restore
test; the store, the watcher, the worker process, the publish protocol and the HTTP servers are real.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import main
from daemon import sdnotify
from daemon.store import JobStore
from tests.daemon_processors import fake_photo
from tests.support.paths import RESTORER
from tests.support.serve import COPY_PROCESSOR, ServeProcess
from tests.support.waiting import wait_for
from tests.support.workspace import files_under, jobs


class NotifyListener:
    """A real AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="sdn", dir="/tmp")  # short: sun_path is 108 bytes
        self.path = os.path.join(self.folder, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def times(self, line: str) -> list[float]:
        return [t for t, m in list(self.messages) if m == line]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.folder)


def start(
    serves: list[ServeProcess],
    root: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    processor: str | None = COPY_PROCESSOR,
) -> ServeProcess:
    serve = ServeProcess(root, env, *extra, processor=processor)
    serves.append(serve)
    serve.wait_ready()
    return serve


def job_states(root: Path) -> list[str]:
    return [j.state for j in jobs(root)]


def test_sd_notify_reaches_an_abstract_socket() -> None:
    name = f"restorer-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert listener.recv(100) == b"READY=1"
    assert sdnotify.notify("READY=1", {}) is False
    assert sdnotify.watchdog_seconds({"WATCHDOG_USEC": "2000000"}) == 2.0
    assert sdnotify.watchdog_seconds({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None


def test_health_is_down_while_starting_or_without_worker_and_degraded_for_intake_problems() -> None:
    from daemon.health import HealthState

    health = HealthState()
    assert health.snapshot()["status"] == "down"  # starting up
    health.update(ready=True, worker_alive=True, watcher_alive=True, worker_state="idle")
    assert health.snapshot()["status"] == "ok" and health.snapshot()["reasons"] == []
    health.update(inbox_reachable=False, inbox_error="Input/output error (/srv/photos/inbox)")
    snapshot = health.snapshot()
    assert snapshot["status"] == "degraded"
    assert snapshot["reasons"] == ["the inbox is unreachable: Input/output error (/srv/photos/inbox)"]
    health.update(
        inbox_reachable=True, worker_alive=False, worker_error="the worker process exited (code -9)"
    )
    snapshot = health.snapshot()
    assert snapshot["status"] == "down" and "exited (code -9)" in snapshot["reasons"][0]


def test_ready_only_after_db_open_interrupted_jobs_requeued_and_ports_bound(
    root: Path, serves: list[ServeProcess]
) -> None:
    (root / "inbox" / "left-running.jpg").write_bytes(fake_photo(b"SLOW0.5|interrupted by a crash"))
    store = JobStore(root / "state" / "jobs.sqlite3")
    stat = (root / "inbox" / "left-running.jpg").stat()
    import hashlib

    digest = hashlib.sha256(fake_photo(b"SLOW0.5|interrupted by a crash")).hexdigest()
    store.add("left-running.jpg", digest, stat.st_size, stat.st_mtime)
    store.claim_next()  # the previous run died here: 'processing', attempts 1
    store.close()
    notify = NotifyListener()
    try:
        serve = ServeProcess(root, {"NOTIFY_SOCKET": notify.path})
        serves.append(serve)
        wait_for(lambda: notify.times("READY=1"), timeout=60)
        job = jobs(root)[0]
        assert not (job.state == "processing" and job.attempts == 1)  # requeued before READY
        health = serve.health()  # the ports answer as soon as READY=1 is sent
        assert health["ready"] and health["watch_mode"] == "native" and health["backend"] == "copy"
        wait_for(lambda: job_states(root) == ["done"])
        assert jobs(root)[0].attempts == 2
        assert serve.terminate() == 0
        assert notify.times("STOPPING=1") and len(notify.times("READY=1")) == 1
    finally:
        notify.close()


def test_watchdog_pings_only_while_the_worker_is_healthy_and_hung_worker_is_restarted(
    root: Path, serves: list[ServeProcess]
) -> None:
    notify = NotifyListener()
    try:
        env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "300000", "RESTORER_HANG_SECONDS": "1.5"}
        serve = start(serves, root, "--max-attempts", "1", env=env)
        wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 3)
        (root / "inbox" / "hang.jpg").write_bytes(fake_photo(b"HANG forever"))
        wait_for(lambda: job_states(root) == ["processing"])
        hang_started = time.monotonic()
        wait_for(lambda: job_states(root) == ["failed"], timeout=30)
        failed_at = time.monotonic()
        wait_for(lambda: any(t > failed_at for t in notify.times("WATCHDOG=1")), timeout=30)
        pings = [t for t in notify.times("WATCHDOG=1") if t > hang_started]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) >= 0.5, gaps  # silent while the worker was dead or coming back
        job = jobs(root)[0]
        assert job.failure_kind == "crash" and "hang" in job.error
        wait_for(
            lambda: files_under(root / "failed") == ["hang.jpg", "hang.jpg.error.txt"]
        )  # moved after the row
        assert "restarted" in serve.output() or "hung" in serve.output()
        (root / "inbox" / "after.jpg").write_bytes(fake_photo(b"the new worker works"))
        wait_for(lambda: job_states(root) == ["failed", "done"])
        serve.terminate()
    finally:
        notify.close()


def test_kill_9_of_the_whole_service_mid_job_then_restart(root: Path, serves: list[ServeProcess]) -> None:
    serve = start(serves, root)
    (root / "inbox" / "long.jpg").write_bytes(fake_photo(b"SLOW2.0|the job that is running at the crash"))
    wait_for(lambda: job_states(root) == ["processing"] and jobs(root)[0].progress > 0)
    for n in range(3):  # queued behind it: must not be lost either
        (root / "inbox" / f"queued{n}.jpg").write_bytes(fake_photo(f"waiting {n}".encode()))
    wait_for(lambda: len(job_states(root)) == 4)
    serve.kill_all()
    assert files_under(root / "outbox") == []  # nothing partial, nothing published
    assert job_states(root) == ["processing", "queued", "queued", "queued"]
    # What a crash in the middle of publishing leaves behind (hidden temp files) is cleaned at start.
    (root / "outbox" / ".restorer-tmp-0123456789abcdef").write_bytes(b"half an image")
    start(serves, root)
    wait_for(lambda: job_states(root) == ["done"] * 4, timeout=60)
    first = jobs(root)[0]
    assert first.attempts == 2 and [j.attempts for j in jobs(root)[1:]] == [1, 1, 1]
    assert files_under(root / "outbox") == ["long.bin", "queued0.bin", "queued1.bin", "queued2.bin"]
    assert (root / "outbox" / "long.bin").read_bytes().startswith(fake_photo(b"SLOW2.0|"))
    assert files_under(root / "inbox") == []
    assert not (root / "outbox" / ".restorer-tmp-0123456789abcdef").exists()


def test_kill_9_of_the_main_process_takes_the_worker_with_it(root: Path, serves: list[ServeProcess]) -> None:
    serve = start(serves, root)
    worker_pid = serve.health()["worker_pid"]
    os.kill(serve.proc.pid, 9)
    serve.proc.wait(10)
    # No orphan worker may keep writing while a new service starts (PR_SET_PDEATHSIG).
    wait_for(lambda: not Path(f"/proc/{worker_pid}").exists() or _zombie(worker_pid), timeout=10)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_sigterm_mid_job_finishes_the_current_image_within_grace(
    root: Path, serves: list[ServeProcess]
) -> None:
    serve = start(serves, root)
    (root / "inbox" / "a.jpg").write_bytes(fake_photo(b"SLOW1.0|finish me"))
    wait_for(lambda: job_states(root) == ["processing"])
    assert serve.terminate() == 0
    job = jobs(root)[0]
    assert job.state == "done" and job.attempts == 1 and files_under(root / "outbox") == ["a.bin"]


def test_sigterm_mid_job_requeues_when_grace_runs_out(root: Path, serves: list[ServeProcess]) -> None:
    serve = start(serves, root, "--stop-grace-seconds", "0.5")
    (root / "inbox" / "a.jpg").write_bytes(fake_photo(b"SLOW30|too long to wait for"))
    wait_for(lambda: job_states(root) == ["processing"])
    began = time.monotonic()
    assert serve.terminate() == 0
    assert time.monotonic() - began < 10
    job = jobs(root)[0]
    assert job.state == "queued" and job.attempts == 0  # a stop is not the file's fault
    assert files_under(root / "outbox") == [] and files_under(root / "inbox") == ["a.jpg"]


def test_poison_file_stops_at_max_attempts_and_lands_in_failed(
    root: Path, serves: list[ServeProcess]
) -> None:
    serve = start(serves, root, "--max-attempts", "2")
    (root / "inbox" / "poison.jpg").write_bytes(fake_photo(b"CRASH the worker"))
    wait_for(lambda: job_states(root) == ["failed"], timeout=60)
    job = jobs(root)[0]
    assert job.attempts == 2 and job.failure_kind == "crash"
    # The row says failed first; the move to failed/ and the note's publish follow a moment later.
    wait_for(lambda: files_under(root / "failed") == ["poison.jpg", "poison.jpg.error.txt"])
    reason = (root / "failed" / "poison.jpg.error.txt").read_text()
    assert "2 times" in reason and "restorer jobs retry" in reason
    (root / "inbox" / "fine.jpg").write_bytes(fake_photo(b"life goes on"))
    wait_for(lambda: job_states(root) == ["failed", "done"])
    assert serve.terminate() == 0


@pytest.mark.slow
def test_burst_of_1000_files_is_processed_exactly_once(root: Path, serves: list[ServeProcess]) -> None:
    serve = start(serves, root)
    for n in range(1000):
        folder = root / "inbox" / f"roll{n % 8}"
        folder.mkdir(exist_ok=True)
        (folder / f"img{n:04d}.jpg").write_bytes(fake_photo(f"burst {n}".encode()))
    wait_for(lambda: job_states(root).count("done") == 1000, timeout=150, interval=0.5)
    time.sleep(1.0)  # anything that would be queued twice is queued by now
    rows = jobs(root)
    assert len(rows) == 1000 and len({j.input_path for j in rows}) == 1000
    assert all(j.attempts == 1 for j in rows)
    assert len(files_under(root / "outbox")) == 1000 and len(files_under(root / "archive")) == 1000
    assert files_under(root / "inbox") == []
    assert serve.terminate() == 0


def test_outbox_full_pauses_intake_and_resumes_when_space_returns(
    root: Path, serves: list[ServeProcess]
) -> None:
    outbox = root / "outbox"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(outbox)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        serve = start(serves, root)
        big = fake_photo(os.urandom(100_000))  # larger than the whole outbox
        (root / "inbox" / "big.jpg").write_bytes(big)
        wait_for(lambda: job_states(root) == ["failed"])
        assert jobs(root)[0].failure_kind == "disk-full"
        health = wait_for(lambda: (h := serve.health())["intake_paused"] and h)
        assert health["status"] == "degraded" and any("outbox is full" in r for r in health["reasons"])
        (root / "inbox" / "later.jpg").write_bytes(fake_photo(b"arrives while paused"))
        time.sleep(1.0)
        assert len(jobs(root)) == 1 and files_under(root / "inbox") == ["big.jpg", "later.jpg"]
        subprocess.run(["mount", "-o", "remount,size=1m", str(outbox)], check=True)  # space returns
        wait_for(lambda: job_states(root) == ["done", "done"], timeout=30)
        assert files_under(outbox) == ["big.bin", "later.bin"] and (outbox / "big.bin").read_bytes() == big
        assert serve.health()["status"] == "ok"
        assert serve.terminate() == 0
    finally:
        for serve in serves:
            serve.cleanup()
        subprocess.run(["umount", "-l", str(outbox)])


def test_jobs_command_list_show_retry_cancel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    store = JobStore(state / "jobs.sqlite3")
    first = store.add("a b/photo.jpg", "h1", 10, 1.0).job
    second = store.add("other.jpg", "h2", 10, 1.0).job
    store.claim_next()
    store.fail(first.id, "the file is damaged", kind="bad-input")
    store.close()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        code = main(["jobs", "--state-dir", str(state), *args])  # in-process: the same code path, faster
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    table = cli("list").stdout
    assert "a b/photo.jpg" in table and "the file is damaged" in table and "queued" in table
    listed = json.loads(cli("--json", "list", "--state", "failed").stdout)
    assert [j["id"] for j in listed] == [first.id]
    assert "queue_position" in cli("show", str(second.id)).stdout
    assert json.loads(cli("--json", "retry", str(first.id)).stdout)["state"] == "queued"
    assert cli("retry", str(first.id)).stdout.strip() == f"job {first.id}: queued"  # idempotent
    assert cli("cancel", str(second.id)).stdout.strip() == f"job {second.id}: cancelled"
    assert cli("cancel", str(second.id)).returncode == 0
    missing = cli("show", "999")
    assert missing.returncode == 1 and "no job with id 999" in missing.stderr


def test_invalid_settings_are_refused_with_a_clear_message(root: Path) -> None:
    result = subprocess.run(
        [str(RESTORER), "serve", "--inbox", str(root / "x"), "--outbox", str(root / "x" / "out")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RESTORER_STATE_DIR": str(root / "state")},
    )
    assert result.returncode == 2 and "must be separate folders" in result.stderr


def test_polling_mode_end_to_end_with_a_skipped_duplicate(root: Path, serves: list[ServeProcess]) -> None:
    serve = start(serves, root, "--watch-mode", "polling")
    health = serve.health()
    assert health["watch_mode"] == "polling" and "watch_mode=polling" in health["watch_mode_reason"]
    (root / "inbox" / "a.jpg").write_bytes(fake_photo(b"one photo"))
    wait_for(lambda: job_states(root) == ["done"])
    (root / "inbox" / "copy of a.jpg").write_bytes(fake_photo(b"one photo"))
    wait_for(lambda: len(jobs(root)) == 2)
    skipped = wait_for(lambda: (j := jobs(root)[1]).original == "archived" and j)
    assert skipped.state == "cancelled" and skipped.note.startswith("skipped: same content as job 1")
    assert files_under(root / "outbox") == ["a.bin"] and files_under(root / "inbox") == []
    assert files_under(root / "archive") == ["a.jpg", "copy of a.jpg"]
    assert serve.terminate() == 0


def _deep_tree(top: Path, depth: int) -> None:
    """top/d/d/.../d (depth levels) with a photo at the bottom, built with openat: a plain path to the
    bottom is longer than the helpers' recursion allows."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            deeper = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        photo = os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(photo, fake_photo(b"at the bottom"))
        os.close(photo)
    finally:
        os.close(fd)


def _remove_deep_tree(top: Path) -> None:
    """Undo _deep_tree bottom-up (shutil.rmtree, and so pytest's temp cleanup, recurse per level)."""
    chain = [os.open(top, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            while True:
                chain.append(os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=chain[-1]))
        with contextlib.suppress(FileNotFoundError):
            os.unlink("deep.jpg", dir_fd=chain[-1])
        while len(chain) > 1:
            os.close(chain.pop())
            os.rmdir("d", dir_fd=chain[-1])
    finally:
        for fd in chain:
            os.close(fd)


@pytest.fixture
def deep_inbox(root: Path) -> Iterator[Path]:
    _deep_tree(root / "inbox", 1100)
    yield root / "inbox"
    _remove_deep_tree(root / "inbox")


@pytest.mark.parametrize("mode", ["native", "polling"])
def test_a_1000_deep_folder_is_reported_and_skipped_and_the_daemon_starts(
    root: Path, deep_inbox: Path, serves: list[ServeProcess], mode: str
) -> None:
    # 1,100 levels below the inbox: today a RecursionError in the startup scan, so a crash loop.
    (root / "inbox" / "top.jpg").write_bytes(fake_photo(b"a photo at the top"))
    serve = start(serves, root, "--watch-mode", mode)
    wait_for(lambda: job_states(root) == ["done"])
    assert [j.input_path for j in jobs(root)] == ["top.jpg"]
    health = wait_for(lambda: (h := serve.health())["too_deep_folders"] and h)
    assert health["too_deep_folders"] == ["/".join(["d"] * 33)]
    assert health["status"] == "degraded" and any("nested too deep" in r for r in health["reasons"])
    (root / "inbox" / "later.jpg").write_bytes(fake_photo(b"still watched"))
    wait_for(lambda: job_states(root) == ["done", "done"])
    assert serve.terminate() == 0


def test_port_in_use_is_a_clear_startup_error(root: Path, serves: list[ServeProcess]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        serve = ServeProcess(root, None, "--api-port", str(taken.getsockname()[1]))
        serves.append(serve)
        assert serve.proc.wait(60) == 1
    assert "cannot start: cannot listen on 127.0.0.1" in serve.output()


@pytest.mark.slow
def test_real_restore_end_to_end_through_restorer_serve(root: Path, serves: list[ServeProcess]) -> None:
    weights = Path(__file__).resolve().parent.parent / "weights"
    env = {"RESTORER_MODEL": "realesr-animevideov3", "RESTORER_FACES": "false"}
    env["RESTORER_WEIGHTS_DIR"] = str(weights)
    serve = start(serves, root, env=env, processor=None)  # the installed `restorer`, the real pipeline
    from PIL import Image

    from tests.test_job_loop import png_bytes

    (root / "inbox" / "family").mkdir()
    (root / "inbox" / "family" / "tiny.png").write_bytes(png_bytes(16))
    wait_for(lambda: job_states(root) == ["done"], timeout=120)
    with Image.open(root / "outbox" / "family" / "tiny.png") as out:
        assert out.size == (64, 64)
    job = jobs(root)[0]
    assert job.report["model"] == "realesr-animevideov3" and job.report["output_size"] == [64, 64]
    health = serve.health()
    assert health["status"] == "ok" and health["backend"] in ("openvino", "torch")
    models = {model["id"]: model for model in health["models"]}  # the worker's warm-up account
    assert models["realesr-animevideov3"]["state"] == "converted"
    assert models["GFPGANv1.4"]["state"] == "missing" and "GFPGANv1.4.pth" in models["GFPGANv1.4"]["action"]
    assert serve.terminate() == 0


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))

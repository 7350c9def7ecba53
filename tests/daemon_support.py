"""Helpers shared by the daemon tests: settings on temp folders, waiting, running `restorer serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.settings import Settings

REPO = Path(__file__).resolve().parent.parent
RESTORER = Path(sys.executable).parent / "restorer"
COPY_PROCESSOR = "tests.daemon_processors:CopyProcessor"


def make_settings(root: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "inbox": root / "inbox",
        "outbox": root / "outbox",
        "failed_dir": root / "failed",
        "archive_dir": root / "archive",
        "state_dir": root / "state",
        "stability_seconds": 0.3,
        "poll_seconds": 0.2,
        "rescan_seconds": 600,
        "heartbeat_seconds": 0.5,
        "min_free_mb": 0,
        "bind": "127.0.0.1",
        "api_port": 0,
        "site_port": 0,
    }
    values.update(overrides)
    settings = Settings.load(None, **values)
    for folder in (settings.inbox, settings.outbox, settings.failed_dir, settings.archive_dir):
        Path(folder).mkdir(parents=True, exist_ok=True)
    return settings


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {condition}")
        time.sleep(interval)


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


class ServeProcess:
    """`restorer serve` as a real child process, in its own process group (so kill -9 hits it all).

    processor: the worker's per-job stage, through the tests-only launcher (tests/serve_with.py);
    None runs the real pipeline through the installed `restorer` script. prefix: a command that runs the
    daemon (e.g. unshare into a namespace)."""

    def __init__(
        self,
        root: Path,
        env: dict[str, str] | None = None,
        *extra: str,
        processor: str | None = COPY_PROCESSOR,
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.root = root
        self.log_path = root / f"serve-{time.monotonic_ns()}.log"
        config = root / "restorer.toml"
        if not config.exists():
            config.write_text(
                "\n".join(
                    [
                        f'inbox = "{root / "inbox"}"',
                        f'outbox = "{root / "outbox"}"',
                        f'failed_dir = "{root / "failed"}"',
                        f'archive_dir = "{root / "archive"}"',
                        f'state_dir = "{root / "state"}"',
                        'bind = "127.0.0.1"',
                        "api_port = 0",
                        "site_port = 0",
                        "stability_seconds = 0.3",
                        "poll_seconds = 0.2",
                        "heartbeat_seconds = 0.5",
                        "min_free_mb = 0",
                    ]
                )
                + "\n"
            )
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        launcher = [str(RESTORER)]
        if processor is not None:
            launcher = [sys.executable, "-m", "tests.serve_with", processor]
        self.proc = subprocess.Popen(
            [*prefix, *launcher, "-v", "serve", "--config", str(config), *extra],
            cwd=root,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_for(lambda: "ready: inbox" in self.output() or self.proc.poll() is not None, timeout)
        assert self.proc.poll() is None, self.output()

    def api_port(self) -> int:
        for line in self.output().splitlines():
            if "api listening on" in line:
                return int(line.rsplit(":", 1)[1])
        raise AssertionError("api port not in log:\n" + self.output())

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port()}/api/v1/health", timeout=5) as r:
            return json.loads(r.read())

    def kill_all(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.log.close()
        return code

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.kill_all()
        if not self.log.closed:
            self.log.close()

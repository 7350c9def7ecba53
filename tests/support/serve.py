"""`restorer serve` as a real child process: the one launcher of the tests and the benchmarks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.paths import REPO, RESTORER
from tests.support.settings import serve_config
from tests.support.waiting import wait_for

COPY_PROCESSOR = "tests.daemon_processors:CopyProcessor"


class ServeProcess:
    """`restorer serve` as a real child process, in its own process group (so kill -9 hits it all).

    It reads root/restorer.toml: written from serve_config(root, quick, **settings) unless the test wrote
    its own (or `settings` are given); `env` adds RESTORER_* variables, which win over the file.
    processor: the worker's per-job stage, through the tests-only launcher (tests/serve_with.py);
    None runs the real pipeline through the installed `restorer` script. prefix: a command that runs the
    daemon (e.g. unshare into a namespace). verbose: -v, debug lines in the log."""

    def __init__(
        self,
        root: Path,
        env: dict[str, str] | None = None,
        *extra: str,
        processor: str | None = COPY_PROCESSOR,
        prefix: tuple[str, ...] = (),
        settings: dict[str, Any] | None = None,
        quick: bool = True,
        verbose: bool = True,
    ) -> None:
        self.root = root
        self.log_path = root / f"serve-{time.monotonic_ns()}.log"
        config = root / "restorer.toml"
        if settings is not None or not config.exists():
            config.write_text(serve_config(root, quick=quick, **(settings or {})))
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        launcher = [str(RESTORER)]
        if processor is not None:
            launcher = [sys.executable, "-m", "tests.serve_with", processor]
        self.proc = subprocess.Popen(
            [*prefix, *launcher, *(["-v"] if verbose else []), "serve", "--config", str(config), *extra],
            cwd=root,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the daemon logs that it watches the inbox (its servers answer by then), or exits."""
        wait_for(lambda: "ready: inbox" in self.output() or self.proc.poll() is not None, timeout, "ready")
        assert self.proc.poll() is None, self.output()

    def api_port(self) -> int:
        return self._port("api")

    def site_port(self) -> int:
        return self._port("page")

    def _port(self, server: str) -> int:
        for line in self.output().splitlines():
            if f"{server} listening on" in line:
                return int(line.rsplit(":", 1)[1])
        raise AssertionError(f"{server} port not in log:\n" + self.output())

    def api(self, path: str) -> Any:
        """GET /api/v1{path} on its API port, as JSON."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port()}/api/v1{path}", timeout=5) as r:
            return json.loads(r.read())

    def health(self) -> dict[str, Any]:
        return dict(self.api("/health"))

    def kill_all(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.log.close()
        return code

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the whole group if it does not end in 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill_all()
        self.cleanup()

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.kill_all()
        if not self.log.closed:
            self.log.close()


def serve_to_the_end(
    root: Path, env: dict[str, str | None], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """`restorer serve` on root's folders (serve_config) run until it exits: for a start that must fail.
    env: RESTORER_* variables to set, or (None) to remove from this process's environment."""
    config = root / "restorer.toml"
    config.write_text(serve_config(root))
    full_env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name, value in env.items():
        if value is None:
            full_env.pop(name, None)
        else:
            full_env[name] = value
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--config", str(config)],
        cwd=root,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

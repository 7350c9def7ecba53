"""Helpers for the status site tests: a real server on free ports, real folders, a real SQLite file,
and a "LAN client" in a network namespace of its own (`lan_client`).

`running_site` starts the two aiohttp servers through `status_site.server.start_servers` on their own
event loop thread, with a real JobStore and HealthState; `running_serve` starts the whole daemon,
`restorer serve`, as a subprocess (watcher + worker process + both servers). Tests written against a
`Site` run unchanged against either.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from daemon.health import HealthState
from daemon.settings import Settings
from daemon.store import JobStore, throughput_numbers

REPO = Path(__file__).resolve().parent.parent
# Debian's chromium, driven by Playwright (never a downloaded browser); flags keep it off the network.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class LanAnswer:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


# Runs inside the namespace: one HTTP request, its answer as JSON on stdout.
_LAN_REQUEST = r"""
import json, sys, requests
spec = json.loads(sys.argv[1])
files = [(field, (name, bytes.fromhex(data), kind)) for field, name, data, kind in spec["files"]] or None
session = requests.Session()
session.trust_env = False  # no proxy from the environment: this is a LAN client
answer = session.request(spec["method"], spec["url"], headers=spec["headers"], files=files, timeout=20)
print(json.dumps({"status": answer.status_code, "headers": dict(answer.headers), "text": answer.text}))
"""


@dataclass(frozen=True)
class LanClient:
    """A client on a private /30 inside its own network namespace, joined to this host by a veth pair.

    The server binds `server_address` (this host's end); the client comes from `client_address`, a
    non-loopback peer, and talks to nothing but that /30.
    """

    namespace: str
    server_address: str
    client_address: str

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        files: list[tuple[str, str, bytes, str]] | None = None,
    ) -> LanAnswer:
        spec = {
            "method": method,
            "url": url,
            "headers": headers or {},
            "files": [(field, name, data.hex(), kind) for field, name, data, kind in files or []],
        }
        result = subprocess.run(
            self.command(sys.executable, "-c", _LAN_REQUEST, json.dumps(spec)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"the LAN client failed: {result.stderr}")
        return LanAnswer(**json.loads(result.stdout))

    def get(self, url: str, **kwargs: Any) -> LanAnswer:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> LanAnswer:
        return self.request("POST", url, **kwargs)


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


@contextmanager
def lan_client() -> Iterator[LanClient]:
    """A network namespace with a veth pair and a private /30; removed afterwards, even on failure.

    Skips (does not fail) without root or without the `ip` tool, or where namespaces are not allowed.
    """
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a LAN client needs root and iproute2 (ip netns, veth)")
    tag = f"{os.getpid() % 10000:04d}{secrets.randbelow(100):02d}"
    namespace, host_end, client_end = f"restorer-lan-{tag}", f"rlh{tag}", f"rlc{tag}"
    # A /30 in 10.200-249.x.x chosen from the tag: parallel test runs get different subnets.
    second, third = 200 + int(tag[:2]) % 50, (int(tag[2:]) * 4) % 256
    server, client = f"10.{second}.{third}.1", f"10.{second}.{third}.2"
    try:
        try:
            _ip("netns", "add", namespace)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"network namespaces are not allowed here: {exc.stderr.decode().strip()}")
        _ip("link", "add", host_end, "type", "veth", "peer", "name", client_end)
        _ip("link", "set", client_end, "netns", namespace)
        _ip("addr", "add", f"{server}/30", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip("netns", "exec", namespace, "ip", "addr", "add", f"{client}/30", "dev", client_end)
        _ip("netns", "exec", namespace, "ip", "link", "set", client_end, "up")
        _ip("netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        yield LanClient(namespace=namespace, server_address=server, client_address=client)
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=30, check=False)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30, check=False)


@dataclass(frozen=True)
class LanPair:
    """Two machines of a LAN, each a network namespace of its own, joined by a veth pair on a private /30:
    `first` at `first_address`, `second` at `second_address`. Neither reaches anything else (not even
    this host's addresses); each has its own loopback and its own port space."""

    first: str
    second: str
    first_address: str
    second_address: str

    @staticmethod
    def command(namespace: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", namespace, *argv]


@contextmanager
def lan_pair() -> Iterator[LanPair]:
    """Two network namespaces and the veth pair between them; removed afterwards, even on failure.
    Skips like lan_client where namespaces cannot be made."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a LAN pair needs root and iproute2 (ip netns, veth)")
    tag = f"{os.getpid() % 10000:04d}{secrets.randbelow(100):02d}"
    first, second = f"restorer-a-{tag}", f"restorer-b-{tag}"
    # 10.250-254.x.x: apart from lan_client's 10.200-249.x.x.
    second_octet, third = 250 + int(tag[:2]) % 5, (int(tag[2:]) * 4) % 256
    first_address, second_address = f"10.{second_octet}.{third}.1", f"10.{second_octet}.{third}.2"
    end_a, end_b = f"rpa{tag}", f"rpb{tag}"
    made: list[str] = []
    try:
        for namespace in (first, second):
            try:
                _ip("netns", "add", namespace)
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"network namespaces are not allowed here: {exc.stderr.decode().strip()}")
            made.append(namespace)
        _ip("link", "add", end_a, "type", "veth", "peer", "name", end_b)
        for namespace, end, address in ((first, end_a, first_address), (second, end_b, second_address)):
            _ip("link", "set", end, "netns", namespace)
            _ip("-n", namespace, "addr", "add", f"{address}/30", "dev", end)
            _ip("-n", namespace, "link", "set", end, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        yield LanPair(first, second, first_address, second_address)
    finally:
        subprocess.run(["ip", "link", "del", end_a], capture_output=True, timeout=30, check=False)
        for namespace in made:  # deleting a namespace deletes the veth end inside it, and so its peer
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30, check=False)


def folders(tmp: Path) -> dict[str, Path]:
    return {
        "inbox": tmp / "inbox",
        "outbox": tmp / "outbox",
        "failed_dir": tmp / "failed",
        "archive_dir": tmp / "archive",
        "state_dir": tmp / "state",
    }


def png_bytes(width: int = 32, height: int = 24, seed: int = 0, mode: str = "RGB") -> bytes:
    image = Image.effect_noise((width, height), 30 + seed).convert(mode)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def jpeg_bytes(width: int = 32, height: int = 24, seed: int = 0) -> bytes:
    out = io.BytesIO()
    Image.effect_noise((width, height), 30 + seed).convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


@dataclass
class Site:
    api: str  # e.g. http://127.0.0.1:40123
    page: str
    settings: Settings
    http: requests.Session = field(default_factory=requests.Session)

    @property
    def db_path(self) -> Path:
        return self.settings.db_path

    def url(self, port: str, path: str) -> str:
        return (self.api if port == "api" else self.page) + path

    def insert_job(self, **fields: Any) -> int:
        """Write a job row straight into the daemon's database (as a finished worker would leave it).

        Only for states the worker never claims (done/failed/cancelled) or while no worker runs.
        """
        now = datetime.now(UTC)
        row: dict[str, Any] = {
            "input_path": f"seed-{time.monotonic_ns()}.png",
            "content_sha256": os.urandom(16).hex(),
            "size_bytes": 100,
            "mtime": time.time(),
            "options": "{}",
            "state": "done",
            "detected_at": (now - timedelta(seconds=30)).isoformat(timespec="microseconds"),
            "original": "inbox",
        }
        row.update(fields)
        if row["state"] == "done" and "input_megapixels" not in row:
            row["input_megapixels"], row["work_seconds"] = self._throughput(row)
        for key in ("report", "options"):
            if isinstance(row.get(key), dict):
                row[key] = json.dumps(row[key])
        for key, value in list(row.items()):
            if isinstance(value, datetime):
                row[key] = value.isoformat(timespec="microseconds")
        columns = ", ".join(row)
        marks = ", ".join(f":{key}" for key in row)
        with sqlite3.connect(self.db_path, timeout=30) as conn:
            cursor = conn.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", row)
            return int(cursor.lastrowid or 0)

    @staticmethod
    def _throughput(row: dict[str, Any]) -> tuple[float | None, float | None]:
        """The numbers JobStore.finish records for a done job: from its report, else its wall time."""
        megapixels, seconds = throughput_numbers(row.get("report"))
        started, finished = row.get("started_at"), row.get("finished_at")
        if seconds is None and isinstance(started, datetime) and isinstance(finished, datetime):
            seconds = (finished - started).total_seconds()
        return megapixels, seconds

    def get(self, path: str, port: str = "api", **kwargs: Any) -> requests.Response:
        return self.http.get(self.url(port, path), timeout=30, **kwargs)

    def post(self, path: str, port: str = "api", **kwargs: Any) -> requests.Response:
        return self.http.post(self.url(port, path), timeout=60, **kwargs)

    def wait_for(self, predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    flags: dict[str, Any] = {"bind": "127.0.0.1", "api_port": 0, "site_port": 0, **folders(tmp)}
    flags.update(overrides)
    return Settings.load(None, **flags)


@contextmanager
def running_site(tmp: Path, health: HealthState | None = None, **overrides: Any) -> Iterator[Site]:
    """start_servers on a private event loop thread, with a real JobStore on tmp/state/jobs.sqlite3."""
    from status_site.context import CONTEXT
    from status_site.server import bound_port, start_servers

    settings = make_settings(tmp, **overrides)
    for folder in folders(tmp).values():
        folder.mkdir(parents=True, exist_ok=True)
    store = JobStore(settings.db_path)
    if health is None:
        health = HealthState()
        health.update(ready=True, worker_alive=True, watcher_alive=True, watch_mode="native")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="site-loop", daemon=True)
    thread.start()
    try:
        runners = asyncio.run_coroutine_threadsafe(start_servers(settings, store, health), loop).result(30)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        store.close()
        raise
    host = "127.0.0.1" if settings.bind in ("0.0.0.0", "127.0.0.1") else settings.bind
    api_port, page_port = bound_port(runners[0]), bound_port(runners[1])
    site = Site(api=f"http://{host}:{api_port}", page=f"http://{host}:{page_port}", settings=settings)
    site.store = store  # type: ignore[attr-defined]
    site.health = health  # type: ignore[attr-defined]
    site.ports = (api_port, page_port)  # type: ignore[attr-defined]
    site.context = runners[0].app[CONTEXT]  # type: ignore[attr-defined]
    try:
        yield site
    finally:
        site.http.close()

        async def stop() -> None:
            for runner in reversed(runners):
                await runner.cleanup()
            # Handlers of keep-alive connections the clients left open end with the loop.
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        store.close()


@contextmanager
def running_serve(
    tmp: Path, env_extra: dict[str, str] | None = None, timeout: float = 120.0, processor: str | None = None
) -> Iterator[Site]:
    """`restorer serve` as a subprocess on free ports, configured through RESTORER_* variables.

    processor: "module:factory" of a cheap worker stage, run through the tests-only launcher
    (tests/serve_with.py); None runs the real pipeline.
    """
    api_port, site_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the tests-only launcher lives in tests/
    env.update({f"RESTORER_{key.upper()}": str(value) for key, value in folders(tmp).items()})
    env.update(
        {
            "RESTORER_BIND": "127.0.0.1",
            "RESTORER_API_PORT": str(api_port),
            "RESTORER_SITE_PORT": str(site_port),
            "RESTORER_STABILITY_SECONDS": "0.2",
            "RESTORER_POLL_SECONDS": "0.5",
            "RESTORER_MODEL": "realesr-animevideov3",
            "RESTORER_FACES": "false",
            "RESTORER_THREADS": "1",
            "RESTORER_WEIGHTS_DIR": str(REPO / "weights"),
        }
    )
    env.update(env_extra or {})
    log_path = tmp / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", *(["tests.serve_with", processor] if processor else ["app.cli"]), "serve"],
            cwd=tmp,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    settings = make_settings(
        tmp,
        api_port=api_port,
        site_port=site_port,
        **({} if not env_extra else _settings_from_env(env_extra)),
    )
    site = Site(api=f"http://127.0.0.1:{api_port}", page=f"http://127.0.0.1:{site_port}", settings=settings)
    site.process = process  # type: ignore[attr-defined]
    site.log_path = log_path  # type: ignore[attr-defined]
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"restorer serve exited with {process.returncode}:\n{log_path.read_text()}"
                )
            try:
                if site.http.get(site.api + "/api/v1/health", timeout=2).status_code in (200, 503):
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"restorer serve did not answer in {timeout:.0f} s:\n{log_path.read_text()}"
                )
            time.sleep(0.2)
        yield site
    finally:
        site.http.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _settings_from_env(env_extra: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in env_extra.items():
        name = key.removeprefix("RESTORER_").lower()
        if name in Settings.model_fields:
            # A list or a table travels through the environment as JSON, as pydantic-settings reads it there.
            values[name] = json.loads(value) if value.startswith(("[", "{")) else value
    return values

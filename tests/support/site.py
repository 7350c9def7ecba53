"""The status site under test: its two servers in-process (`running_site`) or the whole daemon, `restorer
serve`, as a subprocess (`running_serve`). Tests written against a `Site` run unchanged against either.

`running_site` starts the two aiohttp servers through `status_site.server.start_servers` on their own
event loop thread, with a real JobStore and HealthState; `running_serve` starts ServeProcess (watcher +
worker process + both servers).
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import sqlite3
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from PIL import Image

from daemon.health import HealthState
from daemon.settings import Settings
from daemon.store import JobStore, throughput_numbers
from tests.support.paths import REPO
from tests.support.serve import ServeProcess
from tests.support.settings import make_folders, make_settings
from tests.support.waiting import wait_for

if TYPE_CHECKING:
    from status_site.context import SiteContext


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

    @property
    def ports(self) -> tuple[int, int]:
        """(api port, page port)."""
        return _port(self.api), _port(self.page)

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
        return wait_for(predicate, timeout, what, interval=0.1)


@dataclass
class InProcessSite(Site):
    """The two servers on this process's event loop thread: the test reaches their store, health and
    context directly."""

    store: JobStore = field(kw_only=True)
    health: HealthState = field(kw_only=True)
    context: SiteContext = field(kw_only=True)


@dataclass
class ServedSite(Site):
    """The whole daemon as a child process."""

    serve: ServeProcess = field(kw_only=True)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.serve.proc

    @property
    def log_path(self) -> Path:
        return self.serve.log_path


def _port(base_url: str) -> int:
    return int(urllib.parse.urlsplit(base_url).port or 0)


@contextmanager
def running_site(
    tmp: Path, health: HealthState | None = None, *, list_models: bool = False, **overrides: Any
) -> Iterator[InProcessSite]:
    """start_servers on a private event loop thread, with a real JobStore on tmp/state/jobs.sqlite3.

    list_models: the composition's model listing (the settings' weights folder scanned at each request),
    as `restorer serve` passes it; without it the site lists no models."""
    from app.service import list_models as models_of
    from status_site.context import CONTEXT
    from status_site.server import bound_port, start_servers

    settings = make_settings(tmp, **overrides)
    listing = functools.partial(models_of, settings) if list_models else None
    make_folders(tmp)
    store = JobStore(settings.db_path)
    if health is None:
        health = HealthState()
        health.update(ready=True, worker_alive=True, watcher_alive=True, watch_mode="native")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="site-loop", daemon=True)
    thread.start()
    try:
        runners = asyncio.run_coroutine_threadsafe(
            start_servers(settings, store, health, list_models=listing), loop
        ).result(30)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        store.close()
        raise
    host = "127.0.0.1" if settings.bind in ("0.0.0.0", "127.0.0.1") else settings.bind
    api_port, page_port = bound_port(runners[0]), bound_port(runners[1])
    site = InProcessSite(
        api=f"http://{host}:{api_port}",
        page=f"http://{host}:{page_port}",
        settings=settings,
        store=store,
        health=health,
        context=runners[0].app[CONTEXT],
    )
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


# The real pipeline at its cheapest: the small anime model, no faces, one thread, the checkout's weights.
CHEAP_PIPELINE = {
    "model": "realesr-animevideov3",
    "faces": False,
    "threads": 1,
    "weights_dir": REPO / "weights",
}


@contextmanager
def running_serve(
    tmp: Path, env_extra: dict[str, str] | None = None, timeout: float = 120.0, processor: str | None = None
) -> Iterator[ServedSite]:
    """ServeProcess on tmp's folders (quick timings, CHEAP_PIPELINE), more settings through RESTORER_*
    variables in env_extra; the site once the daemon is ready.

    processor: "module:factory" of a cheap worker stage, run through the tests-only launcher
    (tests/serve_with.py); None runs the real pipeline.
    """
    serve = ServeProcess(tmp, env_extra, processor=processor, settings=CHEAP_PIPELINE, verbose=False)
    try:
        serve.wait_ready(timeout)
        api_port, site_port = serve.api_port(), serve.site_port()
        # What the daemon runs with: the environment's settings win over CHEAP_PIPELINE, as they do there.
        chosen = {**CHEAP_PIPELINE, **_settings_from_env(env_extra or {})}
        settings = make_settings(tmp, api_port=api_port, site_port=site_port, **chosen)
        site = ServedSite(
            api=f"http://127.0.0.1:{api_port}",
            page=f"http://127.0.0.1:{site_port}",
            settings=settings,
            serve=serve,
        )
        try:
            yield site
        finally:
            site.http.close()
    finally:
        serve.stop()


def _settings_from_env(env_extra: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in env_extra.items():
        name = key.removeprefix("RESTORER_").lower()
        if name in Settings.model_fields:
            # A list or a table travels through the environment as JSON, as pydantic-settings reads it there.
            values[name] = json.loads(value) if value.startswith(("[", "{")) else value
    return values

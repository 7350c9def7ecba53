"""One queued file must not break the page for everyone (issue 18, item 4).

Pillow's decompression_bomb.gif (a 1x1 GIF whose frame claims 65535x65535) made `GET /api/v1/jobs` a
500 for every client while it sat in the queue: the ETA read its header and Pillow's own bomb check
raised inside the GIF plugin. Every reader of queued files (the ETA, previews) treats a header it
cannot read as unknown; the queue, history, stats and health answer as usual.
"""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from concurrent.futures import Executor, Future
from dataclasses import astuple
from pathlib import Path
from typing import Any

import pytest

from daemon.store import JobStore
from pipeline import BadImageError, load_image, sniff_format
from status_site.eta import MegapixelCache
from status_site.files import PAGE_PREVIEWS, fits_without_resize, make_preview
from status_site.problems import Problem
from tests.daemon_processors import fake_photo
from tests.daemon_support import ServeProcess, wait_for
from tests.image_cases import (
    DEFAULT_LIMIT,
    IMAGE_CASES,
    encoded,
    gif_frames,
    pattern,
    webp_canvas_only,
)
from tests.site_support import make_settings


def _extra_hostile() -> dict[str, bytes]:
    """Hostile files outside the probe/load_image table (tests/image_cases.py): probe and load_image
    rightly differ on them, or the pipeline accepts them."""
    heic = encoded(pattern(30, 40), "HEIF", quality=90)
    return {
        "truncated heic": heic[: len(heic) // 2],  # header intact, pixels cut: only a decode finds it
        "gif frame of 10000x10000": gif_frames((1, 1), [(10_000, 10_000)]),  # Pillow warns, never raises
        "webp canvas of 2^24 a side": webp_canvas_only(2**24, 2**24),
    }


# Every file of the table that a share user could drop to hurt the daemon (each refusal at the
# daemon's limit, and the animated GIF with a 4.3 G pixel second frame), plus a few more.
HOSTILE: dict[str, bytes] = {
    **{
        case.name: case.data
        for case in IMAGE_CASES
        if case.max_pixels == DEFAULT_LIMIT and (case.error is not None or "65535" in case.name)
    },
    **_extra_hostile(),
}
BOMBS = (
    "gif frame of 65535x65535 on a 1x1 screen",
    "gif screen of 65535x65535",
    "tiff header of 40000x40000",
)
PREVIEW_SIZES = tuple(astuple(PAGE_PREVIEWS))  # the page's thumbnails and its inspector (/capabilities)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_file_is_previewed_or_refused_with_a_4xx_never_another_error(name: str) -> None:
    # pytest runs with warnings as errors, so Pillow's DecompressionBombWarning is raised here too.
    for max_edge in PREVIEW_SIZES:
        try:
            if not fits_without_resize(io.BytesIO(HOSTILE[name]), max_edge):
                make_preview(io.BytesIO(HOSTILE[name]), max_edge, DEFAULT_LIMIT)
        except Problem as refused:
            assert 400 <= refused.status < 500, refused.detail


class InlineExecutor(Executor):
    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # a Future carries what the call raised, as a thread pool's does
            future.set_exception(exc)
        return future


def test_the_eta_counts_a_hostile_header_as_unknown(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_input_megapixels=DEFAULT_LIMIT / 1e6)
    settings.inbox.mkdir(parents=True)
    store = JobStore(settings.db_path)
    cache = MegapixelCache(InlineExecutor())
    try:
        sizes = {}
        for index, (name, data) in enumerate(sorted(HOSTILE.items())):
            (settings.inbox / f"{index}.img").write_bytes(data)
            job = store.add(f"{index}.img", f"{index:064d}", len(data), 1.0).job
            sizes[name] = cache.megapixels(job, settings)
    finally:
        store.close()
    assert all(sizes[name] is None for name in BOMBS), sizes
    # A header that claims more than the pipeline takes is no work ahead of other jobs: unknown too.
    assert sizes["tiff header of 2^32-1 a side"] is None and sizes["webp canvas of 2^24 a side"] is None
    assert sizes["gif with a 65535x65535 second frame"] == pytest.approx(16 * 16 / 1e6)


def test_a_header_read_that_raises_is_unknown_cached_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path)
    store = JobStore(settings.db_path)
    job = store.add("odd.png", "o" * 64, 10, 1.0).job
    store.close()
    calls: list[int] = []

    class FailingExecutor(Executor):
        """A header read that raises what nobody foresaw (a parser bug on a hostile file)."""

        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
            calls.append(1)
            future: Future[Any] = Future()
            future.set_exception(RuntimeError("a parser bug"))
            return future

    cache = MegapixelCache(FailingExecutor())
    with caplog.at_level(logging.WARNING, logger="status_site.eta"):
        assert cache.megapixels(job, settings) is None
        assert cache.megapixels(job, settings) is None
    assert len(calls) == 1  # cached as unknown, not read (and logged) again on every poll
    assert [r.getMessage() for r in caplog.records] == [
        "reading the header of odd.png failed; its size counts as unknown"
    ]


# -- a real `restorer serve` with the hostile files in its queue ---------------------------------------


def _file_name(index: int, data: bytes) -> str:
    try:
        extension = sniff_format(data[:32])
    except BadImageError:
        extension = "jpg"  # what a share user names anything
    return f"hostile-{index:02d}.{extension}"


def _reason_for(data: bytes) -> str | None:
    """Why the daemon refuses the file: intake from its first bytes, else the worker's decode; None
    when it is restored."""
    try:
        sniff_format(data[:32])
        load_image(data, max_pixels=DEFAULT_LIMIT)
    except BadImageError as exc:
        return str(exc)
    return None


def _site_port(serve: ServeProcess) -> int:
    for line in serve.output().splitlines():
        if "page listening on" in line:
            return int(line.rsplit(":", 1)[1])
    raise AssertionError("page port not in log:\n" + serve.output())


def _request(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers.get("Content-Type", ""), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def _store_jobs(root: Path) -> dict[str, Any]:
    store = JobStore(root / "state" / "jobs.sqlite3")
    try:
        return {job.input_path: job for job in store.list(limit=500, order="oldest").jobs}
    finally:
        store.close()


class PagePoller:
    """What the status page asks for on each poll (app.js), and the previews of every job it shows."""

    def __init__(self, serve: ServeProcess) -> None:
        self.page = _site_port(serve)
        self.api = serve.api_port()
        self.answers: list[tuple[int, str, str]] = []  # (status, content type, path)

    def get(self, path: str, port: int | None = None) -> bytes:
        status, content_type, body = _request(port or self.page, path)
        self.answers.append((status, content_type, path))
        return body

    def listing(self, path: str) -> list[dict[str, Any]]:
        """The jobs of a listing; none when it was refused (server_errors() names it)."""
        body = json.loads(self.get(path))
        return list(body.get("jobs", []))

    def poll_once(self) -> list[dict[str, Any]]:
        for path in ("/", "/static/app.js", "/static/style.css", "/api/v1/health", "/api/v1/capabilities"):
            self.get(path)
        live = self.listing("/api/v1/jobs?state=processing,queued&order=queue&limit=100")
        failed = self.listing("/api/v1/jobs?state=failed&limit=20")
        history = self.listing("/api/v1/jobs?limit=24&order=newest")
        self.get("/api/v1/stats")
        for path in ("/metrics", "/api/v1", "/api/v1/openapi.json", "/api/v1/jobs?order=queue&limit=500"):
            self.get(path, port=self.api)
        for job in {job["id"]: job for job in live + failed + history}.values():
            self.get(f"/api/v1/jobs/{job['id']}")
            for which in ("input", "output"):
                for size in PREVIEW_SIZES:
                    self.get(f"/api/v1/jobs/{job['id']}/{which}?max={size}")
            self.get(f"/api/v1/jobs/{job['id']}/input")
        return live

    def server_errors(self) -> list[tuple[int, str, str]]:
        return [answer for answer in self.answers if answer[0] >= 500]

    def refusals_without_a_problem(self) -> list[tuple[int, str, str]]:
        return [a for a in self.answers if a[0] >= 400 and not a[1].startswith("application/problem+json")]


def test_hostile_files_in_the_queue_never_break_the_page_and_each_fails_with_its_reason(
    root: Path, serves: list[ServeProcess]
) -> None:
    folders = {"inbox": "inbox", "outbox": "outbox", "failed_dir": "failed", "archive_dir": "archive"}
    (root / "restorer.toml").write_text(
        "\n".join(
            [
                *(f'{key} = "{root / folder}"' for key, folder in {**folders, "state_dir": "state"}.items()),
                'bind = "127.0.0.1"',
                "api_port = 0",
                "site_port = 0",
                "stability_seconds = 0.3",
                "poll_seconds = 0.2",
                "heartbeat_seconds = 0.5",
                "min_free_mb = 0",
                f"max_input_megapixels = {DEFAULT_LIMIT / 1e6}",
            ]
        )
        + "\n"
    )
    serve = ServeProcess(root, None, processor="tests.daemon_processors:DecodeProcessor")
    serves.append(serve)
    serve.wait_ready()
    inbox = root / "inbox"
    # A done job first: without a measured rate the ETA reads no header at all.
    (inbox / "first.png").write_bytes(encoded(pattern(30, 40), "PNG"))
    wait_for(lambda: (job := _store_jobs(root).get("first.png")) is not None and job.state == "done", 30)
    # Then a job that holds the worker while the page is polled: everything after it stays queued.
    (inbox / "holder.jpg").write_bytes(fake_photo(b"SLOW120|holds the worker"))
    wait_for(lambda: (job := _store_jobs(root).get("holder.jpg")) is not None and job.state == "processing")
    names = {_file_name(index, data): name for index, (name, data) in enumerate(sorted(HOSTILE.items()))}
    for file_name, name in names.items():
        (inbox / file_name).write_bytes(HOSTILE[name])
    wait_for(lambda: set(names) <= set(_store_jobs(root)), 30)
    queued = {path for path, job in _store_jobs(root).items() if job.state == "queued"}
    bombs = {file_name for file_name, name in names.items() if name in BOMBS}
    assert bombs <= queued  # past intake (its first bytes are an image's): the queue readers see them

    poller = PagePoller(serve)
    live: list[dict[str, Any]] = []
    for _ in range(3):  # the first poll starts the header reads, later ones find them cached
        live = poller.poll_once()
    assert poller.server_errors() == []
    assert poller.refusals_without_a_problem() == []
    shown = {job["input"]["path"]: job for job in live}
    assert queued <= set(shown)
    assert all(isinstance(shown[path]["eta_seconds"], float) for path in queued)  # a rate, sizes or means
    bomb_previews = [
        status
        for status, _type, path in poller.answers
        if any(f"/jobs/{shown[b]['id']}/input?" in path for b in bombs)
    ]
    assert bomb_previews and set(bomb_previews) == {422}  # refused from the header, as problem+json

    holder = _store_jobs(root)["holder.jpg"]
    assert _request(poller.api, f"/api/v1/jobs/{holder.id}/cancel", method="POST")[0] == 200
    finished = ("done", "failed", "cancelled")
    wait_for(lambda: all(_store_jobs(root)[name].state in finished for name in names), 60)
    poller.poll_once()  # the failed ones now live in failed/: their previews are read from there
    assert poller.server_errors() == []
    assert poller.refusals_without_a_problem() == []

    jobs = _store_jobs(root)
    for file_name, name in names.items():
        reason = _reason_for(HOSTILE[name])
        job = jobs[file_name]
        if reason is None:
            assert job.state == "done", (name, job.error)
            continue
        assert (job.state, job.failure_kind) == ("failed", "bad-input"), (name, job.state, job.error)
        assert job.error == reason, name  # the pipeline's own words, no exception name or traceback
    for name in BOMBS:
        assert "megapixels, above the limit" in jobs[next(f for f, n in names.items() if n == name)].error
    failed = sum(1 for job in jobs.values() if job.state == "failed")
    wait_for(lambda: len(list((root / "failed").glob("*.error.txt"))) == failed)  # each with its reason
    assert serve.health()["status"] == "ok"
    output = serve.output()
    assert "Traceback" not in output and "unhandled error" not in output, output[-4000:]
    assert serve.terminate() == 0

"""One hostile file must not break the page for everyone (issue 18, item 4; issue 21, item 1).

Pillow's decompression_bomb.gif (a 1x1 GIF whose frame claims 65535x65535) made `GET /api/v1/jobs` a
500 for every client while it sat in the queue: the ETA read its header and Pillow's own bomb check
raised inside the GIF plugin. Now intake admits a file as the pipeline would (daemon/admission.py), so
a bomb is a failed job from the start, the ETA uses the size admission stored (tests/test_site_eta.py
has a bomb in the queue all the same), and previews refuse what they cannot read with a 4xx.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from dataclasses import astuple
from pathlib import Path
from typing import Any

import pytest

from pipeline import BadImageError, load_image, probe
from pipeline.imageio import sniff_format
from status_site.files import PAGE_PREVIEWS, fits_without_resize, make_preview
from status_site.problems import Problem
from tests.daemon_processors import fake_photo
from tests.image_cases import (
    DEFAULT_LIMIT,
    IMAGE_CASES,
    encoded,
    gif_frames,
    pattern,
    webp_canvas_only,
)
from tests.support.serve import ServeProcess
from tests.support.waiting import wait_for
from tests.support.workspace import jobs_by_input


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


# -- a real `restorer serve` with the hostile files in its inbox ---------------------------------------


def _file_name(index: int, data: bytes) -> str:
    try:
        extension = sniff_format(data[:32])
    except BadImageError:
        extension = "jpg"  # what a share user names anything
    return f"hostile-{index:02d}.{extension}"


def _reason_for(data: bytes) -> str | None:
    """Why the daemon refuses the file, in the pipeline's words (intake's admission and the worker's
    decode say the same); None when it is restored."""
    try:
        load_image(data, max_pixels=DEFAULT_LIMIT)
    except BadImageError as exc:
        return str(exc)
    return None


def _admitted(data: bytes) -> bool:
    """Whether intake lets the file into the queue (only a decode finds what is wrong with the rest)."""
    try:
        probe(data, DEFAULT_LIMIT)
    except BadImageError:
        return False
    return True


def _request(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers.get("Content-Type", ""), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


class PagePoller:
    """What the status page asks for on each poll (app.js), and the previews of every job it shows."""

    def __init__(self, serve: ServeProcess) -> None:
        self.page = serve.site_port()
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
    serve = ServeProcess(
        root,
        processor="tests.daemon_processors:DecodeProcessor",
        settings={"max_input_megapixels": DEFAULT_LIMIT / 1e6},
    )
    serves.append(serve)
    serve.wait_ready()
    inbox = root / "inbox"
    # A done job first: without a measured rate the ETA reads no header at all.
    (inbox / "first.png").write_bytes(encoded(pattern(30, 40), "PNG"))
    wait_for(lambda: (job := jobs_by_input(root).get("first.png")) is not None and job.state == "done", 30)
    # Then a job that holds the worker while the page is polled: everything after it stays queued.
    (inbox / "holder.jpg").write_bytes(fake_photo(b"SLOW120|holds the worker"))
    wait_for(lambda: (job := jobs_by_input(root).get("holder.jpg")) is not None and job.state == "processing")
    names = {_file_name(index, data): name for index, (name, data) in enumerate(sorted(HOSTILE.items()))}
    for file_name, name in names.items():
        (inbox / file_name).write_bytes(HOSTILE[name])
    wait_for(lambda: set(names) <= set(jobs_by_input(root)), 30)
    queued = {path for path, job in jobs_by_input(root).items() if job.state == "queued"}
    bombs = {file_name for file_name, name in names.items() if name in BOMBS}
    # Admission refuses at intake what the pipeline refuses from the header (bombs included): failed
    # jobs at once, while the worker is still held. The rest wait in the queue for the worker.
    assert queued == {file_name for file_name, name in names.items() if _admitted(HOSTILE[name])}
    assert bombs and not bombs & queued

    poller = PagePoller(serve)
    live: list[dict[str, Any]] = []
    for _ in range(3):  # the first poll starts the header reads, later ones find them cached
        live = poller.poll_once()
    assert poller.server_errors() == []
    assert poller.refusals_without_a_problem() == []
    shown = {job["input"]["path"]: job for job in live}
    assert queued <= set(shown)
    assert all(isinstance(shown[path]["eta_seconds"], float) for path in queued)  # a rate, sizes or means
    ids = {path: job.id for path, job in jobs_by_input(root).items()}
    bomb_previews = [
        status
        for status, _type, path in poller.answers
        if any(f"/jobs/{ids[b]}/input?" in path for b in bombs)
    ]
    assert bomb_previews and set(bomb_previews) == {422}  # refused from the header, as problem+json

    holder = jobs_by_input(root)["holder.jpg"]
    assert _request(poller.api, f"/api/v1/jobs/{holder.id}/cancel", method="POST")[0] == 200
    finished = ("done", "failed", "cancelled")
    wait_for(lambda: all(jobs_by_input(root)[name].state in finished for name in names), 60)
    poller.poll_once()  # the failed ones now live in failed/: their previews are read from there
    assert poller.server_errors() == []
    assert poller.refusals_without_a_problem() == []

    jobs = jobs_by_input(root)
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

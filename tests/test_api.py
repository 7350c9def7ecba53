"""The JSON API against real servers on free ports, a real SQLite job store and real folders.

`site` is the whole daemon (`restorer serve` as a subprocess) once it exists; `quiet_site` is
start_servers with a real JobStore and no worker, for tests that need a queue nobody drains.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi_spec
from PIL import Image
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from pipeline.colour import analyse_colour
from tests.colour_cases import sepia_matrix
from tests.image_cases import IMAGE_CASES, ImageCase
from tests.support.settings import make_settings
from tests.support.site import InProcessSite, Site, jpeg_bytes, png_bytes, running_serve, running_site

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("site")
    with running_serve(tmp) as running:
        yield running


@pytest.fixture
def quiet_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InProcessSite]:
    # These tests change the database behind the API's back and read at once: no response cache.
    monkeypatch.setattr("status_site.cache.RESPONSE_TTL_SECONDS", 0.0)
    with running_site(tmp_path) as running:
        yield running


def done_report(width: int = 100, height: int = 50, seconds: float = 2.0, faces: int = 0) -> dict[str, Any]:
    return {
        "input_size": [width, height],
        "output_size": [width * 4, height * 4],
        "input_mode": "RGB 8-bit",
        "output_mode": "RGB 8-bit",
        "model": "RealESRGAN_x4plus",
        "scale": 4.0,
        "backend": "torch",
        "device": "cpu",
        "precision": "fp32",
        "seconds": seconds,
        "stage_seconds": {"upscale": seconds},
        "tiles": 1,
        "faces": [
            {"box": [10.0, 10.0, 50.0, 60.0], "score": 0.99, "landmarks": [[1.0, 2.0]] * 5, "restored": True}
        ]
        * faces,
        "colour": SEPIA_COLOUR,
        "notes": [],
    }


# What the pipeline reports for a sepia photo (RestoreReport.colour as the worker stores it).
SEPIA_COLOUR = asdict(
    analyse_colour(sepia_matrix(np.tile(np.arange(256, dtype=np.uint8), (64, 1))), None).report
)


def seed_done(site: Site, name: str, width: int = 32, height: int = 24, seconds: float = 2.0) -> int:
    """A finished job with real input and output files in the inbox and outbox.

    The row carries the input's real hash, size and mtime, so a running watcher knows the file and
    leaves it alone (the store's identity rules), as it would after restoring it itself.
    """
    data = png_bytes(width, height)
    source = site.settings.inbox / name
    source.write_bytes(data)
    stat = source.stat()
    out_name = f"{Path(name).stem}-restored.png"
    (site.settings.outbox / out_name).write_bytes(png_bytes(width * 4, height * 4, seed=1))
    now = datetime.now(UTC)
    return site.insert_job(
        input_path=name,
        content_sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=stat.st_size,
        mtime=stat.st_mtime,
        state="done",
        attempts=1,
        started_at=now - timedelta(seconds=seconds),
        finished_at=now,
        progress=1.0,
        output_path=out_name,
        output_size_bytes=(site.settings.outbox / out_name).stat().st_size,
        report=done_report(width, height, seconds, faces=1),
    )


# -- OpenAPI ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi(site: Site) -> dict[str, Any]:
    response = site.get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.json()


def check_against_openapi(
    doc: dict[str, Any], template: str, method: str, response: requests.Response
) -> None:
    """Validate a real response's status, content type and body against the served document."""
    operation = doc["paths"][template][method]
    declared = operation["responses"].get(str(response.status_code))
    assert declared is not None, (
        f"{method.upper()} {template} answered {response.status_code}, not documented"
    )
    content_type = response.headers["Content-Type"].split(";")[0]
    content = declared.get("content", {})
    assert content_type in content or any(
        key.endswith("/*") and content_type.startswith(key[:-1]) for key in content
    ), f"{content_type} not documented for {response.status_code}"
    if content_type in ("application/json", PROBLEM):
        schema = content[content_type]["schema"]
        registry = Registry().with_resource(
            "urn:api", Resource.from_contents(doc, default_specification=DRAFT202012)
        )
        ref = schema.get("$ref", "")
        target = {"$ref": "urn:api" + ref} if ref else schema
        Draft202012Validator(target, registry=registry).validate(response.json())


def test_openapi_document_is_valid_openapi_3_1(openapi: dict[str, Any]) -> None:
    assert openapi["openapi"].startswith("3.1")
    validate_openapi_spec(openapi)


def test_real_responses_match_the_openapi_document(site: Site, openapi: dict[str, Any]) -> None:
    job_id = seed_done(site, "schema.png")
    failed_id = site.insert_job(state="failed", error="not an image: wrong magic bytes", attempts=1)
    calls = [
        ("/api/v1", "/api/v1", "get"),
        ("/api/v1/health", "/api/v1/health", "get"),
        ("/api/v1/capabilities", "/api/v1/capabilities", "get"),
        ("/api/v1/jobs", "/api/v1/jobs", "get"),
        ("/api/v1/jobs?state=done,failed&limit=1", "/api/v1/jobs", "get"),
        ("/api/v1/jobs?order=queue&state=queued,processing", "/api/v1/jobs", "get"),
        ("/api/v1/jobs?state=bogus", "/api/v1/jobs", "get"),
        (f"/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}", "get"),
        (f"/api/v1/jobs/{failed_id}", "/api/v1/jobs/{job_id}", "get"),
        ("/api/v1/jobs/999999", "/api/v1/jobs/{job_id}", "get"),
        (f"/api/v1/jobs/{job_id}/output?max=64", "/api/v1/jobs/{job_id}/output", "get"),
        (f"/api/v1/jobs/{job_id}/input?max=7", "/api/v1/jobs/{job_id}/input", "get"),
        ("/api/v1/stats", "/api/v1/stats", "get"),
        ("/metrics", "/metrics", "get"),
    ]
    for path, template, method in calls:
        for port in ("api", "page"):
            if template == "/metrics" and port == "page":
                continue
            check_against_openapi(openapi, template, method, site.get(path, port=port))
    upload = site.post(
        "/api/v1/jobs", files=[("file", ("schema-upload.jpg", jpeg_bytes(seed=5), "image/jpeg"))]
    )
    check_against_openapi(openapi, "/api/v1/jobs", "post", upload)
    bad = site.post("/api/v1/jobs", files=[("file", ("bad.jpg", b"not an image at all", "image/jpeg"))])
    check_against_openapi(openapi, "/api/v1/jobs", "post", bad)
    retried = site.post(f"/api/v1/jobs/{failed_id}/retry")
    check_against_openapi(openapi, "/api/v1/jobs/{job_id}/retry", "post", retried)
    cancelled = site.post(f"/api/v1/jobs/{failed_id}/cancel")
    check_against_openapi(openapi, "/api/v1/jobs/{job_id}/cancel", "post", cancelled)


# -- health, capabilities, errors --------------------------------------------------------------------


def test_health_says_ok_degraded_or_down_with_reasons_on_both_ports(site: Site) -> None:
    for port in ("api", "page"):
        response = site.get("/api/v1/health", port=port)
        body = response.json()
        assert body["status"] in ("ok", "degraded", "down")
        assert isinstance(body["reasons"], list)
        assert response.status_code == (503 if body["status"] == "down" else 200)
        assert response.headers["Cache-Control"] == "no-store"


def test_health_degraded_when_watcher_dead_names_the_reason(quiet_site: InProcessSite) -> None:
    quiet_site.health.update(watcher_alive=False, watcher_error="inotify watch limit reached")
    body = quiet_site.get("/api/v1/health").json()
    assert body["status"] == "degraded"
    assert any("watcher" in reason for reason in body["reasons"])
    quiet_site.health.update(worker_alive=False, worker_error="killed by signal 9")
    response = quiet_site.get("/api/v1/health")
    assert response.status_code == 503
    assert any("killed by signal 9" in reason for reason in response.json()["reasons"])


def test_unknown_routes_and_methods_answer_problem_json(site: Site) -> None:
    for port in ("api", "page"):
        missing = site.get("/api/v1/nothing-here", port=port)
        assert missing.status_code == 404
        assert missing.headers["Content-Type"].startswith(PROBLEM)
        assert "/api/v1/nothing-here" in missing.json()["detail"]
    wrong_method = site.http.delete(site.url("api", "/api/v1/jobs"), timeout=10)
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Content-Type"].startswith(PROBLEM)
    assert "DELETE" in wrong_method.json()["detail"]


def test_bad_query_parameters_are_refused_with_a_useful_detail(site: Site) -> None:
    cases = {
        "/api/v1/jobs?state=finished": "unknown state 'finished'",
        "/api/v1/jobs?limit=0": "limit",
        "/api/v1/jobs?limit=abc": "limit",
        "/api/v1/jobs?order=sideways": "unknown order",
        "/api/v1/jobs?cursor=zzz": "cursor",
        "/api/v1/jobs?ids=1,x": "ids",
    }
    for path, words in cases.items():
        response = site.get(path)
        assert response.status_code == 400, path
        assert response.headers["Content-Type"].startswith(PROBLEM)
        assert words in response.json()["detail"], (path, response.json())


# -- listing, detail, queue ------------------------------------------------------------------------


def test_jobs_list_filters_by_state_and_pages_with_a_cursor(quiet_site: InProcessSite) -> None:
    ids = [quiet_site.insert_job(state="done") for _ in range(5)]
    failed = quiet_site.insert_job(state="failed", error="truncated file")
    seen: list[int] = []
    cursor = None
    while True:
        query = "/api/v1/jobs?state=done&limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = quiet_site.get(query).json()
        seen += [job["id"] for job in body["jobs"]]
        assert all(job["state"] == "done" for job in body["jobs"])
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)
    oldest = quiet_site.get("/api/v1/jobs?order=oldest&limit=100").json()["jobs"]
    assert [job["id"] for job in oldest] == [*ids, failed]
    both = quiet_site.get("/api/v1/jobs?state=failed,done&limit=100").json()["jobs"]
    assert {job["id"] for job in both} == {*ids, failed}


def test_queue_order_puts_the_running_job_first_then_priority_then_arrival(quiet_site: InProcessSite) -> None:
    store = quiet_site.store
    first = store.add("a.png", "a" * 64, 10, 1.0).job.id
    second = store.add("b.png", "b" * 64, 10, 1.0).job.id
    urgent = store.add("c.png", "c" * 64, 10, 1.0, priority=5).job.id
    running = store.claim_next()  # the urgent one
    assert running.id == urgent
    later = store.add("d.png", "d" * 64, 10, 1.0).job.id
    pages: list[dict[str, Any]] = []
    cursor = None
    while True:
        body = quiet_site.get(
            "/api/v1/jobs?order=queue&state=queued,processing&limit=2"
            + (f"&cursor={cursor}" if cursor else "")
        ).json()
        pages += body["jobs"]
        cursor = body["next"]
        if cursor is None:
            break
    assert [job["id"] for job in pages] == [urgent, first, second, later]
    assert [job["queue_position"] for job in pages] == [0, 1, 2, 3]
    detail = quiet_site.get(f"/api/v1/jobs/{second}").json()
    assert detail["queue_position"] == 2


def test_eta_comes_from_mean_seconds_per_input_megapixel_of_done_jobs(
    quiet_site: InProcessSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("status_site.eta.RATE_TTL_SECONDS", 0.0)  # the server runs in this process
    store = quiet_site.store
    # No done jobs yet: nothing to estimate from. Sizes are the ones admission stored at intake.
    waiting = store.add("wait.png", "e" * 64, 10, 1.0, input_megapixels=0.5).job.id
    assert quiet_site.get(f"/api/v1/jobs/{waiting}").json()["eta_seconds"] is None
    # Two done jobs: 0.5 MP in 10 s and 1.5 MP in 30 s -> 20 s per megapixel.
    now = datetime.now(UTC)
    for width, seconds in ((500, 10.0), (1500, 30.0)):
        quiet_site.insert_job(
            state="done",
            started_at=now - timedelta(seconds=seconds),
            finished_at=now,
            report=done_report(width, 1000, seconds),
        )
    stats = quiet_site.get("/api/v1/stats").json()
    assert stats["seconds_per_megapixel"] == pytest.approx(20.0)
    # wait.png is 1000x500 = 0.5 MP -> 10 s, nothing ahead of it.
    assert quiet_site.get(f"/api/v1/jobs/{waiting}").json()["eta_seconds"] == pytest.approx(10.0, abs=0.2)
    behind = store.add("second.png", "f" * 64, 10, 1.0, input_megapixels=2.0).job.id
    assert quiet_site.get(f"/api/v1/jobs/{behind}").json()["eta_seconds"] == pytest.approx(
        10.0 + 40.0, abs=0.5
    )
    listed = quiet_site.get("/api/v1/jobs?order=queue&state=queued,processing").json()["jobs"]
    assert [round(job["eta_seconds"]) for job in listed] == [10, 50]


def test_job_detail_shows_files_faces_report_and_times(site: Site) -> None:
    job_id = seed_done(site, "detail.png", 40, 30, seconds=3.0)
    job = site.get(f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "done"
    assert job["input"]["path"] == "detail.png"
    assert job["output"]["path"] == "detail-restored.png"
    assert job["output"]["size_bytes"] > 0
    assert job["report"]["output_size"] == [160, 120]
    assert job["report"]["colour"] == SEPIA_COLOUR and SEPIA_COLOUR["path"] == "toned"  # stored as reported
    assert len(job["faces"]) == 1 and job["faces"][0]["restored"] is True
    assert job["queue_position"] is None
    assert job["finished_at"] is not None
    assert not Path(job["input"]["path"]).is_absolute()


def test_pollers_share_a_short_lived_answer_and_writes_clear_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("status_site.cache.RESPONSE_TTL_SECONDS", 2.0)  # long enough for a loaded CI box
    with running_site(tmp_path) as site:
        store = site.store
        job_id = store.add("a.png", "a" * 64, 10, 1.0).job.id
        store.claim_next()
        first = site.get(f"/api/v1/jobs/{job_id}").json()
        store.update_progress(job_id, 0.5, "upscale")  # the worker, behind the API's back
        assert site.get(f"/api/v1/jobs/{job_id}").json()["progress"] == first["progress"] == 0.0
        site.wait_for(
            lambda: site.get(f"/api/v1/jobs/{job_id}").json()["progress"] == 0.5,
            5,
            "the cached answer to expire",
        )
        other = store.add("b.png", "b" * 64, 10, 1.0).job.id
        assert site.get(f"/api/v1/jobs/{other}").json()["state"] == "queued"
        assert site.post(f"/api/v1/jobs/{other}/cancel").json()["state"] == "cancelled"
        assert site.get(f"/api/v1/jobs/{other}").json()["state"] == "cancelled"  # not the cached "queued"


# -- retry / cancel ----------------------------------------------------------------------------------


def test_retry_and_cancel_are_idempotent(quiet_site: InProcessSite) -> None:
    failed = quiet_site.insert_job(state="failed", error="corrupt JPEG data", attempts=3)
    first = quiet_site.post(f"/api/v1/jobs/{failed}/retry")
    assert first.status_code == 200
    assert first.json()["state"] == "queued" and first.json()["changed"] is True
    again = quiet_site.post(f"/api/v1/jobs/{failed}/retry")
    assert again.status_code == 200
    assert again.json()["state"] == "queued" and again.json()["changed"] is False
    cancel = quiet_site.post(f"/api/v1/jobs/{failed}/cancel")
    assert cancel.json()["state"] == "cancelled" and cancel.json()["changed"] is True
    cancel_again = quiet_site.post(f"/api/v1/jobs/{failed}/cancel")
    assert cancel_again.status_code == 200
    assert cancel_again.json()["state"] == "cancelled" and cancel_again.json()["changed"] is False
    missing = quiet_site.post("/api/v1/jobs/424242/retry")
    assert missing.status_code == 404
    assert missing.headers["Content-Type"].startswith(PROBLEM)


# -- uploads -----------------------------------------------------------------------------------------


def inbox_files(site: Site) -> list[str]:
    return sorted(
        str(p.relative_to(site.settings.inbox)) for p in site.settings.inbox.rglob("*") if p.is_file()
    )


def test_upload_saves_into_the_inbox_and_answers_202_with_job_ids(quiet_site: InProcessSite) -> None:
    files = [
        ("file", ("holiday photo.jpg", jpeg_bytes(seed=1), "image/jpeg")),
        ("file", ("../../etc/scan.png", png_bytes(seed=2), "image/png")),
        ("file", ("no-extension", png_bytes(seed=3), "application/octet-stream")),
    ]
    response = quiet_site.post("/api/v1/jobs", files=files)
    assert response.status_code == 202, response.text
    body = response.json()
    ids = [job["id"] for job in body["jobs"]]
    assert len(ids) == 3 and all(isinstance(i, int) for i in ids)
    assert response.headers["Location"] == f"/api/v1/jobs?ids={','.join(map(str, ids))}"
    assert [job["state"] for job in body["jobs"]] == ["queued"] * 3
    assert [job["queue_position"] for job in body["jobs"]] == [1, 2, 3]
    assert inbox_files(quiet_site) == ["holiday photo.jpg", "no-extension.png", "scan.png"]
    listed = quiet_site.get(response.headers["Location"]).json()["jobs"]
    assert [job["id"] for job in listed] == ids
    # The same name again never overwrites: it gets a " (1)" suffix.
    again = quiet_site.post(
        "/api/v1/jobs", files=[("file", ("holiday photo.jpg", jpeg_bytes(seed=9), "image/jpeg"))]
    )
    assert again.status_code == 202
    assert again.json()["jobs"][0]["input"]["path"] == "holiday photo (1).jpg"
    assert again.headers["Location"] == f"/api/v1/jobs/{again.json()['jobs'][0]['id']}"


def encoded(fmt: str, mode: str = "RGB", **options: Any) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    image = Image.effect_noise((40, 30), 40).convert(mode)
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "fmt", "mode"),
    [
        ("iphone.heic", "HEIF", "RGB"),
        ("scan.tif", "TIFF", "RGB"),
        ("film.png", "PNG", "I;16"),
        ("logo.webp", "WEBP", "RGBA"),
        ("old.gif", "GIF", "P"),
        ("fax.bmp", "BMP", "L"),
    ],
)
def test_upload_accepts_every_format_the_pipeline_reads_and_previews_it(
    quiet_site: InProcessSite, name: str, fmt: str, mode: str
) -> None:

    response = quiet_site.post("/api/v1/jobs", files=[("file", (name, encoded(fmt, mode), "image/*"))])
    assert response.status_code == 202, response.text
    job = response.json()["jobs"][0]
    assert job["input"]["path"] == name
    preview = quiet_site.get(f"/api/v1/jobs/{job['id']}/input?max=32")
    assert preview.status_code == 200
    assert preview.headers["Content-Type"] in ("image/jpeg", "image/png")
    assert max(Image.open(io.BytesIO(preview.content)).size) == 32


def test_upload_of_content_already_restored_is_recorded_as_a_skipped_duplicate(
    quiet_site: InProcessSite,
) -> None:
    data = jpeg_bytes(seed=11)
    first = quiet_site.post("/api/v1/jobs", files=[("file", ("first.jpg", data, "image/jpeg"))]).json()[
        "jobs"
    ][0]
    again = quiet_site.post("/api/v1/jobs", files=[("file", ("copy.jpg", data, "image/jpeg"))])
    assert again.status_code == 202
    job = again.json()["jobs"][0]
    assert job["state"] == "cancelled"
    assert f"same content as job {first['id']}" in job["note"]
    # The duplicate's original follows the originals rule (archive by default), as the service does.
    assert inbox_files(quiet_site) == ["first.jpg"]
    assert (quiet_site.settings.archive_dir / "copy.jpg").read_bytes() == data


def test_upload_with_a_preset_lands_in_the_preset_subfolder(quiet_site: InProcessSite) -> None:
    response = quiet_site.post(
        "/api/v1/jobs",
        files=[("file", ("cartoon.png", png_bytes(seed=4), "image/png"))],
        data={"preset": "anime"},
    )
    assert response.status_code == 202, response.text
    job = response.json()["jobs"][0]
    assert job["input"]["path"] == "anime/cartoon.png"
    assert job["preset"] == "anime"
    assert job["options"]["model"] == "RealESRGAN_x4plus_anime_6B"
    unknown = quiet_site.post(
        "/api/v1/jobs", files=[("file", ("x.png", png_bytes(seed=5), "image/png"))], data={"preset": "nope"}
    )
    assert unknown.status_code == 400
    assert "nope" in unknown.json()["detail"]


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("empty.jpg", b"", "empty"),
        ("notes.jpg", b"these are my holiday notes, not a photo\n" * 20, "not an image"),
        ("truncated.jpg", jpeg_bytes(64, 64)[:400], "truncated"),
        ("truncated.png", png_bytes(64, 64)[:-30], "truncated"),
        # The pipeline's words, as a PDF dropped into the inbox gets them.
        ("document.pdf", b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "PDF files are not supported"),
        ("sliver.png", png_bytes(2001, 1), "absurd dimensions"),
    ],
)
def test_upload_of_a_bad_file_is_refused_and_nothing_is_left_behind(
    site: Site, name: str, data: bytes, words: str
) -> None:
    before = inbox_files(site)
    jobs_before = site.get("/api/v1/stats").json()["total"]
    files = [("file", ("good-one.png", png_bytes(seed=7), "image/png")), ("file", (name, data, "image/jpeg"))]
    response = site.post("/api/v1/jobs", files=files)
    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"].startswith(PROBLEM)
    problem = response.json()
    assert words in problem["detail"] and name in problem["detail"]
    assert inbox_files(site) == before
    assert site.get("/api/v1/stats").json()["total"] == jobs_before
    assert not list(site.settings.inbox.rglob(".restorer-tmp-*"))


def test_upload_larger_than_the_limit_is_refused_while_streaming(tmp_path: Path) -> None:
    with running_site(tmp_path, upload_max_bytes=1_000_000) as site:
        api_port = site.ports[0]
        boundary = "----restorer-test"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="huge.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        declared = 50_000_000  # we promise 50 MB and send only 3 MB: the answer must come before the rest
        with socket.create_connection(("127.0.0.1", api_port), timeout=20) as sock:
            sock.sendall(
                (
                    f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n"
                    f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
                ).encode()
                + head
            )
            sent = 0
            try:
                while sent < 3_000_000:
                    sock.sendall(png_bytes(8, 8)[:8] + b"\0" * 65528)
                    sent += 65536
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server stopped reading: that is the point
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"application/problem+json" in reply
        assert inbox_files(site) == []


def test_upload_with_more_files_than_allowed_is_refused(tmp_path: Path) -> None:
    with running_site(tmp_path, upload_max_files=2) as site:
        files = [("file", (f"p{i}.png", png_bytes(seed=i), "image/png")) for i in range(3)]
        response = site.post("/api/v1/jobs", files=files)
        assert response.status_code == 413
        assert "more than 2 files" in response.json()["detail"]
        assert inbox_files(site) == []


def test_upload_that_is_not_multipart_is_refused(site: Site) -> None:
    response = site.post("/api/v1/jobs", data=png_bytes(), headers={"Content-Type": "image/png"})
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["detail"]


# -- write guards and CORS ---------------------------------------------------------------------------


def test_without_a_token_requests_through_a_local_reverse_proxy_may_not_write(
    quiet_site: InProcessSite,
) -> None:
    failed = quiet_site.insert_job(state="failed", error="corrupt")
    for header in (
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=192.0.2.60"},
        {"X-Real-IP": "10.0.0.7"},
    ):
        refused = quiet_site.post(f"/api/v1/jobs/{failed}/retry", headers=header)
        assert refused.status_code == 403, header
        assert "through a proxy" in refused.json()["detail"]
        assert quiet_site.get("/api/v1/capabilities", headers=header).json()["can_write"] is False
    assert quiet_site.post(f"/api/v1/jobs/{failed}/retry").status_code == 200


def test_with_a_token_every_host_must_send_it(tmp_path: Path) -> None:
    token = "s3cret-token-0123456789"
    with running_site(tmp_path, api_token=token) as site:
        failed = site.insert_job(state="failed", error="corrupt")
        capabilities = site.get("/api/v1/capabilities").json()
        assert capabilities["token_required"] is True and capabilities["can_write"] is False
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Token": "s3cret-token-012345678X"}):
            refused = site.post(f"/api/v1/jobs/{failed}/retry", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            assert refused.headers["Content-Type"].startswith(PROBLEM)
        assert site.post(f"/api/v1/jobs/{failed}/retry", headers={"Authorization": f"Bearer {token}"}).ok
        assert site.post(f"/api/v1/jobs/{failed}/cancel", headers={"X-API-Token": token}).ok
        authorised = site.get("/api/v1/capabilities", headers={"Authorization": f"Bearer {token}"}).json()
        assert authorised["can_write"] is True
        assert site.get("/api/v1/jobs").status_code == 200  # reads stay open


def test_cors_is_off_unless_origins_are_configured(site: Site, tmp_path: Path) -> None:
    plain = site.get("/api/v1/jobs", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in plain.headers
    preflight = site.http.options(
        site.url("api", "/api/v1/jobs"),
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    with running_site(tmp_path, cors_origins=["http://nas.local:8080"]) as configured:
        allowed = configured.get("/api/v1/jobs", headers={"Origin": "http://nas.local:8080"})
        assert allowed.headers["Access-Control-Allow-Origin"] == "http://nas.local:8080"
        other = configured.get("/api/v1/jobs", headers={"Origin": "http://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers
        preflight = configured.http.options(
            configured.url("api", "/api/v1/jobs"),
            headers={"Origin": "http://nas.local:8080", "Access-Control-Request-Method": "POST"},
            timeout=10,
        )
        assert preflight.status_code == 204
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]


# -- files and previews -----------------------------------------------------------------------------


def test_input_and_output_files_and_previews(site: Site) -> None:
    job_id = seed_done(site, "files.png", 48, 32)
    original = site.get(f"/api/v1/jobs/{job_id}/input")
    assert original.status_code == 200
    assert original.content == (site.settings.inbox / "files.png").read_bytes()
    output = site.get(f"/api/v1/jobs/{job_id}/output")
    assert output.content == (site.settings.outbox / "files-restored.png").read_bytes()
    preview = site.get(f"/api/v1/jobs/{job_id}/output?max=64")
    assert preview.status_code == 200 and preview.headers["Content-Type"] == "image/jpeg"

    assert max(Image.open(io.BytesIO(preview.content)).size) == 64
    etag = preview.headers["ETag"]
    assert (
        site.get(f"/api/v1/jobs/{job_id}/output?max=64", headers={"If-None-Match": etag}).status_code == 304
    )
    small = site.get(f"/api/v1/jobs/{job_id}/input?max=1024")  # already small and browser-friendly: as is
    assert small.content == original.content
    for bad in ("0", "-5", "abc", "99999"):
        response = site.get(f"/api/v1/jobs/{job_id}/output?max={bad}")
        assert response.status_code == 400 and response.headers["Content-Type"].startswith(PROBLEM)


def test_missing_files_answer_404_with_the_reason(site: Site) -> None:
    queued_like = site.insert_job(state="failed", input_path="gone.png", error="x")
    response = site.get(f"/api/v1/jobs/{queued_like}/input")
    assert response.status_code == 404
    assert "gone.png" in response.json()["detail"]
    no_output = site.get(f"/api/v1/jobs/{queued_like}/output")
    assert no_output.status_code == 404 and "no output" in no_output.json()["detail"]
    deleted = site.insert_job(state="done", original="deleted", output_path=None)
    assert "deleted" in site.get(f"/api/v1/jobs/{deleted}/input").json()["detail"]


# -- stats and metrics ------------------------------------------------------------------------------


def test_stats_count_states_and_sum_images_and_megapixels_per_hour_and_day(quiet_site: InProcessSite) -> None:
    now = datetime.now(UTC)
    for seconds in (4.0, 6.0):
        quiet_site.insert_job(
            state="done",
            started_at=now - timedelta(seconds=seconds),
            finished_at=now,
            report=done_report(1000, 1000, seconds),
        )
    quiet_site.insert_job(
        state="done",
        started_at=now - timedelta(days=1, seconds=5),
        finished_at=now - timedelta(days=1),
        report=done_report(2000, 1000, 10.0),
    )
    quiet_site.insert_job(state="failed", finished_at=now, error="bad")
    stats = quiet_site.get("/api/v1/stats").json()
    assert stats["counts"] == {"queued": 0, "processing": 0, "done": 3, "failed": 1, "cancelled": 0}
    this_hour = stats["per_hour"][-1]
    assert this_hour["images"] == 2 and this_hour["megapixels"] == pytest.approx(2.0)
    assert len(stats["per_hour"]) == 24 and len(stats["per_day"]) == 30
    today, yesterday = stats["per_day"][-1], stats["per_day"][-2]
    assert (today["done"], today["failed"], today["megapixels"]) == (2, 1, pytest.approx(2.0))
    assert (yesterday["done"], yesterday["megapixels"]) == (1, pytest.approx(2.0))
    assert stats["seconds_per_megapixel"] == pytest.approx(20.0 / 4.0)
    assert stats["done_total"]["images"] == 3


METRIC_LINE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+-]+$')


def test_metrics_are_prometheus_text(quiet_site: InProcessSite) -> None:
    quiet_site.insert_job(state="done", report=done_report())
    response = quiet_site.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    lines = response.text.splitlines()
    for line in lines:
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or METRIC_LINE.match(line), line
    assert 'restorer_jobs{state="done"} 1' in lines
    assert 'restorer_health_status{status="ok"} 1' in lines
    assert "restorer_worker_alive 1" in lines


def test_polls_are_answered_while_a_big_preview_is_being_decoded(quiet_site: InProcessSite) -> None:
    """Image work runs in the thread pool: the event loop keeps answering while it decodes."""
    import concurrent.futures

    import numpy as np

    noise = (np.random.default_rng(1).random((1800, 2400, 3)) * 255).astype("uint8")
    out = io.BytesIO()
    Image.fromarray(noise).save(out, "PNG", compress_level=1)
    (quiet_site.settings.outbox / "big.png").write_bytes(out.getvalue())
    job_id = quiet_site.insert_job(state="done", output_path="big.png", report=done_report(1000, 750))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        preview = pool.submit(
            lambda: requests.get(f"{quiet_site.api}/api/v1/jobs/{job_id}/output?max=256", timeout=60)
        )
        answered_during = 0
        while not preview.done():
            response = requests.get(f"{quiet_site.api}/api/v1/health", timeout=10)
            assert response.status_code == 200
            if not preview.done():
                answered_during += 1
        took = time.monotonic() - started
        assert preview.result().status_code == 200
    assert answered_during >= 3, f"only {answered_during} health answers during a {took:.2f} s preview"


def test_a_port_in_use_is_reported_in_words(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (
            pytest.raises(
                OSError, match=rf"cannot listen on 127.0.0.1:{port} for the page .*RESTORER_SITE_PORT"
            ),
            running_site(tmp_path, site_port=port),
        ):
            pass


def test_a_hung_share_stalls_file_requests_only(
    quiet_site: InProcessSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An NFS hard mount that stops answering blocks stat/open forever: job JSON and health go on."""
    import concurrent.futures
    import threading

    import status_site.api

    release = threading.Event()
    real_locate = status_site.api.locate

    def hung_locate(*args: Any) -> Any:
        release.wait(30)
        return real_locate(*args)

    monkeypatch.setattr(status_site.api, "locate", hung_locate)
    now = datetime.now(UTC)
    quiet_site.insert_job(state="done", started_at=now, finished_at=now, report=done_report(1000, 1000, 10.0))
    queued = quiet_site.store.add("on-the-share.jpg", "q" * 64, 10, 1.0).job.id
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        stuck = [
            pool.submit(requests.get, f"{quiet_site.api}/api/v1/jobs/{queued}/input", timeout=60)
            for _ in range(6)
        ]
        try:
            time.sleep(0.3)
            started = time.monotonic()
            detail = quiet_site.get(f"/api/v1/jobs/{queued}")
            assert detail.status_code == 200
            assert detail.json()["eta_seconds"] == pytest.approx(10.0, abs=0.5)  # the mean size stands in
            assert quiet_site.get("/api/v1/health").status_code == 200
            assert quiet_site.get("/", port="page").status_code == 200
            assert time.monotonic() - started < 5.0
            assert not any(future.done() for future in stuck)
        finally:
            release.set()
        assert all(future.result().status_code == 404 for future in stuck)  # the file was never there


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[case.name for case in IMAGE_CASES])
def test_uploads_accept_and_refuse_what_the_pipeline_does(case: ImageCase, tmp_path: Path) -> None:
    """One table (tests/image_cases.py) for the worker's load_image, probe and the upload check, which
    is intake's admission: a refusal carries the pipeline's own words."""
    from pipeline import load_image
    from status_site.problems import Problem
    from status_site.uploads import SpooledFile, admit_upload

    settings = make_settings(tmp_path, max_input_megapixels=case.max_pixels / 1e6)
    spooled = SpooledFile("photo", "photo", io.BytesIO(case.data), len(case.data), "")
    try:
        admitted = admit_upload(settings, spooled)
    except Problem as refused:
        assert case.error is not None, f"{case.name} refused: {refused.detail}"
        assert refused.status == 422
        with pytest.raises(case.error) as loaded:
            load_image(case.data, max_pixels=case.max_pixels)
        assert str(loaded.value) in refused.detail
    else:
        assert case.error is None, f"{case.name} accepted, the pipeline says {case.error.__name__}"
        assert (admitted.format, admitted.width, admitted.height) == (case.format, *case.size)


def test_an_upload_is_held_to_intakes_limits_and_keeps_a_name_intake_knows(tmp_path: Path) -> None:
    """Uploads use intake's admission: a file over max_input_mb is refused at once (it used to be taken
    and then failed by the worker), and a name with an image suffix of the one list (.jpe) is kept."""
    from status_site.problems import Problem
    from status_site.uploads import SpooledFile, admit_upload, final_name

    settings = make_settings(tmp_path, max_input_mb=1)
    big = png_bytes(800, 800)  # noise: more than 1 MB as PNG
    assert len(big) > settings.max_input_bytes
    spooled = SpooledFile("big.png", "big.png", io.BytesIO(big), len(big), "")
    with pytest.raises(Problem) as refused:
        admit_upload(settings, spooled)
    assert refused.value.status == 422 and "more than the 1 MB limit" in refused.value.detail
    jpe = SpooledFile("scan.jpe", "scan.jpe", io.BytesIO(jpeg_bytes(8, 8)), 0, "")
    assert final_name(jpe, admit_upload(settings, jpe).extension) == "scan.jpe"

"""Path traversal: no request path reaches the filesystem, and stored paths that point out of their
folder (.., absolute, symlinks) are refused, on the API port and on the page port alike."""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.site import InProcessSite, png_bytes, running_site

SECRET = "top-secret-content-outside-every-folder"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[InProcessSite]:
    with running_site(tmp_path / "daemon") as running:
        yield running


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.png"
    path.write_text(SECRET)
    return path


def raw_get(site: InProcessSite, port: str, raw_path: str) -> tuple[int, str, str]:
    """Send the path byte for byte (no client-side normalisation of ../ or %2e%2e)."""
    api_port, page_port = site.ports
    conn = http.client.HTTPConnection("127.0.0.1", api_port if port == "api" else page_port, timeout=10)
    try:
        conn.putrequest("GET", raw_path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode("latin-1")
    finally:
        conn.close()


ENCODED_ATTACKS = [
    "/api/v1/jobs/..%2F..%2F..%2Fetc%2Fpasswd/input",
    "/api/v1/jobs/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/api/v1/jobs/1/../../../../etc/passwd",
    "/api/v1/jobs/1/input/../../../../../etc/passwd",
    "/api/v1/jobs/%2Fetc%2Fpasswd/output",
    "/api/v1/jobs/1%2F..%2F..%2Fsecret.png/input",
    "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/%2e%2e%2f%2e%2e%2fserver.py",
    "/static/../server.py",
    "/static/..%5c..%5cserver.py",
    "//etc/passwd",
    "/..%2f..%2f..%2fetc/passwd",
    "/static/%00index.html",
]


@pytest.mark.parametrize("port", ["api", "page"])
def test_encoded_traversal_in_the_url_is_refused(site: InProcessSite, port: str) -> None:
    for attack in ENCODED_ATTACKS:
        status, content_type, body = raw_get(site, port, attack)
        assert status in (400, 403, 404), (attack, status)
        assert "root:" not in body and "import" not in body, attack
        if status != 400:  # aiohttp's own parser answers malformed requests before our middleware
            assert content_type.startswith("application/problem+json"), (attack, content_type)


@pytest.mark.parametrize("port", ["api", "page"])
@pytest.mark.parametrize("which", ["input", "output"])
def test_stored_paths_pointing_out_of_their_folder_are_refused(
    site: InProcessSite, secret: Path, port: str, which: str
) -> None:
    inbox, outbox = site.settings.inbox, site.settings.outbox
    (inbox / "link.png").symlink_to(secret)
    (outbox / "link.png").symlink_to(secret)
    (inbox / "dirlink").symlink_to(secret.parent, target_is_directory=True)
    (outbox / "dirlink").symlink_to(secret.parent, target_is_directory=True)
    relative_up = os.path.relpath(secret, inbox if which == "input" else outbox)
    stored = [str(secret), relative_up, "link.png", "dirlink/secret.png", ".", "sub/../../secret.png"]
    for path in stored:
        fields = {"input_path": path} if which == "input" else {"output_path": path, "input_path": "x.png"}
        job_id = site.insert_job(state="done", **fields)
        for suffix in ("", "?max=64"):
            response = site.get(f"/api/v1/jobs/{job_id}/{which}{suffix}", port=port)
            assert response.status_code in (403, 404), (path, response.status_code)
            assert response.headers["Content-Type"].startswith("application/problem+json")
            assert SECRET not in response.text


def test_a_symlink_is_never_followed_even_to_a_file_inside_the_folder(site: InProcessSite) -> None:
    """A link is refused wherever it points (issue 18): whether its target is inside can change between
    the check and the open (a folder on the way swapped for a link), so no link is followed at all."""
    data = png_bytes()
    (site.settings.inbox / "real.png").write_bytes(data)
    (site.settings.inbox / "alias.png").symlink_to(site.settings.inbox / "real.png")
    (site.settings.inbox / "inside").symlink_to(site.settings.inbox, target_is_directory=True)
    for stored in ("alias.png", "inside/real.png"):
        job_id = site.insert_job(state="done", input_path=stored)
        response = site.get(f"/api/v1/jobs/{job_id}/input")
        assert response.status_code == 403, stored
    job_id = site.insert_job(state="done", input_path="real.png")
    assert site.get(f"/api/v1/jobs/{job_id}/input").content == data


def test_static_files_are_served_by_exact_name_only(site: InProcessSite) -> None:
    for name in ("app.js", "style.css", "index.html"):
        assert site.get(f"/static/{name}", port="page").status_code == 200
    for name in ("APP.JS", "app.js.bak", "__init__.py", ".gitignore"):
        response = site.get(f"/static/{name}", port="page")
        assert response.status_code == 404, name


def test_a_file_swapped_for_a_symlink_after_the_check_is_not_opened(
    site: InProcessSite, secret: Path
) -> None:
    """Between the path check and the open, a share user replaces the photo with a symlink out."""
    from status_site.files import locate, open_checked
    from status_site.problems import Problem

    (site.settings.inbox / "swap.png").write_bytes(png_bytes())
    job_id = site.insert_job(state="done", input_path="swap.png")
    found = locate(site.store.get(job_id), "input", site.settings)
    (site.settings.inbox / "swap.png").unlink()
    (site.settings.inbox / "swap.png").symlink_to(secret)
    with pytest.raises(Problem) as refused:
        open_checked(found)
    assert refused.value.status in (403, 404)


def test_an_upload_into_a_preset_folder_planted_as_a_link_is_refused(
    site: InProcessSite, tmp_path: Path
) -> None:
    """inbox/2x -> /elsewhere (issue 18): the upload is refused with a reason, never written there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (site.settings.inbox / "2x").symlink_to(elsewhere, target_is_directory=True)
    response = site.post(
        "/api/v1/jobs", files=[("file", ("x.png", png_bytes(seed=3), "image/png"))], data={"preset": "2x"}
    )
    assert response.status_code == 409, response.text
    assert response.json()["type"].endswith("inbox-folder-refused") and "link" in response.json()["detail"]
    assert list(elsewhere.iterdir()) == []

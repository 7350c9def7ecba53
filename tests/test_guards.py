"""Who may do what (status_site/guards.py) against real servers on loopback: the token's minimum
length at startup and where it may come from (a systemd credential, a file such as a compose secret),
Origin / Sec-Fetch-Site on writes, the Host allow-list (DNS rebinding) and protect_reads. LAN clients (a
non-loopback peer) are in test_lan_clients.py."""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path

import pytest
import requests
from pydantic import ValidationError

from daemon.settings import Settings
from tests.support.serve import serve_to_the_end
from tests.support.site import Site, png_bytes, running_site

PROBLEM = "application/problem+json"
TOKEN = "family-photos-token-0123456789"


@pytest.mark.parametrize("token", ["", "short-token"])
def test_an_empty_or_short_token_stops_restorer_serve_with_a_clear_error(tmp_path: Path, token: str) -> None:
    result = serve_to_the_end(tmp_path, {"RESTORER_API_TOKEN": token})
    assert result.returncode == 2, result.stderr
    assert "api_token must be at least 16 characters" in result.stderr
    assert f"got {len(token)}" in result.stderr


def test_the_token_can_come_from_a_systemd_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "api_token").write_text(TOKEN + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("RESTORER_API_TOKEN", raising=False)
    settings = Settings.load(None)
    assert settings.api_token is not None and settings.api_token.get_secret_value() == TOKEN
    monkeypatch.setenv("RESTORER_API_TOKEN", "from-the-environment-0123")  # the environment wins
    assert Settings.load(None).api_token.get_secret_value() == "from-the-environment-0123"  # type: ignore[union-attr]


def test_the_token_can_come_from_a_file_read_once_at_start(tmp_path: Path) -> None:
    """A compose secret (/run/secrets/restorer_api_token) named by api_token_file: the daemon takes the
    token from it, answers writes with it, and the path never travels to the workers or the page."""
    token_file = tmp_path / "restorer_api_token"
    token_file.write_text(TOKEN + "\n")
    with running_site(tmp_path, api_token_file=token_file) as site:
        assert site.settings.api_token is not None and site.settings.api_token.get_secret_value() == TOKEN
        failed = site.insert_job(state="failed", error="corrupt")
        assert _retry(site, "api", failed, {}).status_code == 401
        assert _retry(site, "api", failed, {"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert "api_token_file" not in site.settings.public_dict()
        worker_json = site.settings.to_child_json()
    token_file.unlink()  # read once: a worker (or a Ray actor elsewhere) never looks for the file
    assert "api_token_file" not in worker_json
    assert Settings.from_child_json(worker_json).api_token is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("\n", "is empty"),
        ("short-token\n", "api_token must be at least 16 characters, got 11"),
        ("folder", "is not a text file"),
        (b"\xff\xfe" * 10, "is not a text file"),
    ],
    ids=["missing", "empty", "short", "a-directory", "not-text"],
)
def test_a_bad_token_file_is_refused_with_its_name(
    tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    token_file = tmp_path / "restorer_api_token"
    if content == "folder":
        token_file.mkdir()
    elif isinstance(content, bytes):
        token_file.write_bytes(content)
    elif content is not None:
        token_file.write_text(content)
    with pytest.raises(ValidationError, match=re.escape(message)) as refused:
        Settings.load(api_token_file=token_file)
    if message != "api_token must be at least 16 characters, got 11":
        assert f"api_token_file {token_file}" in str(refused.value)


def test_a_token_file_and_a_token_together_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Moving the token into a secret must not leave the old one in the environment unnoticed."""
    token_file = tmp_path / "restorer_api_token"
    token_file.write_text(TOKEN)
    monkeypatch.setenv("RESTORER_API_TOKEN", "from-the-environment-0123")
    with pytest.raises(ValidationError, match="api_token and api_token_file are both set"):
        Settings.load(api_token_file=token_file)
    monkeypatch.delenv("RESTORER_API_TOKEN")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "api_token").write_text(TOKEN)
    with pytest.raises(ValidationError, match="both set"):
        Settings.load(api_token_file=token_file)


def test_restorer_serve_stops_with_a_clear_error_when_the_token_file_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "run" / "secrets" / "restorer_api_token"
    result = serve_to_the_end(tmp_path, {"RESTORER_API_TOKEN_FILE": str(missing), "RESTORER_API_TOKEN": None})
    assert result.returncode == 2, result.stderr
    assert f"api_token_file {missing} does not exist" in result.stderr


def _retry(site: Site, port: str, job_id: int, headers: dict[str, str]) -> requests.Response:
    return site.post(f"/api/v1/jobs/{job_id}/retry", port=port, headers=headers)


@pytest.mark.parametrize("port", ["api", "page"])
def test_writes_from_another_site_are_refused(tmp_path: Path, port: str) -> None:
    """No token: loopback may write, but a web page open on the server must not write through it."""
    with running_site(tmp_path) as site:
        own = site.api if port == "api" else site.page
        failed = site.insert_job(state="failed", error="corrupt")
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Origin": own.replace("127.0.0.1", "localhost")},  # another origin, same machine
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
        ):
            refused = _retry(site, port, failed, headers)
            assert refused.status_code == 403, headers
            assert refused.headers["Content-Type"].startswith(PROBLEM)
            assert refused.json()["type"].endswith("cross-origin-write")
        upload = site.post(
            "/api/v1/jobs",
            port=port,
            headers={"Origin": "http://evil.example"},
            files=[("file", ("x.png", png_bytes(), "image/png"))],
        )
        assert upload.status_code == 403
        pause = site.post("/api/v1/queue/pause", port=port, headers={"Origin": "http://evil.example"})
        assert pause.status_code == 403 and site.store.queue_pause().paused is False
        assert not any(site.settings.inbox.iterdir())
        assert site.store.get(failed).state == "failed"
        for headers in ({"Origin": own}, {"Sec-Fetch-Site": "same-origin"}, {}):
            assert _retry(site, port, failed, headers).status_code == 200, headers


def test_an_origin_listed_in_cors_origins_may_write(tmp_path: Path) -> None:
    with running_site(tmp_path, cors_origins=["http://nas.local:8080"]) as site:
        failed = site.insert_job(state="failed", error="corrupt")
        assert _retry(site, "api", failed, {"Origin": "http://nas.local:8080"}).status_code == 200
        assert _retry(site, "api", failed, {"Origin": "http://evil.example"}).status_code == 403


def test_a_foreign_host_name_is_refused_on_every_path(tmp_path: Path) -> None:
    """DNS rebinding: evil.example resolves to this machine, the browser sends Host: evil.example."""
    with running_site(tmp_path, allowed_hosts=["photos.example.org"]) as site:
        api_port, page_port = site.ports
        for port, path in (
            ("api", "/api/v1/jobs"),
            ("page", "/"),
            ("page", "/api/v1/jobs"),
            ("api", "/metrics"),
        ):
            number = api_port if port == "api" else page_port
            refused = site.get(path, port=port, headers={"Host": f"evil.example:{number}"})
            assert refused.status_code == 421, (port, path)
            assert refused.headers["Content-Type"].startswith(PROBLEM)
            assert "allowed_hosts" in refused.json()["detail"]
            for host in (
                f"localhost:{number}",
                f"127.0.0.1:{number}",
                f"[::1]:{number}",
                "photos.example.org",
            ):
                assert site.get(path, port=port, headers={"Host": host}).status_code == 200, host


def test_protect_reads_needs_the_token_for_every_read_but_the_page_shell(tmp_path: Path) -> None:
    with running_site(tmp_path, api_token=TOKEN, protect_reads=True) as site:
        (site.settings.inbox / "private.png").write_bytes(png_bytes())
        job = site.insert_job(state="done", input_path="private.png")
        protected = [
            ("api", "/api/v1/jobs"),
            ("page", "/api/v1/jobs"),
            ("api", f"/api/v1/jobs/{job}"),
            ("api", f"/api/v1/jobs/{job}/input"),
            ("page", f"/api/v1/jobs/{job}/input?max=64"),
            ("api", "/api/v1/stats"),
            ("api", "/metrics"),
        ]
        for port, path in protected:
            refused = site.get(path, port=port)
            assert refused.status_code == 401, path
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            assert refused.headers["Content-Type"].startswith(PROBLEM)
            wrong = site.get(path, port=port, headers={"Authorization": "Bearer wrong-token-0123456789"})
            assert wrong.status_code == 401, path
            assert site.get(path, port=port, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        for path in ("/", "/static/app.js", "/api/v1/capabilities", "/api/v1/health"):
            assert site.get(path, port="page").status_code == 200, path
        capabilities = site.get("/api/v1/capabilities").json()
        assert capabilities["reads_require_token"] is True and capabilities["signed_in"] is False
        signed = site.get("/api/v1/capabilities", headers={"X-API-Token": TOKEN}).json()
        assert signed["signed_in"] is True and signed["can_write"] is True


def test_protect_reads_without_a_token_is_refused_at_startup(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="protect_reads needs api_token"),
        running_site(tmp_path, protect_reads=True),
    ):
        pass


def test_restorer_serve_with_protect_reads_and_no_token_stops_before_anything_starts(tmp_path: Path) -> None:
    """A settings rule, checked when the settings load: before the job database is opened and the
    models are loaded (it used to be checked by the servers, after both)."""
    result = serve_to_the_end(
        tmp_path,
        {"RESTORER_PROTECT_READS": "true", "RESTORER_API_TOKEN": None, "CREDENTIALS_DIRECTORY": None},
    )
    assert result.returncode == 2, result.stderr
    assert "protect_reads needs api_token" in result.stderr
    assert not (tmp_path / "state" / "jobs.sqlite3").exists()  # nothing was started
    assert "loading" not in result.stderr.lower()


def raw_request(site: Site, head: bytes) -> bytes:
    """Send a request head as raw bytes (requests cannot send header bytes that are not text)."""
    with socket.create_connection(("127.0.0.1", site.ports[0]), timeout=10) as sock:
        sock.sendall(head + b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply


def test_a_token_header_that_is_not_utf8_is_refused_with_401_and_no_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running_site(tmp_path, api_token=TOKEN, protect_reads=True) as site:
        failed = site.insert_job(state="failed", error="corrupt")
        for header in (
            b"X-API-Token: \xff\xfe" + TOKEN.encode() + b"\r\n",
            b"Authorization: Bearer \xc3\x28" + TOKEN.encode() + b"\r\n",
        ):
            for line in (
                b"GET /api/v1/jobs HTTP/1.1\r\n",
                f"POST /api/v1/jobs/{failed}/retry HTTP/1.1\r\n".encode(),
            ):
                reply = raw_request(site, line + header)
                assert reply.startswith(b"HTTP/1.1 401"), reply[:300]
                assert b"token-required" in reply
        assert site.store.get(failed).state == "failed"
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_every_answer_forbids_framing_by_another_site(tmp_path: Path) -> None:
    """Clickjacking: no page may show ours in a frame (the browser check is in test_browser.py)."""
    with running_site(tmp_path) as site:
        for port, path in (
            ("page", "/"),
            ("page", "/static/app.js"),
            ("page", "/api/v1/jobs"),
            ("api", "/api/v1/health"),
            ("api", "/no-such-path"),
        ):
            answer = site.get(path, port=port)
            assert answer.headers["X-Frame-Options"] == "DENY", (port, path)
        assert "frame-ancestors 'none'" in site.get("/", port="page").headers["Content-Security-Policy"]

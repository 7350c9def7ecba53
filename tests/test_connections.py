"""Connections and uploads cannot be held open for free: a real server on loopback, real sockets
behaving like a slowloris client, an idle keep-alive client, a connection flood and stalled uploads."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import requests

from tests.site_support import Site, png_bytes, running_site

PROBLEM = "application/problem+json"
IDLE = 1.0


def seconds_until_closed(sock: socket.socket, trickle: bytes | None, limit: float = 20.0) -> float:
    """Send `trickle` every 0.2 s (a slow header), or nothing; return when the server closes."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < limit:
        try:
            if trickle is not None:
                sock.sendall(trickle)
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    raise AssertionError(f"the server kept the connection open for {limit:.0f} s")


def connect(site: Site) -> socket.socket:
    return socket.create_connection(("127.0.0.1", site.ports[0]), timeout=10)  # type: ignore[attr-defined]


def test_slow_headers_and_idle_connections_are_closed(tmp_path: Path) -> None:
    with running_site(tmp_path, http_idle_seconds=IDLE) as site:
        with connect(site) as slowloris:
            slowloris.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            took = seconds_until_closed(slowloris, b"X-Padding: a\r\n")
            assert IDLE * 0.9 <= took < IDLE + 5, took
        with connect(site) as silent:
            assert IDLE * 0.9 <= seconds_until_closed(silent, None) < IDLE + 5
        with connect(site) as keep_alive:  # one answer, then nothing: the keep-alive ends too
            keep_alive.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert b"200 OK" in keep_alive.recv(65536)
            assert seconds_until_closed(keep_alive, None) < IDLE + 5
        assert site.get("/api/v1/health").status_code == 200  # and the server answers as before


def test_connections_beyond_the_cap_are_turned_away_and_the_server_recovers(tmp_path: Path) -> None:
    with running_site(tmp_path, http_max_connections_per_client=5) as site, ExitStack() as held:
        for _ in range(5):
            held.enter_context(connect(site))
        with connect(site) as extra:
            extra.settimeout(10)
            reply = extra.recv(65536)
            assert reply.startswith(b"HTTP/1.1 503"), reply
        held.close()
        site.wait_for(lambda: site.get("/api/v1/health").status_code == 200, 10, "a free connection slot")


@contextmanager
def stalled_upload(site: Site) -> Iterator[socket.socket]:
    """An upload whose client sends the start of a file and then nothing."""
    boundary = "----stall"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    sock = connect(site)
    sock.sendall(
        (
            f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
        ).encode()
        + head
        + png_bytes()[:100]
    )
    try:
        yield sock
    finally:
        sock.close()


def test_concurrent_uploads_are_capped_with_a_503(tmp_path: Path) -> None:
    with running_site(tmp_path) as site, ExitStack() as uploads:
        for _ in range(4):
            uploads.enter_context(stalled_upload(site))
        upload = [("file", ("x.png", png_bytes(), "image/png"))]

        def refused() -> tuple[requests.Response] | None:  # a tuple: a 503 Response itself is falsy
            response = site.post("/api/v1/jobs", files=upload)
            return (response,) if response.status_code == 503 else None

        (busy,) = site.wait_for(refused, 10, "a 503 while four uploads stream")
        assert busy.headers["Content-Type"].startswith(PROBLEM) and busy.headers["Retry-After"]
        assert "uploads are already streaming" in busy.json()["detail"]
        uploads.close()
        site.wait_for(lambda: site.post("/api/v1/jobs", files=upload).status_code == 202, 10, "a free slot")


def test_an_upload_is_refused_when_the_spool_disk_has_no_room(tmp_path: Path) -> None:
    with running_site(tmp_path, min_free_mb=10**9) as site:
        refused = site.post("/api/v1/jobs", files=[("file", ("x.png", png_bytes(), "image/png"))])
        assert refused.status_code == 507, refused.text
        assert "min_free_mb" in refused.json()["detail"]
        assert not any(site.settings.inbox.iterdir())


@pytest.mark.parametrize("seconds", [0.5])
def test_an_upload_that_stops_sending_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seconds: float
) -> None:
    monkeypatch.setattr("status_site.uploads.UPLOAD_IDLE_SECONDS", seconds)
    with running_site(tmp_path) as site, stalled_upload(site) as sock:
        sock.settimeout(10)
        reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"upload-stalled" in reply
        assert not any(site.settings.inbox.iterdir())

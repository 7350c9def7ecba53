"""`restorer weights fetch`: a real HTTP server on loopback stands in for the release host (reached through
--mirror, the option meant for mirrors); never the internet. A cut connection is resumed with a Range
request, a file with the wrong sha256 is refused and leaves nothing in weights/, unknown names are errors."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import main as cli_main
from pipeline import models

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB stands in for GFPGANv1.4.pth
NAME = "GFPGANv1.4.pth"


class ReleaseHost(http.server.ThreadingHTTPServer):
    """Serves PAYLOAD under /NAME. `cut_after`: the first full response stops after that many bytes and
    closes the connection; `honour_range`: answer Range with 206 (else always 200 and the whole file)."""

    def __init__(self, payload: bytes) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.payload = payload
        self.cut_after: int | None = None
        self.honour_range = True
        self.requests: list[str | None] = []  # the Range header of each request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/releases"


class Handler(http.server.BaseHTTPRequestHandler):
    server: ReleaseHost

    def do_GET(self) -> None:
        host = self.server
        if self.path != f"/releases/{NAME}":
            self.send_error(404)
            return
        range_header = self.headers.get("Range")
        host.requests.append(range_header)
        start = 0
        if range_header and host.honour_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(host.payload):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(host.payload) - 1}/{len(host.payload)}")
        else:
            self.send_response(200)
        body = host.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if host.cut_after is not None and start == 0:
            self.wfile.write(body[: host.cut_after])
            host.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def host() -> Iterator[ReleaseHost]:
    server = ReleaseHost(PAYLOAD)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def official_sha(monkeypatch: pytest.MonkeyPatch) -> str:
    """The registry's GFPGANv1.4 entry with the test payload's sha256 as the official one."""
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    spec = dataclasses.replace(models.REGISTRY["GFPGANv1.4"], sha256=sha)
    monkeypatch.setitem(models.REGISTRY, "GFPGANv1.4", spec)
    return sha


def fetch(weights: Path, host: ReleaseHost, *names: str) -> int:
    return cli_main(["weights", "fetch", *names, "--weights-dir", str(weights), "--mirror", host.url])


def test_download_is_verified_and_appears_under_its_real_name(
    tmp_path: Path, host: ReleaseHost, official_sha: str, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "weights"
    assert fetch(weights, host, "GFPGANv1.4") == 0
    assert (weights / NAME).read_bytes() == PAYLOAD
    assert [p.name for p in weights.iterdir()] == [NAME]
    out = capsys.readouterr()
    assert "GFPGANv1.4: downloaded" in out.out and "100.0%" in out.err  # the progress bar
    # Run again: the verified file is kept, nothing is downloaded.
    assert fetch(weights, host, "GFPGANv1.4") == 0
    assert "already there" in capsys.readouterr().out and len(host.requests) == 1


def test_a_cut_connection_is_resumed_with_a_range_request(
    tmp_path: Path, host: ReleaseHost, official_sha: str
) -> None:
    host.cut_after = 300_000
    weights = tmp_path / "weights"
    assert fetch(weights, host, "GFPGANv1.4") == 0
    assert host.requests == [None, "bytes=300000-"]
    assert hashlib.sha256((weights / NAME).read_bytes()).hexdigest() == official_sha


def test_a_part_left_by_an_earlier_run_is_resumed(
    tmp_path: Path, host: ReleaseHost, official_sha: str
) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / f".{NAME}.part").write_bytes(PAYLOAD[:123_456])
    assert fetch(weights, host, "GFPGANv1.4") == 0
    assert host.requests == ["bytes=123456-"]
    assert (weights / NAME).read_bytes() == PAYLOAD and not (weights / f".{NAME}.part").exists()


def test_a_server_that_ignores_range_starts_over_cleanly(
    tmp_path: Path, host: ReleaseHost, official_sha: str
) -> None:
    host.honour_range = False
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / f".{NAME}.part").write_bytes(b"stale bytes from elsewhere")
    assert fetch(weights, host, "GFPGANv1.4") == 0
    assert (weights / NAME).read_bytes() == PAYLOAD


def test_a_file_with_the_wrong_sha256_is_refused_and_nothing_is_left(
    tmp_path: Path, host: ReleaseHost, official_sha: str, capsys: pytest.CaptureFixture[str]
) -> None:
    host.payload = PAYLOAD[:-1] + b"X"  # one byte differs
    weights = tmp_path / "weights"
    assert fetch(weights, host, "GFPGANv1.4") == 1
    err = capsys.readouterr().err
    assert f"expected {official_sha}" in err and "nothing was written" in err
    assert list(weights.iterdir()) == []


def test_unknown_name_is_an_error_listing_the_known_models(
    tmp_path: Path, host: ReleaseHost, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fetch(tmp_path / "weights", host, "GFPGANv9") == 2
    assert "unknown model 'GFPGANv9'" in capsys.readouterr().err and host.requests == []


def test_missing_file_on_the_server_is_a_clear_error(
    tmp_path: Path, host: ReleaseHost, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fetch(tmp_path / "weights", host, "GFPGANv1.3") == 1
    assert "HTTP 404" in capsys.readouterr().err
    assert list((tmp_path / "weights").iterdir()) == []


def test_a_file_without_a_verified_sha256_is_not_fetched(
    tmp_path: Path, host: ReleaseHost, capsys: pytest.CaptureFixture[str]
) -> None:
    assert models.REGISTRY["RestoreFormer"].sha256 is None
    assert fetch(tmp_path / "weights", host, "RestoreFormer") == 1
    assert "no verified sha256" in capsys.readouterr().err and host.requests == []


def test_a_different_file_under_the_name_is_never_overwritten(
    tmp_path: Path, host: ReleaseHost, official_sha: str, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / NAME).write_bytes(b"the user's own fine-tune")
    assert fetch(weights, host, "GFPGANv1.4") == 1
    assert "not the official file" in capsys.readouterr().err
    assert (weights / NAME).read_bytes() == b"the user's own fine-tune" and host.requests == []

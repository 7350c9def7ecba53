"""Connections and uploads cannot be held open for free: a real server on loopback, real sockets
behaving like a slowloris client, an idle keep-alive client, a connection flood from several networks
(127.0.0.0/8 addresses other than 127.0.0.1 play other networks), slow readers, stalled and trickling
uploads, and uploads racing for a small real disk (a tmpfs)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import requests
from PIL import Image

from daemon.settings import Settings
from status_site.connections import network_of, reserved_address
from tests.support.settings import make_settings
from tests.support.site import Site, png_bytes, running_site

PROBLEM = "application/problem+json"
TOKEN = "connection-token-0123456789"
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
    return socket.create_connection(("127.0.0.1", site.ports[0]), timeout=10)


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


def http_get(
    site: Site, source: str, path: str = "/api/v1/health", headers: dict[str, str] | None = None
) -> bytes:
    """One request on a new connection from `source` (any 127.0.0.0/8 address is this machine's);
    the whole answer, or b"" when the connection was closed or reset without one."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    try:
        with socket.create_connection(
            ("127.0.0.1", site.ports[0]),
            timeout=5,
            source_address=(source, 0),
        ) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{lines}\r\n".encode()
            )
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
            return reply
    except OSError:
        return b""


def idle_connection(site: Site, source: str) -> socket.socket:
    """A connection that sends nothing (it waits for a request: the kind the gate may close)."""
    return socket.create_connection(
        ("127.0.0.1", site.ports[0]),
        timeout=10,
        source_address=(source, 0),
    )


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


BIG_FILE_BYTES = 48 * 1024 * 1024


def slow_reader(site: Site, source: str, job: int) -> socket.socket:
    """A client in the middle of a request: it asks for a big file and reads only the first bytes, so
    the server's answer waits on it (the kind the gate never closes)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", site.ports[0]))
    sock.sendall(f"GET /api/v1/jobs/{job}/input HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    assert sock.recv(64).startswith(b"HTTP/1.1 200"), "the big file's answer began"
    return sock


def big_job(site: Site) -> int:
    (site.settings.inbox / "big.png").write_bytes(os.urandom(BIG_FILE_BYTES))
    return site.insert_job(state="done", input_path="big.png")


@pytest.mark.parametrize(
    ("client", "network"),
    [
        ("192.0.2.7", "192.0.2.0/24"),
        ("::ffff:192.0.2.7", "192.0.2.0/24"),  # an IPv4 client on a dual-stack socket
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
    ],
)
def test_clients_are_counted_per_ipv4_24_and_ipv6_64(client: str, network: str) -> None:
    assert network_of(client) == network


def test_only_127_0_0_1_and_ipv6_loopback_use_the_reserve_by_address() -> None:
    assert reserved_address("127.0.0.1") and reserved_address("::1") and reserved_address("::ffff:127.0.0.1")
    assert not reserved_address("127.0.0.2") and not reserved_address("10.0.0.1")


def test_the_reserve_must_leave_room_for_other_clients(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="http_reserved_connections"):
        make_settings(tmp_path, http_max_connections=8, http_reserved_connections=8)


def test_the_old_per_client_key_says_what_it_became(tmp_path: Path) -> None:
    config = tmp_path / "restorer.toml"
    config.write_text("http_max_connections_per_client = 64\n")
    with pytest.raises(ValueError, match="now http_max_connections_per_network"):
        Settings.load(config)


def test_a_full_network_closes_its_oldest_idle_connection_for_a_newcomer(tmp_path: Path) -> None:
    """127.0.1.1 and 127.0.1.9 share the /24 127.0.1.0; its cap is 3."""
    with running_site(tmp_path, http_max_connections_per_network=3) as site, ExitStack() as held:
        oldest, *others = [held.enter_context(idle_connection(site, "127.0.1.1")) for _ in range(3)]
        assert http_get(site, "127.0.1.9").startswith(b"HTTP/1.1 200")
        assert closed_by_server(oldest)
        for sock in others:  # the newer idle ones stay open
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(1)


def test_connections_beyond_the_cap_are_turned_away_when_none_is_idle_and_the_server_recovers(
    tmp_path: Path,
) -> None:
    with running_site(tmp_path, http_max_connections_per_network=3) as site, ExitStack() as held:
        job = big_job(site)
        for _ in range(3):  # the /24 127.0.1.0 is full of requests in progress: none may be closed
            held.enter_context(slow_reader(site, "127.0.1.1", job))
        refused = http_get(site, "127.0.1.9")
        assert refused.startswith(b"HTTP/1.1 503") and b"too many connections" in refused, refused
        assert http_get(site, "127.1.0.1").startswith(b"HTTP/1.1 200")  # another network is served
        held.close()
        site.wait_for(
            lambda: http_get(site, "127.0.1.9").startswith(b"HTTP/1.1 200"), 10, "a free connection slot"
        )


def test_the_reserve_keeps_loopback_and_token_holders_served(tmp_path: Path) -> None:
    """Of 6 slots, 2 are for 127.0.0.1, ::1 and addresses that sent the token; the other 4 are taken
    by requests in progress from the LAN (slow readers), so no ordinary newcomer gets in."""
    token = {"X-API-Token": TOKEN}
    with (
        running_site(tmp_path, api_token=TOKEN, http_max_connections=6, http_reserved_connections=2) as site,
        ExitStack() as held,
    ):
        job = big_job(site)
        assert http_get(site, "127.0.3.1", headers=token).startswith(b"HTTP/1.1 200")  # a token holder
        for _ in range(4):
            held.enter_context(slow_reader(site, "127.0.2.1", job))
        assert http_get(site, "127.1.0.1").startswith(b"HTTP/1.1 503")
        # Refused before its request is read: a token on a first request cannot open the reserve.
        assert http_get(site, "127.0.4.1", headers=token).startswith(b"HTTP/1.1 503")
        assert http_get(site, "127.0.0.1").startswith(b"HTTP/1.1 200")
        assert http_get(site, "127.0.3.1", headers=token).startswith(b"HTTP/1.1 200")
        # Idle connections in the reserve are never closed for an ordinary newcomer ...
        local = [held.enter_context(idle_connection(site, "127.0.0.1")) for _ in range(2)]
        assert http_get(site, "127.1.0.1").startswith(b"HTTP/1.1 503")
        # ... but a trusted newcomer may take the place of the oldest of them.
        assert http_get(site, "127.0.0.1").startswith(b"HTTP/1.1 200")
        assert closed_by_server(local[0])


# Runs in its own process: from each source address, hold `per_source` idle connections and open a
# new one whenever the server closes one; stop when stdin closes; print what happened as JSON.
_FLOOD = r"""
import json, selectors, socket, sys, threading
port, sources, per_source = int(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3])
selector = selectors.DefaultSelector()
counts = {"opened": 0, "closed": 0, "refused": 0}
def open_one(source):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    sock.connect_ex(("127.0.0.1", port))
    selector.register(sock, selectors.EVENT_READ, source)
    counts["opened"] += 1
for source in sources:
    for _ in range(per_source):
        open_one(source)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
print("flooding", flush=True)
while not stop.is_set():
    for key, _ in selector.select(0.1):
        sock = key.fileobj
        try:
            data = sock.recv(4096)
        except OSError:
            data = b""
        counts["refused" if data.startswith(b"HTTP/1.1 503") else "closed"] += 1
        selector.unregister(sock)
        sock.close()
        open_one(key.data)
print(json.dumps(counts), flush=True)
"""


def answered_share(site: Site, source: str, seconds: float) -> tuple[int, int]:
    """A normal client: one request after another on new connections for `seconds`."""
    answered = asked = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        asked += 1
        answered += http_get(site, source).startswith(b"HTTP/1.1 200")
        time.sleep(0.05)
    return answered, asked


def test_a_flood_of_idle_connections_from_several_networks_locks_nobody_out(tmp_path: Path) -> None:
    """Eight addresses in eight /24s each keep 16 idle connections open (re-opened as soon as the server
    closes one) against a cap of 40, 8 reserved, 8 per network. Normal clients are still answered:
    one in another /24, one inside a flooded /24, and 127.0.0.1 (the reserve)."""
    flooders = [f"127.0.{n}.2" for n in range(1, 9)]
    clients = ["127.1.0.1", "127.0.1.200", "127.0.0.1"]
    with running_site(
        tmp_path, http_max_connections=40, http_reserved_connections=8, http_max_connections_per_network=8
    ) as site:
        flood = subprocess.Popen(
            [sys.executable, "-c", _FLOOD, str(site.ports[0]), ",".join(flooders), "16"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert flood.stdout is not None and flood.stdout.readline().strip() == "flooding"
            time.sleep(1.0)  # the server is full and busy closing flood connections
            with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
                answers = pool.map(lambda client: answered_share(site, client, 8.0), clients)
                shares = dict(zip(clients, answers, strict=True))
        finally:
            out, _ = flood.communicate(timeout=30)
        counts = json.loads(out.strip().splitlines()[-1])
        assert counts["closed"] > 100, counts  # the flood really filled the server and was pushed out
        for client, (answered, asked) in shares.items():
            assert asked >= 20, (client, asked)
            assert answered >= 0.95 * asked, (client, answered, asked, counts)


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


def trickling_upload(site: Site, every: float) -> bytes:
    """An upload that sends one byte of its body every `every` seconds (never silent for long); the
    server's answer."""
    with stalled_upload(site) as sock:
        sock.settimeout(every)
        while True:
            try:
                reply = sock.recv(65536)
                return reply
            except TimeoutError:
                sock.sendall(b"x")


def test_an_upload_trickling_bytes_is_cut_off_at_its_deadline(tmp_path: Path) -> None:
    """One byte every 0.3 s keeps the per-read idle limit (60 s) from ever firing; the deadline for the
    whole upload (2 s here, 900 s by default) still ends it, and its upload slot is free again."""
    with running_site(tmp_path, upload_deadline_seconds=2.0) as site:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda _: trickling_upload(site, 0.3), range(4)))
        for reply in replies:
            assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
            assert b"upload-too-slow" in reply and b"upload_deadline_seconds" in reply
        assert not any(site.settings.inbox.iterdir())
        upload = [("file", ("x.png", png_bytes(), "image/png"))]
        assert site.post("/api/v1/jobs", files=upload).status_code == 202


@contextmanager
def small_disk(path: Path, megabytes: int) -> Iterator[Path]:
    """A real filesystem of `megabytes` (tmpfs), so free space is exact and nothing else writes there."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], capture_output=True, check=False)


def big_png(megabytes: int, seed: int) -> bytes:
    """A valid PNG of random pixels: about `megabytes` MB, as noise does not compress."""
    import io
    import random

    side = int((megabytes * 1024 * 1024 / 3) ** 0.5)
    pixels = random.Random(seed).randbytes(side * side * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(out, "PNG", compress_level=0)
    return out.getvalue()


class RawUpload:
    """A multipart upload over a raw socket, sent a piece at a time: chunked (no Content-Length) or with
    one. A small send buffer keeps the client in step with what the server has read."""

    def __init__(self, site: Site, name: str, data: bytes, chunked: bool) -> None:
        boundary = "----raw"
        self.body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        self.chunked, self.sent, self.refused_early = chunked, 0, False
        length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(self.body)}"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", site.ports[0]))
        self.sock.sendall(
            f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n{length}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
        )

    def send(self, size: int) -> None:
        piece = self.body[self.sent : self.sent + size]
        if not piece or self.refused_early:
            return
        try:
            self.sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if self.chunked else piece)
        except (BrokenPipeError, ConnectionResetError):
            self.refused_early = True
        self.sent += len(piece)
        if self.chunked and self.sent >= len(self.body):
            self.sock.sendall(b"0\r\n\r\n")

    @property
    def done(self) -> bool:
        return self.sent >= len(self.body) or self.refused_early

    def answer(self) -> bytes:
        reply = b""
        try:
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        finally:
            self.sock.close()
        return reply


def test_free_space_is_counted_per_received_byte_across_concurrent_uploads(tmp_path: Path) -> None:
    """The state disk has 32 MB and keeps 12 MB free (min_free_mb): room for about 20 MB of uploads.
    Two chunked uploads of 12 MB each (no Content-Length to check up front) begin together; the first
    sends 11.5 MB, then the second streams and is refused (507) when the two together reach the
    reserve; the first then completes. An upload declaring 15 MB holds its claim while it streams, so
    one declaring 7 MB meanwhile is refused before it sends its body."""
    with (
        small_disk(tmp_path / "small", 32) as state_dir,
        running_site(
            tmp_path, state_dir=state_dir, min_free_mb=12, upload_max_bytes=16 * 1024 * 1024
        ) as site,
    ):
        first = RawUpload(site, "a.png", big_png(12, 1), chunked=True)
        second = RawUpload(site, "b.png", big_png(12, 2), chunked=True)
        first.send(len(first.body) - 512 * 1024)
        while not second.done:
            second.send(256 * 1024)
        first.send(len(first.body))
        accepted, refused = first.answer(), second.answer()
        assert accepted.startswith(b"HTTP/1.1 202"), accepted[:300]
        assert refused.startswith(b"HTTP/1.1 507"), refused[:300]
        assert b"spool-full" in refused and b"min_free_mb" in refused
        assert [path.name for path in site.settings.inbox.iterdir()] == ["a.png"]

        declared = RawUpload(site, "c.png", big_png(15, 3), chunked=False)
        declared.send(4 * 1024 * 1024)
        early = RawUpload(site, "d.png", big_png(7, 4), chunked=False).answer()  # its header only
        assert early.startswith(b"HTTP/1.1 507"), early[:300]
        still_to_come = re.search(rb"declared (\d+) MB still to come", early)
        assert still_to_come and int(still_to_come[1]) >= 10, early  # the first's claim, less what it sent
        declared.send(len(declared.body))
        assert declared.answer().startswith(b"HTTP/1.1 202")
        assert sorted(path.name for path in site.settings.inbox.iterdir()) == ["a.png", "c.png"]

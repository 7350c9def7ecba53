"""A LAN client (a non-loopback peer) against real servers: it lives in a network namespace the test
builds itself (ip netns + a veth pair + a private /30) and talks only to that /30's other end.

Without a token a LAN client reads but may not write; with one it writes when it sends it; a name
that is not this server's gets 421 from the LAN too; a flood of connections from one LAN client does
not lock out others; and the page, opened by Debian's chromium running inside the namespace, greys
out uploads and retries with a hint.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lan import LanClient, lan_client
from tests.support.paths import CHROMIUM, CHROMIUM_ARGS
from tests.support.site import png_bytes, running_site

PROBLEM = "application/problem+json"
TOKEN = "lan-write-token-0123456789"


@pytest.fixture
def lan() -> Iterator[LanClient]:
    with lan_client() as client:
        yield client


def inbox_files(inbox: Path) -> list[Path]:
    return [path for path in inbox.rglob("*") if path.is_file()]


def test_the_lan_client_really_comes_from_its_own_address(tmp_path: Path, lan: LanClient) -> None:
    """The peer the server sees is the namespace's address, not loopback (what the tests rely on)."""
    with running_site(tmp_path, bind=lan.server_address) as site:
        api_port = site.ports[0]
        script = (
            "import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10);"
            "print(s.getsockname()[0])"
        )
        result = subprocess.run(
            lan.command(sys.executable, "-c", script, lan.server_address, str(api_port)),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert result.stdout.strip() == lan.client_address


def test_without_a_token_lan_clients_may_read_but_not_write(tmp_path: Path, lan: LanClient) -> None:
    with running_site(tmp_path, bind=lan.server_address) as site:
        failed = site.insert_job(state="failed", error="corrupt")
        for port in site.ports:
            base = f"http://{lan.server_address}:{port}"
            assert lan.get(f"{base}/api/v1/jobs").status == 200
            capabilities = lan.get(f"{base}/api/v1/capabilities").json()
            assert capabilities["can_write"] is False
            assert "RESTORER_API_TOKEN" in capabilities["write_hint"]
            refused = lan.post(f"{base}/api/v1/jobs/{failed}/retry")
            assert refused.status == 403
            assert refused.headers["Content-Type"].startswith(PROBLEM)
            assert "loopback" in refused.json()["detail"] and lan.client_address in refused.json()["detail"]
            upload = lan.post(f"{base}/api/v1/jobs", files=[("file", "x.png", png_bytes(), "image/png")])
            assert upload.status == 403
        assert inbox_files(site.settings.inbox) == []
        assert site.store.get(failed).state == "failed"


def test_with_a_token_a_lan_client_writes_when_it_sends_it(tmp_path: Path, lan: LanClient) -> None:
    with running_site(tmp_path, bind=lan.server_address, api_token=TOKEN) as site:
        failed = site.insert_job(state="failed", error="corrupt")
        base = f"http://{lan.server_address}:{site.ports[0]}"
        assert lan.post(f"{base}/api/v1/jobs/{failed}/retry").status == 401
        assert lan.post(f"{base}/api/v1/jobs/{failed}/retry", headers={"X-API-Token": ""}).status == 401
        ok = lan.post(f"{base}/api/v1/jobs/{failed}/retry", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status == 200 and ok.json()["state"] == "queued"
        # A page on another site cannot use a visitor's browser to write, token or not.
        forged = lan.post(
            f"{base}/api/v1/jobs/{failed}/cancel",
            headers={"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"},
        )
        assert forged.status == 403 and forged.json()["type"].endswith("cross-origin-write")


def test_a_rebound_host_name_is_refused_from_the_lan(tmp_path: Path, lan: LanClient) -> None:
    with running_site(tmp_path, bind=lan.server_address) as site:
        for port in site.ports:
            base = f"http://{lan.server_address}:{port}"
            refused = lan.get(f"{base}/api/v1/jobs", headers={"Host": f"evil.example:{port}"})
            assert refused.status == 421
            assert refused.headers["Content-Type"].startswith(PROBLEM)
            assert lan.get(f"{base}/api/v1/jobs").status == 200  # by its address: fine


# Runs in the namespace: holds N connections open until its stdin closes, then says how many of them
# the server closed.
_HOLD = r"""
import socket, sys
address = (sys.argv[1], int(sys.argv[2]))
held = [socket.create_connection(address, timeout=10) for _ in range(int(sys.argv[3]))]
print("holding", flush=True)
sys.stdin.read()
closed = 0
for sock in held:
    sock.settimeout(0.5)
    try:
        closed += sock.recv(1) == b""
    except TimeoutError:
        pass
    except ConnectionResetError:
        closed += 1
print(closed, flush=True)
"""


def test_a_connection_flood_from_one_lan_client_does_not_lock_out_others(
    tmp_path: Path, lan: LanClient
) -> None:
    """The flooder fills its network's cap with idle connections: its next connection takes the place
    of its oldest, and another client of that network (this host's own address on the /30) is served."""
    with running_site(tmp_path, bind=lan.server_address, http_max_connections_per_network=8) as site:
        api_port = site.ports[0]
        holder = subprocess.Popen(
            lan.command(sys.executable, "-c", _HOLD, lan.server_address, str(api_port), "8"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
            # The flooding client is at its cap: its next connection is served in place of its oldest ...
            assert lan.get(f"http://{lan.server_address}:{api_port}/api/v1/health").status == 200
            # ... and so is another client of that network.
            with socket.create_connection((lan.server_address, api_port), timeout=10) as other:
                other.sendall(f"GET /api/v1/health HTTP/1.1\r\nHost: {lan.server_address}\r\n\r\n".encode())
                assert other.recv(65536).startswith(b"HTTP/1.1 200")
        finally:
            out, _ = holder.communicate("", timeout=30)
        assert out.strip() == "1"  # the flooder's oldest made room; the second newcomer found room


def test_lan_visitors_see_uploads_and_retry_disabled_with_a_hint(tmp_path: Path, lan: LanClient) -> None:
    """Debian's chromium runs inside the namespace (a wrapper puts it there; Playwright talks to it
    over a pipe), so the page is visited from the LAN client's address."""
    playwright_sync = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium missing (apt-get install chromium)")
    wrapper = tmp_path / "chromium-in-namespace"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {lan.namespace} {CHROMIUM} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    with (
        running_site(tmp_path / "site", bind=lan.server_address) as site,
        playwright_sync.sync_playwright() as pw,
    ):
        site.insert_job(state="failed", input_path="scan.tif", error="unsupported TIFF compression")
        browser = pw.chromium.launch(executable_path=str(wrapper), args=CHROMIUM_ARGS, env=dict(os.environ))
        try:
            page = browser.new_page()
            page.goto(f"http://{lan.server_address}:{site.ports[1]}/")
            page.wait_for_selector("#failed li:has-text('scan.tif')", timeout=20_000)
            page.wait_for_selector("#upload-hint:visible", timeout=20_000)
            assert "RESTORER_API_TOKEN" in page.inner_text("#upload-hint")
            assert page.get_attribute("#dropzone", "aria-disabled") == "true"
            assert page.is_disabled("#failed li button:has-text('Retry')")
            # Keyboard: Enter on the disabled drop zone does not open a file chooser.
            page.focus("#dropzone")
            page.keyboard.press("Enter")
            assert page.locator("#upload-status").inner_text() == ""
        finally:
            browser.close()


def test_pausing_resuming_and_reordering_the_queue_follow_the_write_rules(
    tmp_path: Path, lan: LanClient
) -> None:
    """The queue's writes (issue 19 item 2) are writes like retry: LAN clients need the token; the pause
    records who paused it."""
    writes = ("/api/v1/queue/pause", "/api/v1/queue/resume")
    with running_site(tmp_path, bind=lan.server_address) as site:
        store = site.store
        store.add("a.jpg", "a" * 64, 10, 1.0)
        second = store.add("b.jpg", "b" * 64, 10, 1.0).job.id
        base = f"http://{lan.server_address}:{site.ports[0]}"
        for path in (*writes, f"/api/v1/jobs/{second}/prioritize"):
            refused = lan.post(base + path)
            assert refused.status == 403 and "loopback" in refused.json()["detail"], path
        assert store.queue_pause().paused is False and store.get(second).priority == 0
    with running_site(tmp_path / "token", bind=lan.server_address, api_token=TOKEN) as site:
        store = site.store
        store.add("a.jpg", "a" * 64, 10, 1.0)
        second = store.add("b.jpg", "b" * 64, 10, 1.0).job.id
        base = f"http://{lan.server_address}:{site.ports[0]}"
        assert lan.post(base + writes[0]).status == 401
        assert lan.post(f"{base}/api/v1/jobs/{second}/prioritize").status == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        paused = lan.post(base + writes[0], headers=bearer)
        assert paused.status == 200
        assert paused.json()["queue_paused_by"] == f"API (token holder at {lan.client_address})"
        assert (
            lan.post(f"{base}/api/v1/jobs/{second}/prioritize", headers=bearer).json()["queue_position"] == 1
        )
        assert lan.post(base + writes[1], headers=bearer).json()["queue_paused"] is False

"""Notifications (daemon/notify.py) against real receivers on loopback: the signed webhook, Apprise's
json:// and form:// schemes, a receiver that is down, slow or answers 500, a real `restorer serve` killed
with notifications pending, and a batch of photos that makes one batch.finished message."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.health import HealthState
from daemon.notify import Notifier, redact, targets_of
from daemon.settings import Settings
from daemon.store import JobStore
from tests.daemon_processors import fake_photo
from tests.support.paths import CHROMIUM, CHROMIUM_ARGS
from tests.support.ports import free_port
from tests.support.receiver import Receiver, verify_signature
from tests.support.settings import make_settings
from tests.support.site import running_serve, running_site
from tests.support.waiting import wait_for

SECRET = "webhook-secret-0123456789abcdef"
COPY = "tests.daemon_processors:CopyProcessor"


def failed_job(store: JobStore, name: str = "grandma.png") -> int:
    job = store.add(f"Grandma-1961/{name}", "ab" * 32, 10, 1.0).job
    claimed = store.claim_next()
    assert claimed is not None and claimed.id == job.id
    store.fail(job.id, "the image data stops after 3 bytes (truncated file)", "bad-input")
    return job.id


async def until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    for _ in range(int(timeout * 10)):
        value = check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("timed out")


def run_notifier(
    settings: Settings,
    scenario: Callable[[Notifier, JobStore, HealthState], Awaitable[None]],
    health: HealthState | None = None,
) -> None:
    store = JobStore(settings.db_path)
    health = health or HealthState()

    async def main() -> None:
        notifier = Notifier(settings, store, health, backoff_base=0.2, degraded_grace=0.5)
        notifier.start()
        try:
            await scenario(notifier, store, health)
        finally:
            await notifier.stop()

    try:
        asyncio.run(main())
    finally:
        store.close()


def test_targets_take_their_events_from_the_url_and_hide_it(tmp_path: Path) -> None:
    url = "ntfy://user:tok3n@ntfy.example.org/topic?priority=high&events=job.done,batch.finished"
    settings = make_settings(tmp_path, notify_urls=[url, "json://127.0.0.1:9/x"])
    first, second = targets_of(settings)
    assert first.events == {"job.done", "batch.finished"}
    assert "events" not in first.url and "priority=high" in first.url
    assert second.events == set(settings.webhook_events)
    assert "tok3n" not in first.key and first.key.startswith("ntfy#") and first.key == redact(first.url)
    assert (
        "tok3n" not in repr(first)
        and "tok3n" not in repr(settings)
        and "tok3n" not in str(settings.public_dict())
    )
    with pytest.raises(ValueError, match="unknown event"):
        targets_of(make_settings(tmp_path, notify_urls=["json://h/x?events=job.exploded"]))


def test_environment_list_splits_between_urls_not_inside_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESTORER_NOTIFY_URLS", "json://a/x?events=job.done,job.failed, form://b/y")
    urls = [url.get_secret_value() for url in make_settings(tmp_path).notify_urls]
    assert urls == ["json://a/x?events=job.done,job.failed", "form://b/y"]


def test_webhook_without_a_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="webhook_secret"):
        make_settings(tmp_path, webhook_url="http://127.0.0.1:9/hook")


def test_signed_webhook_and_apprise_json_and_form_reach_a_real_receiver(tmp_path: Path) -> None:
    receiver = Receiver(free_port()).start()
    base = f"127.0.0.1:{receiver.port}"
    settings = make_settings(
        tmp_path,
        webhook_url=f"http://{base}/hook",
        webhook_secret=SECRET,
        notify_urls=[f"json://{base}/json?events=job.failed", f"form://{base}/form?events=job.failed"],
    )

    async def scenario(notifier: Notifier, store: JobStore, health: HealthState) -> None:
        job_id = failed_job(store)
        await until(lambda: len(receiver.on("/hook")) == 2 and receiver.on("/json") and receiver.on("/form"))
        by_event = {item.json()["event"]: item for item in receiver.on("/hook")}
        hook = by_event["job.failed"]
        assert verify_signature(hook, SECRET)
        body = hook.json()
        assert set(body) == {"id", "event", "time", "data"} and body["event"] == "job.failed"
        assert body["data"]["job_id"] == job_id and "truncated" in body["data"]["reason"]
        assert "Retry" in body["data"]["what_to_do"]
        assert "grandma.png" in receiver.on("/json")[0].json()["message"]
        assert b"grandma.png" in receiver.on("/form")[0].body
        # The queue drained after this one job: one batch.finished, to the webhook only (the URLs chose).
        batch = by_event["batch.finished"].json()
        assert batch["event"] == "batch.finished" and batch["data"]["name"] == "Grandma-1961"
        assert (batch["data"]["restored"], batch["data"]["failed"]) == (0, 1)
        assert await notifier.send_test() == 3
        await until(lambda: len(receiver.received) == 7)
        ids = [item.json()["id"] for item in receiver.on("/hook")]
        assert len(set(ids)) == len(ids)
        tampered = hook
        tampered.body = tampered.body.replace(b"failed", b"done")
        assert not verify_signature(tampered, SECRET)

    try:
        run_notifier(settings, scenario)
    finally:
        receiver.stop()


def test_degraded_and_recovered_are_told_once_each(tmp_path: Path) -> None:
    receiver = Receiver(free_port()).start()
    settings = make_settings(
        tmp_path, webhook_url=f"http://127.0.0.1:{receiver.port}/hook", webhook_secret=SECRET
    )
    health = HealthState()
    health.update(ready=True, worker_alive=True, watcher_alive=True)

    async def scenario(notifier: Notifier, store: JobStore, health: HealthState) -> None:
        await asyncio.sleep(1.5)
        assert receiver.received == []  # healthy from the start: nothing to say
        health.update(outbox_writable=False, outbox_error="No space left on device")
        await until(lambda: receiver.on("/hook"))
        await asyncio.sleep(1.5)
        (degraded,) = receiver.on("/hook")
        assert degraded.json()["event"] == "daemon.degraded"
        assert "No space left" in degraded.json()["data"]["reasons"][0]
        health.update(outbox_writable=True, outbox_error=None)
        await until(lambda: len(receiver.on("/hook")) == 2)
        await asyncio.sleep(1.5)
        assert [item.json()["event"] for item in receiver.on("/hook")] == [
            "daemon.degraded",
            "daemon.recovered",
        ]

    try:
        run_notifier(settings, scenario, health)
    finally:
        receiver.stop()


def test_receiver_down_then_up_gets_it_after_a_retry(tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(tmp_path, webhook_url=f"http://127.0.0.1:{port}/hook", webhook_secret=SECRET)
    receiver = Receiver(port)

    async def scenario(notifier: Notifier, store: JobStore, health: HealthState) -> None:
        await notifier.send_test()
        info = await until(
            lambda: (health.get("notifications") or {}).get("failing_targets") and health.get("notifications")
        )
        assert info["pending"] == 1 and "cannot connect" in info["last_error"]
        assert str(port) not in json.dumps(info) and SECRET not in json.dumps(info)
        receiver.start()
        await until(lambda: receiver.on("/hook"))
        await until(lambda: health.get("notifications")["pending"] == 0)
        assert health.get("notifications")["failing_targets"] == []
        await asyncio.sleep(1.0)
        assert len(receiver.on("/hook")) == 1

    try:
        run_notifier(settings, scenario)
    finally:
        receiver.stop()


def test_receiver_answering_500_is_retried_and_shown_in_health(tmp_path: Path) -> None:
    receiver = Receiver(free_port(), mode="500").start()
    settings = make_settings(
        tmp_path, webhook_url=f"http://127.0.0.1:{receiver.port}/hook", webhook_secret=SECRET
    )

    async def scenario(notifier: Notifier, store: JobStore, health: HealthState) -> None:
        await notifier.send_test()
        await until(lambda: receiver.attempts >= 3)  # backoff 0.2 s, 0.4 s, ...
        info = health.get("notifications")
        assert info["failing_targets"] == [redact(settings.webhook_url.get_secret_value())]
        assert info["last_error"].endswith("HTTP 500") and info["pending"] == 1
        receiver.mode = "ok"
        await until(lambda: receiver.on("/hook"))
        await until(lambda: health.get("notifications")["failing_targets"] == [])

    try:
        run_notifier(settings, scenario)
    finally:
        receiver.stop()


def test_slow_receiver_never_holds_up_restoring(tmp_path: Path) -> None:
    """A receiver that holds every request: photos keep being restored, their notifications wait."""
    receiver = Receiver(free_port(), mode="slow", slow_seconds=120).start()
    env = {
        "RESTORER_WEBHOOK_URL": f"http://127.0.0.1:{receiver.port}/hook",
        "RESTORER_WEBHOOK_SECRET": SECRET,
        "RESTORER_WEBHOOK_EVENTS": "job.done",
    }
    try:
        with running_serve(tmp_path, env, processor=COPY) as site:
            (site.settings.inbox / "first.bmp").write_bytes(fake_photo(b"one"))
            wait_for(lambda: receiver.attempts >= 1, 60, "the first notification to hang")
            for n in range(3):
                (site.settings.inbox / f"more-{n}.bmp").write_bytes(fake_photo(b"more %d" % n))
            wait_for(lambda: site.get("/api/v1/stats").json()["counts"].get("done") == 4, 60, "4 done")
            assert receiver.received == []  # every delivery is still held by the receiver
    finally:
        receiver.stop()


def outbox_rows(state_dir: Path) -> int:
    with sqlite3.connect(state_dir / "jobs.sqlite3") as db:
        return int(db.execute("SELECT COUNT(*) FROM notify_outbox").fetchone()[0])


def test_restart_with_pending_notifications_delivers_each_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "RESTORER_WEBHOOK_URL": f"http://127.0.0.1:{port}/hook",
        "RESTORER_WEBHOOK_SECRET": SECRET,
        "RESTORER_WEBHOOK_EVENTS": "job.done,batch.finished",
    }
    with running_serve(tmp_path, env, processor=COPY) as site:
        for n in range(3):
            (site.settings.inbox / f"photo-{n}.bmp").write_bytes(fake_photo(b"photo %d" % n))
        wait_for(
            lambda: site.get("/api/v1/health").json().get("notifications", {}).get("pending") == 4,
            60,
            "3 job.done and 1 batch.finished pending",
        )
        site.process.send_signal(signal.SIGKILL)
        site.process.wait(30)
    assert outbox_rows(site.settings.state_dir) == 4
    receiver = Receiver(port).start()
    try:
        with running_serve(tmp_path, env, processor=COPY) as site:
            wait_for(lambda: len(receiver.on("/hook")) >= 4, 60, "4 deliveries after the restart")
            wait_for(lambda: site.get("/api/v1/health").json()["notifications"]["pending"] == 0, 30)
            log = site.log_path.read_text()
        bodies = [item.json() for item in receiver.on("/hook")]
        assert len(bodies) == 4 and all(verify_signature(item, SECRET) for item in receiver.on("/hook"))
        assert sorted(body["event"] for body in bodies) == ["batch.finished"] + ["job.done"] * 3
        assert len({body["id"] for body in bodies}) == 4
        assert outbox_rows(site.settings.state_dir) == 0
        assert SECRET not in log and str(port) not in log
    finally:
        receiver.stop()


def test_a_batch_of_photos_is_one_message_and_no_secret_shows(tmp_path: Path) -> None:
    receiver = Receiver(free_port()).start()
    apprise_url = f"json://127.0.0.1:{receiver.port}/apprise-tok3n-path"
    env = {
        "RESTORER_WEBHOOK_URL": f"http://127.0.0.1:{receiver.port}/hook?key=url-tok3n",
        "RESTORER_WEBHOOK_SECRET": SECRET,
        "RESTORER_NOTIFY_URLS": apprise_url,
    }
    try:
        with running_serve(tmp_path, env, processor=COPY) as site:
            folder = site.settings.inbox / "Grandma-1961"
            folder.mkdir()
            for n in range(20):
                (folder / f"scan-{n:02d}.bmp").write_bytes(fake_photo(b"scan %d" % n))
            (folder / "broken.bmp").write_bytes(fake_photo(b"BAD"))
            (folder / "notes.jpg").write_text("not a photo: refused at intake, a failed job too")
            wait_for(
                lambda: any(item.json()["event"] == "batch.finished" for item in receiver.on("/hook")), 120
            )
            wait_for(lambda: len(receiver.on("/apprise-tok3n-path")) >= 2, 30)
            health = site.get("/api/v1/health").json()
            shown = [
                site.get("/api/v1/health").text,
                site.get("/api/v1/jobs").text,
                site.get("/", port="page").text,
            ]
            test = site.post("/api/v1/notifications/test")
            assert test.status_code == 202 and test.json() == {"queued": 2}
            wait_for(lambda: any(item.json()["event"] == "test" for item in receiver.on("/hook")), 30)
            log = site.log_path.read_text()
        events = [item.json()["event"] for item in receiver.on("/hook")]
        assert events.count("batch.finished") == 1 and events.count("job.failed") == 2
        assert "job.done" not in events  # the default: not one message per photo
        batch = next(
            item.json()["data"] for item in receiver.on("/hook") if item.json()["event"] == "batch.finished"
        )
        assert (batch["name"], batch["restored"], batch["failed"]) == ("Grandma-1961", 20, 2)
        assert batch["summary"].startswith("Grandma-1961: 20 restored, 2 failed, ")
        assert health["notifications"]["targets"] == 2
        for text in [*shown, log]:
            assert SECRET not in text and "tok3n" not in text
    finally:
        receiver.stop()


def test_the_test_endpoint_is_a_write_guarded_like_retry(tmp_path: Path) -> None:
    token = "t" * 24
    with running_site(tmp_path, api_token=token) as site:
        refused = site.post("/api/v1/notifications/test")
        assert refused.status_code == 401
        cross_site = site.post(
            "/api/v1/notifications/test",
            headers={"Authorization": f"Bearer {token}", "Origin": "http://evil.example"},
        )
        assert cross_site.status_code == 403
        none_configured = site.post(
            "/api/v1/notifications/test", headers={"Authorization": f"Bearer {token}"}
        )
        assert none_configured.status_code == 409 and none_configured.json()["queued"] == 0


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium missing (apt-get install chromium)")
def test_the_page_button_sends_a_test_notification(tmp_path: Path) -> None:
    playwright_sync = pytest.importorskip("playwright.sync_api")
    receiver = Receiver(free_port()).start()
    env = {
        "RESTORER_WEBHOOK_URL": f"http://127.0.0.1:{receiver.port}/hook",
        "RESTORER_WEBHOOK_SECRET": SECRET,
    }
    try:
        with running_serve(tmp_path, env, processor=COPY) as site, playwright_sync.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(site.page + "/")
                page.wait_for_selector("#notify-test:enabled", timeout=20_000)
                assert "1 notification target(s)" in page.inner_text("#notify-row")
                page.click("#notify-test")
                page.wait_for_selector("#notify-status:has-text('queued for 1 target')", timeout=20_000)
                wait_for(lambda: receiver.on("/hook"), 30, "the test notification")
                (item,) = receiver.on("/hook")
                assert item.json()["event"] == "test" and verify_signature(item, SECRET)
                assert SECRET not in page.content()
            finally:
                browser.close()
    finally:
        receiver.stop()

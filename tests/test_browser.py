"""The status page in a real browser: Debian's chromium driven by Playwright (never a downloaded browser).

A user uploads a photo through the drop zone, watches it go through the queue to done, opens the
quality inspector, drags the before/after divider and zooms; the page survives the daemon going away
and coming back. Screenshots land in the test's tmp folder (and benchmarks/out/ for people to look at).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import CHROMIUM, CHROMIUM_ARGS, REPO
from tests.support.ports import free_port
from tests.support.site import Site, running_serve, running_site

playwright_sync = pytest.importorskip("playwright.sync_api")

SCREENSHOTS = REPO / "benchmarks" / "out"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium missing (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Site]:
    """The whole daemon: restorer serve with a real worker process restoring on the CPU."""
    with running_serve(tmp_path) as site:
        yield site


def photo(path: Path) -> Path:
    """A small real photo (scikit-image's astronaut, 48x48) so the restore takes seconds on a CPU."""
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()).resize((48, 48), Image.Resampling.LANCZOS).save(path, "PNG")
    return path


def keep_screenshot(path: Path) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOTS / path.name)


def test_upload_watch_done_and_compare_in_the_inspector(
    browser: object, daemon: Site, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 960})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(daemon.page + "/")
    page.wait_for_selector("#connection:has-text('Live')", timeout=20_000)
    assert "Checking" not in page.inner_text("#health-title")

    page.set_input_files("#file-input", str(photo(tmp_path / "astronaut portrait.png")))
    page.wait_for_selector("#upload-status:has-text('Accepted 1 file: #')", timeout=20_000)

    done_card = "#history li:has(.name:text-is('astronaut portrait.png')):has(.state-done)"
    page.wait_for_selector(done_card, timeout=240_000)
    page.wait_for_selector(f"{done_card} img", timeout=20_000)
    assert page.inner_text("#failed-empty") and page.is_visible("#failed-empty")

    page.click(f"{done_card} button.thumb")
    page.wait_for_selector("#inspector[open]")
    page.wait_for_selector("#inspector-loading", state="hidden", timeout=20_000)
    facts = page.inner_text("#inspector-facts")
    assert "48 × 48" in facts and "192 × 192" in facts, facts
    assert "colour: colour: chroma p99" in facts, facts  # the colour path the pipeline reported, and why

    # The input layer is scaled to the output's size: both layers have the same box.
    sizes = page.evaluate(
        "() => ['before-img', 'after-img'].map(id => { const r = document.getElementById(id)"
        ".getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; })"
    )
    assert sizes[0] == sizes[1], sizes

    grip = page.locator("#divider .grip").bounding_box()
    assert grip is not None
    page.mouse.move(grip["x"] + grip["width"] / 2, grip["y"] + grip["height"] / 2)
    page.mouse.down()
    page.mouse.move(grip["x"] - 200, grip["y"] + grip["height"] / 2, steps=8)
    page.mouse.up()
    assert int(page.input_value("#slider")) < 40
    clip = page.evaluate("() => document.getElementById('after-clip').style.clipPath")
    assert clip.startswith("inset(")

    shot = tmp_path / "inspector.png"
    page.screenshot(path=str(shot))
    keep_screenshot(shot)

    # Zoom and pan move both layers together: they share one transformed stage.
    page.click("#zoom-1to1")
    transform = page.evaluate("() => document.getElementById('stage').style.transform")
    assert "scale(1)" in transform, transform
    page.focus("#viewport")
    page.keyboard.press("+")
    page.keyboard.press("ArrowLeft")
    boxes = page.evaluate(
        "() => ['before-img', 'after-img'].map(id => { const r = document.getElementById(id)"
        ".getBoundingClientRect(); return [r.x, r.y, r.width, r.height].map(Math.round); })"
    )
    assert boxes[0] == boxes[1] and boxes[0][2] > 192, boxes
    page.keyboard.press("Escape")
    page.wait_for_selector("#inspector", state="hidden")
    main_shot = tmp_path / "status-page.png"
    page.screenshot(path=str(main_shot), full_page=True)
    keep_screenshot(main_shot)
    assert errors == []


def test_page_keeps_its_data_while_the_daemon_is_away_and_recovers(browser: object, tmp_path: Path) -> None:
    ports = {"api_port": free_port(), "site_port": free_port()}
    page = browser.new_page()  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    with running_site(tmp_path, **ports) as site:
        site.insert_job(state="failed", input_path="scratched.jpg", error="corrupt JPEG data: premature end")
        page.goto(site.page + "/")
        page.wait_for_selector("#failed li:has-text('scratched.jpg')", timeout=20_000)
    # The daemon is gone (restart, crash, Wi-Fi): the last data stays, the header says so and counts down.
    page.wait_for_selector("#connection:has-text('Offline since')", timeout=30_000)
    assert page.is_visible("#failed li:has-text('scratched.jpg')")
    assert "stale" in (page.get_attribute("body", "class") or "")
    assert page.is_visible("#connection button:has-text('Retry now')")
    with running_site(tmp_path, **ports) as site:
        site.insert_job(state="failed", input_path="second.jpg", error="not an image")
        page.click("#connection button:has-text('Retry now')")
        page.wait_for_selector("#connection:has-text('Live')", timeout=30_000)
        page.wait_for_selector("#failed li:has-text('second.jpg')", timeout=20_000)
    assert errors == []


def test_live_progress_queue_positions_and_keyboard_cancel_and_retry(browser: object, tmp_path: Path) -> None:
    with running_site(tmp_path) as site:
        store = site.store
        running = store.add("wedding.jpg", "a" * 64, 10, 1.0).job.id
        store.claim_next()
        store.update_progress(running, 0.25, "upscale")
        for name in ("first.jpg", "second.jpg"):
            store.add(name, name[0] * 64, 10, 1.0)
        failed = site.insert_job(
            state="failed", input_path="torn.jpg", error="corrupt JPEG data: bad Huffman code"
        )
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(site.page + "/")
        page.wait_for_selector(
            "#current:has-text('wedding.jpg'):has-text('Stage: upscale · 25%')", timeout=20_000
        )
        assert page.inner_text("#queue").split()[:2] == ["#1", "first.jpg"]
        assert "#2" in page.inner_text("#queue") and "second.jpg" in page.inner_text("#queue")
        assert "bad Huffman code" in page.inner_text("#failed")

        # Live: the worker moves on, the page follows without a reload.
        store.update_progress(running, 0.6, "upscale")
        page.wait_for_selector("#current:has-text('60%')", timeout=20_000)

        # Keyboard only: Tab to the current job's Cancel button, press Enter.
        page.focus("#current button")
        page.keyboard.press("Enter")
        page.wait_for_selector("#current:has-text('Cancel requested')", timeout=20_000)
        assert store.get(running).cancel_requested

        page.focus(f"#failed li[data-id='{failed}'] button")
        page.keyboard.press("Enter")
        page.wait_for_selector("#queue:has-text('torn.jpg')", timeout=20_000)
        assert store.get(failed).state == "queued"
        page.wait_for_selector("#failed-empty:visible", timeout=20_000)


def test_one_to_one_shows_the_outputs_own_pixels_beyond_the_preview_size(
    browser: object, tmp_path: Path
) -> None:
    from PIL import Image

    with running_site(tmp_path) as site:
        ids = {}
        for name, width in (("panorama.png", 5000), ("huge.png", 9000)):
            Image.new("RGB", (width // 4, 40), "gray").save(site.settings.inbox / name)
            Image.new("RGB", (width, 160), "white").save(site.settings.outbox / name)
            report = {
                "input_size": [width // 4, 40],
                "output_size": [width, 160],
                "model": "m",
                "seconds": 1.0,
            }
            ids[name] = site.insert_job(state="done", input_path=name, output_path=name, report=report)
        page = browser.new_page(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
        page.goto(site.page + "/")
        page.click(f"#history li[data-id='{ids['panorama.png']}'] button.thumb")
        page.wait_for_selector("#inspector-loading", state="hidden", timeout=20_000)
        assert page.evaluate("() => document.getElementById('after-img').naturalWidth") == 4096
        page.click("#zoom-1to1")
        page.wait_for_function(
            "() => document.getElementById('after-img').naturalWidth === 5000", timeout=20_000
        )
        page.keyboard.press("Escape")

        page.click(f"#history li[data-id='{ids['huge.png']}'] button.thumb")
        page.wait_for_selector("#inspector-loading", state="hidden", timeout=20_000)
        page.click("#zoom-1to1")
        note = page.locator("#inspector-note")
        assert "9000 × 160" in note.inner_text()
        assert note.locator("a").get_attribute("href") == f"/api/v1/jobs/{ids['huge.png']}/output"


def test_dropping_photos_on_the_drop_zone_uploads_them(browser: object, tmp_path: Path) -> None:
    with running_site(tmp_path) as site:
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(site.page + "/")
        page.wait_for_selector("#connection:has-text('Live')", timeout=20_000)
        photo(tmp_path / "dropped.png")
        data = list((tmp_path / "dropped.png").read_bytes())
        page.evaluate(
            """(bytes) => {
                const transfer = new DataTransfer();
                const file = new File([new Uint8Array(bytes)], "dropped photo.png", {type: "image/png"});
                transfer.items.add(file);
                const zone = document.getElementById("dropzone");
                zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true}));
                zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
            }""",
            data,
        )
        page.wait_for_selector(
            "#upload-status:has-text('Accepted 1 file: #1 dropped photo.png')", timeout=20_000
        )
        page.wait_for_selector("#queue li:has-text('dropped photo.png')", timeout=20_000)
        assert (site.settings.inbox / "dropped photo.png").read_bytes() == bytes(data)


def test_your_model_files_are_listed_and_an_upload_can_choose_one(browser: object, tmp_path: Path) -> None:
    """A real tiny Compact 4x file and a file that is no model, detected for real (a child process): the
    panel lists both (the refused one with its reason), the Model select offers the usable one, and an
    upload made with it chosen is a job that runs it."""
    from tests.user_model_files import USER_MODELS, write_model

    weights = tmp_path / "weights"
    weights.mkdir()
    write_model(next(m for m in USER_MODELS if m.id == "tiny-compact-4x"), weights)
    (weights / "holiday-notes.pth").write_bytes(b"these are my holiday notes, not a model\n" * 10)
    with running_site(tmp_path, list_models=True, weights_dir=weights) as site:
        page = browser.new_page()  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(site.page + "/")
        page.wait_for_selector(
            "#models-summary:has-text('Your model files: 1 usable, 1 refused')", timeout=60_000
        )
        page.click("#models-summary")  # the panel opens
        listed = page.inner_text("#models-list")
        assert "tiny-compact-4x: Compact ×4, upscale" in listed, listed
        assert "holiday-notes: refused: holiday-notes.pth cannot be read as weights" in listed, listed
        options = page.eval_on_selector_all("#model option", "os => os.map(o => [o.value, o.textContent])")
        assert options[0] == ["", "preset's model"]
        assert ["tiny-compact-4x", "tiny-compact-4x (Compact ×4, your file)"] in options, options
        assert "holiday-notes" not in str(options) and "GFPGANv1.4" not in str(options)

        page.select_option("#model", "tiny-compact-4x")
        page.set_input_files("#file-input", str(photo(tmp_path / "with my model.png")))
        page.wait_for_selector("#upload-status:has-text('Accepted 1 file: #')", timeout=20_000)
        (job,) = site.store.queue(10)
        assert job.input_path == "with my model.png" and job.options["model"] == "tiny-compact-4x"
        assert page.input_value("#model") == "tiny-compact-4x"  # kept for the next upload
        assert not errors, errors


def _panel_numbers(page: object) -> dict[str, object]:
    """What the Throughput panel shows: its tables (the screen-reader view) and its SVG bars."""
    return page.evaluate(  # type: ignore[attr-defined]
        """() => {
            const rows = (selector) => Array.from(document.querySelectorAll(selector + ' tbody tr'))
                .map((tr) => Array.from(tr.cells).map((td) => td.textContent));
            const bars = (selector, kind) => Array.from(
                document.querySelectorAll(`${selector} svg rect.${kind}`),
            ).map((rect) => [Number(rect.dataset.value), Number(rect.getAttribute('height'))]);
            return {
                counts: Object.fromEntries(rows('#stats > div > table').map(([s, n]) => [s, Number(n)])),
                hours: rows('#chart-hours table').map((cells) => Number(cells[1])),
                days: rows('#chart-days table').map((c) => [c[0], Number(c[1]), Number(c[2])]),
                hourBars: bars('#chart-hours', 'bar-done'),
                dayDone: bars('#chart-days', 'bar-done'),
                dayFailed: bars('#chart-days', 'bar-failed'),
                svgHidden: document.querySelector('#chart-hours svg').getAttribute('aria-hidden'),
                tableHidden: getComputedStyle(document.querySelector('#chart-hours table')).clipPath,
            };
        }"""
    )


def test_throughput_panel_agrees_with_the_api_within_one_refresh_and_charts_hours_and_days(
    browser: object, tmp_path: Path
) -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    with running_site(tmp_path) as site:
        store = site.store
        report = {"input_size": [1000, 500], "seconds": 2.0}
        for hours_ago, count in ((2, 3), (5, 1)):
            for _ in range(count):
                finished = now - timedelta(hours=hours_ago)
                site.insert_job(
                    state="done",
                    started_at=finished - timedelta(seconds=2),
                    finished_at=finished,
                    report=report,
                )
        three_days_ago = now - timedelta(days=3)
        for state in ("done", "done", "failed"):
            site.insert_job(state=state, started_at=three_days_ago, finished_at=three_days_ago, report=report)
        waiting = [store.add(f"live{n}.jpg", f"{n}" * 64, 10, 1.0).job.id for n in range(3)]
        store.claim_next()
        store.update_progress(waiting[0], 0.5, "upscale")

        page = browser.new_page(viewport={"width": 1280, "height": 1000})  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(site.page + "/")
        page.wait_for_selector("#current:has-text('live0.jpg')", timeout=20_000)
        page.wait_for_function(
            "() => document.querySelector('#stats > div > table') !== null", timeout=20_000
        )
        shown = _panel_numbers(page)
        assert (shown["counts"]["processing"], shown["counts"]["queued"]) == (1, 2), shown["counts"]

        # The worker finishes every job (the store's real finish, as the worker calls it).
        for job_id in waiting:
            if job_id != waiting[0]:
                assert store.claim_next().id == job_id
            store.finish(job_id, f"{job_id}.png", 1000, report)
        page.wait_for_selector("#queue-empty:visible", timeout=20_000)
        page.wait_for_selector("#current:has-text('Nothing is being restored')", timeout=20_000)
        # Within one refresh: the first stats answer fetched after the queue emptied matches the API.
        seen = page.get_attribute("#stats", "data-generated-at")
        page.wait_for_function(
            "(seen) => document.getElementById('stats').dataset.generatedAt !== seen",
            arg=seen,
            timeout=20_000,
        )
        shown = _panel_numbers(page)
        api = site.get("/api/v1/stats").json()
        assert shown["counts"] == api["counts"]
        assert api["counts"] == {"queued": 0, "processing": 0, "done": 9, "failed": 1, "cancelled": 0}
        assert shown["hours"] == [hour["images"] for hour in api["per_hour"]] and len(shown["hours"]) == 24
        assert shown["days"] == [[day["day"], day["done"], day["failed"]] for day in api["per_day"]]
        assert len(shown["days"]) == 30

        # One bar per hour and day with jobs; bar heights in proportion, the tallest at full height.
        assert [value for value, _ in shown["hourBars"]] == [n for n in shown["hours"] if n]
        tallest = max(height for _, height in shown["hourBars"])
        for value, height in shown["hourBars"]:
            assert height == pytest.approx(tallest * value / max(shown["hours"]), rel=1e-3)
        assert [value for value, _ in shown["dayDone"]] == [day[1] for day in shown["days"] if day[1]]
        assert [value for value, _ in shown["dayFailed"]] == [1]
        assert shown["svgHidden"] == "true" and shown["tableHidden"] == "inset(50%)"

        shot = tmp_path / "throughput-panel.png"
        page.locator("section:has(#stats)").screenshot(path=str(shot))
        keep_screenshot(shot)
        assert errors == []


def test_signing_in_to_a_private_server_shows_its_photos(browser: object, tmp_path: Path) -> None:
    """protect_reads: the page asks for the token once per tab, keeps it out of every URL, and fetches
    thumbnails with the token header (blob URLs)."""
    from tests.support.site import png_bytes

    token = "family-photos-token-0123456789"
    with running_site(tmp_path, api_token=token, protect_reads=True) as site:
        (site.settings.inbox / "beach.png").write_bytes(png_bytes(40, 30))
        (site.settings.outbox / "beach.png").write_bytes(png_bytes(160, 120, seed=1))
        report = {"input_size": [40, 30], "output_size": [160, 120], "model": "m", "seconds": 1.0}
        job = site.insert_job(state="done", input_path="beach.png", output_path="beach.png", report=report)
        page = browser.new_page()  # type: ignore[attr-defined]
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        page.goto(site.page + "/")
        page.wait_for_selector("#signin[open]", timeout=20_000)
        assert page.locator("#history li").count() == 0
        page.keyboard.press("Escape")  # the prompt cannot be dismissed
        assert page.is_visible("#signin")
        page.fill("#signin-token", "wrong-token-0123456789")
        page.click("#signin button[type=submit]")
        page.wait_for_selector("#signin-error:has-text('not right')", timeout=20_000)
        page.fill("#signin-token", token)
        page.click("#signin button[type=submit]")
        page.wait_for_selector("#signin", state="hidden", timeout=20_000)
        thumb = f"#history li[data-id='{job}'] img"
        loaded = "(sel) => { const img = document.querySelector(sel); return !!img && img.naturalWidth > 0; }"
        page.wait_for_function(loaded, arg=thumb, timeout=20_000)
        assert (page.get_attribute(thumb, "src") or "").startswith("blob:")
        assert page.evaluate("() => sessionStorage.getItem('restorer-token')") == token
        page.reload()  # the same tab keeps the token: no second prompt
        page.wait_for_function(loaded, arg=thumb, timeout=20_000)
        assert not page.is_visible("#signin")
        assert urls and not any(token in url for url in urls)


def test_another_site_cannot_show_the_page_in_a_frame(browser: object, tmp_path: Path) -> None:
    """Clickjacking: a page on another origin frames the status page (to overlay its Retry and Cancel
    buttons); chromium refuses to show it. The same page frames an ordinary page of its own origin."""
    import functools
    import http.server
    import threading

    (tmp_path / "plain.html").write_text("<p id='plain'>an ordinary page</p>")
    with running_site(tmp_path / "site") as site:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
        evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # another origin: its own port
        port = evil.server_address[1]
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        try:
            (tmp_path / "evil.html").write_text(
                f"<iframe id='status' src='{site.page}/'></iframe>"
                f"<iframe id='plain' src='http://127.0.0.1:{port}/plain.html'></iframe>"
            )
            page = browser.new_page()  # type: ignore[attr-defined]
            with page.expect_response(f"{site.page}/") as answer:  # chromium did fetch it ...
                page.goto(f"http://127.0.0.1:{port}/evil.html")
            assert answer.value.status == 200
            page.frame_locator("#plain").locator("#plain").wait_for(timeout=20_000)  # frames load here
            page.wait_for_load_state("load")
            urls = [frame.url for frame in page.frames]
            # ... and shows an error page in its place: the status page never runs in the frame.
            assert not any(url.startswith(site.page) for url in urls), urls
            assert page.frame_locator("#status").locator("#dropzone").count() == 0
        finally:
            evil.shutdown()
            evil.server_close()


def test_pause_run_next_and_resume_from_the_page(browser: object, tmp_path: Path) -> None:
    """The whole daemon (copy stage): Pause in the queue header holds the queue, "Run next" reorders it,
    Resume runs it in the order shown; the banner says who paused it."""
    from tests.daemon_processors import fake_photo

    env = {"RESTORER_HEARTBEAT_SECONDS": "0.5"}
    with running_serve(tmp_path, env_extra=env, processor="tests.daemon_processors:CopyProcessor") as site:
        page = browser.new_page(viewport={"width": 1280, "height": 960})  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(site.page + "/")
        page.wait_for_selector("#connection:has-text('Live')", timeout=20_000)
        page.click("#queue-pause")
        page.wait_for_selector("#queue-banner:has-text('Paused by page on loopback')", timeout=20_000)
        assert page.is_visible("#queue-resume") and not page.is_visible("#queue-pause")

        site.settings.inbox.mkdir(parents=True, exist_ok=True)
        for name in ("one.bmp", "two.bmp", "three.bmp"):
            (site.settings.inbox / name).write_bytes(fake_photo(f"SLOW0.2|{name}".encode()))
        page.wait_for_selector("#queue li:nth-child(3):has-text('three.bmp')", timeout=30_000)
        page.click("#queue li:nth-child(3) button:has-text('Run next')")
        page.wait_for_selector("#queue li:nth-child(1):has-text('three.bmp')", timeout=20_000)
        shown = [text.split()[1] for text in page.locator("#queue li").all_inner_texts()]
        api_order = [job["name"] for job in site.get("/api/v1/jobs?order=queue&state=queued").json()["jobs"]]
        assert shown == api_order == ["three.bmp", "one.bmp", "two.bmp"]
        page.screenshot(path=str(tmp_path / "queue-paused.png"))
        keep_screenshot(tmp_path / "queue-paused.png")

        page.click("#queue-resume")
        page.wait_for_selector("#queue-empty:visible", timeout=30_000)
        page.wait_for_selector("#queue-banner", state="hidden", timeout=20_000)
        listing = site.get("/api/v1/jobs?state=done&limit=10").json()["jobs"]
        started = sorted(listing, key=lambda job: job["started_at"])
        assert [job["name"] for job in started] == shown
        assert errors == []


def test_history_says_when_retention_removed_an_original(browser: object, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    page = browser.new_page()  # type: ignore[attr-defined]
    with running_site(tmp_path) as site:
        job = site.insert_job(
            state="done",
            input_path="grandma.jpg",
            finished_at=datetime(2026, 1, 2, 9, 0, tzinfo=UTC),
            original="deleted",
            original_path="grandma.jpg",
            cleaned_at=datetime(2026, 2, 1, 9, 0, tzinfo=UTC),
            note="archived original removed after 30 days (retention)",
        )
        assert site.get(f"/api/v1/jobs/{job}").json()["cleaned_at"].startswith("2026-02-01T09:00")
        page.goto(site.page + "/")
        line = page.wait_for_selector(f"#history li[data-id='{job}'] .cleaned", timeout=20_000)
        assert line.inner_text().startswith("archived original removed after 30 days, cleaned up")
    page.close()

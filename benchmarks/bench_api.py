"""API latency while the worker is busy, and status page load time.

Starts `restorer serve` (tests/support's ServeProcess) on scratch folders, drops photos in the inbox so
the worker process restores (and saturates the CPU) for the whole measurement, then runs 50 concurrent pollers
against GET /api/v1/jobs/{id} of the job being restored. Reports p50/p95/p99/max latency for:
  - "paced": each poller asks every 0.5 s (jittered), like 50 open status pages at 4x their rate;
  - "flood": each poller asks again as soon as it has the answer (server throughput bound).
The same measurement runs first with the worker idle, so the effect of the busy worker is visible.
Page load: Debian chromium (Playwright) opens the page; we time DOMContentLoaded, load and the moment
the first live data is on screen.

    .venv/bin/python benchmarks/bench_api.py [--seconds 20] [--pollers 50] [--json out.json]

The pollers run in this process on the same machine: on a 2-core box they compete with the worker and
the server for CPU, so the numbers are an upper bound on what a LAN client would see.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.paths import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.support.serve import ServeProcess  # noqa: E402
from tests.support.settings import folders, make_folders  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(latencies_ms: list[float], errors: int, seconds: float) -> dict[str, Any]:
    return {
        "requests": len(latencies_ms),
        "errors": errors,
        "per_second": round(len(latencies_ms) / seconds, 1),
        "p50_ms": round(percentile(latencies_ms, 50), 2),
        "p95_ms": round(percentile(latencies_ms, 95), 2),
        "p99_ms": round(percentile(latencies_ms, 99), 2),
        "max_ms": round(max(latencies_ms), 2),
        "mean_ms": round(statistics.fmean(latencies_ms), 2),
    }


async def poll(url: str, pollers: int, seconds: float, interval: float | None) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=pollers + 10)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def poller() -> None:
            nonlocal errors
            if interval:
                await asyncio.sleep(random.uniform(0, interval))
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    async with session.get(url) as response:
                        await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                elapsed = time.perf_counter() - start
                if ok:
                    latencies.append(elapsed * 1000)
                else:
                    errors += 1
                if interval:
                    await asyncio.sleep(max(0.0, interval * random.uniform(0.8, 1.2) - elapsed))

        await asyncio.gather(*(poller() for _ in range(pollers)))
    return summary(latencies, errors, seconds)


def busy_photo(path: Path, edge: int, variant: int = 0) -> None:
    """A real photo; each variant is a different crop, so the store never sees duplicate content."""
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    crop = photo.crop((variant * 7, variant * 5, photo.width - variant * 3, photo.height - variant * 2))
    crop.resize((edge, edge), Image.Resampling.LANCZOS).save(path, "PNG")


def renice_worker(pid: int, niceness: int) -> None:
    """Lower the worker process's CPU priority (every thread: Linux nice values are per thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.setpriority(os.PRIO_PROCESS, int(tid), niceness)


def start_serve(tmp: Path) -> ServeProcess:
    """The real pipeline (its default model, no faces) at production intervals but a quick pick-up."""
    settings = {"stability_seconds": 0.2, "weights_dir": REPO / "weights", "faces": False}
    serve = ServeProcess(tmp, processor=None, settings=settings, quick=False, verbose=False)
    serve.wait_ready(timeout=180)
    return serve


async def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = await check()
        except (aiohttp.ClientError, TimeoutError):
            value = None
        if value:
            return value
        await asyncio.sleep(0.25)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


async def get_json(url: str) -> Any:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        return await response.json() if response.status in (200, 503) else None


def page_load(url: str, runs: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    results: list[dict[str, float]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for _ in range(runs):
                context = browser.new_context()
                page = context.new_page()
                start = time.perf_counter()
                page.goto(url, wait_until="load")
                page.wait_for_selector("#connection:has-text('Live')", timeout=30_000)
                live_ms = (time.perf_counter() - start) * 1000
                timing = page.evaluate(
                    "() => { const t = performance.getEntriesByType('navigation')[0];"
                    " return {dcl: t.domContentLoadedEventEnd, load: t.loadEventEnd}; }"
                )
                results.append(
                    {"dom_content_loaded_ms": timing["dcl"], "load_ms": timing["load"], "live_ms": live_ms}
                )
                context.close()
        finally:
            browser.close()
    return {key: round(statistics.median(r[key] for r in results), 1) for key in results[0]} | {"runs": runs}


async def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    make_folders(tmp)
    serve = await asyncio.to_thread(start_serve, tmp)
    api, site_port = f"http://127.0.0.1:{serve.api_port()}", serve.site_port()
    report: dict[str, Any] = {"pollers": args.pollers, "seconds": args.seconds, "cpus": os.cpu_count()}
    try:
        await wait_until(
            lambda: _status_is(api, ("ok", "degraded")), 300, "the worker to load its models (health ok)"
        )
        # Idle baseline: one finished tiny job to poll.
        busy_photo(folders(tmp)["inbox"] / "idle.png", 32)
        idle_job = await wait_until(lambda: _job_in(api, "done"), 300, "the warm-up job to finish")
        idle_url = f"{api}/api/v1/jobs/{idle_job}"
        report["idle_paced"] = await poll(idle_url, args.pollers, args.seconds, 0.5)
        report["idle_flood"] = await poll(idle_url, args.pollers, args.seconds / 2, None)
        report["page_load_idle"] = await asyncio.to_thread(page_load, f"http://127.0.0.1:{site_port}/", 3)
        # Busy: photos big enough to keep the worker restoring through every measurement below.
        for index in range(args.busy_images):
            busy_photo(folders(tmp)["inbox"] / f"busy-{index}.png", args.busy_edge, index + 1)
        busy_job = await wait_until(lambda: _job_in(api, "processing"), 120, "the worker to start a big job")
        busy_url = f"{api}/api/v1/jobs/{busy_job}"
        report["load_average_before_busy"] = os.getloadavg()
        report["busy_paced"] = await poll(busy_url, args.pollers, args.seconds, 0.5)
        report["busy_flood"] = await poll(busy_url, args.pollers, args.seconds / 2, None)
        report["page_load_busy"] = await asyncio.to_thread(page_load, f"http://127.0.0.1:{site_port}/", 3)
        report["busy_still_processing"] = bool(await _job_in(api, "processing"))
        if args.nice_worker:
            health = await get_json(api + "/api/v1/health")
            renice_worker(int(health["worker_pid"]), args.nice_worker)
            report[f"busy_paced_worker_nice_{args.nice_worker}"] = await poll(
                busy_url, args.pollers, args.seconds, 0.5
            )
            report["busy_still_processing_after_nice"] = bool(await _job_in(api, "processing"))
        jobs = await get_json(f"{api}/api/v1/jobs?limit=20")
        report["jobs"] = {job["name"]: [job["state"], job["progress"]] for job in jobs["jobs"]}
    finally:
        serve.stop()
    return report


async def _status_is(api: str, states: tuple[str, ...]) -> bool:
    body = await get_json(api + "/api/v1/health")
    return bool(body) and body["status"] in states


async def _job_in(api: str, state: str) -> int | None:
    body = await get_json(f"{api}/api/v1/jobs?state={state}&limit=1")
    return body["jobs"][0]["id"] if body and body["jobs"] else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each paced measurement")
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument(
        "--busy-edge", type=int, default=512, help="edge of the photos that keep the worker busy"
    )
    parser.add_argument("--busy-images", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--nice-worker",
        type=int,
        default=10,
        help="then renice the worker to this and measure again (0: skip)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        report = asyncio.run(measure(args, Path(tmp)))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

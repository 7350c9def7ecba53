"""The JSON API under /api/v1 (plus /metrics on the API port).

Handlers are thin: parse the request, ask the daemon's read model (or, for writes, the store) in the
thread pool, shape JSON. Every route is documented in openapi.py, and a test validates real responses
against it.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, BinaryIO

from aiohttp import web

from daemon import Job, JobNotFoundError, JobQueryError, queue_positions, queue_state
from status_site import metrics, uploads
from status_site.context import APP_NAME, CONTEXT, SiteContext, context_of
from status_site.files import (
    PAGE_PREVIEWS,
    JobFile,
    NeedsOwnProcess,
    Which,
    fits_without_resize,
    locate,
    make_preview,
    make_preview_in_child,
    open_checked,
    parse_max,
    preview_pixel_limit,
)
from status_site.guards import require_write, token_valid, write_access
from status_site.middleware import MIDDLEWARES
from status_site.openapi import openapi_document
from status_site.problems import Problem, bad_request, not_found

API_PREFIX = "/api/v1"
VERSION = "1"
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
QUEUE_SNAPSHOT = 1000  # queue rows read to place active jobs of a listing
MAX_IDS = 100
FILE_CHUNK = 256 * 1024
NO_STORE = {"Cache-Control": "no-store"}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    merged = dict(NO_STORE)
    merged.update(headers or {})
    return web.Response(
        text=json.dumps(data, default=str), status=status, content_type="application/json", headers=merged
    )


async def _cached_json(ctx: SiteContext, key: str, work: Callable[[], Any]) -> web.Response:
    """work() in the database pool, encoded there too, shared through the response cache."""
    text = await ctx.responses.get(key, lambda: ctx.run(lambda: json.dumps(work(), default=str)))
    return web.Response(text=text, content_type="application/json", headers=NO_STORE)


# -- job representation ------------------------------------------------------------------------------


def job_json(job: Job, position: int | None, eta: float | None, worker: str | None = None) -> dict[str, Any]:
    """A job as the API shows it; paths are relative to their folders, never absolute. `worker`: the
    pool slot running it (health's `workers` says where that is)."""
    data = job.to_dict()
    report = job.report or None
    base = f"{API_PREFIX}/jobs/{job.id}"
    name = job.input_path.rsplit("/", 1)[-1]
    output = None
    if job.output_path:
        output = {"path": job.output_path, "size_bytes": job.output_size_bytes, "url": f"{base}/output"}
    return {
        "id": job.id,
        "name": name,
        "state": job.state,
        "stage": job.stage,
        "progress": round(float(job.progress or 0.0), 4),
        "queue_position": position,
        "eta_seconds": eta,
        "worker": worker if job.state == "processing" else None,
        "attempts": job.attempts,
        "priority": job.priority,
        "preset": job.preset,
        "detected_at": data["detected_at"],
        "started_at": data["started_at"],
        "finished_at": data["finished_at"],
        "heartbeat_at": data["heartbeat_at"],
        "seconds": data.get("seconds"),
        "input": {
            "path": job.input_path,
            "size_bytes": job.size_bytes,
            "original": job.original,
            "url": f"{base}/input",
        },
        "output": output,
        "faces": list((report or {}).get("faces") or []),
        "error": job.error,
        "failure_kind": job.failure_kind,
        "note": job.note,
        "cleaned_at": data["cleaned_at"],
        "cancel_requested": job.cancel_requested,
        "options": job.options,
        "report": report,
        "links": {
            "self": base,
            "retry": f"{base}/retry",
            "cancel": f"{base}/cancel",
            "prioritize": f"{base}/prioritize",
        },
    }


def _job_id(request: web.Request) -> int:
    return int(request.match_info["job_id"])


def _place_in_queue(ctx: SiteContext, jobs: list[Job]) -> dict[int, tuple[int | None, float | None]]:
    """Queue position and ETA for every active job of a listing (blocking: thread pool)."""
    if not any(job.state in ("queued", "processing") for job in jobs):
        return {}
    queue = ctx.reads.queue(QUEUE_SNAPSHOT)
    etas = ctx.estimator.estimate(queue)
    positions = queue_positions(queue)
    placed: dict[int, tuple[int | None, float | None]] = {
        job_id: (position, etas.get(job_id)) for job_id, position in positions.items()
    }
    for job in jobs:
        if job.state in ("queued", "processing") and job.id not in placed:
            placed[job.id] = (ctx.reads.queue_position(job.id), None)
    return placed


def _job_detail(ctx: SiteContext, job_id: int) -> dict[str, Any]:
    """One job with its queue position and ETA (blocking: thread pool)."""
    place = ctx.reads.job_with_queue(job_id, QUEUE_SNAPSHOT)
    if place.job is None:
        raise not_found(f"no job with id {job_id}")
    eta = None
    if place.position is not None and place.ahead:
        extra = max(0, place.position - sum(1 for j in place.ahead if j.state == "queued"))
        eta = ctx.estimator.estimate(place.ahead, extra_ahead=extra).get(job_id)
    return job_json(place.job, place.position, eta, ctx.health.worker_of(job_id))


# -- handlers ----------------------------------------------------------------------------------------


async def get_index(request: web.Request) -> web.Response:
    return json_response(
        {
            "api_version": VERSION,
            "openapi": f"{API_PREFIX}/openapi.json",
            "links": {
                "health": f"{API_PREFIX}/health",
                "jobs": f"{API_PREFIX}/jobs",
                "stats": f"{API_PREFIX}/stats",
                "capabilities": f"{API_PREFIX}/capabilities",
                "metrics": "/metrics",
            },
        }
    )


async def get_health(request: web.Request) -> web.Response:
    """ok | degraded | down with reasons. 200 unless down (503), so plain HTTP checks work too."""
    ctx = context_of(request)
    snapshot = dict(ctx.health.snapshot())
    snapshot.update(await ctx.run(_queue_state, ctx))
    snapshot.setdefault("reasons", [])
    status = 503 if snapshot.get("status") == "down" else 200
    return json_response(snapshot, status=status)


async def get_capabilities(request: web.Request) -> web.Response:
    """What this client may do; the page greys out uploads and retries from it."""
    ctx = context_of(request)
    access = write_access(request)
    models = await ctx.run_file(ctx.list_models) if ctx.list_models is not None else []
    return json_response(
        {
            "api_version": VERSION,
            "reads_require_token": ctx.settings.protect_reads,
            "signed_in": token_valid(request),
            "can_write": access.allowed,
            "token_required": access.token_required,
            "write_hint": access.hint,
            "upload_max_bytes": ctx.settings.upload_max_bytes,
            "upload_max_files": ctx.settings.upload_max_files,
            "presets": sorted(ctx.settings.presets),
            # Every model, built-in or a user's file (with arch, scale, size, sha256), or refused and why.
            "models": models,
            "model": ctx.settings.model_dump(mode="json", include={"model"})["model"],  # id, or a chain's ids
            "previews": asdict(PAGE_PREVIEWS),
        }
    )


def _split(raw: str | None) -> list[str]:
    return [part.strip() for part in (raw or "").split(",") if part.strip()]


async def list_jobs(request: web.Request) -> web.Response:
    ctx = context_of(request)
    query = request.rel_url.query
    states = _split(query.get("state"))
    order = query.get("order", "newest")
    raw_limit = query.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw_limit)
    except ValueError:
        raise bad_request(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {raw_limit!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise bad_request(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    ids = _parse_ids(query.get("ids"))

    def work() -> dict[str, Any]:
        if ids is not None:
            found = [job for job in (ctx.reads.get(i) for i in ids) if job is not None]
            jobs = [job for job in found if not states or job.state in states]
            next_cursor = None
        else:
            page = ctx.reads.list(states, limit, query.get("cursor"), order)  # type: ignore[arg-type]
            jobs, next_cursor = page.jobs, page.next_cursor
        placed = _place_in_queue(ctx, jobs)
        return {
            "jobs": [
                job_json(job, *placed.get(job.id, (None, None)), ctx.health.worker_of(job.id)) for job in jobs
            ],
            "next": next_cursor,
        }

    # Keyed on the parsed parameters: other query strings for the same answer share one entry.
    key = f"list:{order}:{','.join(sorted(set(states)))}:{limit}:{query.get('cursor')}:{ids}"
    try:
        return await _cached_json(ctx, key, work)
    except JobQueryError as exc:
        raise bad_request(str(exc)) from None


def _parse_ids(raw: str | None) -> list[int] | None:
    if raw is None:
        return None
    try:
        ids = [int(part) for part in _split(raw)]
    except ValueError:
        raise bad_request(f"ids must be comma-separated job ids, got {raw!r}") from None
    if not 1 <= len(ids) <= MAX_IDS:
        raise bad_request(f"ids must name 1 to {MAX_IDS} jobs")
    return ids


async def get_job(request: web.Request) -> web.Response:
    ctx = context_of(request)
    job_id = _job_id(request)
    return await _cached_json(ctx, f"job/{job_id}", lambda: _job_detail(ctx, job_id))


async def create_jobs(request: web.Request) -> web.Response:
    require_write(request)
    ctx = context_of(request)
    try:
        accepted = await uploads.handle_upload(request, ctx)
    finally:
        ctx.responses.clear()
    ids = [item.job.id for item in accepted]
    location = (
        f"{API_PREFIX}/jobs/{ids[0]}" if len(ids) == 1 else f"{API_PREFIX}/jobs?ids={','.join(map(str, ids))}"
    )
    placed = await ctx.run(_place_in_queue, ctx, [item.job for item in accepted])
    body = {
        "jobs": [
            {"file": item.name, **job_json(item.job, *placed.get(item.job.id, (None, None)))}
            for item in accepted
        ],
        "location": location,
    }
    return json_response(body, status=202, headers={"Location": location})


async def retry_job(request: web.Request) -> web.Response:
    return await _operate(request, "retry")


async def cancel_job(request: web.Request) -> web.Response:
    return await _operate(request, "cancel")


async def _operate(request: web.Request, action: str) -> web.Response:
    """Idempotent: retrying a queued job or cancelling a cancelled one changes nothing and says so."""
    require_write(request)
    ctx = context_of(request)
    job_id = _job_id(request)

    def work() -> dict[str, Any]:
        try:
            before = ctx.reads.get_or_raise(job_id)
            after = ctx.store.retry(job_id) if action == "retry" else ctx.store.cancel(job_id)
        except JobNotFoundError:
            raise not_found(f"no job with id {job_id}") from None
        changed = (before.state, before.cancel_requested) != (after.state, after.cancel_requested)
        detail = _job_detail(ctx, job_id)
        detail["changed"] = changed
        return detail

    try:
        return json_response(await ctx.run(work))
    finally:
        ctx.responses.clear()


# -- queue control: pause / resume / prioritize (issue 19 item 2) -------------------------------------


def _queue_state(ctx: SiteContext) -> dict[str, Any]:
    return queue_state(ctx.reads.queue_pause(), ctx.settings, datetime.now(UTC))


def _who(request: web.Request) -> str:
    """Who asked, for "paused by ...": the client (the CLI names itself) and how it was let write."""
    agent = request.headers.get("User-Agent", "")
    client = "CLI" if agent.startswith("restorer-cli") else "page" if "Origin" in request.headers else "API"
    if context_of(request).settings.api_token is not None:  # require_write checked the token
        return f"{client} (token holder at {request.remote})"
    return f"{client} on loopback"


async def pause_queue(request: web.Request) -> web.Response:
    """Body (optional JSON): {"when": "after-current" (default) | "now"}."""
    require_write(request)
    ctx = context_of(request)
    when: str | None = "after-current"
    if request.can_read_body:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise bad_request('the body must be JSON like {"when": "now"}') from None
        when = body.get("when", when) if isinstance(body, dict) else None
    if when not in ("after-current", "now"):
        raise bad_request('"when" must be "after-current" or "now"')
    by = _who(request)
    return await _queue_control(ctx, lambda: ctx.store.pause_queue(by, now=when == "now"))


async def resume_queue(request: web.Request) -> web.Response:
    require_write(request)
    ctx = context_of(request)
    return await _queue_control(ctx, ctx.store.resume_queue)


async def _queue_control(ctx: SiteContext, change: Callable[[], Any]) -> web.Response:
    def work() -> dict[str, Any]:
        change()
        return _queue_state(ctx)

    try:
        state = await ctx.run(work)
    finally:
        ctx.responses.clear()
    if ctx.on_queue_change is not None:
        ctx.on_queue_change()  # a resume starts the next job now, not at the workers' next heartbeat
    return json_response(state)


async def prioritize_job(request: web.Request) -> web.Response:
    """Idempotent: a queued job moves to the front; one already first, or not queued, is unchanged."""
    require_write(request)
    ctx = context_of(request)
    job_id = _job_id(request)

    def work() -> dict[str, Any]:
        try:
            before = ctx.reads.get_or_raise(job_id)
            after = ctx.store.prioritize(job_id)
        except JobNotFoundError:
            raise not_found(f"no job with id {job_id}") from None
        if after.state != "queued":
            raise Problem(
                409, "not-queued", "Only a queued job can be moved", f"job {job_id} is {after.state}"
            )
        detail = _job_detail(ctx, job_id)
        detail["changed"] = before.priority != after.priority
        return detail

    try:
        return json_response(await ctx.run(work))
    finally:
        ctx.responses.clear()


# -- files --------------------------------------------------------------------------------------------


async def get_input(request: web.Request) -> web.StreamResponse:
    return await _serve_file(request, "input")


async def get_output(request: web.Request) -> web.StreamResponse:
    return await _serve_file(request, "output")


async def _serve_file(request: web.Request, which: Which) -> web.StreamResponse:
    """The job's file, found from its record only; `?max=N` gives a preview at most N px wide/high."""
    ctx = context_of(request)
    job_id = _job_id(request)
    max_edge = parse_max(request.rel_url.query.get("max"))
    job = await ctx.run(ctx.reads.get, job_id)
    if job is None:
        raise not_found(f"no job with id {job_id}")
    found = await ctx.run_file(locate, job, which, ctx.settings)
    etag = found.etag if max_edge is None else f'"{found.etag.strip(chr(34))}-{max_edge}"'
    cache = {"Cache-Control": "private, max-age=60", "ETag": etag}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=cache)
    handle = await ctx.run_file(open_checked, found)
    try:
        if max_edge is None or await ctx.run_file(fits_without_resize, handle, max_edge):
            await ctx.run_file(handle.seek, 0)
            return await _stream_file(request, ctx, handle, found, cache, download=max_edge is None)
        key = (str(found.path), found.mtime_ns, found.size_bytes, max_edge)
        preview = ctx.previews.get(key)
        if preview is None:
            preview = await _make_preview(ctx, handle, which, max_edge)
            ctx.previews.put(key, preview)
    finally:
        await ctx.run_file(handle.close)
    body, content_type = preview
    return web.Response(body=body, content_type=content_type, headers=cache)


async def _make_preview(ctx: SiteContext, handle: BinaryIO, which: Which, max_edge: int) -> tuple[bytes, str]:
    """Small decodes in the file pool (two at a time); big ones in a child process, one at a time."""
    max_pixels = preview_pixel_limit(which, ctx.settings)
    try:
        async with ctx.preview_slots:
            return await ctx.run_file(make_preview, handle, max_edge, max_pixels)
    except NeedsOwnProcess:
        pass
    async with ctx.child_preview_slot:
        return await ctx.run_file(make_preview_in_child, handle, max_edge, max_pixels)


async def _stream_file(
    request: web.Request,
    ctx: SiteContext,
    handle: BinaryIO,
    found: JobFile,
    headers: dict[str, str],
    download: bool,
) -> web.StreamResponse:
    """Send the already opened (and checked) file in chunks read in the thread pool."""
    response = web.StreamResponse(headers=headers)
    response.content_type = found.content_type
    response.content_length = found.size_bytes
    if download:
        name = urllib.parse.quote(found.path.name, safe="")
        response.headers["Content-Disposition"] = f"inline; filename*=UTF-8''{name}"
    await response.prepare(request)
    if request.method != "HEAD":
        sent = 0
        while sent < found.size_bytes:
            chunk = await ctx.run_file(handle.read, min(FILE_CHUNK, found.size_bytes - sent))
            if not chunk:
                break  # the file shrank while we sent it; the client sees a short body
            await response.write(chunk)
            sent += len(chunk)
    await response.write_eof()
    return response


async def get_stats(request: web.Request) -> web.Response:
    ctx = context_of(request)
    return await _cached_json(ctx, "stats", ctx.reads.stats)


async def get_openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(), headers={"Cache-Control": "no-cache"})


async def get_metrics(request: web.Request) -> web.Response:
    ctx = context_of(request)
    text = await ctx.run(metrics.render, ctx, datetime.now(UTC))
    return web.Response(
        text=text, content_type="text/plain", charset="utf-8", headers={"X-Content-Format": "0.0.4"}
    )


# -- wiring ------------------------------------------------------------------------------------------

# -- notifications (issue 19 item 1) -----------------------------------------------------------------


async def test_notification(request: web.Request) -> web.Response:
    """A write: queue one test notification to every configured target. 202 with how many; 409 when
    none is configured. Never names a target's URL."""
    require_write(request)
    send = context_of(request).send_test_notification
    queued = await send() if send is not None else 0
    if queued == 0:
        return json_response(
            {"queued": 0, "detail": "no notification target is configured (notify_urls, webhook_url)"},
            status=409,
        )
    return json_response({"queued": queued}, status=202)


def add_notification_routes(app: web.Application) -> None:
    app.router.add_post(f"{API_PREFIX}/notifications/test", test_notification)


JOB = API_PREFIX + r"/jobs/{job_id:\d{1,18}}"


def add_api_routes(app: web.Application) -> None:
    """The /api/v1 routes; mounted on both the API server and the page server (same origin)."""
    router = app.router
    router.add_get(API_PREFIX, get_index)
    router.add_get(f"{API_PREFIX}/health", get_health)
    router.add_get(f"{API_PREFIX}/capabilities", get_capabilities)
    router.add_get(f"{API_PREFIX}/jobs", list_jobs)
    router.add_post(f"{API_PREFIX}/jobs", create_jobs)
    router.add_get(JOB, get_job)
    router.add_post(JOB + "/retry", retry_job)
    router.add_post(JOB + "/cancel", cancel_job)
    router.add_post(JOB + "/prioritize", prioritize_job)
    router.add_post(f"{API_PREFIX}/queue/pause", pause_queue)
    router.add_post(f"{API_PREFIX}/queue/resume", resume_queue)
    router.add_get(JOB + "/input", get_input)
    router.add_get(JOB + "/output", get_output)
    router.add_get(f"{API_PREFIX}/stats", get_stats)
    router.add_get(f"{API_PREFIX}/openapi.json", get_openapi)
    add_notification_routes(app)


def create_api_app(ctx: SiteContext) -> web.Application:
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=1024 * 1024)
    app[CONTEXT] = ctx
    app[APP_NAME] = "api"
    add_api_routes(app)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/", get_index)
    return app


__all__ = ["API_PREFIX", "add_api_routes", "create_api_app", "job_json"]

"""The JSON API under /api/v1 (plus /metrics). Handlers are thin: they read the request, ask the store
(in the executor) and shape JSON; `openapi.py` documents every route registered here."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from status_site.context import APP_NAME, CONTEXT, SiteContext, context_of
from status_site.guards import write_access
from status_site.middleware import MIDDLEWARES

API_PREFIX = "/api/v1"
VERSION = "1"


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(data, default=str),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def get_health(request: web.Request) -> web.Response:
    """ok | degraded | down with reasons. 200 unless down (503), so plain HTTP checks work too."""
    snapshot = dict(context_of(request).health.snapshot())
    snapshot.setdefault("reasons", [])
    status = 503 if snapshot.get("status") == "down" else 200
    return json_response(snapshot, status=status, headers={"Cache-Control": "no-store"})


async def get_capabilities(request: web.Request) -> web.Response:
    """What this client may do; the page greys out uploads and retries from it."""
    ctx = context_of(request)
    access = write_access(request)
    return json_response(
        {
            "api_version": VERSION,
            "can_write": access.allowed,
            "token_required": access.token_required,
            "write_hint": access.hint,
            "upload_max_bytes": ctx.settings.upload_max_bytes,
            "upload_max_files": ctx.settings.upload_max_files,
            "presets": sorted(ctx.settings.presets),
        },
        headers={"Cache-Control": "no-store"},
    )


def add_api_routes(app: web.Application) -> None:
    """The /api/v1 routes; mounted on both the API server and the page server (same origin)."""
    app.router.add_get(f"{API_PREFIX}/health", get_health)
    app.router.add_get(f"{API_PREFIX}/capabilities", get_capabilities)


def create_api_app(ctx: SiteContext) -> web.Application:
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=1024 * 1024)
    app[CONTEXT] = ctx
    app[APP_NAME] = "api"
    add_api_routes(app)
    return app

"""The status page server (site_port).

It serves three static files (read once at start-up, looked up by exact name: no request path ever
reaches the filesystem) and mounts the same /api/v1 routes as the API server, in-process. The browser
therefore talks to one origin: no CORS, no proxy hop, and the page keeps working if only 8091 is
reachable through a firewall or reverse proxy.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from status_site.api import add_api_routes
from status_site.context import APP_NAME, CONTEXT, SiteContext
from status_site.middleware import MIDDLEWARES

STATIC_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
STATIC = web.AppKey("status_site_static", dict)


def load_static() -> dict[str, bytes]:
    folder = resources.files("status_site") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC_FILES}


async def get_index(request: web.Request) -> web.Response:
    return _static_response(request, "index.html")


async def get_static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    return _static_response(request, name)


def _static_response(request: web.Request, name: str) -> web.Response:
    body = request.app[STATIC][name]
    return web.Response(
        body=body,
        content_type=STATIC_FILES[name],
        charset="utf-8",
        headers={
            "Cache-Control": "no-cache",
            # frame-ancestors: no other site may frame the page (clickjacking its buttons).
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
            "frame-ancestors 'none'",
        },
    )


def create_site_app(ctx: SiteContext) -> web.Application:
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=1024 * 1024)
    app[CONTEXT] = ctx
    app[APP_NAME] = "page"
    app[STATIC] = load_static()
    app.router.add_get("/", get_index)
    app.router.add_get("/static/{name}", get_static)
    add_api_routes(app)
    return app

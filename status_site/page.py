"""The status page server (site_port).

It serves the files of status_site/static (read once at start-up, looked up by exact name: no request path
ever reaches the filesystem) - index.html, style.css and the page's ES modules, loaded by the browser as they
are (no build step) - and mounts the same /api/v1 routes as the API server, in-process. The browser
therefore talks to one origin: no CORS, no proxy hop, and the page keeps working if only 8091 is
reachable through a firewall or reverse proxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import PurePath

from aiohttp import web

from status_site.api import add_api_routes
from status_site.context import APP_NAME, CONTEXT, SiteContext
from status_site.middleware import MIDDLEWARES

# Which files of the folder are served, by ending; a module is served with a JavaScript type or the
# browser refuses to run it.
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str


STATIC = web.AppKey("status_site_static", dict[str, StaticFile])


def load_static() -> dict[str, StaticFile]:
    """Every file of the static folder with a served ending, by its exact name (read once, kept in memory)."""
    folder = resources.files("status_site") / "static"
    files: dict[str, StaticFile] = {}
    for entry in folder.iterdir():
        content_type = CONTENT_TYPES.get(PurePath(entry.name).suffix)
        if content_type:
            files[entry.name] = StaticFile(entry.read_bytes(), content_type)
    return files


async def get_index(request: web.Request) -> web.Response:
    return _static_response(request, "index.html")


async def get_static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in request.app[STATIC]:
        raise web.HTTPNotFound()
    return _static_response(request, name)


def _static_response(request: web.Request, name: str) -> web.Response:
    file = request.app[STATIC][name]
    return web.Response(
        body=file.body,
        content_type=file.content_type,
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

"""Middlewares shared by both servers: problem+json errors, CORS (off unless configured), headers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from status_site.connections import prove_token
from status_site.context import context_of
from status_site.guards import check_host, require_read, token_valid
from status_site.problems import Problem, problem_response

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_TITLES = {
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    421: ("unknown-host", "Unknown host name"),
    413: ("too-large", "Request too large"),
}


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as application/problem+json, with a detail a person can act on."""
    try:
        return await handler(request)
    except Problem as problem:
        return problem_response(
            problem.status,
            problem.slug,
            problem.title,
            problem.detail,
            instance=request.path,
            headers=problem.headers or None,
            **problem.extra,
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug, title = _HTTP_TITLES.get(exc.status, ("http-error", exc.reason))
        detail = _detail_for(request, exc)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return problem_response(exc.status, slug, title, detail, instance=request.path, headers=headers)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem_response(
            500,
            "internal-error",
            "Internal server error",
            "the server hit an unexpected error; the daemon log has the traceback",
            instance=request.path,
        )


def _detail_for(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no such resource: {request.method} {request.path}; see /api/v1/openapi.json"
    if exc.status == 405:
        return f"{request.method} is not allowed on {request.path}; allowed: {exc.headers.get('Allow', '')}"
    return exc.text or exc.reason


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS stays off (no headers at all) unless settings.cors_origins lists the caller's origin."""
    origins = context_of(request).settings.cors_origins
    origin = request.headers.get("Origin")
    allowed = origin is not None and (origin in origins or "*" in origins)
    if request.method == "OPTIONS" and allowed and "Access-Control-Request-Method" in request.headers:
        response: web.StreamResponse = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-API-Token"
        response.headers["Access-Control-Max-Age"] = "600"
    else:
        response = await handler(request)
    if allowed and origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "Location"
        response.headers["Vary"] = "Origin"
    return response


@web.middleware
async def security_headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    # No page of another site may frame ours (clickjacking the retry and cancel buttons); the page's
    # CSP says frame-ancestors 'none' too, for browsers that prefer it.
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host allow-list on every request, then the token on reads when protect_reads is on (guards.py).
    A connection whose request carried the valid token may use the reserved connection slots."""
    check_host(request, context_of(request).host_names)
    if token_valid(request):
        prove_token(request)
    require_read(request)
    return await handler(request)


# Outermost first: the guard runs inside the problem middleware, so its refusals are problem+json.
MIDDLEWARES = [security_headers_middleware, cors_middleware, problem_middleware, guard_middleware]

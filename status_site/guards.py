"""Who may write. Reads stay open on the LAN; POST endpoints need the API token when one is configured
(compared in constant time, from any host) and otherwise accept loopback clients only."""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from aiohttp import web

from status_site.context import context_of
from status_site.problems import Problem

TOKEN_HEADER = "X-API-Token"


@dataclass(frozen=True)
class WriteAccess:
    allowed: bool
    token_required: bool
    hint: str | None  # one line for the page when writes are refused


def is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def proxied(request: web.Request) -> bool:
    """A reverse proxy on this host connects from loopback on behalf of LAN or internet clients: a
    request it forwarded is not a loopback client, whatever request.remote says."""
    return any(name in request.headers for name in PROXY_HEADERS)


def presented_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get(TOKEN_HEADER)


def write_access(request: web.Request) -> WriteAccess:
    token = context_of(request).settings.api_token
    if token is not None:
        given = presented_token(request)
        ok = given is not None and hmac.compare_digest(
            given.encode("utf-8"), token.get_secret_value().encode("utf-8")
        )
        hint = None if ok else "Uploads and retries need the API token (the daemon's RESTORER_API_TOKEN)."
        return WriteAccess(allowed=ok, token_required=True, hint=hint)
    if is_loopback(request.remote) and not proxied(request):
        return WriteAccess(allowed=True, token_required=False, hint=None)
    return WriteAccess(
        allowed=False,
        token_required=False,
        hint="Read-only from this computer: uploads and retries work on the server itself, "
        "or set RESTORER_API_TOKEN.",
    )


def require_write(request: web.Request) -> None:
    access = write_access(request)
    if access.allowed:
        return
    if access.token_required:
        problem = Problem(
            401,
            "token-required",
            "API token required",
            "this endpoint changes state: send the token as 'Authorization: Bearer <token>' "
            f"or '{TOKEN_HEADER}: <token>'",
        )
        problem.headers["WWW-Authenticate"] = 'Bearer realm="restorer"'
        raise problem
    raise Problem(
        403,
        "loopback-only",
        "Writes allowed from the server only",
        f"no API token is configured, so POST endpoints accept loopback clients only (you are "
        f"{request.remote}{', through a proxy' if proxied(request) else ''}); set RESTORER_API_TOKEN to "
        "allow writes from the LAN",
    )

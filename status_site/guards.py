"""Who may do what, checked on every request.

- Host: every request must name this server (an IP literal, localhost, this machine's host name or an
  allowed_hosts entry); a web page that rebinds its own DNS name to this machine gets 421, so it cannot
  read photos or the API through the visitor's browser.
- Writes (POST): from a browser, only from the page's own origin (Origin, else Sec-Fetch-Site), or
  from an origin listed in cors_origins; a page open on the server cannot forge an upload or retry.
  Then the API token when one is configured (constant-time compare, any host), otherwise loopback
  clients only. Loopback trust assumes no local reverse proxy forwards LAN clients without saying so
  (Forwarded / X-Forwarded-For / X-Real-IP); behind such a proxy, set api_token.
- Reads: open on the LAN, unless protect_reads, which makes them need the token too (the page shell
  and health stay open so the sign-in prompt can load and monitors can poll).
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass

from aiohttp import web

from status_site.context import context_of
from status_site.problems import Problem

TOKEN_HEADER = "X-API-Token"
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")
# Browser fetch metadata for requests the page itself makes (or a person typing the URL).
SAME_ORIGIN_FETCH_SITES = ("same-origin", "none")


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


def proxied(request: web.Request) -> bool:
    """A reverse proxy on this host connects from loopback on behalf of LAN or internet clients: a
    request it forwarded is not a loopback client, whatever request.remote says."""
    return any(name in request.headers for name in PROXY_HEADERS)


# -- Host allow-list ---------------------------------------------------------------------------------


def own_host_names() -> frozenset[str]:
    """This machine's names as clients type them: localhost, the host name, its first label, .local."""
    host = socket.gethostname().lower().rstrip(".")
    short = host.split(".", 1)[0]
    return frozenset({"localhost", host, short, f"{short}.local"} - {""})


def host_name(header: str) -> str:
    """The host part of a Host header: '[::1]:8091' -> '::1', 'NAS.local.:80' -> 'nas.local'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return header.rstrip(".")


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def host_allowed(header: str | None, allowed: frozenset[str]) -> bool:
    if header is None:  # HTTP/1.0 clients; browsers always send Host, so rebinding always shows here
        return True
    host = host_name(header)
    if "*" in allowed or _is_ip_literal(host) or host in allowed:
        return True
    return host == "localhost" or host.endswith(".localhost")


def check_host(request: web.Request, allowed: frozenset[str]) -> None:
    header = request.headers.get("Host")
    if host_allowed(header, allowed):
        return
    raise Problem(
        421,
        "unknown-host",
        "Unknown host name",
        f"this server does not answer to the host name {host_name(header or '')!r} (a page that points "
        "its own DNS name at this machine must not read it); if that is a name of this machine, add it "
        "to allowed_hosts (RESTORER_ALLOWED_HOSTS)",
    )


# -- tokens ------------------------------------------------------------------------------------------


def presented_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get(TOKEN_HEADER)


def token_valid(request: web.Request) -> bool:
    token = context_of(request).settings.api_token
    given = presented_token(request)
    if token is None or not given:
        return False
    # aiohttp decodes header bytes that are not UTF-8 to lone surrogates; surrogateescape gives back the
    # bytes the client sent (which then simply do not match) instead of an encoding error.
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), token.get_secret_value().encode("utf-8")
    )


def _token_problem(detail: str) -> Problem:
    problem = Problem(401, "token-required", "API token required", detail)
    problem.headers["WWW-Authenticate"] = 'Bearer realm="restorer"'
    return problem


# -- reads -------------------------------------------------------------------------------------------

# What stays readable without the token under protect_reads: the page shell (no data in it), what the
# page needs to show the sign-in prompt, health for monitors, and the API's self-description.
OPEN_READ_PATHS = frozenset(
    {"/", "/api/v1", "/api/v1/capabilities", "/api/v1/health", "/api/v1/openapi.json"}
)


def read_protected(request: web.Request) -> bool:
    if not context_of(request).settings.protect_reads:
        return False
    return request.path not in OPEN_READ_PATHS and not request.path.startswith("/static/")


def require_read(request: web.Request) -> None:
    if read_protected(request) and not token_valid(request):
        raise _token_problem(
            "this server keeps its photos and jobs private (protect_reads): send the API token as "
            f"'Authorization: Bearer <token>' or '{TOKEN_HEADER}: <token>'"
        )


# -- writes ------------------------------------------------------------------------------------------


def _same_host_and_port(origin: str, host_header: str) -> bool:
    """Origin 'https://nas.local' names the same server as Host 'nas.local:443' (default ports)."""
    parsed, host = urllib.parse.urlsplit(origin), urllib.parse.urlsplit("//" + host_header.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return False
    default = 443 if parsed.scheme == "https" else 80
    try:
        return parsed.hostname == host.hostname and (parsed.port or default) == (host.port or default)
    except ValueError:  # a port that is not a number
        return False


def same_origin(request: web.Request) -> bool:
    """True unless a browser says the request comes from another site than this page.

    The scheme is not compared: behind a TLS-terminating proxy the page is https and we see http.
    Clients that send neither header (curl, scripts) are not browsers, so no forged request is possible.
    """
    origin = request.headers.get("Origin")
    if origin is not None:
        if origin in context_of(request).settings.cors_origins:
            return True
        return _same_host_and_port(origin, request.headers.get("Host", ""))
    fetch_site = request.headers.get("Sec-Fetch-Site")
    return fetch_site is None or fetch_site in SAME_ORIGIN_FETCH_SITES


def write_access(request: web.Request) -> WriteAccess:
    if context_of(request).settings.api_token is not None:
        ok = token_valid(request)
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
    if not same_origin(request):
        raise Problem(
            403,
            "cross-origin-write",
            "Write from another site refused",
            f"this request changes state and comes from another site "
            f"({request.headers.get('Origin') or request.headers.get('Sec-Fetch-Site')}); only the status "
            "page itself may send it (list a trusted origin in cors_origins to allow it)",
        )
    access = write_access(request)
    if access.allowed:
        return
    if access.token_required:
        raise _token_problem(
            "this endpoint changes state: send the token as 'Authorization: Bearer <token>' "
            f"or '{TOKEN_HEADER}: <token>'"
        )
    raise Problem(
        403,
        "loopback-only",
        "Writes allowed from the server only",
        f"no API token is configured, so POST endpoints accept loopback clients only (you are "
        f"{request.remote}{', through a proxy' if proxied(request) else ''}); set RESTORER_API_TOKEN to "
        "allow writes from the LAN",
    )

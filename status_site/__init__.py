"""The status page (site_port, 8091) and the JSON API (api_port, 8001) of `restorer serve`.

It reads and presents what the daemon's job store says, through the daemon's public surface only
(`daemon.ReadModel` for every read); it never imports torch or the pipeline. Its own public surface is
`start_servers` and `bound_port`; the modules behind it:

    server.py      start_servers(settings, store, health, on_job=None): both aiohttp apps, one thread pool
    api.py         /api/v1 handlers (+ /metrics), mounted on both ports
    page.py        the page server: three static files by exact name, plus the /api/v1 routes
    context.py     what every handler needs: settings, the store (writes), the read model, thread pools
    eta.py         queue ETAs from the mean seconds per input megapixel of done jobs
    files.py       a job's input/output looked up from its record, checked inside its folder; previews
                   (header check against the pipeline's pixel limit; big ones via preview_child.py)
    uploads.py     multipart uploads: streamed to disk with limits, validation, publish into the inbox
    guards.py      Host allow-list, Origin checks on writes, the API token (writes; reads too with
                   protect_reads), else loopback-only writes
    connections.py idle/slow-header timeouts and the connection cap of both ports
    middleware.py  problem+json errors (RFC 9457), CORS (off unless configured), headers, the guards
    cache.py       a quarter-second single-flight cache for the polled endpoints, bounded in bytes
    metrics.py     Prometheus text;  openapi.py: the OpenAPI 3.1 document
"""

from status_site.server import bound_port, start_servers

__all__ = ["bound_port", "start_servers"]

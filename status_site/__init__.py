"""The status page (site_port, 8091) and the JSON API (api_port, 8001) of `restorer serve`.

It serves what the job store says; it never imports torch or the pipeline's models.

    server.py      start_servers(settings, store, health, on_job=None): both aiohttp apps, one thread pool
    api.py         /api/v1 handlers (+ /metrics), mounted on both ports
    page.py        the page server: three static files by exact name, plus the /api/v1 routes
    queries.py     read-only SQL the store does not offer (queue order paging, stats per hour/day)
    eta.py         queue ETAs from the mean seconds per input megapixel of done jobs
    files.py       a job's input/output looked up from its record, checked inside its folder; previews
    uploads.py     multipart uploads: limits while streaming, validation, publish into the inbox
    guards.py      who may write (API token in constant time, else loopback only)
    middleware.py  problem+json errors (RFC 9457), CORS (off unless configured), headers
    cache.py       a quarter-second single-flight cache for the polled endpoints
    metrics.py     Prometheus text;  openapi.py: the OpenAPI 3.1 document
"""

"""The two HTTP servers of `restorer serve`: the JSON API (api_port) and the status page (site_port).

Both run on the daemon's main event loop; the pipeline runs in a separate worker process, and read
queries and image previews run in a small thread pool, so a poll is never queued behind real work. The
page server mounts the same /api/v1 routes in-process, so the browser talks to one origin (page.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from status_site.api import create_api_app
from status_site.connections import ConnectionGate, ConnectionLimits, GatedTCPSite
from status_site.context import APP_NAME, SiteContext
from status_site.guards import own_host_names
from status_site.page import create_site_app

if TYPE_CHECKING:
    from daemon import AddResult, HealthState, JobStore, Settings

log = logging.getLogger(__name__)


async def start_servers(
    settings: Settings,
    store: JobStore,
    health: HealthState,
    on_job: Callable[[AddResult], None] | None = None,
    on_queue_change: Callable[[], None] | None = None,
    send_test_notification: Callable[[], Awaitable[int]] | None = None,
    list_models: Callable[[], list[dict[str, Any]]] | None = None,
) -> list[web.AppRunner]:
    """Bind the API on settings.api_port and the page on settings.site_port; return their runners.

    on_job: what the watcher calls for a new row (the service wakes the worker with it); uploads call
    it for the jobs they create. Without it the worker still finds them at its next poll.
    on_queue_change: called after a pause, resume or prioritize (the service wakes the workers).

    Port 0 picks a free port (`bound_port(runner)` says which). Stop with `await runner.cleanup()` on
    each runner; the last cleanup also stops the shared thread pool.
    """
    ctx = SiteContext(
        settings=settings,
        store=store,
        health=health,
        on_job=on_job,
        on_queue_change=on_queue_change,
        send_test_notification=send_test_notification,
        list_models=list_models,
    )
    ctx.host_names = own_host_names() | {name.lower().rstrip(".") for name in settings.allowed_hosts}
    apps = [(create_api_app(ctx), settings.api_port), (create_site_app(ctx), settings.site_port)]
    apps[-1][0].on_cleanup.append(lambda _app: _shutdown(ctx))
    runners: list[web.AppRunner] = []
    try:
        for app, port in apps:
            runner = web.AppRunner(
                app,
                access_log=None,
                handle_signals=False,
                shutdown_timeout=2.0,
                keepalive_timeout=settings.http_idle_seconds,  # also bounds slow headers (connections.py)
            )
            await runner.setup()
            runners.append(runner)
            gate = ConnectionGate(
                ConnectionLimits(
                    total=settings.http_max_connections,
                    per_network=settings.http_max_connections_per_network,
                    reserved=settings.http_reserved_connections,
                )
            )
            try:
                await GatedTCPSite(runner, settings.bind, port, gate).start()
            except OSError as exc:
                setting = "api_port" if app[APP_NAME] == "api" else "site_port"
                raise OSError(
                    exc.errno,
                    f"cannot listen on {settings.bind}:{port} for the {app[APP_NAME]} ({exc.strerror}); "
                    f"is another restorer running? Change RESTORER_{setting.upper()} or bind",
                ) from exc
            log.info("%s listening on %s:%d", app[APP_NAME], settings.bind, bound_port(runner))
    except BaseException:
        for runner in reversed(runners):
            await runner.cleanup()
        raise
    return runners


async def _shutdown(ctx: SiteContext) -> None:
    ctx.shutdown()


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port a started runner actually listens on (useful with port 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("runner is not listening on a TCP port")

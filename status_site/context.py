"""What every handler needs, stored once on each aiohttp app under typed keys."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from daemon import ReadModel
from status_site.cache import ResponseCache
from status_site.eta import Estimator
from status_site.files import PreviewCache
from status_site.uploads import UPLOAD_SLOTS, SpoolSpace

if TYPE_CHECKING:
    from daemon import AddResult, HealthState, JobStore, Settings

T = TypeVar("T")
PREVIEW_SLOTS = 2  # small previews decoded at once in the daemon (each at most files.IN_PROCESS_MAX_PIXELS)


@dataclass
class SiteContext:
    """Shared by the API app and the page app of one `start_servers` call.

    `store` takes the few writes (uploads, retry, cancel); everything read goes through `reads`.
    Nothing blocking runs on the event loop that answers every poll. Store queries run in `executor`
    (SQLite may wait on a writer's lock); anything touching the inbox, outbox or archive (stat, open,
    preview decoding) runs in `file_executor`, so a hung network share stalls file requests only, while
    health, job JSON and the page keep answering.
    """

    settings: Settings
    store: JobStore
    health: HealthState
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=4, thread_name_prefix="status-db")
    )
    file_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=4, thread_name_prefix="status-files")
    )
    reads: ReadModel = field(init=False)  # read-only: every query the pages and the API ask
    estimator: Estimator = field(init=False)
    previews: PreviewCache = field(default_factory=PreviewCache)
    # Called (in a worker thread) for each job an upload created, as the watcher calls the service.
    on_job: Callable[[AddResult], None] | None = None
    # Called on the event loop after a pause, resume or prioritize (the service wakes the workers).
    on_queue_change: Callable[[], None] | None = None
    # The service's Notifier.send_test (queues a test notification to every target; returns how many).
    send_test_notification: Callable[[], Awaitable[int]] | None = None
    # The models usable here, scanned again at each call (a model file dropped into the weights folder
    # appears without a restart): dicts as the pipeline's ModelStatus.to_dict() makes them; app/ provides it.
    list_models: Callable[[], list[dict[str, Any]]] | None = None
    preview_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(PREVIEW_SLOTS))
    # Big previews: one child process at a time (each may need up to a few GB while it decodes).
    child_preview_slot: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    responses: ResponseCache = field(default_factory=ResponseCache)
    upload_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(UPLOAD_SLOTS))
    spool_space: SpoolSpace = field(init=False)  # the upload spool disk's room, shared by all uploads
    # Host names requests may carry besides IP literals and localhost (guards.check_host).
    host_names: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.reads = ReadModel(self.store.db_path)
        self.spool_space = SpoolSpace(self.settings.state_dir / "uploads", self.settings.min_free_bytes)
        self.estimator = Estimator(self.reads, self.settings)

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Store work, in the database pool."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    async def run_file(self, func: Callable[..., T], *args: Any) -> T:
        """File system and image work, in the file pool."""
        return await asyncio.get_running_loop().run_in_executor(self.file_executor, func, *args)

    def shutdown(self) -> None:
        for pool in (self.executor, self.file_executor):
            pool.shutdown(wait=False, cancel_futures=True)
        self.reads.close()


CONTEXT = web.AppKey("status_site_context", SiteContext)
APP_NAME = web.AppKey("status_site_app_name", str)


def context_of(request: web.Request) -> SiteContext:
    return request.app[CONTEXT]

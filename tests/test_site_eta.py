"""ETA inputs: header reads for queued jobs, cached per file version, never blocking the answer."""

from __future__ import annotations

import threading
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from daemon.store import JobStore
from status_site.eta import MegapixelCache
from tests.support.settings import make_settings


class InlineExecutor(Executor):
    """Runs each task at once in the caller's thread: its future is done before submit returns."""

    def __init__(self) -> None:
        self.calls = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.calls += 1
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def test_a_header_read_that_finishes_before_its_callback_is_added_does_not_deadlock(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    Image.new("RGB", (1000, 500)).save(settings.inbox / "a.png")
    store = JobStore(settings.db_path)
    job = store.add("a.png", "a" * 64, 10, 1.0).job
    executor = InlineExecutor()
    cache = MegapixelCache(executor)
    result: list[float | None] = []
    worker = threading.Thread(target=lambda: result.append(cache.megapixels(job, settings)))
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "megapixels() deadlocked on its own lock"
    assert result == [0.5]
    assert cache.megapixels(job, settings) == 0.5
    assert executor.calls == 1  # the second answer came from the cache
    store.close()


def test_a_header_that_does_not_arrive_in_time_gives_none_and_is_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path)
    store = JobStore(settings.db_path)
    job = store.add("slow.png", "s" * 64, 10, 1.0).job
    release = threading.Event()

    class StuckExecutor(Executor):
        submitted = 0

        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
            StuckExecutor.submitted += 1
            future: Future[Any] = Future()
            threading.Thread(target=lambda: (release.wait(10), future.set_result(2.0))).start()
            return future

    monkeypatch.setattr("status_site.eta.HEADER_WAIT_SECONDS", 0.05)
    try:
        cache = MegapixelCache(StuckExecutor())
        assert cache.megapixels(job, settings) is None
        assert cache.megapixels(job, settings) is None
        assert StuckExecutor.submitted == 1  # still reading: not asked again
        release.set()
        for _ in range(100):
            if cache.megapixels(job, settings) == 2.0:
                break
            threading.Event().wait(0.02)
        assert cache.megapixels(job, settings) == 2.0
    finally:
        release.set()
        store.close()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds no pixels: enough for a header read."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_a_photo_above_pillows_own_bomb_limit_is_sized_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow's default refuses 200 MP in Image.open; our limit (max_input_megapixels) allows it, and
    # the estimate reads the header without changing Pillow's process-wide setting.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    settings = make_settings(tmp_path)
    (settings.inbox / "huge.png").write_bytes(_png_header_only(20_000, 10_000))
    store = JobStore(settings.db_path)
    job = store.add("huge.png", "h" * 64, 10, 1.0).job
    try:
        assert MegapixelCache(InlineExecutor()).megapixels(job, settings) == 200.0
        assert Image.MAX_IMAGE_PIXELS == 89_478_485
    finally:
        store.close()

"""Every request costs bounded work: previews of pixel bombs and big images, uploads (streamed to
disk), the response cache. A real `restorer serve`, its peak memory (VmHWM of the daemon process)
measured around each."""

from __future__ import annotations

import concurrent.futures
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from status_site.cache import MAX_BYTES, ResponseCache
from tests.support.site import ServedSite, Site, running_serve, running_site

PROBLEM = "application/problem+json"


def bomb_png(width: int, height: int) -> bytes:
    """A valid grayscale PNG of width x height black pixels: a few MB on disk, width*height in memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row_block = b"\0" * ((width + 1) * 500)  # 500 rows: a filter byte and the pixels, all zero
    parts = [compressor.compress(row_block) for _ in range(height // 500)]
    parts.append(compressor.compress(b"\0" * ((width + 1) * (height % 500))) + compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedSite]:
    """The whole daemon with the test-only copy processor: no model to load, the HTTP side is real."""
    tmp = tmp_path_factory.mktemp("previews")
    with running_serve(tmp, processor="tests.daemon_processors:CopyProcessor") as site:
        yield site


def archived(site: Site, name: str, data: bytes) -> int:
    """A done job whose original lies in archive/ (no watcher looks there)."""
    site.settings.archive_dir.mkdir(parents=True, exist_ok=True)
    (site.settings.archive_dir / name).write_bytes(data)
    return site.insert_job(state="done", input_path=name, original="archived", original_path=name)


def test_a_pixel_bomb_preview_is_refused_from_its_header_without_growing_the_daemon(
    daemon: ServedSite,
) -> None:
    bomb = bomb_png(30_000, 30_000)  # 900 megapixels in about 1 MB
    assert len(bomb) < 3_000_000
    job = archived(daemon, "bomb.png", bomb)
    pid = daemon.process.pid
    before = peak_rss_kib(pid)
    urls = [f"{daemon.api}/api/v1/jobs/{job}/input?max={size}" for size in (320, 4096, 8192, 320)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda url: daemon.http.get(url, timeout=30), urls))
    for answer in answers:
        assert answer.status_code == 422, answer.text
        assert answer.headers["Content-Type"].startswith(PROBLEM)
        assert "900 megapixels" in answer.json()["detail"]
    grown_mib = (peak_rss_kib(pid) - before) / 1024
    print(f"daemon peak RSS grew by {grown_mib:.1f} MiB over 4 bomb previews")
    assert grown_mib < 30, f"the daemon's peak RSS grew by {grown_mib:.0f} MiB"
    assert "Traceback" not in daemon.log_path.read_text()


def test_a_big_image_under_the_limit_is_previewed_in_a_child_process(daemon: ServedSite) -> None:
    """40 MP as PNG is 120 MB decoded: made in a child process, the daemon's peak stays put."""
    out = io.BytesIO()
    Image.new("RGB", (8000, 5000), (200, 120, 40)).save(out, "PNG", compress_level=1)
    job = archived(daemon, "scan.png", out.getvalue())
    pid = daemon.process.pid
    before = peak_rss_kib(pid)
    preview = daemon.get(f"/api/v1/jobs/{job}/input?max=4096")
    assert preview.status_code == 200, preview.text
    assert Image.open(io.BytesIO(preview.content)).size == (4096, 2560)
    grown_mib = (peak_rss_kib(pid) - before) / 1024
    print(f"daemon peak RSS grew by {grown_mib:.1f} MiB for a 40 MP PNG preview")
    assert grown_mib < 60, f"the daemon's peak RSS grew by {grown_mib:.0f} MiB"


def test_max_snaps_to_a_few_sizes_and_a_non_image_is_a_4xx(daemon: ServedSite) -> None:
    out = io.BytesIO()
    Image.new("RGB", (900, 600), "gray").save(out, "JPEG")
    job = archived(daemon, "photo.jpg", out.getvalue())
    first = daemon.get(f"/api/v1/jobs/{job}/input?max=300")
    assert Image.open(io.BytesIO(first.content)).size == (256, 171)  # snapped down to 256
    again = daemon.get(f"/api/v1/jobs/{job}/input?max=299")
    assert again.headers["ETag"] == first.headers["ETag"]
    notes = archived(daemon, "notes.jpg", b"these are my holiday notes, not a photo\n" * 50)
    for size in (64, 8192):
        answer = daemon.get(f"/api/v1/jobs/{notes}/input?max={size}")
        assert answer.status_code == 422, answer.text
        assert answer.headers["Content-Type"].startswith(PROBLEM)
    assert daemon.get(f"/api/v1/jobs/{notes}/input").status_code == 200  # the file itself, as it is
    assert "Traceback" not in daemon.log_path.read_text()


def test_an_upload_streams_to_disk_and_never_whole_into_memory(daemon: ServedSite) -> None:
    noise = (np.random.default_rng(3).random((4000, 5000, 3)) * 255).astype("uint8")  # 20 MP
    out = io.BytesIO()
    Image.fromarray(noise).save(out, "PNG", compress_level=0)
    data = out.getvalue()
    assert len(data) > 55_000_000
    del noise, out
    pid = daemon.process.pid
    before = peak_rss_kib(pid)
    response = daemon.post("/api/v1/jobs", files=[("file", ("scan.png", data, "image/png"))])
    assert response.status_code == 202, response.text
    grown_mib = (peak_rss_kib(pid) - before) / 1024
    print(f"daemon peak RSS grew by {grown_mib:.1f} MiB for a {len(data) / 1e6:.0f} MB upload")
    assert grown_mib < 30, f"the daemon's peak RSS grew by {grown_mib:.0f} MiB"


def test_the_response_cache_is_keyed_on_parsed_parameters_and_bounded_in_bytes(tmp_path: Path) -> None:
    with running_site(tmp_path) as site:
        for n in range(3):
            site.insert_job(state="done", input_path=f"p{n}.png")
        cache = site.context.responses
        for n in range(200):  # distinct query strings, one answer
            junk = f"limit=500&state=done,failed&x{n}={n}" if n % 2 else f"state=failed,done&limit=500&y={n}"
            assert site.get(f"/api/v1/jobs?{junk}").status_code == 200
        assert len(cache) <= 2, len(cache)
    small = ResponseCache(max_bytes=MAX_BYTES)

    async def fill() -> None:
        for n in range(64):
            await small.get(f"k{n}", _answer(1024 * 1024))

    import asyncio

    asyncio.run(fill())
    assert small.size_bytes <= MAX_BYTES and len(small) <= MAX_BYTES // (1024 * 1024)


def _answer(size: int):  # type: ignore[no-untyped-def]
    async def compute() -> str:
        return "x" * size

    return compute

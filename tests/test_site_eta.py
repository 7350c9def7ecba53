"""ETAs come from the sizes admission stored at intake: no listing ever opens a queued file.

The ETA used to read each queued file's header itself, a second, unbounded reader of files a share user
drops: Pillow's decompression_bomb.gif in the queue made `GET /api/v1/jobs` a 500 for everyone (issue 18),
and a hung share stalled the estimate. Now admission (daemon/admission.py) reads the header once, at
intake, and the job carries the result (input_megapixels).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import status_site.files
from daemon.store import JobStore
from tests.image_cases import gif_frames
from tests.support.site import Site, running_site

BOMB = gif_frames((1, 1), [(65535, 65535)])  # Pillow's decompression_bomb.gif: 4.3 G pixels in 40 bytes


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setattr("status_site.cache.RESPONSE_TTL_SECONDS", 0.0)
    monkeypatch.setattr("status_site.eta.RATE_TTL_SECONDS", 0.0)
    with running_site(tmp_path) as running:
        yield running


def _done(site: Site, megapixels: float, seconds: float) -> None:
    now = datetime.now(UTC)
    site.insert_job(
        state="done",
        started_at=now - timedelta(seconds=seconds),
        finished_at=now,
        input_megapixels=megapixels,
        work_seconds=seconds,
    )


def test_a_pixel_bomb_gif_in_the_queue_leaves_the_listing_answering(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bomb can sit in the queue although intake refuses one: a row queued before sizes were stored,
    or a file replaced after it was admitted. The listings (the API's and the page's) answer 200 with
    estimates, and not one of them opens a file."""
    store: JobStore = site.store
    _done(site, 1.0, 10.0)  # a measured rate, so estimates are made: 10 s per megapixel
    (site.settings.inbox / "old-row.gif").write_bytes(BOMB)
    unsized = store.add("old-row.gif", "a" * 64, len(BOMB), 1.0).job.id
    (site.settings.inbox / "replaced.gif").write_bytes(BOMB)
    admitted = store.add("replaced.gif", "b" * 64, 900, 1.0, input_megapixels=3.0).job.id
    opened: list[str] = []
    real_open = status_site.files.open_beneath

    def counting_open(folder: Path, relative: str) -> int:
        opened.append(relative)
        return real_open(folder, relative)

    monkeypatch.setattr(status_site.files, "open_beneath", counting_open)
    page_listings = (  # what app.js asks for on each poll
        "/api/v1/jobs?state=processing,queued&order=queue&limit=100",
        "/api/v1/jobs?state=failed&limit=20",
        "/api/v1/jobs?limit=24&order=newest",
    )
    for path in page_listings:
        assert site.get(path, port="page").status_code == 200, path
    listing = site.get("/api/v1/jobs?order=queue&state=queued,processing")
    assert listing.status_code == 200, listing.text
    etas = {job["id"]: job["eta_seconds"] for job in listing.json()["jobs"]}
    assert etas[unsized] == pytest.approx(10.0)  # no stored size: the mean size (1 MP)
    assert etas[admitted] == pytest.approx(10.0 + 30.0)  # the admitted 3 MP, not the file's header
    assert site.get(f"/api/v1/jobs/{admitted}").json()["eta_seconds"] == pytest.approx(40.0)
    assert opened == []
    # The bomb's own preview is still refused from its header, as before.
    assert site.get(f"/api/v1/jobs/{unsized}/input?max=320").status_code == 422

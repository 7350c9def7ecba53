"""The outbox space policy (daemon/outbox_space.py) on a real store, real health and a real outbox folder;
only the free-space reading is passed in (as the host's abilities are to choose_backend), so each side of
the threshold is reached without filling a disk. The whole loop on a real full tmpfs under `restorer
serve` is test_service.py::test_outbox_full_pauses_intake_and_resumes_when_space_returns."""

from __future__ import annotations

from pathlib import Path

from daemon.health import HealthState
from daemon.outbox_space import OutboxSpace
from daemon.store import JobStore
from tests.support.settings import make_settings

MB = 1024 * 1024


class Rig:
    def __init__(self, root: Path, min_free_mb: int) -> None:
        self.settings = make_settings(root, min_free_mb=min_free_mb)
        self.store = JobStore(self.settings.db_path)
        self.health = HealthState()
        self.free = 100 * MB
        self.calls: list[str] = []
        self.space = OutboxSpace(
            self.settings,
            self.store,
            self.health,
            pause=lambda reason: self.calls.append(f"pause: {reason}"),
            resume=lambda: self.calls.append("resume"),
            free_space=lambda _outbox: self.free,
        )

    def job_failed_for_lack_of_space(self) -> int:
        job = self.store.add("a.png", "0" * 64, 10, 1.0).job
        assert self.store.claim_next() is not None
        return self.store.fail(job.id, "the outbox is full", kind="disk-full").id


def test_below_min_free_pauses_once_and_space_back_resumes_and_requeues(tmp_path: Path) -> None:
    rig = Rig(tmp_path, min_free_mb=50)
    job_id = rig.job_failed_for_lack_of_space()
    rig.space.check()
    assert rig.calls == [] and rig.health.get("outbox_free_bytes") == 100 * MB
    rig.free = 10 * MB
    rig.space.check()
    rig.space.check()  # still low: no second pause
    assert rig.calls == ["pause: the outbox has 10 MB free, below min_free_mb=50"]
    assert rig.store.get(job_id).state == "failed"
    rig.free = 60 * MB
    rig.space.check()
    assert rig.calls[1:] == ["resume"] and rig.store.get(job_id).state == "queued"
    rig.store.close()


def test_a_failed_publish_waits_for_what_it_needed_and_a_tenth_more(tmp_path: Path) -> None:
    rig = Rig(tmp_path, min_free_mb=0)
    rig.space.on_disk_full(100 * MB, "no space left on device")
    assert rig.calls == ["pause: the outbox is full (no space left on device); waiting for free space"]
    rig.free = 105 * MB  # more than it needed, less than the margin: still paused
    rig.space.check()
    assert rig.calls[1:] == [] and rig.space.paused
    rig.free = 111 * MB
    rig.space.check()
    assert rig.calls[1:] == ["resume"] and not rig.space.paused
    rig.store.close()


def test_an_outbox_that_cannot_be_read_is_reported_not_raised(tmp_path: Path) -> None:
    rig = Rig(tmp_path, min_free_mb=0)

    def gone(_outbox: Path) -> int:
        raise FileNotFoundError(2, "No such file or directory")

    rig.space._free_space = gone
    rig.space.check()
    assert rig.health.get("outbox_writable") is False and "No such file" in rig.health.get("outbox_error")
    assert rig.calls == []
    rig.store.close()

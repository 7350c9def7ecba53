"""The "file is complete" rule on its own: size AND mtime unchanged for stability_seconds.

A fake clock drives it, the way paperless-ngx tests its consumer's pieces one by one: no folders, no
sleeping, each edge a named test.
"""

from __future__ import annotations

from daemon.stability import StabilityTracker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tracker(seconds: float = 5.0) -> tuple[StabilityTracker, Clock]:
    clock = Clock()
    return StabilityTracker(seconds, clock), clock


def test_a_file_is_stable_only_after_looking_the_same_for_the_whole_delay() -> None:
    pending, clock = tracker()
    assert not pending.see("scan.jpg", 100, 1.0)
    clock.now += 4.9
    assert not pending.see("scan.jpg", 100, 1.0)
    clock.now += 0.1
    assert pending.see("scan.jpg", 100, 1.0)


def test_a_growing_file_restarts_the_wait_at_every_change() -> None:
    pending, clock = tracker()
    for size in range(100, 2000, 100):  # a slow chunked write: a new size at every look
        assert not pending.see("scan.jpg", size, 1.0)
        clock.now += 3.0
    assert not pending.see("scan.jpg", 1900, 1.0)
    clock.now += 2.0
    assert pending.see("scan.jpg", 1900, 1.0)


def test_an_mtime_change_alone_restarts_the_wait() -> None:
    pending, clock = tracker()
    pending.see("a.jpg", 10, 1.0)
    clock.now += 6
    assert not pending.see("a.jpg", 10, 2.0)  # rewritten with the same size
    clock.now += 5
    assert pending.see("a.jpg", 10, 2.0)


def test_forgotten_files_start_over_and_are_no_longer_tracked() -> None:
    pending, clock = tracker()
    pending.see("a.jpg", 10, 1.0)
    clock.now += 10
    pending.forget("a.jpg")
    assert "a.jpg" not in pending and len(pending) == 0
    assert not pending.see("a.jpg", 10, 1.0)
    pending.forget("never-seen.jpg")  # forgetting an unknown name is harmless


def test_files_are_tracked_independently() -> None:
    pending, clock = tracker()
    pending.see("a.jpg", 1, 1.0)
    clock.now += 3
    pending.see("b.jpg", 1, 1.0)
    clock.now += 2
    assert pending.see("a.jpg", 1, 1.0) and not pending.see("b.jpg", 1, 1.0)
    assert sorted(pending) == ["a.jpg", "b.jpg"]


def test_seconds_until_due_is_the_earliest_tracked_file() -> None:
    pending, clock = tracker()
    assert pending.seconds_until_due() is None
    pending.see("a.jpg", 1, 1.0)
    clock.now += 2
    pending.see("b.jpg", 1, 1.0)
    assert pending.seconds_until_due() == 3.0
    clock.now += 10
    assert pending.seconds_until_due() == 0.0


def test_zero_delay_means_stable_at_first_sight() -> None:
    pending, _clock = tracker(0.0)
    assert pending.see("a.jpg", 1, 1.0)


def test_iterating_while_forgetting_is_safe() -> None:
    pending, _clock = tracker()
    for name in ("a", "b", "c"):
        pending.see(name, 1, 1.0)
    for name in pending:
        pending.forget(name)
    assert len(pending) == 0

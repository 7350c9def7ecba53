"""Quiet hours (daemon/schedule.py): windows, midnight, several windows, DST both ways, settings.

The clock is injected: each test names the instant, so none depends on when it runs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from daemon import schedule
from daemon.settings import Settings

BERLIN = ZoneInfo("Europe/Berlin")
NIGHT = [schedule.parse_window("22:00-07:00")]


def at(text: str, zone: ZoneInfo = BERLIN) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone)


def test_no_windows_means_always() -> None:
    assert schedule.may_start(at("2026-12-07T12:00"), [], BERLIN)
    assert schedule.next_run(at("2026-12-07T12:00"), [], BERLIN) is None
    assert schedule.seconds_until_run(at("2026-12-07T12:00"), [], BERLIN) == 0.0


def test_a_window_across_midnight_opens_in_the_evening_and_closes_in_the_morning() -> None:
    assert not schedule.may_start(at("2026-12-07T21:59"), NIGHT, BERLIN)
    assert schedule.may_start(at("2026-12-07T22:00"), NIGHT, BERLIN)
    assert schedule.may_start(at("2026-12-07T23:59"), NIGHT, BERLIN)
    assert schedule.may_start(at("2026-12-08T00:00"), NIGHT, BERLIN)
    assert schedule.may_start(at("2026-12-08T06:59"), NIGHT, BERLIN)
    assert not schedule.may_start(at("2026-12-08T07:00"), NIGHT, BERLIN)
    assert schedule.next_run(at("2026-12-08T07:00"), NIGHT, BERLIN) == at("2026-12-08T22:00")
    assert schedule.seconds_until_run(at("2026-12-07T21:30"), NIGHT, BERLIN) == 30 * 60


def test_the_next_run_is_the_earliest_of_several_windows() -> None:
    windows = [schedule.parse_window(text) for text in ("22:00-07:00", "12:00-13:30")]
    assert schedule.may_start(at("2026-12-07T12:45"), windows, BERLIN)
    assert schedule.next_run(at("2026-12-07T09:00"), windows, BERLIN) == at("2026-12-07T12:00")
    assert schedule.next_run(at("2026-12-07T13:30"), windows, BERLIN) == at("2026-12-07T22:00")


def test_the_clock_in_another_zone_is_read_in_the_run_hours_zone() -> None:
    # 21:30 UTC on a winter day is 22:30 in Berlin: inside the night window.
    assert schedule.may_start(datetime(2026, 12, 7, 21, 30, tzinfo=UTC), NIGHT, BERLIN)
    assert not schedule.may_start(datetime(2026, 12, 7, 20, 30, tzinfo=UTC), NIGHT, BERLIN)


def test_spring_forward_counts_the_real_seconds_and_skips_an_opening_that_does_not_exist() -> None:
    # 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST.
    before = at("2026-03-29T01:00")
    assert schedule.seconds_until_run(before, [schedule.parse_window("04:00-05:00")], BERLIN) == 2 * 3600
    gap = [schedule.parse_window("02:30-02:45")]  # never on the clock that day
    assert not schedule.may_start(at("2026-03-29T03:10"), gap, BERLIN)
    assert schedule.next_run(before, gap, BERLIN) == at("2026-03-30T02:30")
    # A window over the jump: open on both sides of it.
    over = [schedule.parse_window("01:30-03:30")]
    assert schedule.may_start(datetime(2026, 3, 29, 1, 15, tzinfo=UTC), over, BERLIN)  # 03:15 CEST


def test_fall_back_counts_the_repeated_hour() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST goes back to 02:00 CET; 00:00 to 04:00 is five real hours.
    midnight = at("2026-10-25T00:00")
    assert schedule.seconds_until_run(midnight, [schedule.parse_window("04:00-06:00")], BERLIN) == 5 * 3600
    # Both passes through 02:30 are inside a 02:00-03:00 window.
    window = [schedule.parse_window("02:00-03:00")]
    first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST
    second = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 02:30 CET
    assert schedule.may_start(first, window, BERLIN) and schedule.may_start(second, window, BERLIN)
    assert not schedule.may_start(datetime(2026, 10, 25, 2, 0, tzinfo=UTC), window, BERLIN)  # 03:00 CET


@pytest.mark.parametrize("bad", ["22-07", "25:00-07:00", "22:00-07:60", "22:00", "07:00-07:00", "x"])
def test_settings_refuse_a_window_that_is_not_hh_mm_hh_mm(bad: str) -> None:
    with pytest.raises(ValidationError, match=r"run window|same minute"):
        Settings.load(None, run_hours=[bad])


def test_settings_accept_several_windows_and_the_environment_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTORER_RUN_HOURS", '["22:00-07:00", " 12:00-13:00 "]')
    settings = Settings.load(None)
    assert settings.run_hours == ["22:00-07:00", "12:00-13:00"]
    monkeypatch.setenv("TZ", "Europe/Berlin")
    assert settings.next_run(at("2026-12-07T10:00")) == at("2026-12-07T12:00")
    assert settings.run_wait_seconds(at("2026-12-07T12:30")) == 0.0


def test_the_zone_is_tz_else_the_hosts_with_its_dst_rules(tmp_path: Path) -> None:
    assert schedule.local_zone("Europe/Berlin") == BERLIN
    assert schedule.local_zone(":Europe/Berlin") == BERLIN
    berlin_file = Path("/usr/share/zoneinfo/Europe/Berlin")
    if not berlin_file.exists():
        pytest.skip("no tzdata files on this host")
    host = schedule.local_zone(None, localtime=berlin_file)
    # The host's zone keeps its DST rules: winter and summer offsets differ.
    assert datetime(2026, 1, 1, tzinfo=host).utcoffset() != datetime(2026, 7, 1, tzinfo=host).utcoffset()
    # A TZ that names no zone falls back to the host's instead of stopping a worker.
    fallback = schedule.local_zone("Not/AZone", localtime=berlin_file)
    assert (
        datetime(2026, 7, 1, tzinfo=fallback).utcoffset() == datetime(2026, 7, 1, tzinfo=BERLIN).utcoffset()
    )
    assert schedule.local_zone(None, localtime=tmp_path / "missing").utcoffset(None) is not None

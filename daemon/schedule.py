"""Quiet hours: the windows of the day in which new jobs may start (settings.run_hours).

A window is "HH:MM-HH:MM" in local wall-clock time (the host's zone, or TZ); one whose end is not
after its start runs across midnight ("22:00-07:00"). An empty list means always. A job already
running when a window closes finishes; only new starts wait.

Everything here is pure: the clock (`now`, an aware datetime) and the zone are passed in, so midnight
and the DST changes are tested with chosen instants. Wall-clock times are compared, so a window keeps
its meaning on the days the clock jumps: "02:00-03:00" simply does not occur on a spring-forward day
in Europe/Berlin, and next_run skips to the next day's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

LOCALTIME = Path("/etc/localtime")  # the host's zone, with its DST rules
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Window:
    start: time
    end: time

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def contains(self, wall: time) -> bool:
        if self.crosses_midnight:
            return wall >= self.start or wall < self.end
        return self.start <= wall < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_window(text: str) -> Window:
    """ "22:00-07:00" -> Window; ValueError with the expected form otherwise."""
    match = _WINDOW.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a run window: write HH:MM-HH:MM, e.g. 22:00-07:00")
    h1, m1, h2, m2 = (int(part) for part in match.groups())
    if (h1, m1) == (h2, m2):
        raise ValueError(f"{text!r} starts and ends at the same minute: leave run_hours empty to run always")
    return Window(time(h1, m1), time(h2, m2))


def local_zone(tz_name: str | None, localtime: Path = LOCALTIME) -> tzinfo:
    """The zone run_hours are read in: TZ when it names an IANA zone, else the host's (/etc/localtime,
    with its DST rules; a fixed offset taken now only where neither is readable). A TZ that names no
    zone (a POSIX rule string, a typo) falls back to the host's rather than stopping a worker."""
    if tz_name:
        try:
            return ZoneInfo(tz_name.removeprefix(":"))
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open(localtime, "rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError):
        zone = datetime.now().astimezone().tzinfo
        assert zone is not None  # astimezone() always gives an aware datetime
        return zone


def may_start(now: datetime, windows: list[Window], zone: tzinfo) -> bool:
    """True when a new job may start at `now` (aware): no windows, or inside one."""
    if not windows:
        return True
    wall = now.astimezone(zone).time().replace(tzinfo=None)
    return any(window.contains(wall) for window in windows)


def next_run(now: datetime, windows: list[Window], zone: tzinfo) -> datetime | None:
    """When new jobs may start next: None if they may start now, else the next window's opening
    (aware, in `zone`). Openings that do not exist on a spring-forward day are skipped."""
    if may_start(now, windows, zone):
        return None
    # Compared in UTC: aware datetimes sharing one tzinfo compare by wall time, wrong across a DST change.
    local_now, utc_now = now.astimezone(zone), now.astimezone(UTC)
    openings: list[datetime] = []
    for days in range(0, 3):
        day = local_now.date() + timedelta(days=days)
        for window in windows:
            opening = datetime.combine(day, window.start, tzinfo=zone)
            if not _exists(opening, zone):
                continue  # the clock jumped over it (spring forward)
            if opening.astimezone(UTC) > utc_now:
                openings.append(opening.astimezone(UTC))
    return min(openings).astimezone(zone) if openings else None


def seconds_until_run(now: datetime, windows: list[Window], zone: tzinfo) -> float:
    """0 when jobs may start now, else the seconds until the next window opens."""
    opening = next_run(now, windows, zone)
    if opening is None:
        return 0.0
    return max(0.0, (opening.astimezone(UTC) - now.astimezone(UTC)).total_seconds())


def _exists(wall: datetime, zone: tzinfo) -> bool:
    # A wall time in a spring-forward gap does not survive a round trip through UTC.
    round_trip = wall.astimezone(UTC).astimezone(zone)
    return round_trip.replace(tzinfo=None) == wall.replace(tzinfo=None)

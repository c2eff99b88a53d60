"""Cron schedules as Dapr's cron binding reads them, and the next time each one fires.

Five fields (minute hour day-of-month month day-of-week), or six with seconds first; the
descriptors ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``) and
``@hourly``; ``@every <duration>`` with Go's units (``1h30m``, ``15s``; at least one second), which
fires at whole multiples of the duration since the Unix epoch, so every worker agrees on the ticks;
and a ``CRON_TZ=<zone>`` (or ``TZ=``) prefix. Times are UTC unless a zone is given.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MAX_SCHEDULE = 256


def _duration(text: str) -> float:
    """Go's time.ParseDuration, for positive durations."""
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{text[:32]!r} is not a duration such as 15s, 5m or 1h30m")
    return total


@dataclass(frozen=True, slots=True)
class Schedule:
    text: str
    zone: str  # the IANA zone name, "UTC" by default
    every: float | None  # seconds, for @every
    expression: str  # the cron fields, for the rest

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """The schedule ``text`` says; ValueError saying what is wrong."""
        spec = " ".join(text.split())
        if not spec:
            raise ValueError("the schedule is empty")
        if len(spec) > MAX_SCHEDULE:
            raise ValueError(f"the schedule is over {MAX_SCHEDULE} characters")
        zone = "UTC"
        head, _, rest = spec.partition(" ")
        if head.startswith(("CRON_TZ=", "TZ=")):
            zone = head.partition("=")[2]
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"the schedule's time zone {zone[:64]!r} is unknown") from None
            spec = rest
        if spec.startswith("@every"):
            period = _duration(spec[len("@every") :].replace(" ", ""))
            if period < 1:
                raise ValueError("@every needs at least one second")
            return cls(text, zone, period, "")
        expression = _DESCRIPTORS.get(spec, spec)
        fields = expression.split(" ")
        if len(fields) not in (5, 6):
            raise ValueError(f"{spec[:64]!r} has {len(fields)} fields; a schedule has 5, or 6 with seconds first")
        try:
            croniter(expression, 0, second_at_beginning=True).get_next(float)
        except (CroniterError, ValueError, KeyError) as exc:
            raise ValueError(f"{spec[:64]!r} is not a cron schedule: {exc}") from None
        return cls(text, zone, None, expression)

    def next_after(self, ts: float) -> float:
        """The first time after ``ts`` (unix seconds) the schedule fires."""
        if self.every is not None:
            return (math.floor(ts / self.every) + 1) * self.every
        start = datetime.fromtimestamp(ts, ZoneInfo(self.zone))
        found: float = croniter(self.expression, start, second_at_beginning=True).get_next(float)
        return found

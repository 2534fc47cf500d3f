"""Source periods: their keys, start times and positions on a dataset's time axis.

A period is one step of a dataset's time axis (an hour, a day, a month or a year). Its key is the
Dagster partition key, its start is the time coordinate written to the store, and its index is the
position on the time axis counted from the dataset's start. The three convert both ways without
any lookup, so every writer computes the same index for the same period: that is what lets periods
be written in any order and by many processes at once.

>>> from datetime import datetime
>>> daily = PeriodType.DAILY
>>> daily.key(datetime(2024, 1, 31))
'2024-01-31'
>>> daily.index(daily.parse("2024-02-01"), origin=datetime(2024, 1, 1))
31
>>> PeriodType.MONTHLY.at(13, origin=datetime(2023, 12, 1))
datetime.datetime(2025, 1, 1, 0, 0)

People may name a period in ISO form as well as by its key (`PeriodType.parse_text`):

>>> PeriodType.HOURLY.parse_text("2020-01-01T05:00")
datetime.datetime(2020, 1, 1, 5, 0)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import numpy as np


class PeriodError(ValueError):
    """A period key or start that does not fit the dataset's period type."""


class PeriodType(StrEnum):
    HOURLY = "hourly"
    DAILY = "daily"
    MONTHLY = "monthly"
    YEARLY = "yearly"

    @property
    def key_format(self) -> str:
        """The strftime format of partition keys (Dagster's own for hourly and daily)."""
        return _KEY_FORMATS[self]

    @property
    def with_article(self) -> str:
        """``"an hourly"``, ``"a daily"``: for messages."""
        return f"an {self.value}" if self is PeriodType.HOURLY else f"a {self.value}"

    @property
    def cron_schedule(self) -> str:
        """The cron schedule whose ticks are the period starts (used for Dagster partitions)."""
        return _CRON_SCHEDULES[self]

    def key(self, start: datetime) -> str:
        """The key of the period starting at ``start`` (which must be a period boundary)."""
        self.check_boundary(start)
        return start.strftime(self.key_format)

    def parse(self, key: str) -> datetime:
        """The start of the period named by ``key``; a key in another format is an error."""
        try:
            start = datetime.strptime(key, self.key_format)
        except ValueError:
            example = datetime(2024, 1, 1).strftime(self.key_format)
            raise PeriodError(
                f"{key!r} is not {self.with_article} period key (expected the form {example!r})"
            ) from None
        return start

    def parse_text(self, text: str) -> datetime:
        """The start of the period named by ``text``: its key (``2020-01-01-05:00``) or its start
        in ISO 8601 form (``2020-01-01T05:00``, ``2020-01-01T05:00:00Z``, ``2020-01-01``,
        ``2020-01``, ``2020``), as people type it. An ISO form must be at least as precise as the
        period (a month does not name a day) and name a period's start; a time with an offset is
        taken to UTC. A PeriodError otherwise, giving the forms expected.

        >>> PeriodType.DAILY.parse_text("2024-03-05T00:00:00Z")
        datetime.datetime(2024, 3, 5, 0, 0)
        >>> PeriodType.MONTHLY.parse_text("2024-03")
        datetime.datetime(2024, 3, 1, 0, 0)
        """
        text = text.strip()
        try:
            return self.parse(text)
        except PeriodError:
            pass
        parsed = _parse_iso(text)
        if parsed is None:
            raise PeriodError(
                f"{text!r} names no period: expected {self.with_article} period as "
                f"{self.expected_forms}"
            )
        start, precision = parsed
        if _PRECISIONS.index(precision) > _PRECISIONS.index(_PRECISION_OF[self]):
            raise PeriodError(
                f"{text!r} names a whole {precision}, not one {self.value} period: expected "
                f"{self.expected_forms}"
            )
        if self.floor(start) != start:
            raise PeriodError(
                f"{text!r} is not the start of {self.with_article} period: expected "
                f"{self.expected_forms} (the period holding it is {self.key(self.floor(start))})"
            )
        return start

    @property
    def expected_forms(self) -> str:
        """The forms `parse_text` takes, shown in its errors."""
        return " or ".join(repr(form) for form in _EXPECTED_FORMS[self])

    def check_boundary(self, start: datetime) -> None:
        """Raise PeriodError unless ``start`` is the first instant of a period of this type."""
        if start.tzinfo is not None:
            raise PeriodError(f"period starts are naive UTC datetimes, got {start.isoformat()}")
        fields = {"minute": start.minute, "second": start.second, "microsecond": start.microsecond}
        if self is not PeriodType.HOURLY:
            fields["hour"] = start.hour
        if self in (PeriodType.MONTHLY, PeriodType.YEARLY):
            fields["day"] = start.day - 1
        if self is PeriodType.YEARLY:
            fields["month"] = start.month - 1
        off = [name for name, value in fields.items() if value]
        if off:
            raise PeriodError(
                f"{start.isoformat()} is not the start of {self.with_article} period "
                f"(non-zero {', '.join(off)})"
            )

    def floor(self, instant: datetime) -> datetime:
        """The start of the period of this type that holds ``instant`` (naive UTC).

        >>> PeriodType.MONTHLY.floor(datetime(2024, 2, 17, 6, 30))
        datetime.datetime(2024, 2, 1, 0, 0)
        """
        fields = {"minute": 0, "second": 0, "microsecond": 0}
        if self is not PeriodType.HOURLY:
            fields["hour"] = 0
        if self in (PeriodType.MONTHLY, PeriodType.YEARLY):
            fields["day"] = 1
        if self is PeriodType.YEARLY:
            fields["month"] = 1
        return instant.replace(**fields)

    def index(self, start: datetime, origin: datetime) -> int:
        """Position of the period starting at ``start`` on an axis whose index 0 is ``origin``."""
        self.check_boundary(start)
        self.check_boundary(origin)
        if self is PeriodType.YEARLY:
            return start.year - origin.year
        if self is PeriodType.MONTHLY:
            return (start.year - origin.year) * 12 + start.month - origin.month
        step = timedelta(hours=1) if self is PeriodType.HOURLY else timedelta(days=1)
        return (start - origin) // step

    def at(self, index: int, origin: datetime) -> datetime:
        """Start of the period at position ``index`` of an axis whose index 0 is ``origin``."""
        if self is PeriodType.YEARLY:
            return origin.replace(year=origin.year + index)
        if self is PeriodType.MONTHLY:
            months = origin.month - 1 + index
            return origin.replace(year=origin.year + months // 12, month=months % 12 + 1)
        step = timedelta(hours=1) if self is PeriodType.HOURLY else timedelta(days=1)
        return origin + index * step

    def starts(self, origin: datetime, count: int, first: int = 0) -> np.ndarray:
        """``count`` period starts from index ``first`` as datetime64[s] (for time coordinates)."""
        return np.array(
            [self.at(i, origin) for i in range(first, first + count)], dtype="datetime64[s]"
        )


_KEY_FORMATS = {
    PeriodType.HOURLY: "%Y-%m-%d-%H:%M",
    PeriodType.DAILY: "%Y-%m-%d",
    PeriodType.MONTHLY: "%Y-%m",
    PeriodType.YEARLY: "%Y",
}

# The precisions of ISO forms, finest first; a form names periods of its precision or coarser.
_PRECISIONS = ("hour", "day", "month", "year")
_PRECISION_OF = dict(zip(PeriodType, _PRECISIONS, strict=True))

_EXPECTED_FORMS = {
    PeriodType.HOURLY: ("2024-01-01T13:00", "2024-01-01-13:00"),
    PeriodType.DAILY: ("2024-01-01",),
    PeriodType.MONTHLY: ("2024-01",),
    PeriodType.YEARLY: ("2024",),
}

_YEAR_OR_MONTH = re.compile(r"(?P<year>\d{4})(-(?P<month>\d{2}))?")


def _parse_iso(text: str) -> tuple[datetime, str] | None:
    """An ISO 8601 date or date-time as a naive UTC datetime and its precision (``"year"``,
    ``"month"``, ``"day"`` or ``"hour"``: any time of day counts as ``"hour"``); None if
    ``text`` is no such form."""
    match = _YEAR_OR_MONTH.fullmatch(text)
    if match:
        month = match["month"]
        try:
            return datetime(int(match["year"]), int(month or 1), 1), "month" if month else "year"
        except ValueError:
            return None
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        return None
    if instant.tzinfo is not None:
        instant = instant.astimezone(UTC).replace(tzinfo=None)
    return instant, "hour" if ("T" in text or " " in text) else "day"


_CRON_SCHEDULES = {
    PeriodType.HOURLY: "0 * * * *",
    PeriodType.DAILY: "0 0 * * *",
    PeriodType.MONTHLY: "0 0 1 * *",
    PeriodType.YEARLY: "0 0 1 1 *",
}


@dataclass(frozen=True, order=True)
class Period:
    """One source period: its type and its start (a naive UTC datetime on a period boundary).

    >>> p = Period.from_key(PeriodType.MONTHLY, "2024-02")
    >>> (p.key, p.end.isoformat())
    ('2024-02', '2024-03-01T00:00:00')
    """

    type: PeriodType
    start: datetime

    def __post_init__(self) -> None:
        self.type.check_boundary(self.start)

    @classmethod
    def from_key(cls, period_type: PeriodType, key: str) -> Period:
        """The period of a partition key (exactly Dagster's form)."""
        return cls(period_type, period_type.parse(key))

    @classmethod
    def from_text(cls, period_type: PeriodType, text: str, *, dataset: str | None = None) -> Period:
        """The period named by a key or an ISO form (`PeriodType.parse_text`); its errors start
        with ``dataset``, when given.

        >>> Period.from_text(PeriodType.HOURLY, "2020-01-01T05:00").key
        '2020-01-01-05:00'
        """
        try:
            return cls(period_type, period_type.parse_text(text))
        except PeriodError as err:
            if dataset is None:
                raise
            raise PeriodError(f"{dataset}: {err}") from None

    @property
    def key(self) -> str:
        return self.type.key(self.start)

    @property
    def end(self) -> datetime:
        """The start of the next period (the period covers ``[start, end)``)."""
        return self.type.at(1, origin=self.start)

    def __str__(self) -> str:
        return self.key


def last_complete_period(period_type: PeriodType, now: datetime | None = None) -> Period:
    """The newest period that has fully ended at ``now`` (default: the current time, UTC)."""
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    return Period(period_type, period_type.at(-1, origin=period_type.floor(now)))

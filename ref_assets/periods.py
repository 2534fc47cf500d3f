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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
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
        return self.starts_at(origin, np.arange(first, first + count, dtype="int64"))

    def starts_at(self, origin: datetime, indices: np.ndarray) -> np.ndarray:
        """The starts of the periods at ``indices`` as datetime64[s], computed by numpy (no
        Python object per period).

        >>> PeriodType.MONTHLY.starts_at(datetime(2023, 11, 1), np.array([0, 2])).astype("<M8[D]")
        array(['2023-11-01', '2024-01-01'], dtype='datetime64[D]')
        """
        indices = np.asarray(indices, dtype="int64")
        unit = _CALENDAR_UNITS.get(self)
        if unit is not None:
            return (np.datetime64(origin, unit) + indices).astype("datetime64[s]")
        return np.datetime64(origin, "s") + indices * _STEP_SECONDS[self]

    def keys_at(self, origin: datetime, indices: np.ndarray) -> list[str]:
        """The keys of the periods at ``indices``, formatted by numpy: the same strings as
        `key`, at a fraction of its cost for long ranges.

        >>> PeriodType.HOURLY.keys_at(datetime(1950, 1, 1), np.array([0, 25]))
        ['1950-01-01-00:00', '1950-01-02-01:00']
        """
        text = np.datetime_as_string(self.starts_at(origin, indices), unit=_KEY_UNITS[self])
        if self is PeriodType.HOURLY:
            return [key.replace("T", "-") for key in text.tolist()]
        return text.tolist()


# Periods of a calendar length, counted by numpy in its own unit; the others step in seconds.
_CALENDAR_UNITS = {PeriodType.MONTHLY: "M", PeriodType.YEARLY: "Y"}
_STEP_SECONDS = {PeriodType.HOURLY: 3600, PeriodType.DAILY: 86_400}
# numpy's datetime_as_string units that print a start as its key (hourly: 'T' then becomes '-').
_KEY_UNITS = {
    PeriodType.HOURLY: "m",
    PeriodType.DAILY: "D",
    PeriodType.MONTHLY: "M",
    PeriodType.YEARLY: "Y",
}

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


@dataclass(frozen=True)
class IndexRanges:
    """A set of time indices as sorted, disjoint, non-adjacent half-open ranges
    ``[starts[i], stops[i])``: a store of 674,000 contiguous hours is one range.

    >>> r = IndexRanges.of([1, 2, 3, 7]) | IndexRanges.of([4, 9])
    >>> r.pairs(), len(r)
    ([(1, 5), (7, 8), (9, 10)], 6)
    >>> (r - IndexRanges.of([2, 9])).pairs()
    [(1, 2), (3, 5), (7, 8)]
    """

    starts: np.ndarray = field(default_factory=lambda: np.empty(0, dtype="int64"))
    stops: np.ndarray = field(default_factory=lambda: np.empty(0, dtype="int64"))

    @classmethod
    def of(cls, indices: Iterable[int] | np.ndarray) -> IndexRanges:
        values = np.unique(
            np.asarray(
                list(indices) if not isinstance(indices, np.ndarray) else indices, dtype="int64"
            )
        )
        if values.size == 0:
            return cls()
        breaks = np.flatnonzero(np.diff(values) != 1) + 1
        starts = values[np.concatenate(([0], breaks))]
        stops = values[np.concatenate((breaks - 1, [values.size - 1]))] + 1
        return cls(starts, stops)

    @classmethod
    def span(cls, first: int, stop: int) -> IndexRanges:
        """``[first, stop)``; empty when ``stop <= first``."""
        if stop <= first:
            return cls()
        return cls(np.array([first], dtype="int64"), np.array([stop], dtype="int64"))

    @classmethod
    def from_pairs(cls, pairs: Iterable[Iterable[int]]) -> IndexRanges:
        rows = np.asarray(list(pairs), dtype="int64").reshape(-1, 2)
        return cls._merged(rows[:, 0], rows[:, 1])

    @classmethod
    def _merged(cls, starts: np.ndarray, stops: np.ndarray) -> IndexRanges:
        """Ranges in any order, overlapping or adjacent, merged."""
        keep = stops > starts
        starts, stops = starts[keep], stops[keep]
        if starts.size == 0:
            return cls()
        order = np.argsort(starts, kind="stable")
        starts, stops = starts[order], stops[order]
        reach = np.maximum.accumulate(stops)
        # A range starts a new group where it begins after everything before it has ended.
        new = np.concatenate(([True], starts[1:] > reach[:-1]))
        group_starts = starts[new]
        group_stops = reach[np.concatenate((np.flatnonzero(new)[1:] - 1, [starts.size - 1]))]
        return cls(group_starts, group_stops)

    def indices(self) -> np.ndarray:
        """Every index, ascending (for small sets: tests, a tick's requests)."""
        if not self:
            return np.empty(0, dtype="int64")
        return np.concatenate([np.arange(a, b) for a, b in self.pairs()])

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.starts.tolist(), self.stops.tolist(), strict=True))

    def __len__(self) -> int:
        return int((self.stops - self.starts).sum())

    def __bool__(self) -> bool:
        return bool(self.starts.size)

    def __or__(self, other: IndexRanges) -> IndexRanges:
        return self._merged(
            np.concatenate((self.starts, other.starts)), np.concatenate((self.stops, other.stops))
        )

    def __sub__(self, other: IndexRanges) -> IndexRanges:
        if not self or not other:
            return self
        # Boundaries of both sets, swept once: inside self and not inside other.
        edges = np.unique(np.concatenate((self.starts, self.stops, other.starts, other.stops)))
        lefts, rights = edges[:-1], edges[1:]
        keep = self.contains(lefts) & ~other.contains(lefts)
        return self._merged(lefts[keep], rights[keep])

    def __and__(self, other: IndexRanges) -> IndexRanges:
        return self - (self - other)

    def contains(self, indices: np.ndarray) -> np.ndarray:
        """A boolean mask: which of ``indices`` lie in the set."""
        indices = np.asarray(indices, dtype="int64")
        position = np.searchsorted(self.starts, indices, side="right") - 1
        inside = position >= 0
        inside[inside] = indices[inside] < self.stops[position[inside]]
        return inside

    def last(self, count: int) -> np.ndarray:
        """The ``count`` highest indices, ascending."""
        taken: list[np.ndarray] = []
        for start, stop in zip(self.starts[::-1].tolist(), self.stops[::-1].tolist(), strict=True):
            if count <= 0:
                break
            low = max(start, stop - count)
            taken.append(np.arange(low, stop, dtype="int64"))
            count -= stop - low
        return np.concatenate(taken[::-1]) if taken else np.empty(0, dtype="int64")

    def first(self, count: int) -> IndexRanges:
        """The ``count`` lowest indices."""
        sizes = self.stops - self.starts
        before = np.cumsum(sizes) - sizes  # indices in the ranges before each
        keep = before < count
        stops = np.minimum(self.stops, self.starts + np.maximum(count - before, 0))
        return IndexRanges(self.starts[keep], stops[keep])

    def chunks(self, size: int | None) -> Iterator[tuple[int, int]]:
        """Each range as ``(first, last)`` inclusive, split into pieces of at most ``size``."""
        for start, stop in self.pairs():
            step = size or stop - start
            for first in range(start, stop, step):
                yield first, min(first + step, stop) - 1


@dataclass(frozen=True, eq=False)
class PeriodRanges(Sequence["Period"]):
    """Periods of one time axis (index 0 starting at ``origin``) held as `IndexRanges`: a
    sequence of `Period` made one at a time on demand, so that 674,000 missing hours cost two
    integers, not 674,000 objects.

    >>> ranges = PeriodRanges(PeriodType.DAILY, datetime(2024, 1, 1), IndexRanges.of([0, 1, 5]))
    >>> len(ranges), ranges[-1].key, [(a.key, b.key) for a, b in ranges.runs()]
    (3, '2024-01-06', [('2024-01-01', '2024-01-02'), ('2024-01-06', '2024-01-06')])
    """

    type: PeriodType
    origin: datetime
    indices: IndexRanges = field(default_factory=IndexRanges)

    def period(self, index: int) -> Period:
        """The period at time index ``index`` of the axis."""
        return Period(self.type, self.type.at(index, self.origin))

    def runs(self) -> list[tuple[Period, Period]]:
        """Each run of consecutive periods as ``(first, last)``."""
        return [(self.period(a), self.period(b - 1)) for a, b in self.indices.pairs()]

    def run_keys(self) -> list[tuple[str, str]]:
        """The keys of each run's first and last period, formatted by numpy (a store written
        at every other hour has hundreds of thousands of runs)."""
        firsts = self.type.keys_at(self.origin, self.indices.starts)
        lasts = self.type.keys_at(self.origin, self.indices.stops - 1)
        return list(zip(firsts, lasts, strict=True))

    def keys(self) -> list[str]:
        """Every period's key, ascending (one string each: for output that lists them all)."""
        return self.type.keys_at(self.origin, self.indices.indices())

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Period]:
        for start, stop in self.indices.pairs():
            for index in range(start, stop):
                yield self.period(index)

    def __getitem__(self, position):  # type: ignore[override]
        if isinstance(position, slice):
            return [self[i] for i in range(len(self))[position]]
        count = len(self)
        if not -count <= position < count:
            raise IndexError(f"period position {position} out of range ({count} periods)")
        position %= count
        sizes = self.indices.stops - self.indices.starts
        ends = np.cumsum(sizes)
        run = int(np.searchsorted(ends, position, side="right"))
        return self.period(int(self.indices.starts[run] + position - (ends[run] - sizes[run])))

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of the same periods (``status.missing == []``)."""
        if isinstance(other, PeriodRanges) and (other.type, other.origin) == (
            self.type,
            self.origin,
        ):
            return self.indices.pairs() == other.indices.pairs()
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        runs = ", ".join(a.key if a == b else f"{a.key}..{b.key}" for a, b in self.runs())
        return f"PeriodRanges({self.type.value}: {runs or 'none'})"


def last_complete_period(period_type: PeriodType, now: datetime | None = None) -> Period:
    """The newest period that has fully ended at ``now`` (default: the current time, UTC)."""
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    return Period(period_type, period_type.at(-1, origin=period_type.floor(now)))

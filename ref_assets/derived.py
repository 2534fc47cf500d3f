"""Derived products: temporal aggregates of a stored dataset, computed from its store.

A derived product is a dataset of its own (its own spec file, store, records, checks, status and
`verify`), whose provider is ``aggregate`` (`ref_assets.providers.aggregate`): each of its periods
(a month, a day) is the mean, sum, minimum or maximum of the input dataset's periods inside it
(the days of the month, the hours of the day), read from the input's store at one snapshot.

- **Completeness.** A period is computed only when at least ``min_coverage`` of the input periods
  it needs are stored (default 1.0: all of them); otherwise `IncompleteInputError` names the
  product, the period, the input and the missing input periods, and nothing is written. Per cell
  the same rule holds (NaN-aware): a cell whose finite values cover less than ``min_coverage`` of
  the input periods is NaN (with 1.0, any NaN input makes the cell NaN, as numpy's own mean does).
- **De-accumulation** (ERA5-Land's ``tp`` and other fields accumulated since 00 UTC, see
  `deaccumulate`): hourly amounts are computed from the accumulations before aggregating; an
  amount stamped at hour ``h`` fell in the hour *ending* at ``h``, so a day's amounts are those
  stamped 01..23 and 00 of the next day.
- **Provenance.** `AggregatedPeriod` lists every input period used with its record's output
  checksum, and the input's snapshot; the provider turns them into the period's source items.

>>> window = InputWindow.of(PeriodType.DAILY, datetime(2024, 1, 1), Period.from_key(
...     PeriodType.MONTHLY, "2024-02"))
>>> window.first, window.stop
(31, 60)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import zarr

from ref_assets.periods import IndexRanges, Period, PeriodRanges, PeriodType
from ref_assets.providers.protocol import Grid
from ref_assets.store import reader as store_reader
from ref_assets.store.layout import open_laid_out_root
from ref_assets.store.repository import DatasetStore, StoreError

# Input values held in memory at once, per variable: a month of a global hourly field (744
# maps of 1800 x 3600) is 19 GB, so the input is read and reduced in blocks of periods.
READ_BYTES = 256 * 2**20

STATISTICS = ("mean", "sum", "min", "max")


class Reducer:
    """One statistic over input periods added a block at a time, NaN-aware, accumulated in
    float64 one period after another: the same additions in the same order as numpy's own
    statistics of the whole float64 stack (the tests compare with those), in memory bounded by
    one block.

    >>> reducer = Reducer("mean", (2,))
    >>> reducer.add(np.array([[1.0, np.nan], [3.0, 4.0]]))
    >>> reducer.result(expected=2, min_coverage=0.5)
    array([2., 4.])
    """

    def __init__(self, statistic: str, shape: tuple[int, ...]) -> None:
        if statistic not in STATISTICS:
            raise ValueError(f"unknown statistic {statistic!r}; one of {list(STATISTICS)}")
        self.statistic = statistic
        self.count = np.zeros(shape, dtype="int64")
        start = {"mean": 0.0, "sum": 0.0, "min": np.inf, "max": -np.inf}[statistic]
        self.value = np.full(shape, start, dtype="float64")

    def add(self, block: np.ndarray) -> None:
        """Add periods (axis 0 of ``block``; NaN where missing)."""
        for values in block:
            finite = np.isfinite(values)
            self.count += finite
            if self.statistic in ("mean", "sum"):
                self.value += np.where(finite, values, 0.0)
            elif self.statistic == "min":
                np.fmin(self.value, values, out=self.value)  # fmin/fmax skip NaN
            else:
                np.fmax(self.value, values, out=self.value)

    def result(self, expected: int, min_coverage: float) -> np.ndarray:
        """The statistic, NaN where a cell's finite values cover less than ``min_coverage`` of
        the ``expected`` periods."""
        value = self.value / np.maximum(self.count, 1) if self.statistic == "mean" else self.value
        needed = max(required_count(expected, min_coverage), 1)
        return np.where(self.count >= needed, value, np.nan)


class IncompleteInputError(StoreError):
    """The input periods a derived period needs are not (enough of them) stored; nothing was
    written."""


def deaccumulate(
    accumulations: np.ndarray, starts: np.ndarray, previous: np.ndarray | None = None
) -> np.ndarray:
    """Hourly amounts from fields accumulated since 00 UTC, along axis 0 (consecutive hours
    stamped ``starts``, datetime64).

    ERA5-Land's accumulations run from 00 UTC to the step's valid time, and the step at 00 UTC
    holds the whole previous day (24 hours). So the amount of the hour ending at ``h`` is the
    accumulation at ``h`` itself for h = 01, and ``acc(h) - acc(h - 1)`` otherwise (at 00 UTC:
    the 00 UTC value minus the previous day's 23 UTC one). Source: ECMWF, "Conversion table for
    accumulated variables (total precipitation/fluxes)", ERA5-Land hourly rows,
    https://confluence.ecmwf.int/pages/viewpage.action?pageId=197702790, and "ERA5-Land: data
    documentation", section "Accumulations",
    https://confluence.ecmwf.int/display/CKB/ERA5-Land%3A+data+documentation. (ERA5 itself,
    unlike ERA5-Land, stores each hour's own amount: nothing to de-accumulate.)

    The first hour's amount needs the hour before it (``previous``, the accumulation one hour
    before ``starts[0]``) unless it is 01 UTC: it is NaN without it, as is any hour whose
    previous accumulation is NaN. Differences are not clipped at zero, so
    the amounts of a day add up to its 00 UTC total exactly (packing noise of a few 1e-7 m may
    make an hour slightly negative).

    >>> hours = np.array(["2024-01-01T22", "2024-01-01T23", "2024-01-02T00", "2024-01-02T01"],
    ...                  dtype="datetime64[h]")
    >>> acc = np.array([5.0, 6.0, 6.5, 0.25])  # 00 UTC: the 1st's total; 01 UTC restarts
    >>> deaccumulate(acc, hours, previous=np.float64(4.5))  # 4.5: the accumulation at 21 UTC
    array([0.5 , 1.  , 0.5 , 0.25])
    >>> deaccumulate(acc, hours)
    array([ nan, 1.  , 0.5 , 0.25])
    """
    starts = np.asarray(starts).astype("datetime64[h]")
    if starts.size > 1 and not (np.diff(starts) == np.timedelta64(1, "h")).all():
        raise ValueError("de-accumulation needs consecutive hours")
    values = np.asarray(accumulations, dtype="float64")
    amounts = np.empty_like(values)
    amounts[1:] = values[1:] - values[:-1]
    amounts[0] = values[0] - previous if previous is not None else np.nan
    first_of_day = (starts - starts.astype("datetime64[D]")).astype(int) == 1
    amounts[first_of_day] = values[first_of_day]
    return amounts


def aggregate(stack: np.ndarray, statistic: str, min_coverage: float) -> np.ndarray:
    """``statistic`` over axis 0 of ``stack`` (one entry per input period the output needs, NaN
    where an input is missing), NaN where a cell's finite values cover less than
    ``min_coverage`` of the entries."""
    reducer = Reducer(statistic, stack.shape[1:])
    reducer.add(stack)
    return reducer.result(stack.shape[0], min_coverage)


def required_count(expected: int, min_coverage: float) -> int:
    """How many of ``expected`` inputs ``min_coverage`` asks for (rounded up, so 0.9 of 31 days
    needs 28)."""
    return math.ceil(expected * min_coverage - 1e-9)


@dataclass(frozen=True)
class InputWindow:
    """The input periods one output period covers: indices ``first`` (inclusive) to ``stop``
    (exclusive) on the input's time axis."""

    first: int
    stop: int

    @classmethod
    def of(
        cls, input_type: PeriodType, input_start: datetime, period: Period, shift: int = 0
    ) -> InputWindow:
        """The input periods inside ``period``, moved later by ``shift`` (1 for amounts stamped
        at the end of their hour: de-accumulated hours)."""
        first = input_type.index(period.start, input_start) + shift
        return cls(first, input_type.index(period.end, input_start) + shift)

    @property
    def size(self) -> int:
        return self.stop - self.first


@dataclass(frozen=True)
class VariableAggregate:
    """How one output variable is made: from which input variable, by which statistic, and
    whether the input is de-accumulated first."""

    input: str
    statistic: str
    deaccumulate: bool = False


@dataclass(frozen=True)
class InputPeriod:
    """One input period an output period was computed from, with its record's output checksum."""

    key: str
    checksum: str
    nbytes: int  # decoded bytes read of it


@dataclass(frozen=True)
class AggregatedPeriod:
    """One output period: its values and what they were computed from."""

    variables: dict[str, np.ndarray]
    inputs: tuple[InputPeriod, ...]
    input_snapshot: str
    expected: int  # input periods the period needs
    missing: PeriodRanges  # of those, the ones not stored


@dataclass(frozen=True)
class InputStore:
    """The input dataset's store at one snapshot: what every period of a run is computed from."""

    dataset_id: str
    session: object  # icechunk.Session, read-only
    axis: store_reader.StoreAxis
    written: IndexRanges
    units: dict[str, str]
    extra_dimensions: dict[str, list[str]]  # of each variable that has any (levels...)
    period_bytes: dict[str, int]  # one period of each variable, decoded
    variable_attributes: dict[str, dict]
    y: np.ndarray
    x: np.ndarray
    crs_wkt: str
    length: int

    @classmethod
    def open(cls, store: DatasetStore, *, product: str) -> InputStore:
        session = store_reader.session_for(store) if store.exists() else None
        group = open_laid_out_root(session.store) if session is not None else None
        if group is None:
            raise IncompleteInputError(
                f"{product}: its input dataset {store.dataset_id} holds no periods yet (no store "
                f"at {store.location}); materialize {store.dataset_id} first"
            )
        structure = group.attrs["ref_assets"]["structure"]
        axis = store_reader.StoreAxis(
            PeriodType(structure["period"]), datetime.fromisoformat(structure["start"])
        )
        return cls(
            dataset_id=store.dataset_id,
            session=session,
            axis=axis,
            written=IndexRanges.of(store_reader.written_index_array(session)),
            units={name: info[1] for name, info in structure["variables"].items()},
            extra_dimensions={
                name: info[2] for name, info in structure["variables"].items() if len(info) > 2
            },
            period_bytes={
                name: int(np.prod(group[name].shape[1:])) * group[name].dtype.itemsize
                for name in structure["variables"]
            },
            variable_attributes={name: dict(group[name].attrs) for name in structure["variables"]},
            y=group["y"][:],
            x=group["x"][:],
            crs_wkt=str(group["spatial_ref"].attrs["crs_wkt"]),
            length=int(group["time"].shape[0]),
        )

    @property
    def grid(self) -> Grid:
        return Grid(y=self.y, x=self.x, crs_wkt=self.crs_wkt)

    @property
    def snapshot_id(self) -> str:
        return self.session.snapshot_id

    def windows(self, period: Period, variables: dict[str, VariableAggregate]) -> dict:
        """Each output variable's input window for ``period``."""
        return {
            name: InputWindow.of(
                self.axis.period, self.axis.start, period, 1 if how.deaccumulate else 0
            )
            for name, how in variables.items()
        }

    def needed(self, windows: dict[str, InputWindow]) -> IndexRanges:
        """Every input index the windows cover."""
        return IndexRanges.from_pairs((w.first, w.stop) for w in windows.values())

    def compute(
        self,
        product: str,
        period: Period,
        variables: dict[str, VariableAggregate],
        min_coverage: float,
    ) -> AggregatedPeriod:
        """``period`` of the product, or `IncompleteInputError` when fewer than
        ``min_coverage`` of the input periods it needs are stored."""
        windows = self.windows(period, variables)
        needed = self.needed(windows)
        present = needed & self.written
        missing = needed - self.written
        if not self._covers(needed, min_coverage):
            shown = self.axis.periods(missing)
            runs = ", ".join(
                first if first == last else f"{first}..{last}" for first, last in shown.run_keys()
            )
            raise IncompleteInputError(
                f"{product} period {period.key}: {len(present)} of the {len(needed)} "
                f"{self.axis.period.value} periods of {self.dataset_id} it needs are stored "
                f"({len(present) / len(needed):.0%}, min_coverage {min_coverage:g}); missing: "
                f"{runs}. Nothing was written; materialize the missing periods of "
                f"{self.dataset_id}, then this period again"
            )
        values = {
            name: self._reduce(how, windows[name], min_coverage) for name, how in variables.items()
        }
        indices = present.indices()
        records = store_reader.read_records(self.session, indices.tolist())
        keys = self.axis.period.keys_at(self.axis.start, indices)
        inputs = [
            InputPeriod(
                key,
                records[index]["checksum"],
                sum(
                    self.period_bytes[how.input]
                    for name, how in variables.items()
                    if windows[name].first <= index < windows[name].stop
                ),
            )
            for index, key in zip(indices.tolist(), keys, strict=True)
        ]
        return AggregatedPeriod(
            variables=values,
            inputs=tuple(inputs),
            input_snapshot=self.snapshot_id,
            expected=len(needed),
            missing=self.axis.periods(missing),
        )

    def _reduce(self, how: VariableAggregate, window: InputWindow, min_coverage: float):
        """The statistic of one input variable over ``window``, read in blocks of at most
        ``READ_BYTES`` (de-accumulated first where asked, carrying each block's last
        accumulation into the next)."""
        array = zarr.open_array(self.session.store, path=how.input, mode="r")
        reducer = Reducer(how.statistic, array.shape[1:])
        step = max(1, READ_BYTES // self.period_bytes[how.input])
        previous = None
        for first in range(window.first, window.stop, step):
            block = self._read(array, first, min(first + step, window.stop))
            if how.deaccumulate:
                indices = np.arange(first, first + block.shape[0])
                starts = self.axis.period.starts_at(self.axis.start, indices)
                amounts = deaccumulate(block, starts, previous)
                previous = block[-1].astype("float64")
                block = amounts
            reducer.add(block)
        return reducer.result(window.size, min_coverage)

    def _read(self, array: zarr.Array, first: int, stop: int) -> np.ndarray:
        """Input periods ``first`` to ``stop`` (exclusive) in their stored dtype, NaN for
        periods outside the stored axis (before its start, beyond its length); never-written
        periods read as NaN."""
        lo, hi = max(first, 0), min(stop, self.length)
        block = np.full((stop - first, *array.shape[1:]), np.nan, dtype=array.dtype)
        if lo < hi:
            block[lo - first : hi - first] = array[lo:hi]
        return block

    def complete(
        self, periods: list[Period], variables: dict[str, VariableAggregate], min_coverage: float
    ) -> list[Period]:
        """Those of ``periods`` whose stored inputs meet ``min_coverage``."""
        return [
            period
            for period in periods
            if self._covers(self.needed(self.windows(period, variables)), min_coverage)
        ]

    def _covers(self, needed: IndexRanges, min_coverage: float) -> bool:
        """Whether enough of the ``needed`` input periods are stored (at least one)."""
        stored = len(needed & self.written)
        return stored >= max(required_count(len(needed), min_coverage), 1)

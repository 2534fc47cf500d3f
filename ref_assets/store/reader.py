"""Reading a dataset's store: its data, which periods it holds, and their records.

Which periods exist is read from the store (the chunks of ``ref/records``), not from Dagster's
event log, which can be lost. Listing those chunks reads the manifest only, not the records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import icechunk as ic
import numpy as np
import zarr
from zarr.core.sync import sync

from ref_assets.checksum import period_checksum
from ref_assets.periods import IndexRanges, Period, PeriodRanges, PeriodType
from ref_assets.store.layout import RECORDS_PATH, open_laid_out_root
from ref_assets.store.repository import DatasetStore, StoreError

if TYPE_CHECKING:  # xarray is imported where data is opened: listing periods does without it
    import xarray as xr


@dataclass(frozen=True)
class StoreAxis:
    """The time axis a store was laid out with."""

    period: PeriodType
    start: datetime

    def period_at(self, index: int) -> Period:
        return Period(self.period, self.period.at(index, self.start))

    def index_of(self, period: Period) -> int:
        return self.period.index(period.start, self.start)

    def periods(self, indices: IndexRanges | None = None) -> PeriodRanges:
        """The periods at ``indices`` (default: none), held as ranges."""
        return PeriodRanges(self.period, self.start, indices or IndexRanges())


def session_for(store: DatasetStore, snapshot: str | None = None) -> ic.Session:
    repo = store.open()
    try:
        if snapshot is None:
            return repo.readonly_session(branch="main")
        return repo.readonly_session(snapshot_id=snapshot)
    except ic.IcechunkError as err:
        # Icechunk's first line says what; the rest is its Rust call stack.
        problem = str(err).strip().splitlines()[0]
        raise StoreError(
            f"{store.dataset_id}: cannot open snapshot {snapshot!r} of {store.location}: "
            f"{problem}. A snapshot that maintenance expired (or one of another store) is gone: "
            "read main's tip (no snapshot) or a release (tag; `ref-assets tag --list "
            f"{store.dataset_id}` lists them)"
        ) from None


def store_axis(session: ic.Session) -> StoreAxis | None:
    """The store's period type and start, or None when nothing was ever written."""
    group = open_laid_out_root(session.store)
    if group is None:
        return None
    structure = group.attrs["ref_assets"]["structure"]
    return StoreAxis(PeriodType(structure["period"]), datetime.fromisoformat(structure["start"]))


def written_indices(session: ic.Session) -> list[int]:
    """Time indices that hold a committed period, ascending, as a list (`written_index_array`
    for whole stores)."""
    return written_index_array(session).tolist()


# Chunk coordinates fetched per call into Icechunk's runtime when listing a whole store.
_LISTING_BATCH = 65_536


def written_index_array(session: ic.Session) -> np.ndarray:
    """`written_indices` as a sorted int64 array, listed in large batches (a sensor lists a whole
    store only when its cursor is new or reset; otherwise it reads `written_between`). Empty
    for a store whose layout is not committed yet (a first run is creating it)."""
    if open_laid_out_root(session.store) is None:
        return np.empty(0, dtype="int64")

    async def collect() -> list[int]:
        coordinates = session.chunk_coordinates(f"/{RECORDS_PATH}", batch_size=_LISTING_BATCH)
        return [coords[0] async for coords in coordinates]

    return np.unique(np.asarray(sync(collect()), dtype="int64"))


def written_between(repo: ic.Repository, since: str, tip: str) -> np.ndarray | None:
    """Time indices whose record changed from snapshot ``since`` to ``tip`` (periods written or
    rewritten), from Icechunk's diff: it costs the commits in between, not the store's size.
    None when ``since`` is no ancestor of ``tip`` (the branch was reset, the snapshot expired):
    the caller lists the whole store instead."""
    try:
        diff = repo.diff(from_snapshot_id=since, to_snapshot_id=tip)
    except ic.IcechunkError:
        return None
    coordinates = diff.updated_chunks.get(f"/{RECORDS_PATH}", [])
    return np.unique(np.asarray([c[0] for c in coordinates], dtype="int64"))


def read_records(session: ic.Session, indices: list[int]) -> dict[int, dict]:
    """The stored record of each index (indices without a period are left out)."""
    return dict(iter_records(session, indices))


def iter_records(session: ic.Session, indices: Iterable[int]) -> Iterator[tuple[int, dict]]:
    """``(index, record)`` for each index that holds a period, in index order, read in blocks
    (one read per block of ``READ_BLOCK`` positions, not one per period) so that decades of
    hourly records stream in bounded memory."""
    records = zarr.open_array(session.store, path=RECORDS_PATH, mode="r")
    for block in _blocks(sorted(i for i in indices if 0 <= i < records.shape[0])):
        texts = records[block[0] : block[-1] + 1]
        for index in block:
            if text := texts[index - block[0]]:
                yield index, json.loads(str(text))


READ_BLOCK = 1024


def _blocks(indices: list[int]) -> Iterator[list[int]]:
    """Sorted indices grouped so that each group spans fewer than ``READ_BLOCK`` positions."""
    block: list[int] = []
    for index in indices:
        if block and index - block[0] >= READ_BLOCK:
            yield block
            block = []
        block.append(index)
    if block:
        yield block


def open_store_dataset(session: ic.Session) -> xr.Dataset:
    """The dataset, lazily, cut after its newest written period (the rest of the pre-sized axis
    holds nothing). Periods never written read as NaN."""
    import xarray as xr

    indices = written_index_array(session)
    data = xr.open_zarr(session.store, consolidated=False, chunks=None)
    return data.isel(time=slice(0, int(indices[-1]) + 1 if indices.size else 0))


@dataclass(frozen=True)
class StoredPeriod:
    """One period as the store holds it: its decoded values with their dimension names, the
    coordinates, the stored time, its raw record and the structure the store was laid out with
    (for checks that compare what landed with what the spec asks for)."""

    index: int
    start: datetime  # from the stored time coordinate
    y: np.ndarray
    x: np.ndarray
    dimensions: dict[str, np.ndarray]  # extra dimensions' coordinate values
    variables: dict[str, np.ndarray]  # (*extra dimensions, y, x)
    variable_dims: dict[str, tuple[str, ...]]  # stored dimension names, time first
    variable_units: dict[str, str | None]
    record: dict | None  # None: no record at this index
    structure: dict

    def checksum(self) -> str:
        """The output checksum recomputed from the stored values and stored time."""
        return period_checksum(self.start, self.y, self.x, self.variables, self.dimensions)


class PeriodReader:
    """Reads stored periods of one session, opening the store's arrays once.

    >>> reader = PeriodReader(session_for(store))  # doctest: +SKIP
    >>> reader.read(12).checksum()  # doctest: +SKIP
    'sha256:...'
    """

    def __init__(self, session: ic.Session) -> None:
        group = open_laid_out_root(session.store)
        if group is None:
            raise StoreError("the store holds no periods yet (it has no layout)")
        self.structure: dict = group.attrs["ref_assets"]["structure"]
        self._arrays = {name: group[name] for name in self.structure["variables"]}
        self._records = group[RECORDS_PATH]
        self._times = group["time"]
        self.y, self.x = group["y"][:], group["x"][:]
        self.dimensions = {name: group[name][:] for name in self.structure.get("dimensions", {})}

    def values(self, index: int) -> tuple[datetime, dict[str, np.ndarray]]:
        """The stored time and the values of every variable at ``index``."""
        start = datetime.fromtimestamp(int(self._times[index]), UTC).replace(tzinfo=None)
        return start, {name: array[index] for name, array in self._arrays.items()}

    def read(self, index: int) -> StoredPeriod:
        start, values = self.values(index)
        text = self._records[index] if index < self._records.shape[0] else ""
        return StoredPeriod(
            index=index,
            start=start,
            y=self.y,
            x=self.x,
            dimensions=self.dimensions,
            variables=values,
            variable_dims={
                name: tuple(array.metadata.dimension_names or ())
                for name, array in self._arrays.items()
            },
            variable_units={name: array.attrs.get("units") for name, array in self._arrays.items()},
            record=json.loads(str(text)) if text else None,
            structure=self.structure,
        )


def stored_checksums(
    session: ic.Session, axis: StoreAxis, indices: Iterable[int]
) -> Iterator[tuple[int, str]]:
    """Recompute the output checksum of each index from what is stored: the values and the
    stored time coordinate (so an altered time is caught too), one period in memory at a time."""
    reader = PeriodReader(session)
    for index in indices:
        start, values = reader.values(index)
        yield index, period_checksum(start, reader.y, reader.x, values, reader.dimensions)

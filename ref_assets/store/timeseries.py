"""The analysis-ready time-series copy of a dataset: the same values, chunked along time.

The per-period store holds one chunk per period (any order, one commit per period and its
record); a point series over ten years of days reads 3,650 chunks there. The copy holds the same
values on the same time axis in chunks of ``timeseries.time_chunk`` periods by small spatial
tiles, so the same series reads a handful. It lives in its own Icechunk repository beside the
dataset's (``<root>/<dataset>.timeseries``), with its own commits: an update killed at any
instant never touches the per-period store, and leaves the copy as its last commit had it.

::

    /time, /y, /x, /spatial_ref, /<dimension>   as in the per-period store
    /<variable>    (T, ..., Y, X)   shards (stored objects) of (time_chunk, 1..., y, x) cells, of
                                    chunks of (time_chunk, 1..., tile, tile): the spec's
                                    `timeseries`
    /ref/checksums str (T,)         the output checksum of each period the copy was built from,
                                    as its per-period record gave it ("" where none): chunked
                                    like the variables, so a time chunk and its provenance are
                                    rewritten together
    /ref/builds    str (chunks,)    per time chunk, JSON: the per-period store's snapshot it was
                                    read from, the run, when, and its first and last period

An update compares, for each time chunk asked about, the checksums the copy recorded with those
of the per-period records now, and rewrites exactly the chunks that differ (a new period, a
revised one), reading their periods from one snapshot of the per-period store; all of it is one
commit, so a reader sees the copy before the update or after it, never half.

>>> update = update_timeseries(spec, DatasetStore(root, spec.id), run_id="manual")  # doctest: +SKIP
>>> update.chunks  # doctest: +SKIP
[0, 1]
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import icechunk as ic
import numpy as np
import zarr
from zarr.core.sync import sync

from ref_assets.store.commits import back_off, commit_rebasing
from ref_assets.store.layout import (
    StoreLayoutError,
    axis_length,
    has_layout,
    incompatible_changes,
)
from ref_assets.store.layout import open_laid_out_root as _laid_out
from ref_assets.store.reader import iter_records, store_axis, written_index_array
from ref_assets.store.repository import DatasetStore, StoreError

if TYPE_CHECKING:
    import xarray as xr

    from ref_assets.specs import DatasetSpec

logger = logging.getLogger(__name__)

CHECKSUMS_PATH = "ref/checksums"
BUILDS_PATH = "ref/builds"
# Time chunks per manifest shard: an update rewrites the shards of the chunks it touches only.
MANIFEST_SPLIT_CHUNKS = 16
# Values held in memory at once while a time chunk is copied (a block of tiles over a whole time
# chunk): ERA5-Land's global grid over a month of hours would be 19 GB in one piece.
BLOCK_BYTES = 256 * 2**20
MAX_UPDATE_ATTEMPTS = 8


class TimeseriesStore(DatasetStore):
    """Where a dataset's time-series copy lives: ``<root>/<dataset>.timeseries``, with a lock of
    its own (updates of the copy never wait for writers of the per-period store)."""

    SUFFIX = ".timeseries"

    def no_periods_yet(self) -> str:
        return (
            f"{self.dataset_id}: no time-series copy at {self.location} yet; give the spec a "
            f"`timeseries` section and materialize the asset timeseries/{self.dataset_id} (the "
            "automation condition does it once a period is stored)"
        )


def timeseries_store(store: DatasetStore) -> TimeseriesStore:
    """The time-series copy beside the dataset store ``store``."""
    return TimeseriesStore(str(store.root), store.dataset_id)


@dataclass(frozen=True)
class TimeseriesUpdate:
    """What one update of the copy did: the time chunks it rewrote (none: the copy was current
    for the chunks asked about), the periods they hold, and the snapshots read and written."""

    dataset: str
    chunks: list[int]
    periods: int
    upstream_snapshot: str
    snapshot: str | None  # the copy's new commit; None when nothing needed rewriting
    attempts: int = 1
    checked: list[int] = field(default_factory=list)  # the time chunks compared


def chunk_span(time_chunk: int, first: int, stop: int) -> range:
    """The time chunks holding indices ``first`` to ``stop`` (excluded)."""
    return range(first // time_chunk, -(-stop // time_chunk)) if stop > first else range(0)


def copy_structure(upstream: zarr.Group, spec: DatasetSpec) -> dict:
    """The copy's structure: the per-period store's, plus its own chunking (time chunk, shard
    rows and columns, tile)."""
    series = spec.timeseries
    return {
        **upstream.attrs["ref_assets"]["structure"],
        "layout": "timeseries",
        "timeseries_chunks": [spec.timeseries_time_chunk, series.y, series.x, series.tile],
    }


def update_timeseries(
    spec: DatasetSpec,
    store: DatasetStore,
    *,
    run_id: str,
    indices: tuple[int, int | None] | None = None,
) -> TimeseriesUpdate:
    """Bring the copy of ``spec``'s dataset (stored in ``store``) up to date for the time
    indices ``indices`` (first, stop; default: every written period; a stop of None: up to the
    newest written one), rewriting exactly the time
    chunks whose recorded checksums differ from the per-period records, in one commit.

    A commit that conflicts with another update is replayed on the new tip when the two touched
    different chunks; otherwise the update starts over from the new tip (and finds those chunks
    current, or rewrites them from the newer per-period snapshot)."""
    if spec.timeseries is None:
        raise StoreError(
            f"{spec.id}: the spec has no `timeseries` section, so the dataset has no time-series "
            "copy; add one (such as `timeseries: {time_chunk: 365, y: 50, x: 50}`) to keep one"
        )
    copy_store = timeseries_store(store)
    upstream_repo = store.open()
    if _laid_out(upstream_repo.readonly_session(branch="main").store) is None:
        raise StoreError(store.no_periods_yet())  # and no empty copy left behind
    repo = copy_store.open_or_create(MANIFEST_SPLIT_CHUNKS, run_id=run_id)
    for attempt in range(1, MAX_UPDATE_ATTEMPTS + 1):
        if attempt > 1:  # bounded, jittered back-off, so racing updates stop colliding in step
            back_off(attempt)
        # The copy's session first: an update that commits after it touched the same chunks
        # conflicts with this one. Read the other way round, an update could copy a revision
        # in between, and this one would put the older values back.
        session = repo.writable_session("main")
        upstream = upstream_repo.readonly_session(branch="main")
        with copy_store.reporting(f"updating the time-series copy from {upstream.snapshot_id}"):
            work = _Update(spec, upstream, session, run_id, copy_store.location)
            chunks = work.stale_chunks(indices)
            if not chunks:
                return TimeseriesUpdate(
                    spec.id, [], 0, upstream.snapshot_id, None, attempt, work.checked
                )
            periods = sum(work.rewrite(chunk) for chunk in chunks)
            message = (
                f"{spec.id} time series: {len(chunks)} chunk(s) from {upstream.snapshot_id} "
                f"(run {run_id})"
            )
            try:
                with copy_store.lock(run_id=run_id):
                    snapshot = commit_rebasing(session, message).snapshot_id
            except (ic.ConflictError, ic.RebaseFailedError) as err:
                logger.info("%s: attempt %d conflicted (%s); starting over", message, attempt, err)
                continue
        logger.info("%s: committed %s", message, snapshot)
        return TimeseriesUpdate(
            spec.id, chunks, periods, upstream.snapshot_id, snapshot, attempt, work.checked
        )
    raise StoreError(
        f"{spec.id}: gave up updating the time-series copy after {MAX_UPDATE_ATTEMPTS} "
        "conflicting attempts (other updates kept rewriting the same chunks); nothing was "
        "written, run it again"
    )


class _Update:
    """One attempt at an update: the per-period store at one snapshot, the copy's session."""

    def __init__(
        self,
        spec: DatasetSpec,
        upstream: ic.Session,
        session: ic.Session,
        run_id: str,
        location: str,
    ) -> None:
        source = _laid_out(upstream.store)
        if source is None:
            raise StoreError(f"{spec.id}: the per-period store holds no periods yet")
        self.spec, self.upstream, self.source, self.run_id = spec, upstream, source, run_id
        self.time_chunk: int = spec.timeseries_time_chunk  # type: ignore[assignment]
        self.length = axis_length(source)
        self.group = zarr.open_group(session.store, mode="a")
        if not has_layout(self.group):
            _create_layout(self.group, source, spec, self.length)
        else:
            _check_structure(self.group, source, spec, location)
            if axis_length(self.group) < self.length:
                _grow(self.group, source, spec, self.length)
        self.checksums = self.group[CHECKSUMS_PATH]
        self.builds = self.group[BUILDS_PATH]
        self.checked: list[int] = []
        self._checksums: dict[int, np.ndarray] = {}

    def stale_chunks(self, indices: tuple[int, int | None] | None) -> list[int]:
        """The time chunks among those holding ``indices`` whose recorded checksums differ from
        the per-period records' (read a time chunk at a time)."""
        first, stop = indices or (0, None)
        if stop is None:
            stop = _store_written_stop(self.upstream)
        stop = min(stop, self.length)
        stale = []
        for chunk in chunk_span(self.time_chunk, max(first, 0), stop):
            self.checked.append(chunk)
            if not np.array_equal(self._recorded(chunk), self._upstream_checksums(chunk)):
                stale.append(chunk)
        return stale

    def _bounds(self, chunk: int) -> tuple[int, int]:
        return chunk * self.time_chunk, min((chunk + 1) * self.time_chunk, self.length)

    def _recorded(self, chunk: int) -> np.ndarray:
        return np.asarray(self.checksums[slice(*self._bounds(chunk))], dtype=object)

    def _upstream_checksums(self, chunk: int) -> np.ndarray:
        if chunk not in self._checksums:  # read once: compared, then written with the values
            self._checksums[chunk] = upstream_checksums(self.upstream, *self._bounds(chunk))
        return self._checksums[chunk]

    def rewrite(self, chunk: int) -> int:
        """Copy time chunk ``chunk`` of every variable and its provenance; return the number
        of periods it holds."""
        first, stop = self._bounds(chunk)
        checksums = self._upstream_checksums(chunk)
        for name in self.spec.variables_by_name:
            source, target = self.source[name], self.group[name]
            for block in _blocks(target, stop - first):
                where = (slice(first, stop), *block)
                target[where] = source[where]
        self.checksums[first:stop] = checksums
        held = np.flatnonzero(checksums != "")
        axis = self.spec.period
        build = {
            "upstream_snapshot": self.upstream.snapshot_id,
            "run_id": self.run_id,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "periods": int(held.size),
            "first_period": axis.key(axis.at(first + int(held[0]), self.spec.start))
            if held.size
            else None,
            "last_period": axis.key(axis.at(first + int(held[-1]), self.spec.start))
            if held.size
            else None,
        }
        self.builds[chunk] = json.dumps(build)
        return int(held.size)


def upstream_checksums(upstream: ic.Session, first: int, stop: int) -> np.ndarray:
    """The output checksum each period from ``first`` to ``stop`` (excluded) has in its
    per-period record ("" where no period is stored), as an object array."""
    checksums = np.full(stop - first, "", dtype=object)
    for index, record in iter_records(upstream, range(first, stop)):
        checksums[index - first] = record.get("checksum", "")
    return checksums


def _store_written_stop(session: ic.Session) -> int:
    """One past the newest written index of a per-period store (0: none)."""
    written = written_index_array(session)
    return int(written[-1]) + 1 if written.size else 0


def _blocks(array: zarr.Array, periods: int) -> Iterator[tuple[slice, ...]]:
    """Spatial blocks (with every extra-dimension value) of whole shards of ``array``, each
    holding at most `BLOCK_BYTES` over ``periods`` periods: rows of the whole width when they
    fit (each source chunk read once), else a shard at a time."""
    *extra, ny, nx = array.shape[1:]
    *_, cy, cx = (array.shards or array.chunks)[1:]  # whole shards: none rewritten in part
    cell = max(periods, 1) * math.prod(extra) * array.dtype.itemsize
    rows = max(1, BLOCK_BYTES // (cell * nx * cy)) * cy if cell * nx * cy <= BLOCK_BYTES else 0
    whole = tuple(slice(None) for _ in extra)
    if rows:
        for y in range(0, ny, rows):
            yield (*whole, slice(y, y + rows), slice(None))
        return
    for y in range(0, ny, cy):
        for x in range(0, nx, cx):
            yield (*whole, slice(y, y + cy), slice(x, x + cx))


def _create_layout(group: zarr.Group, source: zarr.Group, spec: DatasetSpec, length: int) -> None:
    structure = copy_structure(source, spec)
    time_chunk, shard_y, shard_x, tile = structure["timeseries_chunks"]
    group.attrs.update({**source.attrs.asdict(), "ref_assets": {"structure": structure}})
    coordinates = ["y", "x", "spatial_ref", *structure.get("dimensions", {})]
    for name in coordinates:
        array = source[name]
        copy = group.create_array(
            name,
            shape=array.shape,
            dtype=array.dtype,
            fill_value=array.fill_value,
            dimension_names=array.metadata.dimension_names,
            attributes=array.attrs.asdict(),
        )
        copy[...] = array[...]
    group.create_array(
        "time",
        shape=(length,),
        chunks=(time_chunk,),
        dtype="int64",
        fill_value=0,
        dimension_names=["time"],
        attributes=source["time"].attrs.asdict(),
    )
    group["time"][:] = source["time"][:length]
    for name in spec.variables_by_name:
        array = source[name]
        extra = len(array.shape) - 3
        group.create_array(
            name,
            shape=(length, *array.shape[1:]),
            # A shard is one stored object (a time chunk by y x x cells); a point series reads
            # one tile of it, by a byte range, instead of the whole object.
            shards=(time_chunk, *[1] * extra, shard_y, shard_x),
            chunks=(time_chunk, *[1] * extra, tile, tile),
            dtype=array.dtype,
            fill_value=np.nan,
            dimension_names=array.metadata.dimension_names,
            attributes=array.attrs.asdict(),
        )
    group.create_array(
        CHECKSUMS_PATH,
        shape=(length,),
        chunks=(time_chunk,),
        dtype=str,
        fill_value="",
        dimension_names=["time"],
    )
    group.create_array(
        BUILDS_PATH,
        shape=(-(-length // time_chunk),),
        chunks=(1,),
        dtype=str,
        fill_value="",
        dimension_names=["time_chunk"],
    )


def _check_structure(
    group: zarr.Group, source: zarr.Group, spec: DatasetSpec, location: str
) -> None:
    # The per-period store's spatial chunks are no part of the copy's (a rechunk keeps it).
    stored = group.attrs["ref_assets"]["structure"]
    if changes := incompatible_changes(stored, copy_structure(source, spec)):
        changed, before, after = changes
        raise StoreLayoutError(
            f"{spec.id}: the time-series copy was built for another structure ({changed} "
            f"changed: copy has {before}, now {after}). The copy is derived data: move "
            f"{location} aside (or delete it), and the next update rebuilds it from the "
            "per-period store with the spec's chunking."
        )


def _grow(group: zarr.Group, source: zarr.Group, spec: DatasetSpec, length: int) -> None:
    """Extend the copy's time axis to the per-period store's ``length``."""
    old = axis_length(group)
    time_chunk = spec.timeseries_time_chunk
    for name in [*spec.variables_by_name, CHECKSUMS_PATH, "time"]:
        array = group[name]
        array.resize((length, *array.shape[1:]))
    group["time"][old:length] = source["time"][old:length]
    group[BUILDS_PATH].resize((-(-length // time_chunk),))


def copy_written_stop(session: ic.Session) -> int:
    """One past the newest period the copy holds (0: none), from its last built time chunk."""
    group = _laid_out(session.store)
    if group is None:
        return 0

    async def built() -> list[int]:
        return [coords[0] async for coords in session.chunk_coordinates(f"/{CHECKSUMS_PATH}")]

    chunks = sync(built())
    if not chunks:
        return 0
    time_chunk = group.attrs["ref_assets"]["structure"]["timeseries_chunks"][0]
    first = max(chunks) * time_chunk
    held = np.flatnonzero(np.asarray(group[CHECKSUMS_PATH][first : first + time_chunk]) != "")
    return first + int(held[-1]) + 1 if held.size else first


def open_timeseries(session: ic.Session) -> xr.Dataset:
    """The copy, lazily (dask-free: xarray's own lazy indexing), cut after its newest period;
    periods it does not hold read as NaN."""
    import xarray as xr

    data = xr.open_zarr(session.store, consolidated=False, chunks=None)
    return data.isel(time=slice(0, copy_written_stop(session)))


def built_chunks(session: ic.Session) -> list[int]:
    """The time chunks the copy holds provenance for, ascending."""
    if _laid_out(session.store) is None:
        return []

    async def built() -> list[int]:
        return [coords[0] async for coords in session.chunk_coordinates(f"/{BUILDS_PATH}")]

    return sorted(sync(built()))


def chunk_builds(session: ic.Session, chunks: list[int]) -> dict[int, dict]:
    """The build record (JSON) of each time chunk in ``chunks`` that has one."""
    builds = zarr.open_array(session.store, path=BUILDS_PATH, mode="r")
    texts = {chunk: builds[chunk] for chunk in chunks if chunk < builds.shape[0]}
    return {chunk: json.loads(str(text)) for chunk, text in texts.items() if text}


@dataclass(frozen=True)
class ChunkCheck:
    """One time chunk of the copy checked against the per-period store: its recorded checksums
    against the per-period records, then its values against the per-period values."""

    chunk: int
    first: str  # the first and last period the chunk spans
    last: str
    periods: int  # periods the per-period store holds in the chunk
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def check_chunks(
    upstream: ic.Session, copy: ic.Session
) -> tuple[list[int], Callable[[int], ChunkCheck]]:
    """The time chunks to check (every chunk the copy built or the per-period store holds a
    period in) and a function checking one of them."""
    axis = store_axis(upstream)
    group = _laid_out(copy.store)
    if axis is None or group is None:
        raise StoreError("no per-period store or no copy to check")
    source = _laid_out(upstream.store)
    structure = group.attrs["ref_assets"]["structure"]
    time_chunk, variables = structure["timeseries_chunks"][0], list(structure["variables"])
    length, copied = axis_length(source), axis_length(group)
    # By time chunk, not by period: an hourly store since 1950 holds 674,000 periods.
    held = np.unique(written_index_array(upstream) // time_chunk)
    chunks = sorted(set(held.tolist()) | set(built_chunks(copy)))

    def keys(first: int, indices: np.ndarray) -> str:
        named = [axis.period_at(first + int(i)).key for i in indices[:3]]
        return ", ".join(named) + (f" and {indices.size - 3} more" if indices.size > 3 else "")

    def check(chunk: int) -> ChunkCheck:
        first = chunk * time_chunk
        stop = min(first + time_chunk, length)
        span = (axis.period_at(first).key, axis.period_at(max(stop - 1, first)).key)
        wanted = upstream_checksums(upstream, first, stop)
        recorded = np.full(stop - first, "", dtype=object)  # the copy's axis may be shorter
        held = np.asarray(group[CHECKSUMS_PATH][first : min(stop, copied)], dtype=object)
        recorded[: held.size] = held
        count = int(np.count_nonzero(wanted != ""))
        missing = np.flatnonzero((recorded == "") & (wanted != ""))
        other = np.flatnonzero((recorded != wanted) & (recorded != ""))
        if missing.size or other.size:
            problems = []
            if missing.size:
                problems.append(f"{keys(first, missing)} stored but not in the copy yet")
            if other.size:
                problems.append(
                    f"{keys(first, other)} copied from another version than the per-period "
                    "records hold (a revision not copied yet, or a period since removed)"
                )
            return ChunkCheck(chunk, *span, count, "; ".join(problems))
        for name in variables:
            target = group[name]
            for block in _blocks(target, stop - first):
                where = (slice(first, min(stop, copied)), *block)
                if not np.array_equal(target[where], source[name][where], equal_nan=True):
                    return ChunkCheck(
                        chunk, *span, count, f"{name}: values differ from the per-period store's"
                    )
        return ChunkCheck(chunk, *span, count)

    return chunks, check

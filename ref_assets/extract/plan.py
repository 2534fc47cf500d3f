"""An extraction resolved against one snapshot of a dataset's store: which time indices, cells
and variables, how many bytes, and where each block of periods is read from.

Point series read from the time-series copy (`ref_assets.store.timeseries`) wherever it holds
exactly the snapshot's periods, and from the per-period store elsewhere. A time chunk of the copy
records the snapshot of the store it was built from; it holds the snapshot's periods when no
period record of the chunk changed between the two snapshots (Icechunk's diff, either way round:
a release older or newer than the build). Where the diff cannot tell (a snapshot expired, or
neither is an ancestor of the other), the checksums the chunk was built from are compared with
the snapshot's records; so are those of the periods the diff names (a rechunk rewrites every
record, its checksum unchanged). So a release is served from the copy where main has not
changed since, and from its own snapshot where it has; and the checksums drawn on (for the
output's record) come from the copy's one chunk of checksums, not from one record read per
period.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import icechunk as ic
import numpy as np
import zarr

from ref_assets.extract.request import ExtractionError, ExtractionRequest
from ref_assets.periods import IndexRanges, Period, PeriodError
from ref_assets.store import reader as store_reader
from ref_assets.store.layout import open_laid_out_root
from ref_assets.store.reader import StoreAxis
from ref_assets.store.repository import DatasetStore

# Values read at once (a block of periods): memory stays flat whatever the request's length.
BLOCK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Block:
    """Time indices ``first``..``stop`` (excluded) of the store, read from ``layout``."""

    first: int
    stop: int
    layout: str  # "timeseries" (the copy) or "periods" (the per-period store)


@dataclass
class ExtractionPlan:
    """What a request reads: resolved against a pinned snapshot, before any value is read."""

    request: ExtractionRequest
    store: DatasetStore
    session: ic.Session
    snapshot: str
    axis: StoreAxis
    first: int  # the time indices read, ``first``..``stop`` (excluded)
    stop: int
    variables: list[str]
    variable_dims: dict[str, tuple[str, ...]]
    itemsize: dict[str, int]
    extra_sizes: dict[str, int]  # extra dimensions' sizes
    y: np.ndarray  # the store's cell centres
    x: np.ndarray
    y_index: np.ndarray = field(default_factory=lambda: np.empty(0, int))  # bbox rows, or per point
    x_index: np.ndarray = field(default_factory=lambda: np.empty(0, int))
    written: np.ndarray = field(default_factory=lambda: np.empty(0, "int64"))
    copy_session: ic.Session | None = None
    copy_time_chunk: int | None = None
    # index -> the checksum of its record, for the periods read so far
    checksums: dict[int, str] = field(default_factory=dict)
    _changed: dict[str, np.ndarray | None] = field(default_factory=dict)

    @property
    def periods(self) -> int:
        return self.stop - self.first

    @property
    def is_points(self) -> bool:
        return self.request.points is not None

    @property
    def cells(self) -> int:
        return self.y_index.size if self.is_points else self.y_index.size * self.x_index.size

    def period_bytes(self) -> int:
        """Bytes of values one period of the request holds."""
        total = 0
        for name in self.variables:
            extra = math.prod(self.extra_sizes[d] for d in self.variable_dims[name][1:-2])
            total += extra * self.cells * self.itemsize[name]
        return total

    @property
    def estimated_bytes(self) -> int:
        return self.period_bytes() * self.periods

    def key_fields(self) -> dict:
        """The request as resolved (periods as keys, variables, cells asked for), with the
        snapshot and release: what makes two requests the same extraction (a release's output
        names it, in the file and its record, where main's at the same snapshot does not)."""
        request = self.request
        return {
            "dataset": request.dataset,
            "snapshot": self.snapshot,
            "tag": request.tag,
            "first": self.axis.period_at(self.first).key,
            "last": self.axis.period_at(self.stop - 1).key,
            "variables": sorted(self.variables),
            "bbox": list(request.bbox) if request.bbox else None,
            "points": [list(p) for p in request.points] if request.points else None,
            "format": request.format,
        }

    @property
    def key(self) -> str:
        text = json.dumps(self.key_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def blocks(self, share: int = 1) -> Iterator[Block]:
        """The blocks of periods to read, each within `BLOCK_BYTES` / ``share`` of values (a
        writer that holds several times the values in memory asks for a smaller share), each
        from one layout: the copy's time chunks that hold the snapshot's periods, the
        per-period store elsewhere."""
        per_period = max(self.period_bytes(), 1)
        length = max(1, min(self.periods, BLOCK_BYTES // share // per_period))
        for first, stop, layout in self._layout_runs():
            for start in range(first, stop, length):
                yield Block(start, min(start + length, stop), layout)

    def _layout_runs(self) -> list[tuple[int, int, str]]:
        """``(first, stop, layout)``: consecutive time chunks read from the same layout, merged."""
        if not self.copy_time_chunk:
            return [(self.first, self.stop, "periods")]
        from ref_assets.store.timeseries import chunk_builds

        assert self.copy_session is not None
        size = self.copy_time_chunk
        chunks = list(range(self.first // size, (self.stop - 1) // size + 1))
        builds = chunk_builds(self.copy_session, chunks)
        runs: list[tuple[int, int, str]] = []
        for chunk in chunks:
            first, stop = max(chunk * size, self.first), min((chunk + 1) * size, self.stop)
            current = self._copy_current(first, stop, builds.get(chunk))
            layout = "timeseries" if current else "periods"
            if runs and runs[-1][2] == layout:
                runs[-1] = (runs[-1][0], stop, layout)
            else:
                runs.append((first, stop, layout))
        return runs

    def _copy_current(self, first: int, stop: int, build: dict | None) -> bool:
        """Whether the copy, whose time chunk holding ``first``..``stop`` was built as
        ``build`` says, holds exactly the snapshot's periods there."""
        if build is None:
            return False
        built_from = self._copy_checksums(first, stop)
        present = np.zeros(stop - first, dtype=bool)
        present[self.written[(self.written >= first) & (self.written < stop)] - first] = True
        if not np.array_equal(built_from != "", present):  # a period since written or removed
            return False
        # The records to compare with the checksums the chunk was built from: those the diff
        # says were rewritten since (a rechunk rewrites every record, its checksums unchanged),
        # or all of them where the diff cannot tell.
        changed = self._changed_between(build["upstream_snapshot"])
        if changed is None:
            indices = np.arange(first, stop)
        else:
            indices = changed[(changed >= first) & (changed < stop)]
            if indices.size == 0:
                return True
        records = dict(store_reader.iter_records(self.session, indices.tolist()))
        return all(built_from[i - first] == records.get(i, {}).get("checksum", "") for i in indices)

    def _changed_between(self, other: str) -> np.ndarray | None:
        """Time indices whose record differs between ``other`` and the snapshot read; None
        when Icechunk's diff cannot tell."""
        if other == self.snapshot:
            return np.empty(0, "int64")
        if other not in self._changed:
            repo = self.store.open()
            changed = store_reader.written_between(repo, other, self.snapshot)
            if changed is None:
                changed = store_reader.written_between(repo, self.snapshot, other)
            self._changed[other] = changed
        return self._changed[other]

    def _copy_checksums(self, first: int, stop: int) -> np.ndarray:
        from ref_assets.store.timeseries import CHECKSUMS_PATH

        assert self.copy_session is not None
        recorded = zarr.open_array(self.copy_session.store, path=CHECKSUMS_PATH, mode="r")
        held = np.full(stop - first, "", dtype=object)
        within = max(0, min(stop, recorded.shape[0]) - first)
        held[:within] = recorded[first : first + within]
        return held

    def read(self, block: Block) -> dict[str, np.ndarray]:
        """Every variable's values over ``block``: (time, *extra, y, x) for a bbox (west to
        east across the antimeridian), (time, *extra, point) for points; the checksums of the
        block's records join `checksums`."""
        if block.layout == "timeseries":
            session = self.copy_session
            held = self._copy_checksums(block.first, block.stop)
            self.checksums.update((block.first + i, str(c)) for i, c in enumerate(held) if c)
        else:
            session = self.session
            records = store_reader.iter_records(self.session, range(block.first, block.stop))
            self.checksums.update((i, r.get("checksum", "")) for i, r in records)
        assert session is not None
        group = zarr.open_group(session.store, mode="r")
        return {name: self._read_variable(group[name], block) for name in self.variables}

    def _read_variable(self, array: zarr.Array, block: Block) -> np.ndarray:
        extra = (slice(None),) * (array.ndim - 3)
        times = slice(block.first, block.stop)
        if not self.is_points:
            rows = slice(int(self.y_index[0]), int(self.y_index[-1]) + 1)
            pieces = [array[(times, *extra, rows, cols)] for cols in self._column_runs()]
            return np.concatenate(pieces, axis=-1) if len(pieces) > 1 else pieces[0]
        # Every point over the block in one coordinate selection: each stored chunk (a tile
        # of the copy) it touches is read once, all of them concurrently.
        lead = [np.arange(block.first, block.stop), *(np.arange(n) for n in array.shape[1:-2])]
        shape = [len(axis) for axis in lead] + [self.y_index.size]
        grids = [
            axis.reshape([-1 if i == j else 1 for j in range(len(shape))])
            for i, axis in enumerate(lead)
        ]
        rows = self.y_index.reshape([1] * len(lead) + [-1])
        cols = self.x_index.reshape([1] * len(lead) + [-1])
        coordinates = np.broadcast_arrays(*grids, rows, cols)
        return array.get_coordinate_selection(tuple(coordinates)).reshape(shape)

    def _column_runs(self) -> list[slice]:
        """The bbox's columns as contiguous runs of the stored grid: one, or two across the
        antimeridian (west part first)."""
        cols = self.x_index
        breaks = np.flatnonzero(np.diff(cols) != 1) + 1
        return [slice(int(run[0]), int(run[-1]) + 1) for run in np.split(cols, breaks)]

    def output_x(self) -> np.ndarray:
        """The bbox's longitudes, ascending: across the antimeridian, those east of it + 360."""
        x = self.x[self.x_index].astype("float64")
        if self.request.crosses_antimeridian:
            x = np.where(x < self.request.bbox[0], x + 360.0, x)  # type: ignore[index]
        return x


def resolve(
    request: ExtractionRequest, store: DatasetStore, snapshot: str, *, tag: str | None = None
) -> ExtractionPlan:
    """The plan of ``request`` at ``snapshot``: a clear error for a range past what the snapshot
    holds, an unknown variable, or a bbox or point off the grid."""
    dataset = request.dataset
    where = f"release {tag} (snapshot {snapshot})" if tag else f"snapshot {snapshot}"
    session = store_reader.session_for(store, snapshot)
    with store.reporting("reading the store"):
        group = open_laid_out_root(session.store)
        if group is None:
            raise ExtractionError(store.no_periods_yet())
        axis = store_reader.store_axis(session)
        assert axis is not None
        written = store_reader.written_index_array(session)
        structure = group.attrs["ref_assets"]["structure"]
        variables_in_store = list(structure["variables"])
        if written.size == 0:
            raise ExtractionError(store.no_periods_yet())
        held_first, held_last = int(written[0]), int(written[-1])
        held = f"{axis.period_at(held_first).key}..{axis.period_at(held_last).key}"
        first, stop = _time_range(request, axis, held_first, held_last, where, held)
        variables = list(request.variables or variables_in_store)
        unknown = [name for name in variables if name not in variables_in_store]
        if unknown:
            raise ExtractionError(
                f"{dataset}: no variable {', '.join(map(repr, unknown))} in {where} (periods "
                f"{held}); variables: {', '.join(variables_in_store)}"
            )
        arrays = {name: group[name] for name in variables}
        dims = {name: tuple(a.metadata.dimension_names or ()) for name, a in arrays.items()}
        extra_sizes = {
            dim: int(arrays[name].shape[i])
            for name in variables
            for i, dim in enumerate(dims[name])
            if dim not in ("time", "y", "x")
        }
        y, x = group["y"][:], group["x"][:]
    plan = ExtractionPlan(
        request=request,
        store=store,
        session=session,
        snapshot=snapshot,
        axis=axis,
        first=first,
        stop=stop,
        variables=variables,
        variable_dims=dims,
        itemsize={name: a.dtype.itemsize for name, a in arrays.items()},
        extra_sizes=extra_sizes,
        y=y,
        x=x,
        written=written,
    )
    if request.points is not None:
        plan.y_index, plan.x_index = nearest_cells(dataset, request.points, y, x)
        _attach_copy(plan)
    else:
        plan.y_index, plan.x_index = _bbox_cells(dataset, request.bbox, y, x)
    return plan


def _time_range(
    request: ExtractionRequest,
    axis: StoreAxis,
    held_first: int,
    held_last: int,
    where: str,
    held: str,
) -> tuple[int, int]:
    def index(text: str | None, default: int) -> int:
        if text is None:
            return default
        try:
            return axis.index_of(Period.from_text(axis.period, text, dataset=request.dataset))
        except PeriodError as err:
            raise ExtractionError(f"{err} (the store holds {held})") from None

    first, last = index(request.start, held_first), index(request.end, held_last)
    asked = f"{axis.period_at(first).key}..{axis.period_at(last).key}"
    if last < first:
        raise ExtractionError(
            f"{request.dataset}: the range ends ({request.end}) before it starts "
            f"({request.start}); {where} holds {held}"
        )
    if first < held_first or last > held_last:
        raise ExtractionError(
            f"{request.dataset}: {asked} reaches past what {where} holds: {held}. Ask within "
            "that range (start and end)"
        )
    return first, last + 1


def _bbox_cells(
    dataset: str, bbox: tuple[float, float, float, float] | None, y: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    if bbox is None:
        return np.arange(y.size), np.arange(x.size)
    west, south, east, north = bbox
    rows = np.flatnonzero((y >= south) & (y <= north))
    if west <= east:
        cols = np.flatnonzero((x >= west) & (x <= east))
    else:  # across the antimeridian: the west part, then the east part
        cols = np.concatenate([np.flatnonzero(x >= west), np.flatnonzero(x <= east)])
    if rows.size == 0 or cols.size == 0:
        raise ExtractionError(
            f"{dataset}: the bbox {west} {south} {east} {north} holds no cell centre of the "
            f"grid ({_grid_extent(y, x)}); widen it or move it onto the grid"
        )
    return rows, cols


def nearest_cells(
    dataset: str, points: tuple[tuple[float, float], ...], y: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The nearest cell of each point; a point more than half a cell off the grid is refused."""
    half_y = abs(float(y[1] - y[0])) / 2 if y.size > 1 else 0.5
    half_x = abs(float(x[1] - x[0])) / 2 if x.size > 1 else 0.5
    rows, cols = [], []
    for lon, lat in points:
        lon_off = np.abs(((x - lon) + 180.0) % 360.0 - 180.0)  # by the shorter way round
        row, col = int(np.argmin(np.abs(y - lat))), int(np.argmin(lon_off))
        if abs(float(y[row]) - lat) > half_y + 1e-9 or lon_off[col] > half_x + 1e-9:
            raise ExtractionError(
                f"{dataset}: the point {lon},{lat} lies off the grid ({_grid_extent(y, x)}); "
                "give points inside it"
            )
        rows.append(row)
        cols.append(col)
    return np.asarray(rows), np.asarray(cols)


def _grid_extent(y: np.ndarray, x: np.ndarray) -> str:
    return (
        f"cell centres longitude {float(x.min()):g}..{float(x.max()):g}, latitude "
        f"{float(y.min()):g}..{float(y.max()):g}"
    )


def _attach_copy(plan: ExtractionPlan) -> None:
    """Give the plan the time-series copy (its tip now) when there is one on the same grid."""
    from ref_assets.store.timeseries import timeseries_store

    copy = timeseries_store(plan.store)
    if not copy.exists():
        return
    with copy.reporting("reading the time-series copy"):
        session = copy.open().readonly_session(branch="main")
        group = open_laid_out_root(session.store)
        if group is None:
            return
        same_grid = np.array_equal(group["y"][:], plan.y) and np.array_equal(group["x"][:], plan.x)
        if not same_grid or any(name not in group for name in plan.variables):
            return
        plan.copy_session = session
        plan.copy_time_chunk = int(group.attrs["ref_assets"]["structure"]["timeseries_chunks"][0])


def records_drawn_on(plan: ExtractionPlan) -> dict[str, str]:
    """Period key -> its record's checksum, for every period the extraction read (once every
    block is read)."""
    return {plan.axis.period_at(i).key: c for i, c in sorted(plan.checksums.items())}


def missing_periods(plan: ExtractionPlan) -> list[str]:
    """The period ranges within the request the snapshot does not hold (read as NaN)."""
    held = IndexRanges.of(plan.written)
    missing = IndexRanges.span(plan.first, plan.stop) - held
    return [
        f"{plan.axis.period_at(a).key}..{plan.axis.period_at(b - 1).key}"
        for a, b in zip(missing.starts, missing.stops, strict=True)
    ]

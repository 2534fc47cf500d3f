"""An extraction resolved against one snapshot of a dataset's store: which time indices, cells
and variables, how many bytes, and where each block of periods is read from.

Point series read from the time-series copy (`ref_assets.store.timeseries`) wherever it holds
exactly the snapshot's periods: a time chunk of the copy is used when the checksums it was built
from equal those of the snapshot's records over that chunk (equal checksums: equal values), and
the per-period store otherwise. So a release (a tag) is served from the copy where main has not
changed since, and from its own snapshot where it has.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import icechunk as ic
import numpy as np
import zarr

from ref_assets.extract.request import ExtractionError, ExtractionRequest
from ref_assets.periods import IndexRanges, Period, PeriodError
from ref_assets.store import reader as store_reader
from ref_assets.store.layout import RECORDS_PATH, open_laid_out_root
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
    copy_session: ic.Session | None = None
    copy_time_chunk: int | None = None
    checksums: dict[int, str] = field(default_factory=dict)  # index -> record checksum

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
        snapshot: what makes two requests the same extraction."""
        request = self.request
        return {
            "dataset": request.dataset,
            "snapshot": self.snapshot,
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

    def blocks(self) -> Iterator[Block]:
        """The blocks of periods to read, each within `BLOCK_BYTES` (and within one time
        chunk of the copy, when the copy serves the request)."""
        per_period = max(self.period_bytes(), 1)
        length = max(1, min(self.periods, BLOCK_BYTES // per_period))
        if self.copy_time_chunk:
            chunk = self.copy_time_chunk
            first = self.first
            while first < self.stop:
                stop = min((first // chunk + 1) * chunk, self.stop)
                layout = "timeseries" if self._copy_current(first, stop) else "periods"
                for start in range(first, stop, length):
                    yield Block(start, min(start + length, stop), layout)
                first = stop
            return
        for start in range(self.first, self.stop, length):
            yield Block(start, min(start + length, self.stop), "periods")

    def _copy_current(self, first: int, stop: int) -> bool:
        from ref_assets.store.timeseries import CHECKSUMS_PATH

        assert self.copy_session is not None
        recorded = zarr.open_array(self.copy_session.store, path=CHECKSUMS_PATH, mode="r")
        if stop > recorded.shape[0]:
            return False
        held = np.asarray(recorded[first:stop], dtype=object)
        wanted = np.array([self.checksums.get(i, "") for i in range(first, stop)], dtype=object)
        return bool(np.array_equal(held, wanted))

    def read(self, block: Block) -> dict[str, np.ndarray]:
        """Every variable's values over ``block``: (time, *extra, y, x) for a bbox (west to
        east across the antimeridian), (time, *extra, point) for points."""
        session = self.copy_session if block.layout == "timeseries" else self.session
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
        # Points grouped by the stored chunk (a tile of the copy) holding them: each chunk is
        # read once, whatever the number of points in it.
        *_, chunk_y, chunk_x = array.chunks
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for point, (row, col) in enumerate(zip(self.y_index, self.x_index, strict=True)):
            groups[(int(row) // chunk_y, int(col) // chunk_x)].append(point)
        out = np.empty(
            (block.stop - block.first, *array.shape[1:-2], self.y_index.size), array.dtype
        )
        for members in groups.values():
            rows = sorted({int(self.y_index[p]) for p in members})
            cols = sorted({int(self.x_index[p]) for p in members})
            values = array.get_orthogonal_selection((times, *extra, rows, cols))
            for p in members:
                out[..., p] = values[..., rows.index(self.y_index[p]), cols.index(self.x_index[p])]
        return out

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
        records = dict(store_reader.iter_records(session, range(first, stop)))
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
        checksums={i: r.get("checksum", "") for i, r in records.items()},
    )
    if request.points is not None:
        plan.y_index, plan.x_index = _nearest_cells(dataset, request.points, y, x)
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
    asked = f"{axis.period_at(first).key}..{axis.period_at(last).key}" if first >= 0 else None
    if last < first:
        raise ExtractionError(
            f"{request.dataset}: the range ends ({request.end}) before it starts "
            f"({request.start}); {where} holds {held}"
        )
    if first < held_first or last > held_last:
        raise ExtractionError(
            f"{request.dataset}: {asked or f'{request.start}..{request.end}'} reaches past "
            f"what {where} holds: {held}. Ask within that range (--start/--end)"
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


def _nearest_cells(
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
    """Period key -> its record's checksum, for every period the extraction read."""
    return {plan.axis.period_at(i).key: c for i, c in sorted(plan.checksums.items())}


def missing_periods(plan: ExtractionPlan) -> list[str]:
    """The period ranges within the request the snapshot does not hold (read as NaN)."""
    held = IndexRanges.of(np.asarray(sorted(plan.checksums), dtype="int64"))
    missing = IndexRanges.span(plan.first, plan.stop) - held
    return [
        f"{plan.axis.period_at(a).key}..{plan.axis.period_at(b - 1).key}"
        for a, b in zip(missing.starts, missing.stops, strict=True)
    ]


__all__ = ["BLOCK_BYTES", "RECORDS_PATH", "Block", "ExtractionPlan", "resolve"]

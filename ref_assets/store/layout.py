"""The layout of a dataset's store: a pre-sized time axis, one array per variable, per-period
records.

::

    /time            int64 (T,)    seconds since 1970-01-01, written for the whole pre-sized axis
    /y, /x           float64       cell centres, CF attributes
    /spatial_ref     scalar        the CRS (``crs_wkt``), referenced by ``grid_mapping``
    /<dimension>     (N,)          coordinate values of each extra dimension (pressure level...)
    /<variable>      (T, ..., Y, X)  one chunk per period along time and per value of any extra
                                   dimension, NaN where never written
    /ref/records     str (T,)      the JSON record of each written period, "" where none

Periods are written by region at their own index, so the axis is sized ahead (in blocks of
``spec.time_block``) and the time coordinate is written when the axis is created or grown: writers
of distinct periods touch disjoint chunks and never the time coordinate, so they do not conflict.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np
import zarr

from ref_assets.secrets import redact
from ref_assets.specs import TIME_AXIS_RANGE, DatasetSpec

if TYPE_CHECKING:  # annotations only: the store's readers need no provider machinery (xarray)
    from ref_assets.providers.protocol import Description

LAYOUT_VERSION = 1
RECORDS_PATH = "ref/records"
TIME_UNITS = "seconds since 1970-01-01T00:00:00"
_EPOCH = np.datetime64("1970-01-01T00:00:00", "s")


class StoreLayoutError(RuntimeError):
    """The store cannot be laid out for the dataset spec (its structure differs, or the spec asks
    for more than a store can hold); nothing was written."""


def structure(spec: DatasetSpec, description: Description) -> dict:
    """What the store was laid out with; all of it but the spatial chunks must not change once
    a store exists (changing it needs `ref-assets rebuild`; chunks `ref-assets rechunk`). The
    time block and manifest split are fixed too: the time coordinate is chunked by the one and
    the repository's config holds the other."""
    grid = description.grid
    return {
        "layout_version": LAYOUT_VERSION,
        **spec_structure(spec),
        "grid_shape": list(grid.shape),
        "grid_first_last": [grid.y[0], grid.y[-1], grid.x[0], grid.x[-1]],
        "chunks": list(_spatial_chunks(spec, description)),
        "time_block": spec.time_block,
        "manifest_split": spec.manifest_split,
    }


def spec_structure(spec: DatasetSpec) -> dict:
    """The part of `structure` the spec alone decides (the rest needs the provider's grid)."""
    return {
        "period": spec.period.value,
        "start": spec.start.isoformat(),
        "variables": {
            # A variable's extra dimensions only when it has some, so that stores laid out
            # before extra dimensions existed keep the structure they were written with.
            v.name: [v.dtype, v.units, *([v.dimensions] if v.dimensions else [])]
            for v in spec.variables
        },
        **(
            {"dimensions": {d.name: d.coordinate().tolist() for d in spec.dimensions}}
            if spec.dimensions
            else {}
        ),
    }


def _spatial_chunks(spec: DatasetSpec, description: Description) -> tuple[int, int]:
    return spatial_chunks(spec.chunks.y, spec.chunks.x, description.grid.shape)


def spatial_chunks(y: int | None, x: int | None, shape: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of a chunk on a grid of ``shape`` (None: the whole axis)."""
    ny, nx = shape
    return (min(y or ny, ny), min(x or nx, nx))


def capacity_for(spec: DatasetSpec, time_index: int) -> int:
    """The axis length that holds ``time_index``: whole blocks of ``spec.time_block``, every
    period start of which must lie within `TIME_AXIS_RANGE`."""
    length = (time_index // spec.time_block + 1) * spec.time_block
    latest = TIME_AXIS_RANGE[1]
    try:
        last = spec.period.at(length - 1, spec.start)
    except (OverflowError, ValueError):  # beyond the year 9999 of Python's datetime
        last = None
    if last is None or last >= latest:
        period = spec.period.key(spec.period.at(time_index, spec.start))
        raise StoreLayoutError(
            f"{spec.id} period {period}: the time axis grows in blocks of storage.time_block = "
            f"{spec.time_block} periods, and the block holding this period would end "
            f"{'beyond the year 9999' if last is None else f'at {last:%Y-%m-%d}'}, past "
            f"{latest:%Y-%m-%d}, the last time xarray and pandas can decode (numpy "
            "datetime64[ns]). Choose a smaller storage.time_block (a new dataset id, if the "
            "store exists), or leave out periods this late."
        )
    return length


def check_period_fits(spec: DatasetSpec, description: Description) -> None:
    """Refuse, before fetching, a grid whose period cannot be held in this machine's memory.

    A period is held in memory whole, at least twice (as fetched and as stored), so its stored
    size (every variable on the grid) must be at most half the machine's physical memory."""
    memory = _physical_memory()
    ny, nx = description.grid.shape
    size = sum(ny * nx * np.dtype(variable.dtype).itemsize for variable in spec.variables)
    if memory is None or 2 * size <= memory:
        return
    raise StoreLayoutError(
        f"{spec.id}: one period on the provider's {ny} x {nx} grid is {size / 2**30:,.1f} GiB "
        f"({len(spec.variables)} variable(s) as {', '.join(v.dtype for v in spec.variables)}); "
        f"a period is held in memory whole, at least twice, and this machine has "
        f"{memory / 2**30:,.1f} GiB. Make the grid smaller in params (a coarser resolution or a "
        "smaller bbox), or split the dataset into several by region."
    )


def _physical_memory() -> int | None:
    """Bytes of physical memory, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def axis_length(group: zarr.Group) -> int:
    return int(group["time"].shape[0])


def has_layout(group: zarr.Group) -> bool:
    return "ref_assets" in group.attrs


def open_laid_out_root(store: zarr.abc.store.Store) -> zarr.Group | None:
    """The root group of a store that has a layout, or None for a new, empty store."""
    try:
        group = zarr.open_group(store, mode="r")
    except zarr.errors.GroupNotFoundError:
        return None
    return group if has_layout(group) else None


def check_structure(group: zarr.Group, spec: DatasetSpec, description: Description) -> None:
    """Refuse a spec the store was not laid out for (`incompatible_changes`); spatial chunks
    may differ (see `REWRITABLE_FIELDS`)."""
    stored = group.attrs["ref_assets"]["structure"]
    if changes := incompatible_changes(stored, structure(spec, description)):
        changed, before, after = changes
        raise StoreLayoutError(
            f"{spec.id}: the store was laid out for a different structure ({changed} changed: "
            f"store has {before}, spec gives {after}). Restore the previous spec, or run "
            f"`ref-assets rebuild {spec.id}` to rebuild the store for this one (its periods "
            "fetched again, its annotations kept)."
        )


# Structure fields a store and its spec may disagree on: the writer writes each period's region
# into whatever spatial chunks the store has, so a spec's new chunks take effect only through
# `ref-assets rechunk` (store.branches), never by refusing writes.
REWRITABLE_FIELDS = frozenset({"chunks"})


def incompatible_changes(stored: dict, expected: dict) -> tuple[str, dict, dict] | None:
    """`structure_changes` between a store's structure and the one a spec gives, leaving out
    `REWRITABLE_FIELDS`; None when the spec fits the store."""
    expected = json.loads(json.dumps(expected))
    stored = {k: v for k, v in stored.items() if k not in REWRITABLE_FIELDS}
    expected = {k: v for k, v in expected.items() if k not in REWRITABLE_FIELDS}
    return structure_changes(stored, expected) if stored != expected else None


def dataset_attributes(spec: DatasetSpec) -> dict:
    """The attributes the spec gives the store's root group. Masked as the record masks them: a
    spec's attributes may hold a token or a URL's credentials, and the store's attributes are
    read by anyone who reads the data."""
    return redact(
        {
            "title": spec.title,
            "summary": spec.description,
            "Conventions": "CF-1.10",
            **spec.attributes,
        }
    )


def structure_changes(stored: dict, expected: dict) -> tuple[str, dict, dict]:
    """The fields in which two structures differ (named, comma-separated), with their stored
    and their expected values."""
    changed = sorted(k for k in expected.keys() | stored.keys() if stored.get(k) != expected.get(k))
    return (
        ", ".join(changed),
        {k: stored.get(k) for k in changed},
        {k: expected.get(k) for k in changed},
    )


def create_layout(
    group: zarr.Group, spec: DatasetSpec, description: Description, length: int
) -> None:
    """Create every array of an empty store with a time axis of ``length`` periods."""
    grid = description.grid
    chunk_y, chunk_x = _spatial_chunks(spec, description)
    group.attrs.update(
        {**dataset_attributes(spec), "ref_assets": {"structure": structure(spec, description)}}
    )
    time = group.create_array(
        "time",
        shape=(length,),
        chunks=(spec.time_block,),
        dtype="int64",
        fill_value=0,
        dimension_names=["time"],
        attributes={
            "standard_name": "time",
            "axis": "T",
            "units": TIME_UNITS,
            "calendar": "proleptic_gregorian",
        },
    )
    time[:] = _time_values(spec, 0, length)
    for name, coordinate in grid.coords().items():
        group.create_array(
            name,
            data=np.asarray(coordinate.values, dtype="float64"),
            dimension_names=[name],
            attributes=dict(coordinate.attrs),
        )
    group.create_array(
        "spatial_ref",
        shape=(),
        dtype="int32",
        fill_value=0,
        attributes={"crs_wkt": grid.crs_wkt, "spatial_ref": grid.crs_wkt},
    )
    for dimension in spec.dimensions:
        values = dimension.coordinate()
        coordinate = group.create_array(
            dimension.name,
            shape=values.shape,
            dtype=str if values.dtype.kind == "U" else values.dtype,
            dimension_names=[dimension.name],
            attributes={
                **dimension.attributes,
                **({"units": dimension.units} if dimension.units else {}),
            },
        )
        coordinate[:] = values
    dimensions = spec.dimensions_by_name
    for variable in spec.variables:
        provided = description.variables[variable.name]
        extra = [dimensions[name].size for name in variable.dimensions]
        group.create_array(
            variable.name,
            # One chunk per period and per extra-dimension value: a chunk is one 2-D map, so
            # spatial chunk sizes mean the same with or without extra dimensions.
            shape=(length, *extra, *grid.shape),
            chunks=(1, *[1] * len(extra), chunk_y, chunk_x),
            dtype=variable.dtype,
            fill_value=np.nan,
            dimension_names=["time", *variable.dimensions, "y", "x"],
            attributes={
                **redact({**provided.attributes, **variable.attributes}),
                "units": variable.units,
                "grid_mapping": "spatial_ref",
                "coordinates": "spatial_ref",
            },
        )
    group.create_array(
        RECORDS_PATH,
        shape=(length,),
        chunks=(1,),
        dtype=str,
        fill_value="",
        dimension_names=["time"],
    )


def grow_time_axis(group: zarr.Group, spec: DatasetSpec, length: int) -> None:
    """Extend every time-indexed array to ``length`` and write the new time values."""
    old = axis_length(group)
    for variable in spec.variables:
        array = group[variable.name]
        array.resize((length, *array.shape[1:]))
    group[RECORDS_PATH].resize((length,))
    group["time"].resize((length,))
    group["time"][old:length] = _time_values(spec, old, length - old)


def _time_values(spec: DatasetSpec, first: int, count: int) -> np.ndarray:
    starts = spec.period.starts(spec.start, count, first=first)
    return (starts - _EPOCH).astype("int64")

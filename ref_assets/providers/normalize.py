"""Turning the shapes real files come in into the one providers deliver: dimensions ``time``,
``y``, ``x``; longitudes in -180..180 ascending; latitudes descending (north up, as `Grid`).

>>> ds = to_standard_grid(raw)  # doctest: +SKIP  (valid_time/latitude/longitude, 0..360, south up)
>>> ds = select_bbox(ds, (28.0, -12.0, 52.0, 15.0), pad_cells=1)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from ref_assets.providers.protocol import Grid

if TYPE_CHECKING:
    from ref_assets.specs import DimensionSpec

# Names real files use for each axis, most common first.
AXIS_NAMES = {
    "time": ("time", "valid_time", "t", "date", "datetime", "forecast_time"),
    "y": ("y", "lat", "latitude", "nav_lat", "rlat"),
    "x": ("x", "lon", "longitude", "nav_lon", "rlon"),
}


class GridShapeError(ValueError):
    """Data whose axes cannot be recognized or made regular; the message names the axes seen."""


def standard_names(data: xr.Dataset) -> xr.Dataset:
    """Rename the recognized time/latitude/longitude axes to ``time``/``y``/``x``."""
    renames = {}
    for standard, candidates in AXIS_NAMES.items():
        if standard in data.dims or standard in data.coords:
            continue
        # Only axes: a data variable named like an axis (ERA5's temperature "t") is not one.
        found = [name for name in candidates if name in data.dims or name in data.coords]
        if not found:
            if standard == "time":
                continue  # a file may hold one period without a time axis
            seen = sorted(map(str, data.dims))
            raise GridShapeError(f"no {standard} axis among {seen} (expected one of {candidates})")
        renames[found[0]] = standard
    return data.rename(renames)


def to_standard_grid(data: xr.Dataset) -> xr.Dataset:
    """Standard axis names, longitudes wrapped into -180..180 and ascending, latitudes
    descending."""
    data = standard_names(data)
    x = data["x"].values
    if x.size and np.nanmax(x) > 180.0:
        data = data.assign_coords(x=((x + 180.0) % 360.0) - 180.0)
    data = data.sortby("x")
    # A cyclic grid (0..360 inclusive) repeats its first column after wrapping: keep one.
    _, first_of_each = np.unique(data["x"].values, return_index=True)
    if first_of_each.size < data["x"].size:
        data = data.isel(x=first_of_each)
    if data["y"].size > 1 and data["y"].values[0] < data["y"].values[-1]:
        data = data.isel(y=slice(None, None, -1))
    return data


def select_bbox(
    data: xr.Dataset, bbox: tuple[float, float, float, float], *, pad_cells: int = 0
) -> xr.Dataset:
    """Cells whose centres lie in ``bbox`` (west, south, east, north), widened by
    ``pad_cells`` on every side. Expects `to_standard_grid` output."""
    west, south, east, north = bbox
    dx, dy = _spacing(data["x"].values), _spacing(data["y"].values)
    x = data["x"].values
    y = data["y"].values
    keep_x = (x >= west - pad_cells * dx - 1e-9) & (x <= east + pad_cells * dx + 1e-9)
    keep_y = (y >= south - pad_cells * dy - 1e-9) & (y <= north + pad_cells * dy + 1e-9)
    if not keep_x.any() or not keep_y.any():
        raise GridShapeError(
            f"bbox {bbox} holds no cell of the data (x {x.min():g}..{x.max():g}, "
            f"y {y.min():g}..{y.max():g})"
        )
    return data.isel(x=np.flatnonzero(keep_x), y=np.flatnonzero(keep_y))


def grid_of(data: xr.Dataset) -> Grid:
    """The grid of standardized data (its ``y``/``x`` cell centres)."""
    return Grid(
        y=np.asarray(data["y"].values, "float64"), x=np.asarray(data["x"].values, "float64")
    )


def _spacing(values: np.ndarray) -> float:
    return float(np.abs(np.diff(values)).min()) if values.size > 1 else 0.0


def select_dimension(
    array: xr.DataArray, dimension: DimensionSpec, source_dim: str | None = None
) -> xr.DataArray:
    """``array`` cut to the spec's values of an extra dimension, in the spec's order, with the
    dimension named as in the spec. ``source_dim`` is its name in ``array`` (default: the same).

    Values are matched by value (numbers to a relative 1e-9, so 850 matches 850.0), never by
    position: a source without a coordinate for the dimension, or missing one of the values, is
    a GridShapeError naming what it has.
    """
    source_dim = source_dim or dimension.name
    if source_dim not in array.dims:
        raise GridShapeError(
            f"no dimension {source_dim!r} for {dimension.name!r} (dimensions: {list(array.dims)})"
        )
    if source_dim not in array.coords:
        raise GridShapeError(
            f"dimension {source_dim!r} has no coordinate values, so which {dimension.name} each "
            "slice is cannot be established"
        )
    have = array[source_dim].values
    wanted = dimension.coordinate()
    if wanted.dtype.kind in "iuf" and have.dtype.kind in "iuf":
        matches = np.isclose(have[None, :], wanted[:, None], rtol=1e-9, atol=0)
    else:
        matches = have.astype(str)[None, :] == wanted.astype(str)[:, None]
    found = matches.any(axis=1)
    missing = [value for value, ok in zip(wanted.tolist(), found, strict=True) if not ok]
    if missing:
        raise GridShapeError(
            f"{source_dim!r} lacks the values {missing} of {dimension.name!r} "
            f"(it has {have.tolist()})"
        )
    selected = array.isel({source_dim: matches.argmax(axis=1)})
    return selected.rename({source_dim: dimension.name}).assign_coords({dimension.name: wanted})

"""Turning the shapes real files come in into the one providers deliver: dimensions ``time``,
``y``, ``x``; longitudes in -180..180 ascending; latitudes descending (north up, as `Grid`).

Only a regular latitude/longitude grid passes. ``y`` and ``x`` must be 1-D coordinates that are
shown to be latitude and longitude (by name, ``standard_name`` or ``units``) and hold values in
range; a bare dimension (whose "coordinates" would be row and column numbers), 2-D latitude and
longitude (a curvilinear grid) or a ``y``/``x`` with no geographic evidence is refused: a check
that cannot tell geographic axes from array indices fails closed.

>>> ds = to_standard_grid(raw)  # doctest: +SKIP  (valid_time/latitude/longitude, 0..360, south up)
>>> ds = select_bbox(ds, (28.0, -12.0, 52.0, 15.0), pad_cells=1)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from ref_assets.providers.protocol import Grid

if TYPE_CHECKING:
    from ref_assets.specs import DimensionSpec

# Names real files use for each axis, most preferred first. A NEMO/XIOS file's ``time_counter``
# dimension carries ``time_centered``, the middle of each averaging interval: that one lies
# inside the period a mean stands for (an interval's end may be the next period's start), so it
# wins over ``time_counter``'s own values. Besides these names, a 0-D or 1-D variable with
# ``standard_name: time`` or ``axis: T`` is a time axis, and a 1-D coordinate with a latitude or
# longitude ``standard_name`` or ``units`` a y or x axis.
AXIS_NAMES = {
    "time": (
        "time",
        "valid_time",
        "time_centered",
        "time_counter",
        "t",
        "date",
        "datetime",
        "forecast_time",
    ),
    "y": ("y", "lat", "latitude"),
    "x": ("x", "lon", "longitude"),
}


class GridShapeError(ValueError):
    """Data whose axes cannot be recognized or made regular; the message names the axes seen."""


@dataclass(frozen=True)
class _Geographic:
    """What shows a coordinate to be latitude (or longitude), and the range its values keep."""

    quantity: str  # the CF standard_name
    cf_units: str
    names: tuple[str, ...]
    units: frozenset[str]  # lower case, as CF and UDUNITS spell them
    low: float
    high: float

    def evidence(self, name: str, variable: xr.Variable) -> bool:
        units = str(variable.attrs.get("units", "")).strip().lower()
        return (
            variable.attrs.get("standard_name") == self.quantity
            or units in self.units
            or name.lower() in self.names
        )

    @property
    def cf_attrs(self) -> dict[str, str]:
        return {"standard_name": self.quantity, "units": self.cf_units}


_LATITUDE = _Geographic(
    "latitude",
    "degrees_north",
    ("lat", "latitude", "nav_lat"),
    frozenset({"degrees_north", "degree_north", "degrees_n", "degree_n", "degreesn", "degreen"}),
    -90.0,
    90.0,
)
_LONGITUDE = _Geographic(
    "longitude",
    "degrees_east",
    ("lon", "longitude", "nav_lon"),
    frozenset({"degrees_east", "degree_east", "degrees_e", "degree_e", "degreese", "degreee"}),
    -180.0,
    360.0,
)
_GEOGRAPHIC = {"y": _LATITUDE, "x": _LONGITUDE}
_REGRID = (
    "regrid to a regular latitude/longitude grid first (e.g. with xesmf or cdo remapbil) and "
    "point the archive at the regridded files"
)


def standard_names(data: xr.Dataset) -> xr.Dataset:
    """Make the recognized time axis ``time`` and the latitude/longitude axes ``y``/``x`` (1-D
    dimension coordinates, checked to be geographic and given CF ``standard_name`` and
    ``units``); raise `GridShapeError` for a grid that is not shown to be a regular
    latitude/longitude grid."""
    data = _standard_time(data)
    for axis in ("y", "x"):
        data = _standard_axis(data, axis)
    return data


def _standard_time(data: xr.Dataset) -> xr.Dataset:
    if "time" in data.variables:
        return data
    # Only axes: a data variable named like an axis (ERA5's temperature "t") is not one.
    candidates = [name for name in AXIS_NAMES["time"] if name in data.dims or name in data.coords]
    candidates += [
        str(name)
        for name, variable in data.variables.items()
        if variable.ndim <= 1
        and name not in candidates
        and (variable.attrs.get("standard_name") == "time" or variable.attrs.get("axis") == "T")
    ]
    with_values = [name for name in candidates if name in data.variables]
    if with_values:
        return _promote(data, with_values[0], "time")
    if candidates:  # a bare dimension: steps without times (a file may be named for its period)
        return data.rename_dims({candidates[0]: "time"})
    return data  # a file may hold one period without a time axis


def _standard_axis(data: xr.Dataset, axis: str) -> xr.Dataset:
    geographic = _GEOGRAPHIC[axis]
    candidates = [name for name in AXIS_NAMES[axis] if name in data.dims or name in data.coords]
    candidates += [
        str(name)
        for name, coordinate in data.coords.items()
        if coordinate.ndim == 1
        and name not in candidates
        and geographic.evidence(str(name), coordinate.variable)
    ]
    # Along time or the latitude axis already found, a coordinate is no axis of its own (the
    # longitudes of stations along the latitudes' dimension are points, not a grid).
    one_d = [
        name
        for name in candidates
        if name in data.variables
        and data[name].ndim == 1
        and data[name].dims[0] not in {"time", "y"} - {axis}
    ]
    shown = [name for name in one_d if geographic.evidence(name, data.variables[name])]
    chosen = (shown or one_d or [None])[0]
    if chosen is None:
        raise GridShapeError(_no_axis(data, axis, candidates))
    variable = data.variables[chosen]
    quantity = geographic.quantity
    if not geographic.evidence(chosen, variable):
        raise GridShapeError(
            _curvilinear(data)
            or f"its {axis} axis {chosen!r} is not shown to be {quantity}: it has neither a "
            f"{quantity} standard_name nor {geographic.cf_units} units (units "
            f"{variable.attrs.get('units')!r}), so its values "
            f"({_span(variable)}) may be array indices or projected coordinates; if they are "
            f"{quantity}s, give the coordinate units {geographic.cf_units!r}, else {_REGRID}"
        )
    values = np.asarray(variable.values, dtype="float64")
    if not np.isfinite(values).all():
        raise GridShapeError(f"its {quantity} {chosen!r} has missing or non-finite values")
    if values.min() < geographic.low or values.max() > geographic.high:
        raise GridShapeError(
            f"its {quantity} {chosen!r} runs from {values.min():g} to {values.max():g}, "
            f"outside {geographic.low:g}..{geographic.high:g}: these are not {quantity}s"
        )
    steps = np.diff(values)
    if not ((steps > 0).all() or (steps < 0).all()):
        raise GridShapeError(
            f"its {quantity} {chosen!r} is not strictly increasing or decreasing, so it is no "
            f"regular grid's axis; {_REGRID}"
        )
    data = _promote(data, chosen, axis)
    # Say what was established, so standardized data reads as (and passes again as) geographic.
    coordinate = data.variables[axis].to_base_variable()
    coordinate.attrs = {**coordinate.attrs, **geographic.cf_attrs}
    return data.assign_coords({axis: coordinate})


def _promote(data: xr.Dataset, name: str, standard: str) -> xr.Dataset:
    """``name`` (0-D or 1-D) as the coordinate ``standard``, and for 1-D the dimension coordinate
    of the dimension it lies along (which then is ``standard``); what that dimension's own
    coordinate held is dropped."""
    variable = data.variables[name]
    if variable.ndim == 1 and variable.dims[0] != name:
        dimension = variable.dims[0]
        data = data.swap_dims({dimension: name})
        if dimension in data.variables:
            data = data.drop_vars(dimension)
    if name == standard:
        return data
    if standard in data.variables or standard in data.dims:
        raise GridShapeError(
            f"both {name!r} and {standard!r} could be the {standard} axis; keep one of them"
        )
    return data.rename({name: standard})


def _no_axis(data: xr.Dataset, axis: str, candidates: list[str]) -> str:
    curvilinear = _curvilinear(data)
    if curvilinear:
        return curvilinear
    quantity = _GEOGRAPHIC[axis].quantity
    bare = [name for name in candidates if name in data.dims and name not in data.variables]
    if bare:
        return (
            f"its {axis} axis is the bare dimension {bare[0]!r} ({data.sizes[bare[0]]} cells) "
            f"with no coordinate values: its {quantity}s would be array indices; give it a 1-D "
            f"{quantity} coordinate, or {_REGRID}"
        )
    return (
        f"no {quantity} axis among dimensions {sorted(map(str, data.dims))} (expected a 1-D "
        f"coordinate named one of {AXIS_NAMES[axis]} or with standard_name {quantity!r} or "
        f"units {_GEOGRAPHIC[axis].cf_units!r})"
    )


def _curvilinear(data: xr.Dataset) -> str | None:
    """The refusal of a grid whose latitude or longitude is 2-D (None: none is)."""
    found = [
        f"{name}({', '.join(map(str, variable.dims))})"
        for geographic in _GEOGRAPHIC.values()
        for name, variable in data.variables.items()
        if variable.ndim >= 2 and geographic.evidence(str(name), variable)
    ]
    if not found:
        return None
    return f"{'/'.join(found)}: a curvilinear grid, which ref_assets cannot store; {_REGRID}"


def _span(variable: xr.Variable) -> str:
    values = np.asarray(variable.values)
    return f"{values.min():g}..{values.max():g}" if values.size else "none"


def to_standard_grid(data: xr.Dataset) -> xr.Dataset:
    """Standard axis names, longitudes wrapped into -180..180 and ascending, latitudes
    descending."""
    data = standard_names(data)
    x = data["x"].values
    if x.size and np.nanmax(x) > 180.0:
        data = data.assign_coords(x=data["x"].copy(data=((x + 180.0) % 360.0) - 180.0))
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

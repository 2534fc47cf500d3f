"""Writing an extraction block by block: NetCDF, Zarr or CSV, into a local path.

Each block of periods becomes a small `xarray.Dataset` (`block_dataset`) that the format's
writer adds to the output: the first block creates it, the others append along time, so memory
holds one block whatever the request's length.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr

from ref_assets.extract.plan import Block, ExtractionPlan

if TYPE_CHECKING:
    import xarray as xr

# Attributes the store keeps for itself or that the writers set.
_DROPPED_ATTRIBUTES = {"ref_assets", "_FillValue", "coordinates"}


def block_dataset(plan: ExtractionPlan, block: Block, values: dict[str, np.ndarray]) -> xr.Dataset:
    """``values`` of ``block`` with their coordinates and the store's attributes."""
    import xarray as xr

    group = zarr.open_group(plan.session.store, mode="r")
    times = group["time"][block.first : block.stop].astype("datetime64[s]")
    coords: dict = {"time": ("time", times, {"standard_name": "time", "axis": "T"})}
    for dim in plan.extra_sizes:
        coords[dim] = (dim, group[dim][:], _attributes(group[dim].attrs))
    if plan.is_points:
        lon, lat = zip(*plan.request.points, strict=True)  # type: ignore[misc]
        coords["point"] = ("point", np.arange(len(lon)))
        coords["lon"] = ("point", np.asarray(lon), {"long_name": "longitude asked for"})
        coords["lat"] = ("point", np.asarray(lat), {"long_name": "latitude asked for"})
        coords["x"] = ("point", plan.x[plan.x_index], _attributes(group["x"].attrs))
        coords["y"] = ("point", plan.y[plan.y_index], _attributes(group["y"].attrs))
        space: tuple[str, ...] = ("point",)
    else:
        x_attributes = _attributes(group["x"].attrs)
        if plan.request.crosses_antimeridian:
            x_attributes["comment"] = "east of the antimeridian as longitude + 360"
        coords["y"] = ("y", plan.y[plan.y_index], _attributes(group["y"].attrs))
        coords["x"] = ("x", plan.output_x(), x_attributes)
        space = ("y", "x")
    coords["spatial_ref"] = ((), np.int32(0), _attributes(group["spatial_ref"].attrs))  # the CRS
    data_vars = {
        name: (
            ("time", *plan.variable_dims[name][1:-2], *space),
            array,
            _attributes(group[name].attrs),
        )
        for name, array in values.items()
    }
    attributes = {
        **_attributes(group.attrs),
        # Where the values came from, in the file itself (the record beside it says more).
        "ref_assets_dataset": plan.request.dataset,
        "ref_assets_snapshot": plan.snapshot,
        "ref_assets_release": plan.request.tag or "",
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attributes)


def _attributes(attributes) -> dict:
    """Attributes NetCDF can hold: nested values as JSON text."""
    out = {}
    for key, value in dict(attributes).items():
        if key in _DROPPED_ATTRIBUTES:
            continue
        if isinstance(value, (dict, list)) or value is None:
            value = json.dumps(value)
        out[key] = value
    return out


def _time_encoding() -> dict:
    return {
        "units": "seconds since 1970-01-01T00:00:00",
        "calendar": "proleptic_gregorian",
        "dtype": "int64",
    }


class NetcdfWriter:
    """NetCDF-4 with an unlimited time dimension: the first block through xarray (its
    encodings), the others appended with netCDF4 at the next time index."""

    block_share = 1  # of `BLOCK_BYTES`: the block's values are held once

    def __init__(self, path: Path, plan: ExtractionPlan) -> None:
        self.path, self.plan, self.length = path, plan, 0

    def write(self, data: xr.Dataset) -> None:
        if self.length == 0:
            encoding: dict = {"time": _time_encoding()}
            for name, variable in data.data_vars.items():
                chunks = [1 if dim == "time" else size for dim, size in variable.sizes.items()]
                if self.plan.is_points:  # a series is read whole: a year of it a chunk
                    chunks[0] = min(365, max(data.sizes["time"], 1))
                encoding[name] = {"zlib": True, "complevel": 4, "chunksizes": tuple(chunks)}
            data.to_netcdf(self.path, engine="netcdf4", unlimited_dims=["time"], encoding=encoding)
        else:
            import netCDF4

            with netCDF4.Dataset(self.path, "a") as nc:
                stop = self.length + data.sizes["time"]
                seconds = data["time"].values.astype("datetime64[s]").astype("int64")
                nc.variables["time"][self.length : stop] = seconds
                for name, variable in data.data_vars.items():
                    nc.variables[name][self.length : stop] = variable.values
        self.length += data.sizes["time"]


class ZarrWriter:
    """A Zarr v3 directory: the first block creates it, the others append along time. A chunk
    is as many periods of the whole subset as fit `CHUNK_BYTES` (at least one)."""

    block_share = 1
    CHUNK_BYTES = 8 * 2**20

    def __init__(self, path: Path, plan: ExtractionPlan) -> None:
        self.path, self.plan, self.started = path, plan, False

    def write(self, data: xr.Dataset) -> None:
        if not self.started:
            encoding: dict = {"time": {**_time_encoding(), "chunks": (data.sizes["time"],)}}
            for name, variable in data.data_vars.items():
                period = variable[0].nbytes or 1
                periods = max(1, min(data.sizes["time"], self.CHUNK_BYTES // period))
                encoding[name] = {"chunks": (periods, *variable.shape[1:])}
            data.to_zarr(self.path, mode="w-", encoding=encoding, consolidated=False, zarr_format=3)
            self.started = True
        else:
            data.to_zarr(self.path, append_dim="time", consolidated=False)


class CsvWriter:
    """One row per time (and extra-dimension value) and cell or point; a column per variable.
    Times are ISO 8601 (UTC)."""

    # A value becomes a row of a data frame (its time, cell and text): blocks of 1/16th.
    block_share = 16

    def __init__(self, path: Path, plan: ExtractionPlan) -> None:
        self.path, self.plan, self.started = path, plan, False

    def write(self, data: xr.Dataset) -> None:
        frame = data.to_dataframe().reset_index()
        if self.plan.is_points:
            leading = ["time", "point", "lon", "lat", "x", "y"]
        else:
            leading = ["time", "y", "x"]
        leading += [dim for dim in self.plan.extra_sizes if dim in frame.columns]
        frame = frame[leading + [name for name in self.plan.variables]]
        frame["time"] = frame["time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        frame.to_csv(
            self.path, mode="a" if self.started else "w", header=not self.started, index=False
        )
        self.started = True


WRITERS = {"netcdf": NetcdfWriter, "zarr": ZarrWriter, "csv": CsvWriter}

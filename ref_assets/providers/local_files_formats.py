"""Reading one file of a `local_files` archive: NetCDF (netCDF4/HDF5 and netCDF3), GRIB (see
`local_files_grib`) or GeoTIFF, from its bytes or a local path, as an xarray Dataset with CF
decoding applied (packed integers to float, fill values to NaN) but times left numeric; mapping a
file's time steps, in any CF calendar whose dates are real dates, onto a dataset's periods; and a
step's source flags (ERA5's ``expver``).

>>> with open_source(payload) as raw:  # doctest: +SKIP
...     steps = period_steps(raw["time"], PeriodType.DAILY)  # {Period(daily, 2024-01-01): 0, ...}
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Collection, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta

import cftime
import netCDF4
import numpy as np
import rasterio
import xarray as xr
from rasterio.io import MemoryFile

from ref_assets.periods import Period, PeriodType
from ref_assets.providers.local_files_grib import (
    EXPVER,
    GRIB_SIGNATURE,
    GribLayoutError,
    open_grib,
)

NETCDF_SIGNATURES = (b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF\r\n\x1a\n")
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
GEOTIFF = "GeoTIFF"  # the ``source_format`` attribute of datasets read from a GeoTIFF

# TIFF field types' sizes in bytes, and the tags of image data (strip or tile offsets -> sizes).
_TIFF_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
}
_TIFF_TYPE_SIZES |= {16: 8, 17: 8, 18: 8}
_TIFF_DATA_TAGS = {273: 279, 324: 325}

# netCDF-C and HDF5 are not thread-safe; every use of them here (open, reads through xarray, close)
# holds this lock. Reentrant, because xarray's reads take it again inside our section.
_NETCDF_LOCK = threading.RLock()


class SourceFileError(ValueError):
    """A file that decodes but cannot serve as a source; the message says what is wrong with it."""


@contextmanager
def open_source(source: bytes | str) -> Iterator[xr.Dataset]:
    """The variables of a NetCDF, GRIB or GeoTIFF file given as its bytes or a local path (lazily
    read for NetCDF and GRIB: only what the caller touches inside the ``with`` block is read).

    GeoTIFF bands become ``band_1``, ``band_2``, ... on ``y``/``x`` with nodata as NaN and band
    scales and offsets applied. Library errors (OSError, RuntimeError) mean a truncated or corrupt
    file. Truncation the libraries let pass is checked for: a NetCDF file must hold the last
    element of every variable (a truncated netCDF3 header still opens), and a GeoTIFF's bytes
    everything its directories point at (GDAL only warns of lost tags, such as the CRS). GRIB
    comes in the shape of NetCDF files: see `open_grib`.
    """
    if isinstance(source, bytes):
        head = source[:8]
    else:
        with open(source, "rb") as file:
            head = file.read(8)
    with ExitStack() as stack:
        if head.startswith(NETCDF_SIGNATURES):
            stack.enter_context(_NETCDF_LOCK)
            if isinstance(source, bytes):
                nc = netCDF4.Dataset("in-memory.nc", memory=source)
            else:
                nc = netCDF4.Dataset(source)
            stack.callback(nc.close)
            _check_complete(nc)
            store = xr.backends.NetCDF4DataStore(nc, lock=_NETCDF_LOCK)
            yield xr.open_dataset(store, decode_times=False, decode_timedelta=False)
        elif head.startswith(TIFF_SIGNATURES):
            if isinstance(source, bytes):
                _check_tiff_complete(source)
                src = stack.enter_context(stack.enter_context(MemoryFile(source)).open())
            else:
                src = stack.enter_context(rasterio.open(source))
            yield _tiff_dataset(src)
        elif head.startswith(GRIB_SIGNATURE):
            try:
                grib = stack.enter_context(open_grib(source))
            except GribLayoutError as err:
                raise SourceFileError(str(err)) from None
            yield grib
        else:
            raise SourceFileError(
                f"neither NetCDF, GRIB nor GeoTIFF (the file starts with {head!r})"
            )


def _check_complete(nc: netCDF4.Dataset) -> None:
    """Read the last element of every variable: the end of the file, for every layout."""
    for variable in nc.variables.values():
        if not variable.size:
            continue
        variable.set_auto_maskandscale(False)
        if variable.ndim:
            variable[(-1,) * variable.ndim]
        else:
            variable.getValue()


def _check_tiff_complete(payload: bytes) -> None:
    """Raise OSError unless every directory, tag value and strip or tile lies within ``payload``."""
    order = "<" if payload[:2] == b"II" else ">"
    big = payload[2:4] in (b"+\x00", b"\x00+")
    # Classic TIFF: 2-byte counts, 12-byte entries, 4-byte offsets; BigTIFF: 8, 20 and 8.
    count_format, entry_size, offset_format = ("Q", 20, "Q") if big else ("H", 12, "I")
    offset_size = struct.calcsize(offset_format)

    def unpack(fmt: str, at: int, count: int = 1) -> tuple[int, ...]:
        end = at + struct.calcsize(order + fmt * count)
        if end > len(payload):
            raise OSError(f"TIFF truncated: {end} bytes needed, {len(payload)} present")
        return struct.unpack_from(order + fmt * count, payload, at)

    directory, seen = unpack(offset_format, 8 if big else 4)[0], set()
    while directory and directory not in seen:
        seen.add(directory)
        (entries,) = unpack(count_format, directory)
        start = directory + struct.calcsize(order + count_format)
        values: dict[int, tuple[int, ...]] = {}
        for entry in range(start, start + entries * entry_size, entry_size):
            tag, kind = unpack("H", entry, 2)
            (count,) = unpack(offset_format, entry + 4)
            size = _TIFF_TYPE_SIZES.get(kind, 1) * count
            at = entry + 4 + offset_size
            if size > offset_size:  # the value lies elsewhere: at the offset stored here
                at = unpack(offset_format, at)[0]
                unpack("B", at + size - 1)
            if tag in _TIFF_DATA_TAGS or tag in _TIFF_DATA_TAGS.values():
                values[tag] = unpack({3: "H", 4: "I", 16: "Q"}.get(kind, "I"), at, count)
        for offsets_tag, sizes_tag in _TIFF_DATA_TAGS.items():
            for offset, size in zip(
                values.get(offsets_tag, ()), values.get(sizes_tag, ()), strict=True
            ):
                if size:
                    unpack("B", offset + size - 1)
        (directory,) = unpack(offset_format, start + entries * entry_size)


def _tiff_dataset(src: rasterio.DatasetReader) -> xr.Dataset:
    a, b, c, d, e, f = src.transform[:6]
    if b or d:
        raise SourceFileError("a rotated geotransform, which is not supported")
    if src.crs is None or not src.crs.is_geographic:
        raise SourceFileError(f"CRS {src.crs} is not geographic (longitude/latitude)")
    # Cell centres; a south-up file (e > 0) gives ascending y, which normalization flips.
    x = c + a * (np.arange(src.width) + 0.5)
    y = f + e * (np.arange(src.height) + 0.5)
    bands = {}
    for index in range(1, src.count + 1):
        values = src.read(index, masked=True).astype("float64").filled(np.nan)
        values = values * src.scales[index - 1] + src.offsets[index - 1]
        units = src.units[index - 1]
        bands[f"band_{index}"] = (("y", "x"), values, {"units": units} if units else {})
    # The CRS is geographic, so the geotransform's axes are latitude and longitude: say so.
    coords = {
        "y": ("y", y, {"standard_name": "latitude", "units": "degrees_north"}),
        "x": ("x", x, {"standard_name": "longitude", "units": "degrees_east"}),
    }
    return xr.Dataset(bands, coords=coords, attrs={"source_format": GEOTIFF})


def step_flags(
    data: xr.Dataset, index: int | None, names: Collection[str]
) -> tuple[xr.Dataset, dict[str, str]]:
    """The per-step source flags of the step at ``index`` along ``time`` (None: the only step),
    and ``data`` reduced to that step's slice of a flag dimension.

    The flag is ERA5's ``expver`` (``0001`` final, ``0005`` preliminary ERA5T; integers are
    written with four digits), in either shape ERA5 files carry it: a variable along time (the
    CDS's NetCDF since 2024), or a dimension whose slices each hold the steps of one expver,
    NaN elsewhere (older files): the slice of the variables ``names`` holding data at the step is
    selected and its expver recorded; none or several holding data is an error.
    """
    if EXPVER not in data.variables:
        return data, {}
    if EXPVER not in data.dims:
        flag = data[EXPVER]
        if "time" in flag.dims:
            flag = flag.isel(time=index or 0)
        return data, {EXPVER: _flag_text(flag.values.item())}
    if EXPVER not in data.coords:
        raise SourceFileError(f"dimension {EXPVER!r} has no coordinate to tell its slices apart")
    holding = []
    for position in range(data.sizes[EXPVER]):
        step = data[[n for n in names if n in data and EXPVER in data[n].dims]].isel(
            {EXPVER: position}
        )
        if "time" in step.dims:
            step = step.isel(time=index or 0)
        if any(np.isfinite(array.values).any() for array in step.data_vars.values()):
            holding.append(position)
    flags = [_flag_text(data[EXPVER].values[p].item()) for p in holding]
    if len(holding) != 1:
        raise SourceFileError(
            f"the time step has data in {len(holding)} slices of dimension {EXPVER!r} "
            f"({flags}), so whether it is final or preliminary cannot be told: each step needs "
            "data in exactly one slice (the CDS's current files carry one expver per step)"
        )
    return data.isel({EXPVER: holding[0]}), {EXPVER: flags[0]}


def _flag_text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, int | float) and float(value).is_integer():
        return f"{int(value):04d}"
    return str(value).strip()


def period_steps(time: xr.DataArray, period_type: PeriodType) -> dict[Period, int]:
    """The position of each period's time step along ``time`` (a CF time coordinate with numeric
    values, ``units`` and an optional ``calendar``).

    A step maps by its date fields (year, month, day, hour as the period type needs), so a
    ``noleap`` or ``julian`` day is the real day of the same name, a noleap archive simply has no
    29 February, and a ``360_day`` month is the real month. Daily or hourly ``360_day`` data, a
    step whose date does not exist in the real calendar, and two steps in one period are errors.
    """
    units = time.attrs.get("units")
    calendar = str(time.attrs.get("calendar", "standard")).lower()
    if not units:
        raise SourceFileError(f"time coordinate {time.name!r} has no units")
    if calendar == "360_day" and period_type in (PeriodType.DAILY, PeriodType.HOURLY):
        raise SourceFileError(
            f"calendar {calendar!r}: its 30-day months do not map onto real "
            f"{period_type.value} periods"
        )
    try:
        stamps = cftime.num2date(
            np.atleast_1d(time.values), units, calendar, only_use_cftime_datetimes=True
        )
    except (ValueError, TypeError) as err:
        raise SourceFileError(
            f"time coordinate does not decode ({units!r}, calendar {calendar!r}): {err}"
        ) from None
    steps: dict[Period, int] = {}
    for position, stamp in enumerate(stamps):
        try:
            period = Period(period_type, period_start(_nearest_minute(stamp), period_type))
        except ValueError:
            raise SourceFileError(
                f"time step {stamp.isoformat()} (calendar {calendar!r}) is not a real date, so "
                f"it falls in no {period_type.value} period"
            ) from None
        if period in steps:
            raise SourceFileError(
                f"time steps {steps[period]} and {position} both fall in period {period.key}: "
                f"the file's steps are finer than the dataset's {period_type.value} periods"
            )
        steps[period] = position
    return steps


def _nearest_minute(stamp: cftime.datetime) -> cftime.datetime:
    """Float time values decode a hair early (5/24 days as float32 is 04:59:59.99): round to
    the minute, finer than any period, before asking which period a step is in."""
    seconds = stamp.second + stamp.microsecond / 1e6
    return stamp + timedelta(seconds=(60 if seconds >= 30 else 0) - seconds)


def period_start(stamp: cftime.datetime | datetime, period_type: PeriodType) -> datetime:
    """The start of the period of type ``period_type`` holding ``stamp``, from its date fields
    (ValueError when they are no real date)."""
    if period_type is PeriodType.YEARLY:
        return datetime(stamp.year, 1, 1)
    if period_type is PeriodType.MONTHLY:
        return datetime(stamp.year, stamp.month, 1)
    hour = stamp.hour if period_type is PeriodType.HOURLY else 0
    return datetime(stamp.year, stamp.month, stamp.day, hour)

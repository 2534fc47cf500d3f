"""Reading a GRIB file (edition 1 or 2) of a `local_files` archive through cfgrib, in the shape
the NetCDF files of the archive have: one time axis ``valid_time`` (numeric seconds since 1970
with CF ``units`` and ``calendar``, as NetCDF read with ``decode_times=False``), ``latitude`` and
``longitude`` axes, variables by their cfgrib short names (``t2m``, ``tp``, ...) in GRIB's units.

- Time: cfgrib is asked for ``valid_time`` as the time dimension, so an analysis (reference
  time = valid time) and a forecast (reference time + step; ERA5's accumulations) give the same
  axis. The forecast reference ``time`` and ``step`` are not kept.
- Several variables: cfgrib splits a file into one dataset per level type (``2t`` on
  ``heightAboveGround``, ``tp`` on ``surface``); they are merged back into one dataset, which
  requires them to share their valid times exactly (otherwise the file is refused, naming each
  variable's steps).
- ``expver`` (ERA5's experiment version, in ECMWF's local section) becomes a coordinate along
  ``valid_time``, as in the CDS's NetCDF files.
- Levels: a level coordinate with one value (``heightAboveGround = 2``, ``surface``, one
  ensemble ``number``) is dropped; one with several (``isobaricInhPa``) stays a dimension.
- No index files: cfgrib writes ``<file>.<hash>.idx`` beside the data by default; here the index
  lives in memory only (``indexpath=""``). A file given as bytes is decoded from an anonymous
  in-memory file (Linux ``memfd``), else from a private temporary file, deleted afterwards; the
  latest one stays decoded for the next period of the same file (see `_shared`).
- A truncated or corrupt message fails the file (cfgrib's default would skip it with a warning,
  silently losing its time step).

ecCodes is loaded on the first GRIB read only, and always after pyproj and rasterio, imported at
the top of this module: the ecCodes wheels bundle a PROJ of their own, and loading it first can
crash the process at exit.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

# Loaded before ecCodes in every process that reads GRIB (see the module docstring); the isort
# split keeps them above the imports that follow.
import pyproj  # noqa: F401
import rasterio  # noqa: F401

# isort: split

import cftime
import xarray as xr

GRIB_SIGNATURE = b"GRIB"
TIME = "valid_time"
AXES = (TIME, "latitude", "longitude")
EXPVER = "expver"  # ERA5's per-step experiment version (see local_files_formats.step_flags)
PRELIMINARY_EXPVER = "0005"  # ERA5T, replaced by the final ERA5 (0001) two to three months on
_UNDEFINED = "undef"  # cfgrib's value of a key that a message lacks


class GribReadError(OSError):
    """ecCodes could not read a message of the file: it is truncated or corrupt."""


class GribLayoutError(ValueError):
    """A GRIB file that decodes but does not fit one time/latitude/longitude dataset."""


@contextmanager
def open_grib(source: bytes | str) -> Iterator[xr.Dataset]:
    """The file (its bytes or a local path) as one lazily read dataset; see the module docstring.
    ecCodes errors, here or in the caller's block (lazy reads), become `GribReadError`."""
    from gribapi.errors import GribInternalError  # loads ecCodes: after pyproj and rasterio

    try:
        with _decoded(source) if isinstance(source, str) else _shared(source) as dataset:
            yield dataset
    except (GribInternalError, EOFError) as err:
        raise GribReadError(f"ecCodes {type(err).__name__}: {err}") from None


@contextmanager
def _decoded(source: bytes | str) -> Iterator[xr.Dataset]:
    import cfgrib  # on first use only, and after pyproj and rasterio (see above)

    with _local_path(source) as path:
        datasets: list[xr.Dataset] = []
        try:
            datasets = cfgrib.open_datasets(
                path,
                backend_kwargs={
                    "indexpath": "",
                    "time_dims": (TIME,),
                    "squeeze": False,  # single-valued levels are dropped below, axes kept
                    "errors": "raise",
                    # ERA5's expver (final or preliminary), per message: see `step_flags`
                    "extra_coords": {EXPVER: TIME},
                },
                decode_times=False,
                decode_timedelta=False,
            )
            yield _merged(datasets)
        finally:
            for dataset in datasets:
                dataset.close()


class _SharedGrib:
    """A file given as bytes, decoded and kept open while it is in use or the latest one."""

    def __init__(self, digest: bytes, payload: bytes) -> None:
        self.digest = digest
        self.users = 1
        self.retired = False
        with ExitStack() as opening:  # closes what was opened if decoding fails
            self.dataset = opening.enter_context(_decoded(payload))
            self._resources = opening.pop_all()  # decoded: closed by `release` or `retire`

    def release(self) -> None:
        with _LATEST_LOCK:
            self.users -= 1
            done = self.retired and not self.users
        if done:
            self._resources.close()

    def retire(self) -> None:
        with _LATEST_LOCK:
            self.retired = True
            done = not self.users
        if done:
            self._resources.close()


# The periods of a multi-period file are fetched one by one, each from the file's bytes, and
# cfgrib indexes the whole file on every open (milliseconds per message: seconds for a month of
# hourly fields). So the latest file given as bytes stays decoded, keyed by its SHA-256, until
# another replaces it: one file's bytes held once more in memory.
_latest: _SharedGrib | None = None
_LATEST_LOCK = threading.Lock()


@contextmanager
def _shared(payload: bytes) -> Iterator[xr.Dataset]:
    global _latest
    digest = hashlib.sha256(payload).digest()
    with _LATEST_LOCK:
        shared = _latest if _latest is not None and _latest.digest == digest else None
        if shared is not None:
            shared.users += 1
    if shared is None:
        shared = _SharedGrib(digest, payload)
        with _LATEST_LOCK:
            replaced, _latest = _latest, shared
        if replaced is not None:
            replaced.retire()
    try:
        yield shared.dataset
    finally:
        shared.release()


@contextmanager
def _local_path(source: bytes | str) -> Iterator[str]:
    """A path cfgrib can open: ``source`` itself, or a private copy of its bytes that is gone
    when the block ends."""
    if isinstance(source, str):
        yield source
    elif hasattr(os, "memfd_create"):  # Linux: in memory, freed with its descriptor
        descriptor = os.memfd_create("ref-assets-grib", os.MFD_CLOEXEC)
        try:
            with open(descriptor, "wb", closefd=False) as file:
                file.write(source)
            yield f"/proc/self/fd/{descriptor}"
        finally:
            os.close(descriptor)
    else:
        with tempfile.NamedTemporaryFile(suffix=".grib", delete_on_close=False) as file:
            file.write(source)
            file.close()
            yield file.name


def _merged(datasets: list[xr.Dataset]) -> xr.Dataset:
    """cfgrib's datasets (one per level type) as one, on shared valid times."""
    cleaned = [_cleaned(dataset) for dataset in datasets]
    if any(not dataset[TIME].equals(cleaned[0][TIME]) for dataset in cleaned):
        steps = "; ".join(
            f"{', '.join(map(str, dataset.data_vars))}: {_span(dataset)}" for dataset in cleaned
        )
        raise GribLayoutError(
            f"its variables are at different valid times ({steps}); put variables with "
            "different time steps in different files"
        )
    try:
        return xr.merge(cleaned, join="exact", compat="equals", combine_attrs="drop_conflicts")
    except ValueError as err:
        raise GribLayoutError(f"its variables do not merge into one dataset: {err}") from None


def _cleaned(dataset: xr.Dataset) -> xr.Dataset:
    """Single-valued levels and every coordinate that is no dimension dropped, except ``expver``
    where the messages have one; a grid that is not on latitude/longitude axes refused."""
    single = [dim for dim, size in dataset.sizes.items() if size == 1 and dim not in AXES]
    dataset = dataset.squeeze(single, drop=True)
    for name, variable in dataset.data_vars.items():
        if not {"latitude", "longitude"} <= set(variable.dims):
            grid_type = variable.attrs.get("GRIB_gridType", "unknown")
            raise GribLayoutError(
                f"variable {name!r} is on a {grid_type} grid with dimensions {variable.dims}, "
                "not on latitude/longitude axes: regrid it to a regular latitude/longitude grid "
                "first"
            )
    if EXPVER in dataset.coords and (dataset[EXPVER] == _UNDEFINED).all():
        dataset = dataset.drop_vars(EXPVER)  # messages without ECMWF's local section
    return dataset.drop_vars(
        [name for name in dataset.coords if name not in dataset.dims and name != EXPVER]
    )


def _span(dataset: xr.Dataset) -> str:
    times = dataset[TIME].values
    if not times.size:
        return "no step"
    first, last = cftime.num2date(
        times[[0, -1]], dataset[TIME].attrs["units"], dataset[TIME].attrs.get("calendar")
    )
    if times.size == 1:
        return f"one step at {first.isoformat()}"
    return f"{times.size} steps from {first.isoformat()} to {last.isoformat()}"

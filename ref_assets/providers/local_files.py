"""``local_files``: an operator's own archive of NetCDF (netCDF4 or netCDF3), GRIB or GeoTIFF files,
in a local directory or at an fsspec URL (``s3://bucket/prefix``; ``memory://`` in tests).

Files are chosen by a pattern relative to the archive: either with date placeholders (``{year}``,
``{month}``, ``{day}``, ``{hour}``) or a plain glob. A file holds one period or several (a monthly
file of daily steps, a yearly file of monthly steps): a period's step is found by the file's own
time coordinate (``time``, ``valid_time``, ...; see `period_steps` for calendars) or, in a file
without one, by the placeholders of its name.

Parameters (``params`` in the spec)::

    path: s3://my-bucket/era5/t2m            # a directory or an fsspec URL
    pattern: "{year}/t2m_{year}{month}.nc"   # or a glob such as "*.nc"
    variables: {t2m: t2m}                    # store name -> name in the files (GeoTIFF: band_1)
    bbox: [28.0, -12.0, 52.0, 15.0]          # optional: west, south, east, north
    storage_options: {anon: true}            # optional: passed to fsspec

The archive is listed once per provider instance, on first use; symbolic links to files are
files (read through the link), and a broken link, or a link or directory where a period's file is
expected, fails that period naming the link and its target. When each file holds one period,
availability comes from the file names alone (so a broken link's period is listed, and fails when
fetched); otherwise only the headers of files that may hold the asked periods are opened (for
local files; remote files are read whole). The grid is the first readable file's (north up,
longitudes in -180..180, cut to ``bbox``; only a regular latitude/longitude grid, see
`ref_assets.providers.normalize`) and every file read must match it; an unreadable file fails its
own periods only. A source item is the whole file: its sha256 is of exactly the bytes decoded.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, ClassVar

import fsspec
import numpy as np
import xarray as xr
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ref_assets.periods import Period
from ref_assets.providers.http import SourceNotFoundError, SourceUnavailableError
from ref_assets.providers.local_files_formats import (
    GEOTIFF,
    SourceFileError,
    open_source,
    period_start,
    period_steps,
    step_flags,
)
from ref_assets.providers.local_files_grib import EXPVER, PRELIMINARY_EXPVER
from ref_assets.providers.local_files_names import FINENESS, FileNamePattern
from ref_assets.providers.normalize import (
    GridShapeError,
    grid_of,
    select_bbox,
    select_dimension,
    to_standard_grid,
)
from ref_assets.providers.protocol import (
    BoundingBox,
    Description,
    FetchedPeriod,
    Grid,
    ProviderError,
    SourceFingerprint,
    SourceItem,
    parse_params,
    periods_between,
)
from ref_assets.secrets import redact
from ref_assets.specs import DatasetSpec, VariableSpec

# Payloads kept per provider, so the periods of one multi-period file are read from one reading.
_CACHED_PAYLOADS = 2
# Unreadable files skipped, in path order, looking for the one the dataset's grid comes from.
_GRID_ATTEMPTS = 10


class LocalFilesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="a local directory or an fsspec URL")
    pattern: str = Field(min_length=1, description="file names relative to path")
    variables: dict[str, str] = Field(min_length=1, description="store name -> name in files")
    bbox: BoundingBox | None = None
    dimensions: dict[str, str] = Field(
        default_factory=dict,
        description="the spec's extra dimension -> its name in the files, where they differ",
    )
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("pattern")
    @classmethod
    def _pattern_parses(cls, pattern: str) -> str:
        FileNamePattern.parse(pattern)
        return pattern


@dataclass(frozen=True)
class ArchiveFile:
    path: str  # as the filesystem names it
    uri: str  # with its protocol: what source items and messages show
    named: Period | None  # the period its name's placeholders spell (None under a glob)
    broken: str | None = None  # why the entry is no file to read (a broken link), as a message


class UnreadableFileError(ProviderError):
    """A file of the archive that cannot be read (a broken link, a truncated or corrupt file,
    neither NetCDF nor GeoTIFF): it fails its own periods, never the dataset's grid."""


class LocalFilesProvider:
    """Periods from an archive of NetCDF, GRIB or GeoTIFF files; see the module docstring."""

    name: ClassVar[str] = "local_files"
    extra_dimensions: ClassVar[bool] = True  # pressure levels, members... (see `_values`)
    version: ClassVar[str] = "1"

    def __init__(self, spec: DatasetSpec) -> None:
        self.params = parse_params(LocalFilesParams, spec)
        self.spec = spec
        self.pattern = FileNamePattern.parse(self.params.pattern)
        declared = sorted(v.name for v in spec.variables)
        if sorted(self.params.variables) != declared:
            raise ProviderError(
                f"{spec.id}: params.variables maps {sorted(self.params.variables)}, but the spec "
                f"declares {declared}: map each spec variable to its name in the files"
            )
        undeclared = sorted(set(self.params.dimensions) - set(spec.dimensions_by_name))
        if undeclared:
            raise ProviderError(
                f"{spec.id}: params.dimensions maps {undeclared}, which the spec does not "
                f"declare under `dimensions` (declared: {sorted(spec.dimensions_by_name)})"
            )
        granularity = self.pattern.granularity
        if granularity is not None and FINENESS[granularity] > FINENESS[spec.period]:
            raise ProviderError(
                f"{spec.id}: params.pattern names {granularity.value} files, finer than the "
                f"dataset's {spec.period.value} periods (files are not aggregated)"
            )
        if self.pattern.text.lower().endswith((".tif", ".tiff")) and granularity != spec.period:
            raise ProviderError(
                f"{spec.id}: params.pattern: GeoTIFFs carry no time, so each must be named for "
                f"its {spec.period.value} period with placeholders down to that period"
            )
        # One lock for the lazy caches below: each is filled once, however many threads fetch.
        self._lock = threading.RLock()
        self._files: dict[str, ArchiveFile] | None = None
        self._grid: tuple[Grid, str] | None = None  # and the file it came from
        self._steps: dict[str, dict[Period, int]] = {}
        self._payloads: OrderedDict[str, tuple[bytes, SourceItem]] = OrderedDict()
        self._fingerprints: dict[str, SourceFingerprint] = {}  # of each file as it was read

    def describe(self) -> Description:
        return Description.from_spec(self.spec, self._dataset_grid()[0])

    def available_periods(self, first: Period, last: Period) -> list[Period]:
        wanted = [p for p in periods_between(first, last) if self._in_spec(p)]
        if not wanted:
            return []
        held = {
            period
            for file in self._files_overlapping(wanted[0].start, wanted[-1].end)
            for period in self._periods_in(file)
        }
        return [p for p in wanted if p in held]

    def latest_available(self) -> Period | None:
        end = Period(self.spec.period, self.spec.end).end if self.spec.end else datetime.max
        files = self._files_overlapping(self.spec.start, end)
        if self.pattern.granularity is None:
            return max(
                (p for f in files for p in self._periods_in(f) if self._in_spec(p)), default=None
            )
        # Named files do not overlap: the newest one holding a period of the range has the latest.
        for file in sorted(files, key=lambda f: f.named.start, reverse=True):
            periods = [p for p in self._periods_in(file) if self._in_spec(p)]
            if periods:
                return max(periods)
        return None

    def fingerprint(self, period: Period) -> SourceFingerprint | None:
        """The version of the file holding ``period``: its size and modification time (and
        ETag on object stores), from a stat, never a read; None when no file holds it. With
        date placeholders in the pattern the file is known from its name; with a glob, the
        archive's files are indexed first (headers read once per provider instance)."""
        where = f"{self.spec.id} period {period.key}"
        try:
            file = self._file_holding(period, where)
        except SourceNotFoundError:
            return None
        if file.broken:
            return None
        fs, _ = self._filesystem
        try:
            info = fs.info(file.path)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise SourceUnavailableError(
                f"{where}: cannot stat {redact(file.uri)}: {redact(str(err))}"
            ) from None
        return _stat_fingerprint(fs, file.path, info)

    def fetch(self, period: Period) -> FetchedPeriod:
        where = f"{self.spec.id} period {period.key}"
        file = self._file_holding(period, where)
        payload, source = self._read(file, where)
        # Before opening: inside, this thread holds the NetCDF lock and must not wait for ours.
        grid, grid_file = self._dataset_grid()
        with self._opened(file, where, payload) as data:
            self._check_grid(data, grid, grid_file, file, where)
            index = self._step_index(data, file, period, where)
            data, flags = step_flags(data, index, self.params.variables.values())
            variables = {
                variable.name: self._values(data, variable, index, where, file)
                for variable in self.spec.variables
            }
        # The version read: the stat taken with the bytes; an ERA5T step (expver 0005) is
        # marked preliminary, so its record says so until a changed file replaces it.
        fingerprint = replace(
            self._fingerprints[file.path], preliminary=flags.get(EXPVER) == PRELIMINARY_EXPVER
        )
        # Fresh numpy-backed variables: no encoding of the source (packing, chunks, compressors)
        # travels with the data.
        return FetchedPeriod(
            xr.Dataset(variables, coords=grid.coords()), (source,), flags, fingerprint
        )

    # -- the archive: its files, the periods they hold, their bytes

    @cached_property
    def _filesystem(self) -> tuple[fsspec.AbstractFileSystem, str]:
        try:
            fs, root = fsspec.core.url_to_fs(self.params.path, **self.params.storage_options)
        except (ImportError, ValueError) as err:
            raise ProviderError(
                f"{self.spec.id}: params.path {redact(self.params.path)}: {err}"
            ) from None
        return fs, root.rstrip("/")

    def _archive(self) -> dict[str, ArchiveFile]:
        """The files matching the pattern by path, in path order (listed once)."""
        with self._lock:
            if self._files is None:
                fs, root = self._filesystem
                found = self._listing(fs, root)
                self._files = {}
                for path, info in sorted(found.items()):
                    named = self.pattern.period_of(path[len(root) + 1 :])
                    if named or self.pattern.granularity is None:
                        file = _archive_file(fs, path, info, named)
                        if file is not None:
                            self._files[path] = file
            return self._files

    def _listing(self, fs: fsspec.AbstractFileSystem, root: str) -> dict[str, dict[str, Any]]:
        shown = redact(fs.unstrip_protocol(root))
        try:
            return fs.glob(f"{root}/{self.pattern.glob}", detail=True)
        except (FileNotFoundError, PermissionError) as err:  # a missing bucket, no access
            raise ProviderError(
                f"{self.spec.id}: cannot list the archive {shown}/{self.pattern.text} "
                f"({type(err).__name__}: {redact(str(err))}): check params.path and that "
                "params.storage_options give access to it"
            ) from None
        except ValueError as err:  # a malformed glob, such as "a**.nc"
            raise ProviderError(f"{self.spec.id}: params.pattern: {err}") from None
        except Exception as err:  # each fsspec backend fails its own way
            raise SourceUnavailableError(
                f"{self.spec.id}: cannot list the archive {shown}/{self.pattern.text} "
                f"({type(err).__name__}: {redact(str(err))}): check that params.path is right "
                "and reachable from here (network, endpoint in params.storage_options), then "
                "run again"
            ) from None

    def _files_overlapping(self, start: datetime, end: datetime) -> list[ArchiveFile]:
        return [
            f
            for f in self._archive().values()
            if f.named is None or (f.named.start < end and f.named.end > start)
        ]

    def _periods_in(self, file: ArchiveFile) -> Collection[Period]:
        if file.named is not None and file.named.type is self.spec.period:
            return {file.named}  # one period per file: the name says which
        with self._lock:
            if file.path not in self._steps:
                with self._opened(file, f"{self.spec.id} (indexing)") as data:
                    steps = self._time_steps(data)
                if steps is None:
                    raise ProviderError(
                        f"{self.spec.id}: {redact(file.uri)} has no time coordinate, so which "
                        f"periods it holds is unknown (name one file per period instead)"
                    )
                self._steps[file.path] = steps
            return self._steps[file.path]

    def _file_holding(self, period: Period, where: str) -> ArchiveFile:
        files = self._archive()
        fs, root = self._filesystem
        if self.pattern.granularity is None:
            holders, unreadable = [], []
            for file in files.values():
                try:
                    if period in self._periods_in(file):
                        holders.append(file)
                except UnreadableFileError as err:  # may hold it, but cannot serve it anyway
                    unreadable.append(str(err))
            if len(holders) > 1:
                uris = ", ".join(redact(f.uri) for f in holders)
                raise ProviderError(f"{where}: several files hold this period: {uris}")
            if not holders and unreadable:
                raise UnreadableFileError(
                    f"{where}: no readable file holds this period, and "
                    f"{len(unreadable)} file(s) that may hold it cannot be read ("
                    + "; ".join(unreadable)
                    + "): repair or remove them"
                )
            if not holders:
                raise SourceNotFoundError(
                    f"{where}: no file matching {redact(fs.unstrip_protocol(root))}/"
                    f"{self.pattern.text} holds this period"
                )
            return holders[0]
        named = Period(
            self.pattern.granularity, period_start(period.start, self.pattern.granularity)
        )
        path = f"{root}/{self.pattern.name_for(named)}"
        if path not in files:
            raise SourceNotFoundError(
                f"{where}: the expected file {redact(fs.unstrip_protocol(path))} is not in the "
                "archive"
            )
        return files[path]

    def _read(self, file: ArchiveFile, where: str) -> tuple[bytes, SourceItem]:
        """The file's bytes, read whole, and its source item (checksum of those very bytes)."""
        with self._lock:
            if file.path in self._payloads:
                self._payloads.move_to_end(file.path)
                return self._payloads[file.path]
        if file.broken:
            raise UnreadableFileError(f"{where}: {file.broken}")
        fs, _ = self._filesystem
        try:
            info = fs.info(file.path)
            payload = fs.cat_file(file.path)
        except FileNotFoundError:
            raise SourceNotFoundError(f"{where}: {redact(file.uri)} left the archive") from None
        except OSError as err:
            raise SourceUnavailableError(
                f"{where}: cannot read {redact(file.uri)}: {redact(str(err))}; check that it is "
                "reachable from here, then run again"
            ) from None
        fingerprint = _stat_fingerprint(fs, file.path, info)
        with self._lock:
            self._fingerprints[file.path] = fingerprint
        source = SourceItem.from_bytes(
            file.uri, payload, etag=fingerprint.etag, last_modified=fingerprint.last_modified
        )
        if file.named is None or file.named.type is not self.spec.period:
            with self._lock:
                self._payloads[file.path] = (payload, source)
                while len(self._payloads) > _CACHED_PAYLOADS:
                    self._payloads.popitem(last=False)
        return payload, source

    # -- decoding

    def _dataset_grid(self) -> tuple[Grid, str]:
        """The grid of the first readable file (after normalization and bbox), and that file's
        URI. Unreadable files are passed over (they fail their own periods); a grid that cannot
        be stored (curvilinear, not geographic) is the dataset's, and refused at once."""
        with self._lock:
            if self._grid is None:
                files = list(self._archive().values())
                if not files:
                    fs, root = self._filesystem
                    raise ProviderError(
                        f"{self.spec.id}: no file matches {self.pattern.text!r} under "
                        f"{redact(fs.unstrip_protocol(root))}"
                    )
                unreadable: list[str] = []
                for file in files[:_GRID_ATTEMPTS]:
                    try:
                        with self._opened(file, f"{self.spec.id} (grid)") as data:
                            self._grid = (grid_of(data), file.uri)
                        break
                    except UnreadableFileError as err:
                        unreadable.append(str(err))
                else:
                    raise ProviderError(
                        f"{self.spec.id}: no file to take the dataset's grid from: the first "
                        f"{len(unreadable)} of {len(files)} cannot be read ("
                        + "; ".join(unreadable)
                        + "): repair or remove them"
                    )
            return self._grid

    def _check_grid(
        self, data: xr.Dataset, grid: Grid, grid_file: str, file: ArchiveFile, where: str
    ) -> None:
        for axis, expected in (("y", grid.y), ("x", grid.x)):
            actual = np.asarray(data[axis].values, dtype="float64")
            spacing = np.abs(np.diff(expected)).min() if expected.size > 1 else 1.0
            if actual.shape != expected.shape or np.abs(actual - expected).max() > 1e-3 * spacing:
                raise ProviderError(
                    f"{where}: {redact(file.uri)} is not on the dataset's grid (that of "
                    f"{redact(grid_file)}): its {axis} has {actual.size} cells from {actual[0]:g} "
                    f"to {actual[-1]:g}, the grid's {expected.size} from {expected[0]:g} to "
                    f"{expected[-1]:g}"
                )

    @contextmanager
    def _opened(
        self, file: ArchiveFile, where: str, payload: bytes | None = None
    ) -> Iterator[xr.Dataset]:
        """The file with standard axes, north up and cut to the bbox; read from ``payload``, else
        (for the header) from the local path or the whole remote file. Any failure to read it,
        in here or in the caller's block, is a ProviderError naming the file."""
        if file.broken:
            raise UnreadableFileError(f"{where}: {file.broken}")
        if payload is not None:
            source: bytes | str = payload
        elif isinstance(self._filesystem[0], LocalFileSystem):
            source = file.path
        else:
            source = self._read(file, where)[0]
        try:
            with open_source(source) as raw:
                data = to_standard_grid(raw)
                yield select_bbox(data, self.params.bbox) if self.params.bbox else data
        except ProviderError:
            raise
        except GridShapeError as err:
            raise ProviderError(f"{where}: {redact(file.uri)}: {err}") from None
        except SourceFileError as err:
            raise UnreadableFileError(f"{where}: {redact(file.uri)}: {err}") from None
        except (OSError, RuntimeError, ValueError) as err:
            raise UnreadableFileError(
                f"{where}: {redact(file.uri)} cannot be read, it is truncated or corrupt "
                f"({type(err).__name__}: {err})"
            ) from None

    def _time_steps(self, data: xr.Dataset) -> dict[Period, int] | None:
        return period_steps(data["time"], self.spec.period) if "time" in data.variables else None

    def _step_index(
        self, data: xr.Dataset, file: ArchiveFile, period: Period, where: str
    ) -> int | None:
        """The position of ``period`` along the file's time axis (None: no time axis to pick)."""
        steps = self._time_steps(data)
        if steps is None:
            if file.named == period:
                return None  # the file is the period its name spells
            raise ProviderError(
                f"{where}: {redact(file.uri)} has no time coordinate, so which periods it holds "
                "is unknown (name one file per period instead)"
            )
        if period not in steps:
            held = sorted(steps)
            span = f"{held[0].key}..{held[-1].key}" if held else "no time step"
            if file.named == period:
                raise ProviderError(
                    f"{where}: {redact(file.uri)} is named for this period, but its time "
                    f"coordinate holds {span}"
                )
            raise SourceNotFoundError(
                f"{where}: {redact(file.uri)} has no time step in this period (it holds {span})"
            )
        return steps[period] if "time" in data.dims else None

    def _values(
        self,
        data: xr.Dataset,
        variable: VariableSpec,
        index: int | None,
        where: str,
        file: ArchiveFile,
    ) -> xr.DataArray:
        """One variable of one period on (*its extra dimensions, y, x), cut to the spec's
        values of those dimensions and read now, as float in the spec's units."""
        source_name, units = self.params.variables[variable.name], variable.units
        name = source_name
        if name not in data.data_vars:
            available = sorted(map(str, data.data_vars))
            if data.attrs.get("source_format") != GEOTIFF or len(available) != 1:
                raise ProviderError(
                    f"{where}: {redact(file.uri)} has no variable {source_name!r} "
                    f"(it has {available})"
                )
            name = available[0]  # a single-band GeoTIFF: its band, whatever the name
        array = data[name]
        if "time" in array.dims:
            if index is None and array.sizes["time"] != 1:
                raise ProviderError(
                    f"{where}: {redact(file.uri)}: variable {name!r} has {array.sizes['time']} "
                    "time steps but no time coordinate to tell them apart"
                )
            array = array.isel(time=index or 0)
        for dimension in variable.dimensions:
            source_dim = self.params.dimensions.get(dimension, dimension)
            try:
                array = select_dimension(array, self.spec.dimensions_by_name[dimension], source_dim)
            except GridShapeError as err:
                raise ProviderError(
                    f"{where}: {redact(file.uri)}: variable {name!r}: {err} (map the spec's "
                    f"dimension to the file's with params.dimensions: {{{dimension}: <name>}})"
                ) from None
        dims = (*variable.dimensions, "y", "x")
        extra = [dim for dim in array.dims if dim not in dims]
        if any(array.sizes[dim] != 1 for dim in extra):
            raise ProviderError(
                f"{where}: {redact(file.uri)}: variable {name!r} has dimensions {array.dims}; "
                f"declare {[d for d in extra if array.sizes[d] != 1]} under the spec's "
                "`dimensions` and the variable's `dimensions` to keep them (or select one value "
                "upstream)"
            )
        source_units = array.attrs.get("units")
        if source_units is not None and source_units != units:
            raise ProviderError(
                f"{where}: {redact(file.uri)}: variable {name!r} is in {source_units!r} but the "
                f"spec stores {units!r} (this provider does not convert units)"
            )
        array = array.squeeze(extra, drop=True).transpose(*dims)
        values = np.asarray(array.values)
        if not np.issubdtype(values.dtype, np.floating):
            values = values.astype("float64")
        coords = {d: array[d].values for d in variable.dimensions}
        return xr.DataArray(values, coords=coords, dims=dims, attrs={"units": units})

    def _in_spec(self, period: Period) -> bool:
        return period.start >= self.spec.start and (
            self.spec.end is None or period.start <= self.spec.end
        )


def _stat_fingerprint(
    fs: fsspec.AbstractFileSystem, path: str, info: dict[str, Any]
) -> SourceFingerprint:
    """A file's version from its listing entry: size, modification time (UTC) and ETag."""
    try:
        modified = fs.modified(path)
    except (NotImplementedError, OSError):
        modified = None
    if modified is not None and modified.tzinfo is None:
        modified = modified.replace(tzinfo=UTC)  # fsspec's naive times are UTC
    return SourceFingerprint(
        etag=info.get("ETag") or info.get("etag"),
        last_modified=modified.isoformat() if modified else None,
        size=info.get("size"),
    )


def _archive_file(
    fs: fsspec.AbstractFileSystem, path: str, info: dict[str, Any], named: Period | None
) -> ArchiveFile | None:
    """The listed entry ``path`` as a file of the archive, marked broken if it cannot be one
    where a file is expected; None for an entry that is no file (a directory a glob matched)."""
    uri = fs.unstrip_protocol(path)
    kind, broken = info["type"], None
    if info.get("islink"):
        kind, broken = _follow_link(fs, path, info)
    if kind == "directory" and named and not broken:  # named for a period: a file is expected
        what = "a link to a directory" if info.get("islink") else "a directory"
        broken = (
            f"the archive's entry {redact(uri)} is {what}, where a file is expected; replace it "
            "with the period's file or remove it"
        )
    return ArchiveFile(path, uri, named, broken) if kind == "file" or broken else None


def _follow_link(
    fs: fsspec.AbstractFileSystem, path: str, info: dict[str, Any]
) -> tuple[str, str | None]:
    """A symbolic link's type once followed (fsspec lists links as ``other``), and why it
    cannot be read (None: it can)."""
    target = str(info.get("destination", "?"))
    if isinstance(fs, LocalFileSystem):
        target = os.path.normpath(os.path.join(os.path.dirname(path), target))
    shown = f"the archive's link {redact(fs.unstrip_protocol(path))} points to {redact(target)}"
    try:
        return fs.info(path)["type"], None  # a path (not a listing entry) is followed
    except FileNotFoundError:
        return "other", f"{shown}, which does not exist; restore the target or remove the link"
    except OSError as err:  # a loop of links, a target it may not read
        return "other", f"{shown}, which cannot be followed ({err.strerror or err}); fix the link"

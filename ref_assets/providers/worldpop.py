"""``worldpop``: WorldPop yearly population counts, one GeoTIFF per country and year.

WorldPop publishes each release as a directory tree on ``https://data.worldpop.org``. The layouts
below are the ones WorldPop's own download links use (its HDX resources, its hub listings and
users' download scripts), e.g. ``.../Global_2000_2020/2019/KEN/ken_ppp_2019.tif`` and
``.../Global_2015_2030/R2025A/2025/MDG/v1/100m/constrained/mdg_pop_2025_CN_100m_R2025A_v1.tif``:

- ``global2`` (Global 2, release R2025A, 2015-2030 with projections, 3 arc-seconds ~100 m)::

      {base_url}/GIS/Population/Global_2015_2030/R2025A/{year}/{ISO3}/v1/100m/{model}/
          {iso3}_pop_{year}_{CN|UC}_100m_R2025A_v1.tif

  ``model`` is ``constrained`` (``CN``: people only where buildings are; the default) or
  ``unconstrained`` (``UC``), which WorldPop does not publish for every country.
- ``global1`` (Global 1, 2000-2020, unconstrained, ~100 m, not UN-adjusted)::

      {base_url}/GIS/Population/Global_2000_2020/{year}/{ISO3}/{iso3}_ppp_{year}.tif

  (Global 1's constrained estimates exist for 2020 only, in another tree: not served here.)

The files are float32 people per cell in EPSG:4326, north up, nodata -99999 (NaN here). The
grid of a country is the same in every year of a release: it is read once, lazily, from the
header of the first published year of the dataset (a ranged read of its first 64 KiB when the
server allows it), and every fetched year is checked against it. A year is fetched whole (HEAD
for its ETag, Last-Modified and size, then GET) and decoded from memory, so its sha256 is of
exactly the bytes decoded. Availability is one HEAD per year, one at a time, cached per
provider instance; so is `WorldPopProvider.fingerprint` (ETag, Last-Modified, size), which tells
the dataset's sensor when a year's file was replaced.

Parameters (``params`` in the spec)::

    release: global2                      # or global1
    country: KEN                          # ISO3 code, any case
    model: constrained                    # global2 only: constrained (default) or unconstrained
    bbox: [36.6, -1.45, 37.1, -1.15]      # optional clip: west, south, east, north (degrees)
    base_url: https://data.worldpop.org   # optional mirror with the same layout
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import xarray as xr
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ref_assets.periods import Period, PeriodType
from ref_assets.providers.http import HeadResult, HttpClient, SourceNotFoundError
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
from ref_assets.specs import DatasetSpec

if TYPE_CHECKING:
    from affine import Affine
    from rasterio.io import DatasetReader

DEFAULT_BASE_URL = "https://data.worldpop.org"
VARIABLE = "pop_total"
UNITS = "people"
RELEASE_YEARS: dict[str, tuple[int, int]] = {"global1": (2000, 2020), "global2": (2015, 2030)}
# GDAL writes a GeoTIFF's directory and georeferencing tags at its start; 64 KiB holds them with
# room to spare, so knowing the grid does not cost a whole country file.
HEADER_BYTES = 64 * 1024


class WorldPopParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    release: Literal["global2", "global1"] = "global2"
    country: str = Field(pattern=r"^[A-Za-z]{3}$", description="ISO 3166-1 alpha-3 code")
    model: Literal["constrained", "unconstrained"] | None = None
    base_url: str = Field(default=DEFAULT_BASE_URL, pattern=r"^https?://")
    bbox: BoundingBox | None = None

    @field_validator("country")
    @classmethod
    def _upper_case(cls, country: str) -> str:
        return country.upper()

    @model_validator(mode="after")
    def _consistent(self) -> WorldPopParams:
        if self.release == "global1" and self.model == "constrained":
            raise ValueError(
                "model: global1 is served unconstrained only (its constrained estimates cover "
                "2020 alone); use release global2 for constrained estimates"
            )
        return self

    @property
    def file_model(self) -> str:
        return self.model or ("constrained" if self.release == "global2" else "unconstrained")

    def url(self, year: int) -> str:
        """The URL of the country's file for ``year`` (upper-case ISO3 directory, lower-case
        file name, as WorldPop publishes them)."""
        upper, lower = self.country, self.country.lower()
        base = self.base_url.rstrip("/")
        if self.release == "global1":
            return f"{base}/GIS/Population/Global_2000_2020/{year}/{upper}/{lower}_ppp_{year}.tif"
        code = "CN" if self.file_model == "constrained" else "UC"
        return (
            f"{base}/GIS/Population/Global_2015_2030/R2025A/{year}/{upper}/v1/100m/"
            f"{self.file_model}/{lower}_pop_{year}_{code}_100m_R2025A_v1.tif"
        )


@dataclass(frozen=True)
class _Raster:
    """A GeoTIFF's size and georeferencing."""

    width: int
    height: int
    transform: Affine
    epsg: int | None

    @classmethod
    def of(cls, raster: DatasetReader) -> _Raster:
        """Of an open rasterio dataset."""
        epsg = raster.crs.to_epsg() if raster.crs else None
        return cls(raster.width, raster.height, raster.transform, epsg)

    @property
    def georeferenced(self) -> bool:
        return self.epsg is not None and not self.transform.is_identity

    def matches(self, other: _Raster) -> bool:
        # A thousandth of a cell, the tolerance batch.py allows on coordinates.
        precision = 1e-3 * abs(other.transform.a)
        return (self.width, self.height) == (other.width, other.height) and (
            self.transform.almost_equals(other.transform, precision)
        )

    def __str__(self) -> str:
        t = self.transform
        return f"{self.width}x{self.height} cells of {t.a:g} from ({t.c:g}, {t.f:g})"


@dataclass(frozen=True)
class _Layout:
    """The release's raster for the country (as read from ``origin``) and the window of it the
    dataset keeps."""

    origin: str
    raster: _Raster
    rows: slice
    cols: slice
    grid: Grid


class WorldPopProvider:
    """WorldPop yearly population counts for one country; see the module docstring."""

    name: ClassVar[str] = "worldpop"
    version: ClassVar[str] = "1"
    # One public server for every country's rasters: one run at a time by default.
    pool_limit: ClassVar[int] = 1

    def __init__(self, spec: DatasetSpec, *, http: HttpClient | None = None) -> None:
        self.params = parse_params(WorldPopParams, spec)
        if spec.period is not PeriodType.YEARLY:
            raise ProviderError(
                f"{spec.id}: period is {spec.period.value!r}; WorldPop publishes yearly files "
                "(use period: yearly)"
            )
        if [(v.name, v.units) for v in spec.variables] != [(VARIABLE, UNITS)]:
            raise ProviderError(
                f"{spec.id}: the worldpop provider delivers one variable, {VARIABLE!r} in "
                f"{UNITS!r}; the spec declares {[(v.name, v.units) for v in spec.variables]}"
            )
        self.spec = spec
        self.http = http or HttpClient()
        first, last = RELEASE_YEARS[self.params.release]
        end = spec.end.year if spec.end is not None else last
        self.years = range(max(first, spec.start.year), min(last, end) + 1)
        if not self.years:
            raise ProviderError(
                f"{spec.id}: the dataset's years ({spec.start.year}-{end}) lie outside WorldPop "
                f"{self.params.release} ({first}-{last})"
            )
        # fetch may run on several threads: each year is probed once, the grid once.
        self._lock = threading.RLock()
        self._heads: dict[int, HeadResult | None] = {}
        self._layout: _Layout | None = None

    def describe(self) -> Description:
        return Description.from_spec(self.spec, self._probe_layout().grid)

    def available_periods(self, first: Period, last: Period) -> list[Period]:
        return [
            period
            for period in periods_between(first, last)
            if period.start.year in self.years and self._head(period.start.year) is not None
        ]

    def latest_available(self) -> Period | None:
        for year in reversed(self.years):
            if self._head(year) is not None:
                return Period.from_key(PeriodType.YEARLY, str(year))
        return None

    def fingerprint(self, period: Period) -> SourceFingerprint | None:
        """The year's published version: one HEAD (ETag, Last-Modified, size), None when the
        year is not published. WorldPop replaces files in place when it corrects a release."""
        year = period.start.year
        head = self._head(year) if year in self.years else None
        return _fingerprint(head) if head is not None else None

    def fetch(self, period: Period) -> FetchedPeriod:
        year, key = period.start.year, period.key
        url = self.params.url(year)
        where = f"{self.spec.id} period {key}: {redact(url)}"
        first, last = RELEASE_YEARS[self.params.release]
        if not first <= year <= last:
            raise SourceNotFoundError(
                f"{self.spec.id} period {key}: WorldPop {self.params.release} covers "
                f"{first}-{last}; {year} is not in it"
            )
        layout = self._probe_layout()
        try:
            payload, head = self.http.download(url)
        except ProviderError as err:  # keep the class: retryable or not, as HttpClient said
            raise type(err)(f"{self.spec.id} period {key}: {err}") from None
        if head.size is not None and len(payload) != head.size:
            raise ProviderError(
                f"{where}: truncated download ({len(payload)} of {head.size} bytes)"
            )
        values = _decode(payload, layout, where)
        data = xr.Dataset(
            {VARIABLE: (("y", "x"), values, {"units": UNITS})}, coords=layout.grid.coords()
        )
        source = SourceItem.from_bytes(
            redact(url), payload, etag=head.etag, last_modified=head.last_modified
        )
        return FetchedPeriod(data, (source,), fingerprint=_fingerprint(head))

    def _head(self, year: int) -> HeadResult | None:
        """The HEAD of ``year``'s file, None if it is not published (cached)."""
        with self._lock:
            if year not in self._heads:
                url = self.params.url(year)
                try:
                    self._heads[year] = self.http.head(url)
                except SourceNotFoundError:
                    self._heads[year] = None
                except ProviderError as err:
                    raise type(err)(f"{self.spec.id}: checking {year}: {err}") from None
            return self._heads[year]

    def _probe_layout(self) -> _Layout:
        """The grid, from the first published year's header (once per instance)."""
        with self._lock:
            if self._layout is None:
                self._layout = self._read_layout()
            return self._layout

    def _read_layout(self) -> _Layout:
        for year in self.years:
            head = self._head(year)
            if head is None:
                continue
            url = self.params.url(year)
            where = f"{self.spec.id}: the grid from {redact(url)}"
            try:
                raster = None
                if head.accepts_ranges and head.size is not None and head.size > HEADER_BYTES:
                    raster = _georeference(self.http.get_range(url, 0, HEADER_BYTES - 1))
                    if raster is not None and not raster.georeferenced:
                        # GDAL opened the cut-off header but lost tags stored past it (a large
                        # striped file's offsets can fill the first 64 KiB).
                        raster = None
                if raster is None:  # a small file, no ranges, or a header beyond 64 KiB
                    raster = _georeference(self.http.get(url))
            except ProviderError as err:
                raise type(err)(f"{where}: {err}") from None
            if raster is None:
                raise ProviderError(f"{where}: not a readable GeoTIFF (truncated or corrupt)")
            return self._clip(redact(url), raster, where)
        raise ProviderError(
            f"{self.spec.id}: WorldPop {self.params.release} has no file for "
            f"{self.params.country} in {self.years[0]}-{self.years[-1]} (first: "
            f"{redact(self.params.url(self.years[0]))}); check the country code and base_url"
        )

    def _clip(self, origin: str, raster: _Raster, where: str) -> _Layout:
        t = raster.transform
        if raster.epsg != 4326 or t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
            raise ProviderError(
                f"{where}: expected a north-up EPSG:4326 raster, got EPSG:{raster.epsg} with "
                f"transform {tuple(t)[:6]}"
            )
        x = t.c + t.a * (np.arange(raster.width) + 0.5)
        y = t.f + t.e * (np.arange(raster.height) + 0.5)
        cols, rows = slice(0, x.size), slice(0, y.size)
        if self.params.bbox is not None:
            west, south, east, north = self.params.bbox
            # Cells whose centres lie in the box (a nanodegree of slack for float rounding).
            keep_x = np.flatnonzero((x >= west - 1e-9) & (x <= east + 1e-9))
            keep_y = np.flatnonzero((y >= south - 1e-9) & (y <= north + 1e-9))
            if not keep_x.size or not keep_y.size:
                raise ProviderError(
                    f"{where}: bbox {list(self.params.bbox)} holds no cell of the "
                    f"{self.params.country} grid (x {x.min():g}..{x.max():g}, "
                    f"y {y.min():g}..{y.max():g})"
                )
            cols = slice(int(keep_x[0]), int(keep_x[-1]) + 1)
            rows = slice(int(keep_y[0]), int(keep_y[-1]) + 1)
        return _Layout(origin, raster, rows, cols, Grid(y=y[rows], x=x[cols]))


def _fingerprint(head: HeadResult) -> SourceFingerprint:
    return SourceFingerprint(etag=head.etag, last_modified=head.last_modified, size=head.size)


def _georeference(payload: bytes) -> _Raster | None:
    """The size and georeferencing in a GeoTIFF's bytes (its header suffices), or None when
    they cannot be read from them."""
    # rasterio is imported where it is used: it is slow to load and most runs never need it.
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.io import MemoryFile

    try:
        with warnings.catch_warnings():  # a cut-off header: reported as not georeferenced
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with MemoryFile(payload) as memory, memory.open() as raster:
                return _Raster.of(raster)
    except RasterioError:
        return None


def _decode(payload: bytes, layout: _Layout, where: str) -> np.ndarray:
    """The values of a whole GeoTIFF file in the layout's window, float32 with nodata as NaN,
    after checking the file is on the layout's grid."""
    from rasterio.errors import RasterioError
    from rasterio.io import MemoryFile
    from rasterio.windows import Window

    try:
        with MemoryFile(payload) as memory, memory.open() as raster:
            found = _Raster.of(raster)
            if not found.matches(layout.raster):
                raise ProviderError(
                    f"{where}: grid mismatch: the file has {found}, but the grid read from "
                    f"{layout.origin} is {layout.raster}"
                )
            values = raster.read(
                1, window=Window.from_slices(layout.rows, layout.cols), masked=True
            )
    except RasterioError as err:
        raise ProviderError(
            f"{where}: not a readable GeoTIFF (truncated or corrupt): {err}"
        ) from None
    return values.astype("float32").filled(np.nan)

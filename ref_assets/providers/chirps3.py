"""``chirps3``: CHIRPS v3 daily precipitation from the Climate Hazards Center (UCSB), read as
bounding-box windows of the published GeoTIFFs over HTTP range requests.

Parameters (``params`` in the spec)::

    stage: final                    # final (published monthly), prelim (every pentad), or
                                    # auto: prelim days until their final file is published,
                                    # which then replaces them (a revision, see fingerprint)
    flavour: rnl                    # final only: rnl (ERA5-disaggregated, from 1981) or sat
                                    # (IMERG-disaggregated); prelim exists only as sat
    bbox: [28.0, -12.0, 42.0, 5.0]  # west, south, east, north (degrees), snapped outward to cells
    base_url: https://data.chc.ucsb.edu/products/CHIRPS/v3.0/daily
    source_grid:                    # the files' grid: quasi-global 0.05 degree by default
      bounds: [-180.0, -60.0, 180.0, 60.0]
      resolution: 0.05

File layout below ``base_url`` (checked against public users of the archive, e.g. the CHC's
CHIRPS v3 page https://chc.ucsb.edu/data/chirps3 for the products and the 60S-60N, 0.05 degree
domain, and code reading https://data.chc.ucsb.edu/products/CHIRPS/v3.0/daily/final/rnl/2026/
chirps-v3.0.rnl.2026.01.31.tif and .../daily/prelim/sat/YYYY/chirps-v3.0.prelim.YYYY.MM.DD.tif)::

    final/{flavour}/{YYYY}/chirps-v3.0.{flavour}.{YYYY}.{MM}.{DD}.tif
    prelim/sat/{YYYY}/chirps-v3.0.prelim.{YYYY}.{MM}.{DD}.tif

Values are mm/day; the files' no-data (-9999, the sea) becomes NaN. The newest published day is
found by HEAD requests walking back from yesterday (never an assumed publication lag), one at a
time and at most `LOOKBACK_DAYS`; `available_periods` HEADs the newest days of its range the same
way (with ``stage: auto``, a day counts as published at either stage). Each fetch is one HEAD
plus range GETs of the header and the window's tiles, and each file's
CRS, transform and size are checked against ``source_grid``. `Chirps3Provider.fingerprint` is
one HEAD (ETag, Last-Modified, size and the stage): a day stored from its prelim file differs
from its final one, so the dataset's sensor fetches it again once the final file is out.

>>> provider = Chirps3Provider(spec)  # doctest: +SKIP  (no network until asked)
>>> provider.latest_available()  # doctest: +SKIP
Period(type=<PeriodType.DAILY: 'daily'>, start=datetime.datetime(2025, 5, 31, 0, 0))
"""

from __future__ import annotations

import math
import threading
from typing import ClassVar, Literal

import numpy as np
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rasterio.crs import CRS
from rasterio.io import DatasetReader
from rasterio.windows import Window

from ref_assets.periods import Period, PeriodType
from ref_assets.providers.cog import open_remote_cog
from ref_assets.providers.http import HeadResult, HttpClient, SourceNotFoundError
from ref_assets.providers.protocol import (
    BoundingBox,
    Description,
    FetchedPeriod,
    Grid,
    ProviderError,
    SourceFingerprint,
    last_complete_period,
    parse_params,
    periods_between,
)
from ref_assets.secrets import redact
from ref_assets.specs import DatasetSpec

DEFAULT_BASE_URL = "https://data.chc.ucsb.edu/products/CHIRPS/v3.0/daily"
NODATA = -9999.0
UNITS = "mm/day"
# How far back from yesterday availability probing looks: final days come out a month at a time,
# around the third week of the next month (so up to ~56 days old); prelim two days after each
# pentad ends (up to ~8 days old). Both bounds leave slack for a late release.
LOOKBACK_DAYS = {"final": 62, "prelim": 20, "auto": 62}
# Georeferencing within this fraction of a cell is the same grid (files store float64 origins).
_GRID_TOLERANCE = 1e-6


class SourceGrid(BaseModel):
    """The grid every file of the product is on."""

    model_config = ConfigDict(extra="forbid")

    bounds: BoundingBox = (-180.0, -60.0, 180.0, 60.0)
    resolution: float = Field(default=0.05, gt=0, allow_inf_nan=False)

    @property
    def shape(self) -> tuple[int, int]:
        west, south, east, north = self.bounds
        return round((north - south) / self.resolution), round((east - west) / self.resolution)


class Chirps3Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: Literal["final", "prelim", "auto"] = "final"
    flavour: Literal["rnl", "sat"] | None = None
    bbox: BoundingBox
    base_url: str = DEFAULT_BASE_URL
    source_grid: SourceGrid = Field(default_factory=SourceGrid)

    @model_validator(mode="after")
    def _flavour_fits_stage(self) -> Chirps3Params:
        if self.stage == "prelim" and self.flavour == "rnl":
            raise ValueError("the prelim stage exists only as flavour 'sat'")
        if self.flavour is None:
            self.flavour = "sat" if self.stage == "prelim" else "rnl"
        return self

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages a day is looked for at, preferred first."""
        return ("final", "prelim") if self.stage == "auto" else (self.stage,)


class Chirps3Provider:
    """CHIRPS v3 daily precipitation over a bounding box; see the module docstring."""

    name: ClassVar[str] = "chirps3"
    version: ClassVar[str] = "1"
    # A peer's four parallel requests got its address banned: one run at a time (each fetching
    # `runs.fetch_workers` days) by default; see `ref_assets.pools`.
    pool_limit: ClassVar[int] = 1

    def __init__(self, spec: DatasetSpec, client: HttpClient | None = None) -> None:
        self.params = parse_params(Chirps3Params, spec)
        if spec.period is not PeriodType.DAILY:
            raise ProviderError(f"{spec.id}: CHIRPS v3 is read as daily periods, not {spec.period}")
        if len(spec.variables) != 1 or spec.variables[0].units != UNITS:
            raise ProviderError(
                f"{spec.id}: the chirps3 provider delivers one variable in {UNITS!r} "
                f"(the spec declares {[(v.name, v.units) for v in spec.variables]})"
            )
        self.spec = spec
        self.variable = spec.variables[0].name
        self.client = client or HttpClient()
        self.window, self.grid = _window_and_grid(spec.id, self.params)
        # HEAD answers (None: not published), kept for this instance.
        self._heads: dict[tuple[Period, str], HeadResult | None] = {}
        self._latest: Period | None = None
        self._latest_probed = False
        self._probe_lock = threading.Lock()
        self._latest_lock = threading.Lock()

    def url(self, period: Period, stage: str | None = None) -> str:
        """The file of ``period`` at ``stage`` (default: the spec's; `auto` means final)."""
        day = period.start
        stage = stage or self.params.stages[0]
        flavour = "sat" if stage == "prelim" else self.params.flavour
        product = "prelim" if stage == "prelim" else flavour
        return (
            f"{self.params.base_url.rstrip('/')}/{stage}/{flavour}/{day:%Y}/"
            f"chirps-v3.0.{product}.{day:%Y.%m.%d}.tif"
        )

    def describe(self) -> Description:
        return Description.from_spec(self.spec, self.grid)

    def latest_available(self) -> Period | None:
        """The newest published day, found by HEAD requests walking back from yesterday (within
        the spec's range). None when the dataset's range holds no published day yet."""
        with self._latest_lock:
            if not self._latest_probed:
                self._latest = self._walk_back()
                self._latest_probed = True
            return self._latest

    def available_periods(self, first: Period, last: Period) -> list[Period]:
        """Days of ``[first, last]`` up to the latest published one. The newest of them (at most
        `LOOKBACK_DAYS`, where a late or missing file would be) are each confirmed by a HEAD;
        older days are taken as published (the archive is continuous)."""
        latest = self.latest_available()
        if latest is None:
            return []
        candidates = [
            period
            for period in periods_between(first, last)
            if self.spec.start <= period.start and period <= latest
        ]
        confirmed = candidates[-LOOKBACK_DAYS[self.params.stage] :]
        older = candidates[: len(candidates) - len(confirmed)]
        return older + [period for period in confirmed if self._published(period)]

    def fingerprint(self, period: Period) -> SourceFingerprint | None:
        """The published version of the day: one HEAD per stage looked at (final first with
        ``stage: auto``), None when no file is published."""
        for stage in self.params.stages:
            head = self._head(period, stage)
            if head is not None:
                return SourceFingerprint(
                    etag=head.etag,
                    last_modified=head.last_modified,
                    size=head.size,
                    stage=stage,
                    preliminary=stage == "prelim",
                )
        return None

    def fetch(self, period: Period) -> FetchedPeriod:
        stage = self.params.stages[0]
        if self.params.stage == "auto" and self._head(period, "final") is None:
            stage = "prelim"
        url = self.url(period, stage)
        try:
            with open_remote_cog(self.client, url) as cog:
                self._check_georeferencing(cog.dataset, url)
                values = cog.read(self.window, nodata=NODATA)
                fingerprint = SourceFingerprint(
                    etag=cog.etag,
                    last_modified=cog.last_modified,
                    size=cog.cache.size,
                    stage=stage,
                    preliminary=stage == "prelim",
                )
        except SourceNotFoundError as err:
            raise SourceNotFoundError(
                f"{self.spec.id} period {period.key}: not published ({err})"
            ) from None
        except ProviderError as err:
            raise type(err)(f"{self.spec.id} period {period.key}: {err}") from None
        data = xr.Dataset(
            {self.variable: (("y", "x"), values, {"units": UNITS})}, coords=self.grid.coords()
        )
        return FetchedPeriod(data, (cog.source,), fingerprint=fingerprint)

    def _walk_back(self) -> Period | None:
        newest = last_complete_period(PeriodType.DAILY)
        if self.spec.end is not None:
            newest = min(newest, Period(PeriodType.DAILY, self.spec.end))
        lookback = LOOKBACK_DAYS[self.params.stage]
        for back in range(lookback):
            period = Period(PeriodType.DAILY, PeriodType.DAILY.at(-back, newest.start))
            if period.start < self.spec.start:
                return None  # nothing published within the dataset's range yet
            if self._published(period):
                return period
        raise ProviderError(
            f"{self.spec.id}: no CHIRPS v3 {self.params.stage} file published in the "
            f"{lookback} days up to {newest.key} (last tried {redact(self.url(period))}); "
            "is base_url right, or is the archive behind?"
        )

    def _published(self, period: Period) -> bool:
        """Whether the day is published at any stage looked at."""
        return any(self._head(period, stage) is not None for stage in self.params.stages)

    def _head(self, period: Period, stage: str) -> HeadResult | None:
        """The HEAD of the day's file at ``stage``, None if not published (remembered)."""
        with self._probe_lock:
            if (period, stage) not in self._heads:
                try:
                    head = self.client.head(self.url(period, stage))
                except SourceNotFoundError:
                    head = None
                self._heads[period, stage] = head
            return self._heads[period, stage]

    def _check_georeferencing(self, dataset: DatasetReader, url: str) -> None:
        """The file must be on the product's grid, or the window would be the wrong cells."""
        west, _, _, north = self.params.source_grid.bounds
        resolution = self.params.source_grid.resolution
        transform = dataset.transform
        expected = (resolution, 0.0, west, 0.0, -resolution, north)
        actual = (transform.a, transform.b, transform.c, transform.d, transform.e, transform.f)
        problems = []
        if dataset.crs is None or CRS.from_user_input(dataset.crs) != CRS.from_epsg(4326):
            problems.append(f"CRS {dataset.crs} (expected EPSG:4326)")
        if not np.allclose(actual, expected, rtol=0, atol=_GRID_TOLERANCE * resolution):
            problems.append(f"transform {tuple(round(v, 9) for v in actual)} (expected {expected})")
        if dataset.shape != self.params.source_grid.shape:
            problems.append(
                f"{dataset.shape[0]}x{dataset.shape[1]} cells "
                f"(expected {self.params.source_grid.shape[0]}x{self.params.source_grid.shape[1]})"
            )
        if problems:
            raise ProviderError(
                f"{redact(url)}: not on the CHIRPS v3 grid of this dataset: {'; '.join(problems)}"
            )


def _window_and_grid(dataset_id: str, params: Chirps3Params) -> tuple[Window, Grid]:
    """The source cells the bbox touches (snapped outward) and their grid."""
    west, south, east, north = params.bbox
    grid_west, _, _, grid_north = params.source_grid.bounds
    resolution = params.source_grid.resolution
    rows, cols = params.source_grid.shape
    # A bbox edge within a hair of a cell edge is on it (not a whole extra cell).
    slack = 1e-6
    col_start = max(math.floor((west - grid_west) / resolution + slack), 0)
    col_stop = min(math.ceil((east - grid_west) / resolution - slack), cols)
    row_start = max(math.floor((grid_north - north) / resolution + slack), 0)
    row_stop = min(math.ceil((grid_north - south) / resolution - slack), rows)
    if not (west < east and south < north) or col_start >= col_stop or row_start >= row_stop:
        raise ProviderError(
            f"{dataset_id}: params.bbox {list(params.bbox)} holds no cell of the CHIRPS v3 grid "
            f"{list(params.source_grid.bounds)} (need west < east, south < north, overlapping)"
        )
    grid = Grid.regular(
        west=grid_west + col_start * resolution,
        east=grid_west + col_stop * resolution,
        north=grid_north - row_start * resolution,
        south=grid_north - row_stop * resolution,
        resolution=resolution,
    )
    window = Window(col_start, row_start, col_stop - col_start, row_stop - row_start)
    return window, grid

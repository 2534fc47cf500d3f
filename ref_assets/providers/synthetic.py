"""``synthetic``: an offline provider of deterministic, realistic gridded fields.

Each spec variable picks its field by CF ``standard_name``:

- ``air_temperature`` (units ``degC`` or ``K``): a latitude profile, a seasonal cycle that flips
  between hemispheres, a diurnal cycle following local solar time (hourly datasets), a fixed
  "terrain" pattern and spatially smooth weather noise;
- ``precipitation_flux`` (units ``mm/day``): wet and dry cells, wetter near a seasonally migrating
  rain belt, gamma-distributed amounts.

The noise is seeded by the period and the parameters (not the dataset id), so a period is the
same bytes on every run, on every machine and in every dataset declared with the same parameters.
``land_only: true`` masks a fixed pseudo-ocean with NaN, as land-only products (ERA5-Land,
CHIRPS) do. The "source item" of a period is the canonical JSON of the generator's
inputs: its checksum changes exactly when the generated values would.

Parameters (``params`` in the spec)::

    bbox: [west, south, east, north]   # degrees, default [-20, -35, 55, 40]
    resolution: 0.5                     # degrees
    seed: 0
    land_only: false
"""

from __future__ import annotations

import hashlib
import json
from typing import ClassVar, Literal

import numpy as np
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field

from ref_assets.periods import Period, PeriodType
from ref_assets.providers.protocol import (
    BoundingBox,
    Description,
    FetchedPeriod,
    Grid,
    ProviderError,
    SourceItem,
    parse_params,
    periods_between,
)
from ref_assets.specs import DatasetSpec

_FIELD_UNITS: dict[str, tuple[str, ...]] = {
    "air_temperature": ("degC", "K"),
    "precipitation_flux": ("mm/day",),
}


class SyntheticParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bbox: BoundingBox = (-20.0, -35.0, 55.0, 40.0)
    resolution: float = Field(default=0.5, gt=0, allow_inf_nan=False)
    seed: int = 0
    land_only: bool = False


class SyntheticProvider:
    """Deterministic fields for demos and tests; see the module docstring."""

    name: ClassVar[str] = "synthetic"
    version: ClassVar[str] = "1"

    def __init__(self, spec: DatasetSpec) -> None:
        self.params = parse_params(SyntheticParams, spec)
        self.spec = spec
        self.fields: dict[str, Literal["air_temperature", "precipitation_flux"]] = {}
        for variable in spec.variables:
            standard_name = variable.attributes.get("standard_name")
            if standard_name not in _FIELD_UNITS:
                raise ProviderError(
                    f"{spec.id}: variable {variable.name!r} needs attributes.standard_name set "
                    f"to one of {sorted(_FIELD_UNITS)} for the synthetic provider"
                )
            if variable.units not in _FIELD_UNITS[standard_name]:
                raise ProviderError(
                    f"{spec.id}: variable {variable.name!r} ({standard_name}) has units "
                    f"{variable.units!r}; the synthetic provider gives "
                    f"{_FIELD_UNITS[standard_name]}"
                )
            self.fields[variable.name] = standard_name
        west, south, east, north = self.params.bbox
        try:
            self.grid = Grid.regular(
                west=west, south=south, east=east, north=north, resolution=self.params.resolution
            )
        except ValueError as err:
            raise ProviderError(f"{spec.id}: params.bbox: {err}") from None

    def describe(self) -> Description:
        return Description.from_spec(self.spec, self.grid)

    def available_periods(self, first: Period, last: Period) -> list[Period]:
        latest = self.latest_available()
        return [p for p in periods_between(first, last) if latest and p <= latest]

    def latest_available(self) -> Period | None:
        # Generated, not observed: like a projection, every period up to the spec's end exists.
        return self.spec.last_period()

    def fetch(self, period: Period) -> FetchedPeriod:
        inputs = {
            "generator": f"{self.name}/{self.version}",
            "period": period.key,
            "params": self.params.model_dump(mode="json"),
            "fields": self.fields,
        }
        payload = json.dumps(inputs, sort_keys=True).encode()
        lat, lon = np.meshgrid(self.grid.y, self.grid.x, indexing="ij")
        mask = _ocean(lat, lon, self.params.seed) if self.params.land_only else None
        variables = {}
        for name, standard_name in self.fields.items():
            # Each variable draws from its own stream: adding a variable changes no other.
            variable_inputs = {**inputs, "fields": {name: standard_name}}
            digest = hashlib.sha256(json.dumps(variable_inputs, sort_keys=True).encode()).digest()
            rng = np.random.default_rng(np.frombuffer(digest, np.uint32))
            if standard_name == "air_temperature":
                values = _air_temperature(period, lat, lon, rng, self.params.seed)
                if self.spec.variables_by_name[name].units == "K":
                    values = values + 273.15
            else:
                values = _precipitation(period, lat, rng)
            if mask is not None:
                values = np.where(mask, np.nan, values)
            variables[name] = (("y", "x"), values.astype("float32"))
        data = xr.Dataset(variables, coords=self.grid.coords())
        return FetchedPeriod(
            data, (SourceItem.from_bytes(f"synthetic://{self.spec.id}/{period.key}", payload),)
        )


def _fraction_of_year(period: Period) -> float:
    """Mid-period position in the year (0..1): hourly and daily use their own time, longer
    periods their middle, so a monthly field is that month's typical state."""
    mid = period.start + (period.end - period.start) / 2
    if period.type is PeriodType.HOURLY:
        mid = period.start
    day_of_year = mid.timetuple().tm_yday - 1 + mid.hour / 24
    return day_of_year / 365.25


def _smooth_noise(rng: np.random.Generator, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Weather-like noise: a few random large-scale waves plus a little cell-scale noise."""
    field = np.zeros_like(lat)
    for _ in range(4):
        k_lat, k_lon = rng.uniform(0.03, 0.15, size=2)
        phase_lat, phase_lon = rng.uniform(0, 2 * np.pi, size=2)
        field += (
            rng.normal(0, 1.0) * np.sin(k_lat * lat + phase_lat) * np.cos(k_lon * lon + phase_lon)
        )
    return field + rng.normal(0, 0.3, size=lat.shape)


def _air_temperature(
    period: Period, lat: np.ndarray, lon: np.ndarray, rng: np.random.Generator, seed: int
) -> np.ndarray:
    """2 m air temperature in degC."""
    climate = 27.0 - 0.25 * np.abs(lat) - 0.006 * lat**2
    season = np.cos(2 * np.pi * (_fraction_of_year(period) - 0.55)) * np.sign(lat)
    seasonal = 0.22 * np.abs(lat) * season
    terrain = -4.0 * np.clip(np.sin(lon / 9.0 + seed) * np.cos(lat / 7.0), 0, None)
    values = climate + seasonal + terrain + 1.5 * _smooth_noise(rng, lat, lon)
    if period.type is PeriodType.HOURLY:
        local_hour = (period.start.hour + lon / 15.0) % 24
        values += 5.0 * np.cos(2 * np.pi * (local_hour - 15.0) / 24)
    return values


def _precipitation(period: Period, lat: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Precipitation rate in mm/day: a rain belt that follows the sun between the tropics."""
    belt_lat = 15.0 * np.sin(2 * np.pi * (_fraction_of_year(period) - 0.22))
    wet_probability = 0.1 + 0.6 * np.exp(-(((lat - belt_lat) / 12.0) ** 2))
    wet = rng.random(lat.shape) < wet_probability
    amounts = rng.gamma(shape=0.8, scale=4.0 + 10.0 * wet_probability)
    return np.where(wet, amounts, 0.0)


def _ocean(lat: np.ndarray, lon: np.ndarray, seed: int) -> np.ndarray:
    """A fixed pseudo-ocean (just under half the cells) for land-only fields."""
    land = np.sin(lon / 11.0 + seed) + np.cos(lat / 8.0 - seed) + 0.5 * np.sin((lat + lon) / 5.0)
    return land < -0.4

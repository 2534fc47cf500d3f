"""Providers that exist only to be named in test ref.toml files (``[[providers]]``)."""

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import numpy as np
import xarray as xr

from ref_assets.periods import Period
from ref_assets.providers.protocol import (
    Description,
    FetchedPeriod,
    Grid,
    SourceItem,
    periods_between,
)
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.specs import DatasetSpec


class InHouseProvider(SyntheticProvider):
    """An operator's own provider: the synthetic fields under another name and version."""

    name: ClassVar[str] = "in_house"
    version: ClassVar[str] = "2.1"


class NotAProvider:
    """Importable, but without the provider contract."""

    name = "not_a_provider"


class NpyArchiveProvider:
    """Reads one ``<period key>.npy`` file per period from ``params.directory`` (a grid of
    ``params.shape`` cells over 0..shape degrees); the bytes it hashes are the bytes it decodes,
    as a real provider must."""

    name: ClassVar[str] = "npy_archive"
    version: ClassVar[str] = "1.0"

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec
        self.directory = Path(spec.params["directory"])
        ny, nx = spec.params.get("shape", (4, 6))
        self.grid = Grid.regular(
            west=0.0, south=0.0, east=float(nx), north=float(ny), resolution=1.0
        )

    def describe(self) -> Description:
        return Description.from_spec(self.spec, self.grid)

    def available_periods(self, first: Period, last: Period) -> list[Period]:
        return [p for p in periods_between(first, last) if self._path(p).exists()]

    def latest_available(self) -> Period | None:
        keys = sorted(path.stem for path in self.directory.glob("*.npy"))
        return Period.from_key(self.spec.period, keys[-1]) if keys else None

    def fetch(self, period: Period) -> FetchedPeriod:
        path = self._path(period)
        payload = path.read_bytes()
        values = np.load(io.BytesIO(payload))
        name = self.spec.variables[0].name
        data = xr.Dataset({name: (("y", "x"), values)}, coords=self.grid.coords())
        modified = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat()
        source = SourceItem.from_bytes(path.as_uri(), payload, last_modified=modified)
        return FetchedPeriod(data, (source,))

    def _path(self, period: Period) -> Path:
        return self.directory / f"{period.key}.npy"

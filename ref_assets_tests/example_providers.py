"""Providers that exist only to be named in test ref.toml files (``[[providers]]``)."""

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import numpy as np
import xarray as xr

from ref_assets.files import atomic_write_bytes
from ref_assets.periods import Period
from ref_assets.providers.http import SourceNotFoundError
from ref_assets.providers.protocol import (
    Description,
    FetchedPeriod,
    Grid,
    ProviderError,
    SourceFingerprint,
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


class MovableProvider:
    """The synthetic fields, published as a test says: ``params.availability`` names a JSON file
    ``{"latest": KEY, "gaps": [KEY], "error": TEXT, "versions": {KEY: N}}`` read on every call, so
    a test moves the newest published period, leaves periods out, makes the source fail, or
    republishes a period (version N adds N - 1 to its values and changes its ETag). Periods from
    the spec's start to ``latest`` but ``gaps`` are published; ``error`` makes every question
    fail with that text."""

    name: ClassVar[str] = "movable"
    version: ClassVar[str] = "1.0"

    def __init__(self, spec: DatasetSpec) -> None:
        params = dict(spec.params)
        self.availability = Path(params.pop("availability"))
        self.spec = spec
        self.fields = SyntheticProvider(spec.model_copy(update={"params": params}))

    def _published(self) -> dict:
        state = json.loads(self.availability.read_text())
        if state.get("error"):
            raise ProviderError(f"{self.spec.id}: {state['error']}")
        return state

    def describe(self) -> Description:
        return self.fields.describe()

    def latest_available(self) -> Period | None:
        latest = self._published().get("latest")
        return Period.from_key(self.spec.period, latest) if latest else None

    def available_periods(self, first: Period, last: Period) -> list[Period]:
        return [p for p in periods_between(first, last) if self._is_published(p)]

    def _is_published(self, period: Period) -> bool:
        state = self._published()
        latest = state.get("latest")
        if latest is None or period > Period.from_key(self.spec.period, latest):
            return False
        return period.key not in state.get("gaps", [])

    def fingerprint(self, period: Period) -> SourceFingerprint | None:
        if not self._is_published(period):
            return None
        version = self._published().get("versions", {}).get(period.key, 1)
        return SourceFingerprint(etag=f'"{period.key}-v{version}"', size=1000 + version)

    def fetch(self, period: Period) -> FetchedPeriod:
        fingerprint = self.fingerprint(period)
        if fingerprint is None:
            raise SourceNotFoundError(f"{self.spec.id} period {period.key}: not published")
        fetched = self.fields.fetch(period)
        data = fetched.data + (fingerprint.size - 1001)
        return FetchedPeriod(data, fetched.sources, fingerprint=fingerprint)


class AccumulatingProvider:
    """ERA5-Land's convention for ``tp`` (mm): each hour's field is the accumulation since
    00 UTC, and the 00 UTC step holds the whole previous day. The amount of the hour ending at
    ``t`` is `hourly_amount(t)`, known to the tests."""

    name: ClassVar[str] = "accumulating"
    version: ClassVar[str] = "1.0"
    grid = Grid.regular(west=0.0, south=0.0, east=3.0, north=2.0, resolution=1.0)

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec

    @classmethod
    def hourly_amount(cls, end: np.datetime64) -> np.ndarray:
        """The amount (mm) of the hour ending at ``end``: differs by hour, day and cell."""
        hours = int((end - np.datetime64("2024-01-01T00", "h")).astype(int))
        return np.arange(6, dtype="float64").reshape(2, 3) * 0.1 + (hours % 7) * 0.25

    def describe(self) -> Description:
        return Description.from_spec(self.spec, self.grid)

    def available_periods(self, first: Period, last: Period) -> list[Period]:
        return periods_between(first, last)

    def latest_available(self) -> Period | None:
        return None

    def fetch(self, period: Period) -> FetchedPeriod:
        valid = np.datetime64(period.start, "h")
        # Accumulated since 00 UTC of the day the hour ending at `valid` belongs to.
        day_start = (valid - np.timedelta64(1, "h")).astype("datetime64[D]").astype("datetime64[h]")
        ends = day_start + np.arange(1, int((valid - day_start).astype(int)) + 1)
        values = sum(self.hourly_amount(end) for end in ends)
        data = xr.Dataset({"tp": (("y", "x"), values, {"units": "mm"})}, coords=self.grid.coords())
        item = SourceItem.from_bytes(f"accumulating://{period.key}", values.tobytes())
        return FetchedPeriod(data, (item,))


class RendezvousProvider(SyntheticProvider):
    """The synthetic fields, each fetch first waiting (up to ``params.wait_seconds``) until
    ``params.parties`` fetches are in progress at once, in any processes: a test sees runs
    fetch side by side without depending on how fast they start. In ``params.rendezvous``
    (a directory) each fetch leaves ``<period>.in`` while it runs and ``<period>.met`` (the
    periods it met) or ``<period>.alone`` when it gave up waiting. Its pool limit is 2, as a
    provider declares one."""

    name: ClassVar[str] = "rendezvous"
    version: ClassVar[str] = "1.0"
    pool_limit: ClassVar[int] = 2

    def __init__(self, spec: DatasetSpec) -> None:
        params = dict(spec.params)
        self.directory = Path(params.pop("rendezvous"))
        self.parties = int(params.pop("parties"))
        self.wait_seconds = float(params.pop("wait_seconds"))
        super().__init__(spec.model_copy(update={"params": params}))

    def fetch(self, period: Period) -> FetchedPeriod:
        import time

        arrived = self.directory / f"{period.key}.in"
        arrived.touch()
        deadline = time.monotonic() + self.wait_seconds
        try:
            while time.monotonic() < deadline:
                present = sorted(p.stem for p in self.directory.glob("*.in"))
                met = list(self.directory.glob("*.met"))
                partners = [json.loads(p.read_text()) for p in met]
                if len(present) >= self.parties or any(period.key in p for p in partners):
                    record = json.dumps(present).encode()  # whole, for partners reading it
                    atomic_write_bytes(self.directory / f"{period.key}.met", record)
                    return super().fetch(period)
                time.sleep(0.05)
            (self.directory / f"{period.key}.alone").touch()
            return super().fetch(period)
        finally:
            arrived.unlink()

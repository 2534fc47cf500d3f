"""``era5_land``: hourly ERA5-Land fields read from a remote, analysis-ready Zarr store.

One period is one hour (partition keys like ``2024-01-01-13:00``). The store is opened lazily, on
first use, and once per process for each URL (its metadata is shared by every provider instance
and every fetch); a fetch reads only the chunks holding that hour inside the bbox, padded by one
cell. Axes are renamed to ``time``/``y``/``x``, longitudes wrapped into -180..180 and sorted,
latitudes north-up (`ref_assets.providers.normalize`).

Each spec variable names its source array and a declared unit conversion (`TRANSFORMS`); the
spec's units must be the conversion's output units, and the store's ``units`` attribute its input.

Example spec (see ``ref_assets/data/templates/era5_land.yaml``)::

    provider: era5_land
    period: hourly
    start: 2024-01-01T00:00:00
    params:
      url: https://edh:<token>@data.earthdatahub.destine.eu/era5/reanalysis-era5-land-no-antartica-v0.zarr
      bbox: [28.0, -12.0, 42.0, 5.0]   # west, south, east north (degrees, -180..180)
      variables:
        t2m: {source: t2m, transform: K_to_degC}
        tp: {source: tp, transform: m_to_mm}
    variables:
      - {name: t2m, units: degC}
      - {name: tp, units: mm}

The source item of a variable is ``<url>#<source>[time=<index on the store's time axis>]``,
with the sha256 of the stored chunk bytes read for it (concatenated in key order, then byte
offset) and their total size. Remote reads are retried on 429/5xx, timeouts and dropped
connections (the policy of `ref_assets.providers.http`); what still fails is a
`SourceUnavailableError` naming the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
import numpy as np
import xarray as xr
import zarr
from pydantic import BaseModel, ConfigDict, Field, field_validator
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, StorePath, WrapperStore

from ref_assets.periods import Period, PeriodType
from ref_assets.providers import normalize
from ref_assets.providers.http import (
    RETRIED_STATUSES,
    SourceNotFoundError,
    SourceUnavailableError,
    backoff_delay,
)
from ref_assets.providers.protocol import (
    Description,
    FetchedPeriod,
    Grid,
    ProviderError,
    SourceItem,
    parse_params,
)
from ref_assets.secrets import redact
from ref_assets.specs import DatasetSpec

# EarthDataHub's (DestinE) ERA5-Land hourly store: dims valid_time/latitude (90..-57.1)/longitude
# (0..359.9) at 0.1 deg, t2m in K, tp in m. Free access needs a DestinE personal access token:
# put it in the URL as https://edh:<token>@data.earthdatahub.destine.eu/... (redacted in output).
DEFAULT_URL = "https://data.earthdatahub.destine.eu/era5/reanalysis-era5-land-no-antartica-v0.zarr"
URL_SCHEMES = ("http://", "https://", "s3://", "gs://")


@dataclass(frozen=True)
class Transform:
    """A declared conversion: the units the store holds, the units it yields (None: the
    identity, whose output is whatever the store holds) and the function."""

    source_units: str | None
    units: str | None
    apply: Callable[[np.ndarray], np.ndarray]


TRANSFORMS: dict[str, Transform] = {
    "K_to_degC": Transform("K", "degC", lambda kelvin: kelvin - 273.15),
    "m_to_mm": Transform("m", "mm", lambda metres: metres * 1000.0),
    "identity": Transform(None, None, lambda values: values),
}


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failed remote read is tried, with jittered exponential back-off."""

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0

    def delay(self, attempt: int) -> float:
        return backoff_delay(attempt, self.backoff, self.max_backoff)


RETRY = RetryPolicy()


class VariableSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, description="the array's name in the Zarr store")
    transform: str = "identity"

    @field_validator("transform")
    @classmethod
    def _known(cls, transform: str) -> str:
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {transform!r}; one of {sorted(TRANSFORMS)}")
        return transform


class Era5LandParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = DEFAULT_URL
    storage_options: dict[str, Any] = Field(default_factory=dict)  # fsspec, e.g. {anon: true}
    bbox: tuple[float, float, float, float]
    variables: dict[str, VariableSource] = Field(min_length=1)

    @field_validator("url")
    @classmethod
    def _remote(cls, url: str) -> str:
        if not url.startswith(URL_SCHEMES):
            raise ValueError(f"{redact(url)} is not a remote store URL ({', '.join(URL_SCHEMES)})")
        return url.rstrip("/")

    @field_validator("bbox")
    @classmethod
    def _ordered(cls, bbox: tuple[float, float, float, float]) -> tuple[float, ...]:
        west, south, east, north = bbox
        if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
            raise ValueError(f"{list(bbox)} is not [west, south, east, north] in -180..180/-90..90")
        return bbox


class _ChunkCache:
    """The stored bytes read lately, up to ``max_bytes``, least recently used out first. Stores
    chunked along time hold many hours in one chunk: a run of consecutive hours downloads each
    chunk once instead of once an hour."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, ByteRequest | None], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, ByteRequest | None]) -> bytes | None:
        with self._lock:
            payload = self._entries.get(key)
            if payload is not None:
                self._entries.move_to_end(key)
            return payload

    def put(self, key: tuple[str, ByteRequest | None], payload: bytes) -> None:
        if len(payload) > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = payload
            self._size += len(payload)
            while self._size > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._size -= len(dropped)


CHUNK_CACHE_BYTES = 256 * 2**20


class _RemoteStore(WrapperStore[Store]):
    """The remote store as the provider reads it: every read retried on transient failures,
    served from the chunk cache when it can be and, for a fetch, recorded (so its checksum
    covers exactly the stored bytes read, from the network or the cache)."""

    # No synchronous shortcuts: every read goes through `get`, where it is retried and recorded.
    _supports_sync_io = False

    def __init__(
        self, store: Store, url: str, cache: _ChunkCache, reads: dict | None = None
    ) -> None:
        super().__init__(store)
        self.url = url
        self.cache = cache
        self.reads = reads

    def _with_store(self, store: Store) -> _RemoteStore:
        return type(self)(store, self.url, self.cache, self.reads)

    def recording(self) -> _RemoteStore:
        """The same store, recording what is read through it from now on."""
        return type(self)(self._store, self.url, self.cache, {})

    def digest(self) -> tuple[str, int]:
        """sha256 and size of the bytes read, in key order, then offset order."""
        sha256, size = hashlib.sha256(), 0
        for _, payload in sorted(self.reads.items()):
            sha256.update(payload)
            size += len(payload)
        return sha256.hexdigest(), size

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        cached = self.cache.get((key, byte_range))
        if cached is not None:
            if self.reads is not None:
                self.reads[(key, _position(byte_range))] = cached
            return prototype.buffer.from_bytes(cached)
        problem = ""
        for attempt in range(1, RETRY.attempts + 1):
            try:
                value = await self._store.get(key, prototype, byte_range)
            except aiohttp.ClientResponseError as err:
                if err.status not in RETRIED_STATUSES:
                    raise SourceUnavailableError(
                        f"{redact(self.url)}/{key}: HTTP {err.status} {err.message}; not retried"
                    ) from None
                problem = f"HTTP {err.status} {err.message}"
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as err:
                problem = f"{type(err).__name__}: {redact(str(err))}"
            else:
                if value is not None:
                    payload = value.to_bytes()
                    self.cache.put((key, byte_range), payload)
                    if self.reads is not None:
                        self.reads[(key, _position(byte_range))] = payload
                return value
            if attempt < RETRY.attempts:
                await asyncio.sleep(RETRY.delay(attempt))
        raise SourceUnavailableError(
            f"{redact(self.url)}/{key}: {problem} after {RETRY.attempts} attempts; the store may "
            "be down or rate-limiting: run the partition again later"
        )

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def get_ranges(
        self,
        key: str,
        byte_ranges: Sequence[ByteRequest | None],
        *,
        prototype: BufferPrototype,
        **coalescing: int | None,
    ):
        # Range by range through `get` (no coalescing: each read is retried and recorded alone).
        yield list(
            enumerate(await self.get_partial_values(prototype, [(key, r) for r in byte_ranges]))
        )


def _position(byte_range: ByteRequest | None) -> tuple[int, int]:
    """Where a read starts, for ordering: from the start, or (after those) from the end."""
    if isinstance(byte_range, RangeByteRequest):
        return (0, byte_range.start)
    if isinstance(byte_range, OffsetByteRequest):
        return (0, byte_range.offset)
    if byte_range is None:
        return (0, 0)
    return (1, -byte_range.suffix)


@dataclass(frozen=True)
class RemoteZarr:
    """An opened store: its connection, its Zarr group and its lazy xarray view (metadata and
    coordinates in memory, no data read)."""

    url: str
    store: _RemoteStore
    group: zarr.Group
    dataset: xr.Dataset


_OPEN_LOCK = threading.Lock()
# Opened stores, by URL and options: (when opened, the store). A run opens a store once; a
# long-lived process (code server, sensors) re-opens it after this long, so new hours appear.
_OPENED: dict[tuple[str, str], tuple[float, RemoteZarr]] = {}
STORE_REFRESH_SECONDS = 600.0
_MAX_OPEN_STORES = 8
# aiohttp's default is 300 s per request (times every retry): far too long for one chunk.
HTTP_TIMEOUT_SECONDS = 60.0


def open_remote(url: str, storage_options: dict[str, Any] | None = None) -> RemoteZarr:
    """The store at ``url``, opened on first use and then shared by the whole process
    (re-opened after ``STORE_REFRESH_SECONDS``, so a long-lived process sees new hours)."""
    key = (url, json.dumps(storage_options or {}, sort_keys=True))
    with _OPEN_LOCK:  # two fetch threads must not both open it
        opened = _OPENED.get(key)
        if opened is None or time.monotonic() - opened[0] > STORE_REFRESH_SECONDS:
            if len(_OPENED) >= _MAX_OPEN_STORES:
                del _OPENED[min(_OPENED, key=lambda k: _OPENED[k][0])]
            _OPENED[key] = (time.monotonic(), _open_remote(url, storage_options or {}))
        return _OPENED[key][1]


def _open_remote(url: str, storage_options: dict[str, Any]) -> RemoteZarr:
    if url.startswith(("http://", "https://")) and "client_kwargs" not in storage_options:
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_SECONDS)
        storage_options = {**storage_options, "client_kwargs": {"timeout": timeout}}
    base = FsspecStore.from_url(url, storage_options=storage_options or None)
    store = _RemoteStore(base, url, _ChunkCache(CHUNK_CACHE_BYTES))
    group = zarr.open_group(store, mode="r")  # consolidated metadata when the store has it
    fill_value_masks = group.metadata.zarr_format == 2  # as xarray.open_zarr decides
    view = xr.backends.ZarrStore(group, mode="r", use_zarr_fill_value_as_mask=fill_value_masks)
    return RemoteZarr(url, store, group, xr.open_dataset(view, chunks=None))


@dataclass(frozen=True)
class _Layout:
    """Where the spec's box and variables sit in the store: what every fetch reuses."""

    grid: Grid
    rows: np.ndarray  # source latitude index of each output y
    columns: np.ndarray  # source longitude index of each output x
    times: np.ndarray  # the store's time axis, datetime64[s]
    dims: dict[str, tuple[str, ...]]  # standard dims of each source array, in stored order

    @property
    def hours(self) -> np.ndarray:
        """The store's time steps that start an hour (the periods it holds)."""
        return self.times[self.times == self.times.astype("datetime64[h]")]


class Era5LandProvider:
    """Hourly ERA5-Land from a remote Zarr store; see the module docstring."""

    name: ClassVar[str] = "era5_land"
    version: ClassVar[str] = "1"
    # The public ERA5-Land Zarr is read chunk by chunk; two runs at once stay polite.
    pool_limit: ClassVar[int] = 2

    def __init__(self, spec: DatasetSpec) -> None:
        self.params = parse_params(Era5LandParams, spec)
        if spec.period is not PeriodType.HOURLY:
            raise ProviderError(f"{spec.id}: era5_land periods are hourly, not {spec.period}")
        self.spec = spec
        declared, wanted = set(self.params.variables), set(spec.variables_by_name)
        if declared != wanted:
            raise ProviderError(
                f"{spec.id}: params.variables must map exactly the spec's variables "
                f"{sorted(wanted)}; missing {sorted(wanted - declared)}, "
                f"unknown {sorted(declared - wanted)}"
            )
        for name, source in self.params.variables.items():
            transform, units = source.transform, spec.variables_by_name[name].units
            if TRANSFORMS[transform].units not in (None, units):
                raise ProviderError(
                    f"{spec.id}: variable {name!r} is declared in {units!r} but transform "
                    f"{transform!r} yields {TRANSFORMS[transform].units!r}"
                )
        self._layout_lock = threading.Lock()
        self._layout_cache: _Layout | None = None

    def describe(self) -> Description:
        return Description.from_spec(self.spec, self._layout().grid)

    def available_periods(self, first: Period, last: Period) -> list[Period]:
        start = max(first.start, self.spec.start)
        end = min(last.start, self.spec.end or last.start)
        hours = self._layout().hours
        inside = hours[(hours >= np.datetime64(start)) & (hours <= np.datetime64(end))]
        return [Period(PeriodType.HOURLY, t) for t in sorted(set(inside.astype(object)))]

    def latest_available(self) -> Period | None:
        hours = self._layout().hours
        if not hours.size:
            return None
        latest = hours.max().astype(object)
        if self.spec.end is not None:
            latest = min(latest, self.spec.end)
        return Period(PeriodType.HOURLY, latest) if latest >= self.spec.start else None

    def fetch(self, period: Period) -> FetchedPeriod:
        layout, remote = self._layout(), self._remote()
        where = f"{self.spec.id} period {period.key}"
        matches = np.flatnonzero(layout.times == np.datetime64(period.start))
        if not matches.size:
            raise SourceNotFoundError(
                f"{where}: {redact(remote.url)} has no time step {period.start.isoformat()} "
                f"(latest {self.latest_available()})"
            )
        index = int(matches[0])
        variables, sources = {}, []
        for name, declared in self.params.variables.items():
            uri = f"{redact(remote.url)}#{declared.source}[time={index}]"
            reads = remote.store.recording()
            try:
                raw = self._read(remote, reads, declared.source, layout, index)
            except ProviderError as err:
                raise type(err)(f"{where}: {err}") from None
            except Exception as err:  # codecs raise assorted types on bytes that do not decode
                raise ProviderError(
                    f"{where}: {uri}: stored chunks could not be decoded (corrupt or "
                    f"truncated?): {type(err).__name__}: {redact(str(err))}"
                ) from None
            values = TRANSFORMS[declared.transform].apply(raw.astype("float64"))
            units = self.spec.variables_by_name[name].units
            variables[name] = (
                ("time", "y", "x"),
                values[np.newaxis].astype("float32"),
                {"units": units},
            )
            sha256, size = reads.digest()
            sources.append(SourceItem(uri=uri, size=size, sha256=sha256))
        coords = {"time": [np.datetime64(period.start, "s")], **layout.grid.coords()}
        return FetchedPeriod(xr.Dataset(variables, coords=coords), tuple(sources))

    def _read(
        self, remote: RemoteZarr, reads: _RemoteStore, source: str, layout: _Layout, index: int
    ) -> np.ndarray:
        """The (y, x) window of one source array at one time step, CF-decoded, read through
        ``reads`` (the array's metadata comes from the store opened once)."""
        stored = remote.group[source]
        array = zarr.Array(
            zarr.AsyncArray(
                metadata=stored.metadata,
                store_path=StorePath(reads, stored.path),
                config=stored.config,
            )
        )
        dims = layout.dims[source]
        selection = {"time": index, "y": layout.rows, "x": layout.columns}
        raw = array.oindex[tuple(selection[d] for d in dims)]
        encoding = remote.dataset[source].encoding
        cf = {
            k: encoding[k]
            for k in ("_FillValue", "missing_value", "scale_factor", "add_offset")
            if k in encoding
        }
        kept = tuple(d for d in dims if d != "time")
        decoded = xr.conventions.decode_cf_variable(source, xr.Variable(kept, raw, cf))
        return decoded.transpose("y", "x").values

    def _remote(self) -> RemoteZarr:
        try:
            return open_remote(self.params.url, self.params.storage_options)
        # Messages are redacted and the originals dropped: their text may hold the URL's token.
        except ProviderError as err:
            raise type(err)(f"{self.spec.id}: {err}") from None
        except FileNotFoundError as err:
            raise SourceNotFoundError(
                f"{self.spec.id}: no Zarr store at {redact(self.params.url)} ({redact(str(err))})"
            ) from None
        except ImportError as err:
            raise ProviderError(
                f"{self.spec.id}: {redact(self.params.url)}: {redact(str(err))}"
            ) from None
        except (ValueError, KeyError, TypeError) as err:
            raise ProviderError(
                f"{self.spec.id}: {redact(self.params.url)} is not a readable Zarr store: "
                f"{type(err).__name__}: {redact(str(err))}"
            ) from None

    def _layout(self) -> _Layout:
        with self._layout_lock:
            if self._layout_cache is None:
                self._layout_cache = self._locate(self._remote())
            return self._layout_cache

    def _locate(self, remote: RemoteZarr) -> _Layout:
        shown = redact(remote.url)
        try:
            standard = normalize.standard_names(remote.dataset)
        except normalize.GridShapeError as err:
            raise ProviderError(f"{self.spec.id}: {shown}: {err}") from None
        dims = {}
        for name, declared in self.params.variables.items():
            if declared.source not in standard.data_vars:
                raise ProviderError(
                    f"{self.spec.id}: variable {name!r}: {shown} has no array "
                    f"{declared.source!r} (it has {sorted(map(str, standard.data_vars))})"
                )
            array = standard[declared.source]
            if set(array.dims) != {"time", "y", "x"}:
                raise ProviderError(
                    f"{self.spec.id}: variable {name!r}: {shown} {declared.source!r} has dims "
                    f"{array.dims}, expected time, latitude and longitude"
                )
            expected = TRANSFORMS[declared.transform].source_units or (
                self.spec.variables_by_name[name].units
            )
            stored_units = array.attrs.get("units")
            if stored_units is not None and stored_units != expected:
                raise ProviderError(
                    f"{self.spec.id}: variable {name!r}: {shown} {declared.source!r} is in "
                    f"{stored_units!r} but transform {declared.transform!r} expects {expected!r}"
                )
            dims[declared.source] = tuple(map(str, array.dims))
        # Carry each cell's source position through normalization, to read just the box.
        axes = standard[["time", "y", "x"]].assign_coords(
            row=("y", np.arange(standard.sizes["y"])), column=("x", np.arange(standard.sizes["x"]))
        )
        try:
            box = normalize.select_bbox(
                normalize.to_standard_grid(axes), self.params.bbox, pad_cells=1
            )
        except normalize.GridShapeError as err:
            raise ProviderError(f"{self.spec.id}: params.bbox: {shown}: {err}") from None
        return _Layout(
            grid=normalize.grid_of(box),
            rows=box["row"].values,
            columns=box["column"].values,
            times=standard["time"].values.astype("datetime64[s]"),
            dims=dims,
        )

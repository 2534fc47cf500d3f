"""The era5_land provider against small ERA5-Land-shaped Zarr stores (formats 2 and 3, with
consolidated metadata) served over HTTP from 127.0.0.1: unit conversions, normalized coordinates,
hours, availability, one open per process, checksums of the chunk bytes read, retries, and real
Dagster runs."""

from __future__ import annotations

import hashlib
import socket
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

import ref_assets
from ref_assets.periods import Period, PeriodType
from ref_assets.provenance import read_provenance
from ref_assets.providers import era5_land
from ref_assets.providers.era5_land import Era5LandProvider, RetryPolicy
from ref_assets.providers.http import SourceNotFoundError, SourceUnavailableError
from ref_assets.providers.protocol import ProviderError
from ref_assets.specs import DatasetSpec
from ref_assets_tests.http_server import FileServer

BBOX = (-6.0, -3.0, 7.0, 5.0)  # crosses the prime meridian: the 0..360 store wraps inside it
CHUNKS = (6, 8, 30)  # time, latitude, longitude
MISSING_HOUR = "2024-01-02-07:00"  # absent from the stores' time axis
VARIABLES = {
    "t2m": {"source": "t2m", "transform": "K_to_degC"},
    "tp": {"source": "tp", "transform": "m_to_mm"},
}
SPEC_VARIABLES = [{"name": "t2m", "units": "degC"}, {"name": "tp", "units": "mm"}]


def hour(key: str) -> Period:
    return Period.from_key(PeriodType.HOURLY, key)


def write_era5_land_store(path: Path, zarr_format: int) -> xr.Dataset:
    """Three days of hours (one missing) on a 2-degree global grid laid out as ERA5-Land is:
    valid_time, latitude descending, longitude 0..358; t2m in K and tp in m."""
    times = pd.date_range("2024-01-01", periods=72, freq="h")
    times = times[times != hour(MISSING_HOUR).start]
    latitude = np.arange(20.0, -20.1, -2.0)
    longitude = np.arange(0.0, 360.0, 2.0)
    shape = (times.size, latitude.size, longitude.size)
    rng = np.random.default_rng(zarr_format)
    t2m = (285.0 + rng.normal(0, 6, shape)).astype("float32")
    t2m[:, 0, :3] = np.nan  # an "ocean" corner, as land-only ERA5-Land has
    tp = rng.gamma(0.5, 0.002, shape).astype("float32")
    dims = ("valid_time", "latitude", "longitude")
    source = xr.Dataset(
        {
            "t2m": (dims, t2m, {"units": "K", "long_name": "2 metre temperature"}),
            "tp": (dims, tp, {"units": "m", "long_name": "Total precipitation"}),
        },
        coords={"valid_time": times, "latitude": latitude, "longitude": longitude},
    )
    with warnings.catch_warnings():  # zarr 3 warns that v3 consolidated metadata is unofficial
        warnings.simplefilter("ignore")
        source.to_zarr(
            path,
            mode="w",
            zarr_format=zarr_format,
            consolidated=True,
            encoding={name: {"chunks": CHUNKS} for name in ("t2m", "tp")},
        )
    return source


@dataclass
class Store:
    path: Path
    route: str  # the store's path on the server
    zarr_format: int
    server: FileServer

    @property
    def url(self) -> str:
        return self.server.url(self.route)

    def requests(self) -> list:
        return [r for r in self.server.requests if r.path.startswith(f"{self.route}/")]

    def metadata_path(self) -> str:
        return f"{self.route}/" + (".zmetadata" if self.zarr_format == 2 else "zarr.json")

    def chunk_key(self, name: str, chunk: tuple[int, int, int]) -> str:
        if self.zarr_format == 2:
            return f"{name}/" + ".".join(map(str, chunk))
        return f"{name}/c/" + "/".join(map(str, chunk))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> FileServer:
    with FileServer(tmp_path_factory.mktemp("served")) as server:
        yield server


@pytest.fixture(params=[3, 2], ids=["zarr3", "zarr2"])
def store(request, server) -> Store:
    """A fresh store at its own URL (the provider caches opened stores by URL per process)."""
    directory = Path(tempfile.mkdtemp(dir=server.root))
    path = directory / "era5_land.zarr"
    write_era5_land_store(path, request.param)
    return Store(path, f"/{directory.name}/{path.name}", request.param, server)


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(era5_land, "RETRY", RetryPolicy(attempts=3, backoff=0.01))


def make_spec(url: str, **overrides) -> DatasetSpec:
    fields = {
        "id": "era5_land_test",
        "title": "ERA5-Land test",
        "provider": "era5_land",
        "params": {"url": url, "bbox": list(BBOX), "variables": VARIABLES},
        "period": "hourly",
        "start": "2024-01-01T00:00:00",
        "variables": SPEC_VARIABLES,
    }
    return DatasetSpec.model_validate({**fields, **overrides})


def expected_box(path: Path, key: str) -> xr.Dataset:
    """The hour read straight from the files: wrapped, sorted, north-up, bbox padded by 2 deg."""
    west, south, east, north = BBOX
    source = xr.open_zarr(path).sel(valid_time=hour(key).start)
    source = source.assign_coords(longitude=((source.longitude + 180) % 360) - 180)
    source = source.sortby("longitude").sortby("latitude", ascending=False)
    return source.sel(latitude=slice(north + 2, south - 2), longitude=slice(west - 2, east + 2))


def chunk_bytes_read(store: Store, name: str, time_index: int) -> bytes:
    """The stored chunks holding the padded box at one time step, in key order, from disk."""
    west, south, east, north = BBOX
    latitude = np.arange(20.0, -20.1, -2.0)
    longitude = ((np.arange(0.0, 360.0, 2.0) + 180) % 360) - 180
    rows = np.flatnonzero((latitude >= south - 2) & (latitude <= north + 2))
    columns = np.flatnonzero((longitude >= west - 2) & (longitude <= east + 2))
    keys = sorted(
        store.chunk_key(name, (time_index // CHUNKS[0], row, column))
        for row in {r // CHUNKS[1] for r in rows}
        for column in {c // CHUNKS[2] for c in columns}
    )
    return b"".join((store.path / key).read_bytes() for key in keys)


def test_the_template_builds_the_provider_without_touching_the_network():
    text = resources.files("ref_assets").joinpath("data/templates/era5_land.yaml").read_text()
    spec = DatasetSpec.model_validate(yaml.safe_load(text))
    opened = dict(era5_land._OPENED)
    provider = Era5LandProvider(spec)
    assert provider.params.url == era5_land.DEFAULT_URL
    assert provider.params.variables["t2m"].transform == "K_to_degC"
    assert opened == era5_land._OPENED  # nothing opened yet


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"variables": [{"name": "t2m", "units": "K"}, {"name": "tp", "units": "mm"}]},
            "variable 't2m' is declared in 'K' but transform 'K_to_degC' yields 'degC'",
        ),
        (
            {
                "params": {
                    "url": "http://x/s.zarr",
                    "bbox": list(BBOX),
                    "variables": {
                        "t2m": {"source": "t2m", "transform": "F_to_degC"},
                        "tp": VARIABLES["tp"],
                    },
                }
            },
            "params.variables.t2m.transform: Value error, unknown transform 'F_to_degC'",
        ),
        (
            {
                "params": {
                    "url": "http://x/s.zarr",
                    "bbox": list(BBOX),
                    "variables": {"t2m": VARIABLES["t2m"]},
                }
            },
            "missing ['tp']",
        ),
        (
            {"params": {"url": "ftp://x/s.zarr", "bbox": list(BBOX), "variables": VARIABLES}},
            "params.url",
        ),
        (
            {"params": {"url": "http://x/s.zarr", "bbox": [7, -3, -6, 5], "variables": VARIABLES}},
            "params.bbox",
        ),
        ({"period": "daily", "start": "2024-01-01"}, "periods are hourly"),
    ],
    ids=["units", "transform", "unmapped", "scheme", "bbox", "period"],
)
def test_bad_params_are_provider_errors_naming_the_dataset(overrides, message):
    with pytest.raises(ProviderError, match=r"^era5_land_test: ") as caught:
        Era5LandProvider(make_spec("http://x/s.zarr", **overrides))
    assert message in str(caught.value)


def test_values_are_converted_on_the_normalized_padded_box(store):
    provider = Era5LandProvider(make_spec(store.url))
    fetched = provider.fetch(hour("2024-01-01-13:00"))
    expected = expected_box(store.path, "2024-01-01-13:00")

    data = fetched.data
    assert data["time"].values.tolist() == [np.datetime64("2024-01-01T13:00:00", "s")]
    np.testing.assert_array_equal(data.x.values, expected.longitude.values)
    np.testing.assert_array_equal(data.y.values, expected.latitude.values)
    assert data.x.values.tolist() == [-8.0, -6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0]
    assert data.y.values.tolist() == [6.0, 4.0, 2.0, 0.0, -2.0, -4.0]
    grid = provider.describe().grid
    np.testing.assert_array_equal(grid.x, data.x.values)
    np.testing.assert_array_equal(grid.y, data.y.values)
    kelvin = expected.t2m.values.astype("float64")
    metres = expected.tp.values.astype("float64")
    np.testing.assert_array_equal(data.t2m.values[0], (kelvin - 273.15).astype("float32"))
    np.testing.assert_array_equal(data.tp.values[0], (metres * 1000.0).astype("float32"))
    assert data.t2m.dtype == data.tp.dtype == np.float32
    assert (data.t2m.attrs["units"], data.tp.attrs["units"]) == ("degC", "mm")


def test_source_items_hash_the_chunk_bytes_read_for_that_hour(store):
    provider = Era5LandProvider(make_spec(store.url))
    provider.describe()  # open first, so the request log below holds only the fetch
    before = len(store.requests())
    fetched = provider.fetch(hour("2024-01-01-13:00"))

    for item, name in zip(fetched.sources, ("t2m", "tp"), strict=True):
        payload = chunk_bytes_read(store, name, 13)
        assert item.uri == f"{store.url}#{name}[time=13]"
        assert item.sha256 == hashlib.sha256(payload).hexdigest()
        assert item.size == len(payload)
    requested = sorted(r.path for r in store.requests()[before:])
    assert len(requested) == 8  # 2 variables x 2 latitude chunks x 2 longitude chunks
    assert all(
        r.endswith(("/0/0", "/0/5", "/1/0", "/1/5", ".0.0", ".0.5", ".1.0", ".1.5"))
        for r in requested
    )


def test_hours_come_from_the_store_axis_within_the_spec_hours(store):
    everything = (hour("2023-12-31-00:00"), hour("2024-01-05-00:00"))
    provider = Era5LandProvider(make_spec(store.url))
    assert provider.latest_available() == hour("2024-01-03-23:00")  # the store's last step
    periods = provider.available_periods(*everything)
    assert len(periods) == 71 and hour(MISSING_HOUR) not in periods

    bounded = Era5LandProvider(
        make_spec(store.url, start="2024-01-01T05:00:00", end="2024-01-02T20:00:00")
    )
    periods = bounded.available_periods(*everything)
    assert (periods[0], periods[-1]) == (hour("2024-01-01-05:00"), hour("2024-01-02-20:00"))
    assert len(periods) == 40 - 1  # 05:00 to 20:00 next day, less the missing hour
    assert bounded.latest_available() == hour("2024-01-02-20:00")

    fetched = bounded.fetch(hour("2024-01-02-08:00"))  # index 31: the axis skips 07:00
    assert fetched.sources[0].uri.endswith("#t2m[time=31]")
    expected = expected_box(store.path, "2024-01-02-08:00").t2m.values.astype("float64")
    np.testing.assert_array_equal(fetched.data.t2m.values[0], (expected - 273.15).astype("float32"))
    with pytest.raises(SourceNotFoundError, match=f"period {MISSING_HOUR}: .*has no time step"):
        bounded.fetch(hour(MISSING_HOUR))


def test_the_store_is_opened_once_per_process_for_many_fetches(store, monkeypatch):
    opens = []
    real_open = era5_land._open_remote
    monkeypatch.setattr(era5_land, "_open_remote", lambda *a: opens.append(a) or real_open(*a))
    era5_land._OPENED.clear()
    providers = [Era5LandProvider(make_spec(store.url)) for _ in range(3)]
    assert not store.requests()  # construction reads nothing
    keys = [f"2024-01-01-{h:02d}:00" for h in range(12)]
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda pair: pair[0].fetch(hour(pair[1])), zip(providers * 4, keys, strict=True)
            )
        )
    assert len(opens) == 1
    assert len(store.server.requests_for(store.metadata_path())) == 1
    assert (
        len(
            store.server.requests_for(
                f"{store.route}/valid_time/" + ("0" if store.zarr_format == 2 else "c/0")
            )
        )
        >= 1
    )  # the time axis was read at open


def test_a_503_on_the_metadata_is_retried_then_fails_clearly(store, fast_retries):
    path = store.metadata_path()
    store.server.fail(path, 503, 503)  # fewer failures than attempts: the open goes through
    assert Era5LandProvider(make_spec(store.url)).latest_available() == hour("2024-01-03-23:00")
    assert [r.status for r in store.server.requests_for(path)] == [503, 503, 200]

    (store.path.parent / "other.zarr").symlink_to(store.path)
    other_path = path.replace(store.path.name, "other.zarr")
    other = store.url.replace(store.path.name, "other.zarr")
    store.server.fail(other_path, 503, 503, 503)
    with pytest.raises(SourceUnavailableError, match="after 3 attempts") as caught:
        Era5LandProvider(make_spec(other)).describe()
    assert caught.value.retryable
    assert str(caught.value).startswith(f"era5_land_test: {other}")
    assert [r.status for r in store.server.requests_for(other_path)] == [503, 503, 503]


@pytest.fixture
def registered(register_providers):
    register_providers("ref_assets.providers.era5_land:Era5LandProvider")


def write_dataset(write_spec, url: str) -> str:
    write_spec(
        "era5_land_test",
        provider="era5_land",
        params={"url": url, "bbox": list(BBOX), "variables": VARIABLES},
        period="hourly",
        start="2024-01-01T00:00:00",
        variables=[
            {"name": "t2m", "units": "degC", "attributes": {"standard_name": "air_temperature"}},
            {"name": "tp", "units": "mm"},
        ],
        storage={"time_block": 24},
        chunks={},
    )
    return "era5_land_test"


@pytest.mark.parametrize("store", [3], ids=["zarr3"], indirect=True)
def test_a_dagster_range_run_writes_the_hours_with_provenance(
    settings, registered, write_spec, materialize, store
):
    dataset = write_dataset(write_spec, store.url)
    result = materialize(dataset, "2024-01-01-10:00...2024-01-01-13:00")
    assert result.success

    data = ref_assets.open_dataset(dataset, settings=settings)
    for index in range(10, 14):
        key = f"2024-01-01-{index:02d}:00"
        expected = expected_box(store.path, key)
        stored = data.sel(time=hour(key).start)
        kelvin = expected.t2m.values.astype("float64")
        np.testing.assert_array_equal(stored.t2m.values, (kelvin - 273.15).astype("float32"))
        np.testing.assert_array_equal(data.x.values, expected.longitude.values)
        record = read_provenance(dataset, key)
        assert (record.provider, record.period) == ("era5_land", key)
        for item, name in zip(record.sources, ("t2m", "tp"), strict=True):
            payload = chunk_bytes_read(store, name, index)
            assert item.uri == f"{store.url}#{name}[time={index}]"
            assert (item.sha256, item.size) == (hashlib.sha256(payload).hexdigest(), len(payload))
    status = ref_assets.dataset_status(
        dataset,
        start=hour("2024-01-01-09:00").start,
        end=hour("2024-01-01-14:00").start,
        settings=settings,
    )
    assert [p.key for p in status.present] == [f"2024-01-01-{h}:00" for h in range(10, 14)]


@pytest.mark.parametrize("store", [2], ids=["zarr2"], indirect=True)
def test_a_truncated_chunk_fails_its_hour_and_nothing_is_committed(
    settings, registered, write_spec, materialize, store
):
    dataset = write_dataset(write_spec, store.url)
    assert materialize(dataset, "2024-01-01-10:00").success
    chunk = store.path / store.chunk_key("t2m", (20 // CHUNKS[0], 0, 0))  # hours 18..23
    chunk.write_bytes(chunk.read_bytes()[:40])

    with pytest.raises(ProviderError, match="corrupt or truncated") as caught:
        Era5LandProvider(make_spec(store.url)).fetch(hour("2024-01-01-20:00"))
    assert f"period 2024-01-01-20:00: {store.url}#t2m[time=20]" in str(caught.value)
    assert not materialize(dataset, "2024-01-01-20:00", raise_on_error=False).success
    status = ref_assets.dataset_status(
        dataset,
        start=hour("2024-01-01-10:00").start,
        end=hour("2024-01-01-20:00").start,
        settings=settings,
    )
    assert [p.key for p in status.present] == ["2024-01-01-10:00"]
    assert "2024-01-01-20:00" in [p.key for p in status.missing]


def test_an_unreachable_store_is_a_retryable_error_naming_it(fast_retries):
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/era5_land.zarr"
    with pytest.raises(SourceUnavailableError, match=r"ClientConnectorError.* after 3 attempts"):
        Era5LandProvider(make_spec(url)).latest_available()


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"t2m": {"source": "t2m", "transform": "identity"}, "tp": VARIABLES["tp"]},
            "variable 't2m': .* 't2m' is in 'K' but transform 'identity' expects 'degC'",
        ),
        (
            {"t2m": {"source": "skt", "transform": "K_to_degC"}, "tp": VARIABLES["tp"]},
            r"variable 't2m': .* has no array 'skt' \(it has \['t2m', 'tp'\]\)",
        ),
    ],
    ids=["units", "array"],
)
@pytest.mark.parametrize("store", [3], ids=["zarr3"], indirect=True)
def test_the_store_must_hold_each_array_in_the_units_its_transform_expects(
    store, variables, message
):
    provider = Era5LandProvider(
        make_spec(store.url, params={"url": store.url, "bbox": list(BBOX), "variables": variables})
    )
    with pytest.raises(ProviderError, match=f"^era5_land_test: {message}"):
        provider.describe()


def test_a_long_lived_process_reopens_the_store_to_see_new_hours(store, monkeypatch):
    opens = []
    real_open = era5_land._open_remote
    monkeypatch.setattr(era5_land, "_open_remote", lambda *a: opens.append(a) or real_open(*a))
    era5_land._OPENED.clear()
    Era5LandProvider(make_spec(store.url)).latest_available()
    Era5LandProvider(make_spec(store.url)).latest_available()
    assert len(opens) == 1
    monkeypatch.setattr(era5_land, "STORE_REFRESH_SECONDS", 0.0)
    Era5LandProvider(make_spec(store.url)).latest_available()
    assert len(opens) == 2


def test_hours_sharing_a_time_chunk_download_it_once_and_still_record_its_bytes(store):
    assert 13 // CHUNKS[0] == 14 // CHUNKS[0]  # both hours live in the same chunks
    provider = Era5LandProvider(make_spec(store.url))
    provider.fetch(hour("2024-01-01-13:00"))
    before = len(store.requests())
    fetched = provider.fetch(hour("2024-01-01-14:00"))
    assert len(store.requests()) == before  # served from the chunk cache
    for item, name in zip(fetched.sources, ("t2m", "tp"), strict=True):
        assert item.sha256 == hashlib.sha256(chunk_bytes_read(store, name, 14)).hexdigest()
        assert item.uri.endswith(f"#{name}[time=14]")

"""The local_files provider against small archives written here: NetCDF (netCDF4 and netCDF3) and
GeoTIFF, one period per file or several, local and through fsspec (``memory://``), each with a
quirk of real archives; values and coordinates are checked against the files read independently
with xarray or rasterio. Ends with Dagster runs and their provenance."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import netCDF4
import numpy as np
import pytest
import rasterio
import xarray as xr
import yaml
import zarr
from rasterio.transform import Affine

import ref_assets
from ref_assets.periods import Period, PeriodType
from ref_assets.providers import local_files
from ref_assets.providers.http import SourceNotFoundError
from ref_assets.providers.local_files import LocalFilesProvider
from ref_assets.providers.protocol import ProviderError
from ref_assets.specs import DatasetSpec
from ref_assets_tests.conftest import spec_dict, step_failure

DAILY, MONTHLY = PeriodType.DAILY, PeriodType.MONTHLY
LAT = np.arange(-4.75, 5.0, 0.5)  # 20 rows, south to north (as many NetCDF files are)
LON = np.arange(0.25, 360.0, 12.0)  # 30 columns over 0..360


def day(key: str) -> Period:
    return Period.from_key(DAILY, key)


def month(key: str) -> Period:
    return Period.from_key(MONTHLY, key)


def spec_fields(path, pattern: str, *, units="K", **params) -> dict:
    """The provider fields of a spec: params and its one variable, ``t2m`` unless ``variables``
    maps another."""
    params = {"path": str(path), "pattern": pattern, "variables": {"t2m": "t2m"}, **params}
    [name] = params["variables"]
    return {
        "provider": "local_files",
        "params": params,
        "variables": [{"name": name, "units": units}],
    }


def make_spec(path, pattern: str, *, period="daily", start="2024-01-01", **params) -> DatasetSpec:
    fields = spec_fields(path, pattern, **params)
    return DatasetSpec.model_validate(spec_dict("local_t2m", period=period, start=start, **fields))


def field(seed: int, shape=(LAT.size, LON.size)) -> np.ndarray:
    return np.random.default_rng(seed).normal(280.0, 8.0, shape).astype("float32")


def write_netcdf(
    path: Path,
    start: str,
    count: int = 1,
    *,
    freq: str = "D",
    seed: int = 0,
    calendar: str = "proleptic_gregorian",
    time_name: str = "time",
    lat=LAT,
    lon=LON,
    fmt: str = "NETCDF4",
    encoding: dict | None = None,
) -> Path:
    """A ``t2m`` file of ``count`` steps on (time, lat, lon), its times CF-encoded in
    ``calendar``."""
    stamps = xr.date_range(start, periods=count, freq=freq, calendar=calendar)
    data = xr.Dataset(
        {
            "t2m": (
                (time_name, "lat", "lon"),
                field(seed, (len(stamps), lat.size, lon.size)),
                {"units": "K"},
            )
        },
        coords={time_name: stamps, "lat": lat, "lon": lon},
    )
    data[time_name].encoding = {"units": "days since 2000-01-01", "calendar": calendar}
    # As a variable opened from elsewhere carries it (xarray drops what NetCDF cannot use).
    data["t2m"].encoding = encoding or {}
    path.parent.mkdir(parents=True, exist_ok=True)
    data.to_netcdf(path, format=fmt, engine="netcdf4")
    return path


def expected(path: Path, step: int = 0, variable: str = "t2m") -> xr.DataArray:
    """The source field of one step, read independently, in -180..180 and north up."""
    with xr.open_dataset(path, decode_times=False) as source:
        array = source[variable].isel({source[variable].dims[0]: step}).load()
    array = array.assign_coords(lon=((array.lon + 180) % 360) - 180).sortby("lon")
    return array.sortby("lat", ascending=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_template_spec_builds_the_provider_without_touching_the_archive():
    text = (Path(ref_assets.__file__).parent / "data/templates/local_files.yaml").read_text()
    spec = DatasetSpec.model_validate(yaml.safe_load(text))
    provider = LocalFilesProvider(spec)
    assert provider.pattern.granularity is MONTHLY and spec.period is DAILY
    assert provider.params.bbox == (28.0, -12.0, 52.0, 15.0)
    assert provider._files is None  # nothing listed yet


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"path": ""}, "params.path: String should have at least 1 character"),
        ({"pattern": "t2m_{yyyy}.nc"}, "params.pattern: Value error, unknown placeholders"),
        ({"pattern": "t2m_{year}{day}.nc"}, "skip a field"),
        ({"bbox": [10, 0, 5, 5]}, "params.bbox: Value error"),
        ({"variables": {"tas": "tas"}}, "params.variables maps ['tas'], but the spec declares"),
        ({"pattern": "{year}{month}{day}{hour}.nc"}, "names hourly files, finer than"),
        ({"pattern": "{year}{month}.tif"}, "GeoTIFFs carry no time"),
        ({"colour": "red"}, "params.colour: Extra inputs are not permitted"),
    ],
)
def test_bad_params_name_the_dataset_and_the_param(params, message):
    spec = make_spec("/nowhere", "t2m_{year}{month}{day}.nc")
    spec = spec.model_copy(update={"params": {**spec.params, **params}})
    with pytest.raises(ProviderError, match=r"^local_t2m: ") as caught:
        LocalFilesProvider(spec)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("fmt", "lat"),
    [("NETCDF4", LAT), ("NETCDF3_CLASSIC", LAT), ("NETCDF3_64BIT", LAT[::-1])],
)
def test_daily_netcdf_files_either_way_up_and_0_360_match_the_source(tmp_path, fmt, lat):
    for d in (1, 2, 3):
        path = tmp_path / f"t2m_202401{d:02d}.nc"
        write_netcdf(path, f"2024-01-{d:02d}", seed=d, fmt=fmt, lat=lat)
    provider = LocalFilesProvider(make_spec(tmp_path, "t2m_{year}{month}{day}.nc"))
    assert provider.available_periods(day("2023-12-31"), day("2024-01-05")) == [
        day("2024-01-01"),
        day("2024-01-02"),
        day("2024-01-03"),
    ]
    assert provider.latest_available() == day("2024-01-03")

    fetched = provider.fetch(day("2024-01-02"))
    source_file = tmp_path / "t2m_20240102.nc"
    source = expected(source_file)
    grid = provider.describe().grid
    np.testing.assert_array_equal(grid.y, source.lat.values)  # north up
    np.testing.assert_array_equal(grid.x, source.lon.values)  # -180..180 ascending
    assert grid.x[0] == -179.75 and grid.y[0] == 4.75
    np.testing.assert_array_equal(fetched.data["t2m"].values, source.values)
    np.testing.assert_array_equal(fetched.data.y.values, grid.y)
    assert fetched.data["t2m"].attrs["units"] == "K"
    [item] = fetched.sources
    assert item.uri == source_file.as_uri()
    assert (item.size, item.sha256) == (source_file.stat().st_size, sha256(source_file))
    mtime = datetime.fromtimestamp(source_file.stat().st_mtime, UTC)
    assert datetime.fromisoformat(item.last_modified) == mtime


def test_one_file_per_period_availability_comes_from_names_alone(tmp_path, monkeypatch):
    for key in ("20240101", "20240102", "20240104"):
        (tmp_path / f"t2m_{key}.nc").write_bytes(b"not opened to know it exists")
    (tmp_path / "t2m_latest.nc").write_bytes(b"fits the glob, not the placeholders")
    (tmp_path / "t2m_20240230.nc").write_bytes(b"no such day")
    opened = []
    monkeypatch.setattr(local_files, "open_source", lambda source: opened.append(source))
    provider = LocalFilesProvider(make_spec(tmp_path, "t2m_{year}{month}{day}.nc"))
    listed = []
    monkeypatch.setattr(provider._filesystem[0], "glob", _spy(provider._filesystem[0].glob, listed))

    periods = provider.available_periods(day("2024-01-01"), day("2024-02-29"))
    assert [p.key for p in periods] == ["2024-01-01", "2024-01-02", "2024-01-04"]
    assert provider.latest_available() == day("2024-01-04")
    assert provider.available_periods(day("2024-01-03"), day("2024-01-03")) == []
    assert opened == [] and len(listed) == 1  # listed once, no file opened


def _spy(function, calls: list):
    def spy(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)

    return spy


def test_a_missing_period_is_never_invented_and_its_fetch_names_the_expected_file(tmp_path):
    for d in (1, 2, 4):
        write_netcdf(tmp_path / "2024" / f"t2m_202401{d:02d}.nc", f"2024-01-{d:02d}")
    provider = LocalFilesProvider(make_spec(tmp_path, "{year}/t2m_{year}{month}{day}.nc"))
    assert day("2024-01-03") not in provider.available_periods(day("2024-01-01"), day("2024-01-04"))
    with pytest.raises(SourceNotFoundError) as caught:
        provider.fetch(day("2024-01-03"))
    expected_file = (tmp_path / "2024" / "t2m_20240103.nc").as_uri()
    assert str(caught.value) == (
        f"local_t2m period 2024-01-03: the expected file {expected_file} is not in the archive"
    )


def test_monthly_files_of_daily_steps_open_headers_only_and_read_each_file_once(
    tmp_path, monkeypatch
):
    january = write_netcdf(tmp_path / "t2m_202401.nc", "2024-01-01", 31)
    february = write_netcdf(tmp_path / "t2m_202402.nc", "2024-02-01", 10, seed=2)  # in progress
    provider = LocalFilesProvider(make_spec(tmp_path, "t2m_{year}{month}.nc"))
    reads = []
    fs = provider._filesystem[0]
    monkeypatch.setattr(fs, "cat_file", _spy(fs.cat_file, reads))

    periods = provider.available_periods(day("2024-01-30"), day("2024-02-20"))
    assert [p.key for p in periods] == ["2024-01-30", "2024-01-31"] + [
        f"2024-02-{d:02d}" for d in range(1, 11)
    ]
    assert provider.latest_available() == day("2024-02-10")
    assert reads == []  # local headers only: no whole file read to index

    for key, step in (("2024-01-05", 4), ("2024-01-06", 5)):
        fetched = provider.fetch(day(key))
        np.testing.assert_array_equal(fetched.data["t2m"].values, expected(january, step).values)
        assert fetched.sources[0].sha256 == sha256(january)
    np.testing.assert_array_equal(
        provider.fetch(day("2024-02-10")).data["t2m"].values, expected(february, 9).values
    )
    assert [call[0] for call in reads] == [str(january), str(february)]
    with pytest.raises(SourceNotFoundError, match=r"t2m_202402.nc has no time step in this period"):
        provider.fetch(day("2024-02-11"))


def test_an_fsspec_archive_with_a_glob_reads_times_and_bytes_through_fsspec(tmp_path):
    fs = fsspec.filesystem("memory")
    root = "/local_files_glob"
    for number, (start, seed) in enumerate((("2023-01-01", 1), ("2024-01-01", 2))):
        path = tmp_path / f"era_{number}.nc"  # written locally, then copied into memory
        write_netcdf(path, start, 12, freq="MS", seed=seed, time_name="valid_time")
        fs.pipe(f"{root}/sub/era_{number}.nc", path.read_bytes())
    try:
        spec = make_spec(
            f"memory://{root}",
            "**/*.nc",
            period="monthly",
            start="2023-01-01",
            bbox=[-30.0, -2.0, 40.0, 3.0],
        )
        provider = LocalFilesProvider(spec)
        assert provider.latest_available() == month("2024-12")
        periods = provider.available_periods(month("2023-11"), month("2024-02"))
        assert [p.key for p in periods] == ["2023-11", "2023-12", "2024-01", "2024-02"]

        fetched = provider.fetch(month("2024-03"))
        source = expected(tmp_path / "era_1.nc", 2)
        source = source.sel(lat=slice(3.0, -2.0), lon=slice(-30.0, 40.0))
        np.testing.assert_array_equal(fetched.data["t2m"].values, source.values)
        np.testing.assert_array_equal(fetched.data.x.values, source.lon.values)
        np.testing.assert_array_equal(fetched.data.y.values, source.lat.values)
        [item] = fetched.sources
        payload = fs.cat_file(f"{root}/sub/era_1.nc")
        assert item.uri == f"memory://{root}/sub/era_1.nc"
        assert (item.size, item.sha256) == (len(payload), hashlib.sha256(payload).hexdigest())
        assert item.last_modified == fs.modified(f"{root}/sub/era_1.nc").isoformat()
    finally:
        fs.rm(root, recursive=True)


def write_geotiff(
    path: Path, bands: list[np.ndarray], *, transform: Affine, units: str = "", **profile
) -> Path:
    """Bands scaled by 0.1, with ``units`` if given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = bands[0].shape
    options = {"dtype": bands[0].dtype, "crs": "EPSG:4326", **profile}
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=len(bands),
        transform=transform,
        **options,
    ) as dst:
        for index, band in enumerate(bands, start=1):
            dst.write(band, index)
        dst.scales = [0.1] * len(bands)
        dst.units = [units] * len(bands)
    return path


def test_south_up_geotiffs_in_year_folders_with_nodata_and_scale(tmp_path):
    south_up = Affine(0.5, 0.0, 30.0, 0.0, 0.5, -6.0)  # origin at the south-west corner
    rng = np.random.default_rng(4)
    for key in ("2023-12", "2024-01", "2024-02"):
        rain, other = rng.integers(0, 3000, (2, 12, 16)).astype("int16")
        rain[0, :3] = -9999
        path = tmp_path / key[:4] / f"precip_{key}.tif"
        write_geotiff(path, [other, rain], transform=south_up, nodata=-9999)
    spec = make_spec(
        tmp_path,
        "{year}/precip_{year}-{month}.tif",
        period="monthly",
        start="2023-01-01",
        units="mm/month",
        variables={"precip": "band_2"},
        bbox=[31.0, -6.0, 40.0, -1.0],
    )
    provider = LocalFilesProvider(spec)
    assert provider.latest_available() == month("2024-02")
    assert provider.available_periods(month("2023-06"), month("2024-01")) == [
        month("2023-12"),
        month("2024-01"),
    ]

    fetched = provider.fetch(month("2024-01"))
    source_file = tmp_path / "2024" / "precip_2024-01.tif"
    with rasterio.open(source_file) as src:
        band = src.read(2).astype("float64")
        y = src.transform.f + src.transform.e * (np.arange(src.height) + 0.5)
        x = src.transform.c + src.transform.a * (np.arange(src.width) + 0.5)
    values = np.where(band == -9999, np.nan, band * 0.1)[::-1]  # north up
    y = y[::-1]
    rows, columns = (y >= -6.0) & (y <= -1.0), (x >= 31.0) & (x <= 40.0)
    np.testing.assert_array_equal(fetched.data.y.values, y[rows])
    np.testing.assert_array_equal(fetched.data.x.values, x[columns])
    np.testing.assert_array_equal(fetched.data["precip"].values, values[rows][:, columns])
    assert np.isnan(fetched.data["precip"].values[-1, 0])  # nodata in the south-west corner
    [item] = fetched.sources
    assert (item.uri, item.sha256) == (source_file.as_uri(), sha256(source_file))


def test_a_single_band_geotiff_serves_any_variable_name_in_its_units(tmp_path):
    band = np.arange(24, dtype="float32").reshape(4, 6)
    north_up = Affine(1, 0, 0, 0, -1, 4)
    write_geotiff(tmp_path / "t2m_20240101.tif", [band], transform=north_up, units="K")
    write_geotiff(tmp_path / "t2m_20240102.tif", [band], transform=north_up, units="degC")
    provider = LocalFilesProvider(make_spec(tmp_path, "t2m_{year}{month}{day}.tif"))

    values = provider.fetch(day("2024-01-01")).data["t2m"].values
    np.testing.assert_array_equal(values, band.astype("float64") * 0.1)
    with pytest.raises(ProviderError, match="'band_1' is in 'degC' but the spec stores 'K'"):
        provider.fetch(day("2024-01-02"))


def test_cf_packing_decodes_to_float_and_no_source_encoding_leaks(tmp_path):
    zarr_v2_era = {"compressor": zarr.codecs.BloscCodec(), "filters": None, "chunks": (1, 10, 10)}
    netcdf = {"zlib": True, "chunksizes": (1, 10, 15), "dtype": "int16", "scale_factor": 0.01}
    packing = {"add_offset": 280.0, "_FillValue": np.int16(-32767)}
    path = write_netcdf(
        tmp_path / "t2m_20240101.nc", "2024-01-01", encoding=zarr_v2_era | netcdf | packing
    )
    with xr.open_dataset(path) as opened:
        assert opened["t2m"].encoding["chunksizes"] == (1, 10, 15)  # the quirk is in the file
    provider = LocalFilesProvider(make_spec(tmp_path, "t2m_{year}{month}{day}.nc"))
    data = provider.fetch(day("2024-01-01")).data

    with netCDF4.Dataset(path) as raw:  # unpacked by hand, independently of xarray
        raw.set_auto_maskandscale(False)
        packed = raw["t2m"][0]
    unpacked = np.where(packed == -32767, np.nan, packed * 0.01 + 280.0)
    unpacked = np.roll(unpacked[::-1], -15, axis=1)  # north up, -180..180
    assert data["t2m"].dtype.kind == "f"
    np.testing.assert_allclose(data["t2m"].values, unpacked, rtol=1e-6)
    assert all(variable.encoding == {} for variable in data.variables.values())
    assert isinstance(data["t2m"].variable._data, np.ndarray)  # read, not a lazy file view
    data.to_zarr(
        zarr.storage.MemoryStore(), zarr_format=3, consolidated=False
    )  # a v3 store takes it as it is


@pytest.mark.parametrize(
    ("calendar", "start", "freq", "period", "keys", "fetched_key", "step"),
    [
        # 27 Feb .. 2 Mar 2024 without 29 Feb: that day is simply not in the archive.
        ("noleap", "2024-02-27", "D", "daily", ["02-27", "02-28", "03-01", "03-02"], "03-01", 2),
        # Julian days are taken by name, not shifted 13 days onto the Gregorian calendar.
        ("julian", "2024-02-27", "D", "daily", ["02-27", "02-28", "02-29", "03-01"], "02-29", 2),
        # Mid-month steps of 30-day months are still months.
        ("360_day", "2024-01-16", "30D", "monthly", ["01", "02", "03", "04"], "02", 1),
    ],
)
def test_non_standard_calendars_map_onto_real_periods(
    tmp_path, calendar, start, freq, period, keys, fetched_key, step
):
    path = write_netcdf(tmp_path / "tas_2024.nc", start, 4, freq=freq, calendar=calendar)
    provider = LocalFilesProvider(make_spec(tmp_path, "tas_{year}.nc", period=period))
    first, last, fetched_period = (
        Period.from_key(PeriodType(period), f"2024-{key}")
        for key in (keys[0], keys[-1], fetched_key)
    )
    available = provider.available_periods(first, last)
    assert [p.key for p in available] == [f"2024-{k}" for k in keys]
    assert provider.latest_available() == last
    fetched = provider.fetch(fetched_period)
    np.testing.assert_array_equal(fetched.data["t2m"].values, expected(path, step).values)


def test_daily_360_day_data_is_an_error_naming_the_file_and_calendar(tmp_path):
    path = write_netcdf(tmp_path / "tas_2024.nc", "2024-02-28", 3, calendar="360_day")
    provider = LocalFilesProvider(make_spec(tmp_path, "tas_{year}.nc"))
    with pytest.raises(ProviderError) as caught:
        provider.available_periods(day("2024-02-01"), day("2024-03-31"))
    assert str(caught.value) == (
        f"local_t2m (indexing): {path.as_uri()}: calendar '360_day': its 30-day months do not "
        "map onto real daily periods"
    )
    with pytest.raises(ProviderError) as caught:
        provider.fetch(day("2024-02-28"))
    assert str(caught.value).startswith(f"local_t2m period 2024-02-28: {path.as_uri()}: calendar")


def test_a_file_off_the_grid_or_holding_another_time_is_an_error_naming_it(tmp_path):
    write_netcdf(tmp_path / "t2m_20240101.nc", "2024-01-01")
    shifted = write_netcdf(tmp_path / "t2m_20240102.nc", "2024-01-02", lon=LON + 1.0)
    misnamed = write_netcdf(tmp_path / "t2m_20240103.nc", "2024-01-05")
    provider = LocalFilesProvider(make_spec(tmp_path, "t2m_{year}{month}{day}.nc"))
    with pytest.raises(ProviderError) as caught:
        provider.fetch(day("2024-01-02"))
    assert str(caught.value).startswith(
        f"local_t2m period 2024-01-02: {shifted.as_uri()} is not on the dataset's grid (that of "
        f"{(tmp_path / 't2m_20240101.nc').as_uri()}): its x has 30 cells from -178.75"
    )
    with pytest.raises(ProviderError) as caught:
        provider.fetch(day("2024-01-03"))
    assert str(caught.value) == (
        f"local_t2m period 2024-01-03: {misnamed.as_uri()} is named for this period, but its "
        "time coordinate holds 2024-01-05..2024-01-05"
    )


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-200])


def _garble(path: Path) -> None:
    payload = bytearray(path.read_bytes())
    payload[8:4000] = bytes(3992)
    path.write_bytes(bytes(payload))


@pytest.mark.parametrize(
    ("suffix", "fmt", "damage"),
    [
        ("nc", "NETCDF4", _truncate),
        ("nc", "NETCDF3_CLASSIC", _truncate),
        ("nc", "NETCDF4", _garble),
        ("tif", None, _truncate),
    ],
)
def test_a_truncated_or_corrupt_file_is_an_error_naming_it(tmp_path, suffix, fmt, damage):
    for d in (1, 2):
        path = tmp_path / f"t2m_2024010{d}.{suffix}"
        if fmt:
            write_netcdf(path, f"2024-01-0{d}", fmt=fmt)
        else:
            write_geotiff(path, [field(d)], transform=Affine(0.5, 0, 0, 0, -0.5, 5), tiled=True)
    damage(path)
    provider = LocalFilesProvider(make_spec(tmp_path, f"t2m_{{year}}{{month}}{{day}}.{suffix}"))
    with pytest.raises(ProviderError) as caught:
        provider.fetch(day("2024-01-02"))
    assert str(caught.value).startswith(
        f"local_t2m period 2024-01-02: {path.as_uri()} cannot be read, it is truncated or corrupt"
    )


@pytest.fixture
def archive_dataset(write_spec, register_providers, tmp_path):
    """Four daily NetCDF files in year folders, read by local_files registered in ref.toml."""
    archive = tmp_path / "archive"
    for d in (1, 2, 3, 4):
        write_netcdf(archive / "2024" / f"t2m_2024010{d}.nc", f"2024-01-0{d}", seed=d)
    register_providers("ref_assets.providers.local_files:LocalFilesProvider")
    fields = spec_fields(archive, "{year}/t2m_{year}{month}{day}.nc", bbox=[-60.0, -3.0, 60.0, 3.0])
    write_spec("local_t2m", chunks={"y": 6, "x": 5}, **fields)
    return archive


def test_a_dagster_range_commits_every_period_but_a_truncated_file(
    settings, archive_dataset, materialize
):
    _truncate(archive_dataset / "2024" / "t2m_20240103.nc")
    result = materialize("local_t2m", "2024-01-01...2024-01-04", raise_on_error=False)

    assert not result.success
    failure = step_failure(result)
    failed = failure.step_failure_data.user_failure_data.metadata["failed_periods"].value
    assert list(failed) == ["2024-01-03"]
    assert "t2m_20240103.nc cannot be read, it is truncated or corrupt" in failed["2024-01-03"]
    status = ref_assets.dataset_status("local_t2m", end=datetime(2024, 1, 4), settings=settings)
    assert [p.key for p in status.present] == ["2024-01-01", "2024-01-02", "2024-01-04"]
    assert [p.key for p in status.missing] == ["2024-01-03"]

    stored = ref_assets.open_dataset("local_t2m", settings=settings)
    source_file = archive_dataset / "2024" / "t2m_20240104.nc"
    source = expected(source_file).sel(lat=slice(3.0, -3.0), lon=slice(-60.0, 60.0))
    np.testing.assert_array_equal(stored.y.values, source.lat.values)
    np.testing.assert_array_equal(stored.x.values, source.lon.values)
    np.testing.assert_array_equal(stored["t2m"].sel(time="2024-01-04").values, source.values)
    assert np.isnan(stored["t2m"].sel(time="2024-01-03").values).all()
    [item] = ref_assets.read_provenance("local_t2m", "2024-01-04", settings=settings).sources
    assert (item.uri, item.size) == (source_file.as_uri(), source_file.stat().st_size)
    assert item.sha256 == sha256(source_file)


def test_float_time_values_that_decode_a_hair_early_land_in_their_period():
    from ref_assets.providers.local_files_formats import period_steps

    hours = xr.DataArray(
        (np.arange(24) / 24).astype("float32"),  # 5/24 days decodes to 04:59:59.99
        dims="time",
        name="time",
        attrs={"units": "days since 2024-01-01", "calendar": "standard"},
    )
    steps = period_steps(hours, PeriodType.HOURLY)
    assert sorted(steps, key=lambda p: p.start)[5].key == "2024-01-01-05:00"
    assert len(steps) == 24 and steps[Period.from_key(PeriodType.HOURLY, "2024-01-01-05:00")] == 5

"""local_files against the shapes of real archives that used to go wrong: ocean-model output
(NEMO/XIOS: ``time_counter``/``time_centered``, 360_day, 2-D ``nav_lat``/``nav_lon``), grids whose
axes cannot be shown to be latitude and longitude, archives of symbolic links, a corrupt first
file, and a remote archive that cannot be reached. Every grid that is not shown to be a regular
latitude/longitude grid is refused naming the file, with nothing written; what is accepted is
checked against the files read independently with netCDF4 or rasterio."""

from __future__ import annotations

import socket
from datetime import datetime
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr
from rasterio.transform import Affine

import ref_assets
from ref_assets.providers.http import SourceNotFoundError, SourceUnavailableError
from ref_assets.providers.local_files import LocalFilesProvider
from ref_assets.providers.protocol import ProviderError
from ref_assets.store.repository import StoreError
from ref_assets_tests.conftest import step_failure
from ref_assets_tests.test_provider_local_files import (
    _truncate,
    day,
    expected,
    field,
    make_spec,
    month,
    sha256,
    spec_fields,
    write_geotiff,
    write_netcdf,
)

REGRID = (
    "regrid to a regular latitude/longitude grid first (e.g. with xesmf or cdo remapbil) and "
    "point the archive at the regridded files"
)
CURVILINEAR = (
    f"nav_lat(y, x)/nav_lon(y, x): a curvilinear grid, which ref_assets cannot store; {REGRID}"
)
NEMO_PATTERN = "nemo_1m_{year}0101_{year}1231_grid_T.nc"
DAY_SECONDS = 86400.0


def write_nemo(path: Path, year: int, *, seed: int = 0, curvilinear: bool = True) -> Path:
    """A year of monthly means as NEMO writes them through XIOS: ``tos(time_counter, y, x)`` in
    the 360_day calendar, ``time_centered`` (mid-month) on the ``time_counter`` dimension, whose
    own values here are the interval ends (each the next month's first instant). Curvilinear:
    bare ``y``/``x`` dimensions with 2-D ``nav_lat``/``nav_lon`` (a tripolar-like warped grid).
    Regular: 1-D ``y``/``x`` coordinates in degrees_north/degrees_east (x over 0..360)."""
    lat = np.arange(-7.5, 8.0, 1.0)  # 16 rows, south to north
    lon = np.arange(0.5, 360.0, 15.0)  # 24 columns
    origin = (year - 1900) * 360 * DAY_SECONDS
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        nc.createDimension("axis_nbounds", 2)
        nc.createDimension("x", lon.size)
        nc.createDimension("y", lat.size)
        nc.createDimension("time_counter", None)
        if curvilinear:
            warp = 3.0 * np.sin(np.radians(lon))[None, :]
            for name, values, quantity, units in (
                ("nav_lat", lat[:, None] + warp, "latitude", "degrees_north"),
                (
                    "nav_lon",
                    np.broadcast_to(lon, (lat.size, lon.size)),
                    "longitude",
                    "degrees_east",
                ),
            ):
                variable = nc.createVariable(name, "f4", ("y", "x"))
                variable.setncatts({"standard_name": quantity, "units": units})
                variable[:] = values
        else:
            for name, values, units in (("y", lat, "degrees_north"), ("x", lon, "degrees_east")):
                nc.createVariable(name, "f4", (name,)).setncatts({"units": units})
                nc[name][:] = values
        for name, values, bounds in (
            ("time_centered", origin + (np.arange(12) * 30 + 15) * DAY_SECONDS, "time_centered"),
            ("time_counter", origin + (np.arange(12) + 1) * 30 * DAY_SECONDS, "time_counter"),
        ):
            variable = nc.createVariable(name, "f8", ("time_counter",))
            variable.setncatts(
                {
                    "standard_name": "time",
                    "units": "seconds since 1900-01-01 00:00:00",
                    "calendar": "360_day",
                    "bounds": f"{bounds}_bounds",
                }
            )
            variable[:] = values
            edges = origin + np.arange(13) * 30 * DAY_SECONDS
            nc.createVariable(f"{bounds}_bounds", "f8", ("time_counter", "axis_nbounds"))[:] = (
                np.stack([edges[:-1], edges[1:]], axis=1)
            )
        nc["time_counter"].axis = "T"
        tos = nc.createVariable("tos", "f4", ("time_counter", "y", "x"), fill_value=1e20)
        tos.setncatts(
            {
                "standard_name": "sea_surface_temperature",
                "units": "degC",
                "online_operation": "average",
                "coordinates": "time_centered nav_lat nav_lon" if curvilinear else "time_centered",
            }
        )
        values = np.random.default_rng(seed).normal(20.0, 5.0, (12, lat.size, lon.size))
        values[:, :2, :3] = 1e20  # land: fill values
        tos[:] = values.astype("float32")
    return path


def nemo_spec_fields(archive: Path) -> dict:
    return spec_fields(archive, NEMO_PATTERN, units="degC", variables={"skt": "tos"})


def nemo_provider(archive: Path) -> LocalFilesProvider:
    return LocalFilesProvider(
        make_spec(
            archive,
            NEMO_PATTERN,
            period="monthly",
            start="2000-01-01",
            units="degC",
            variables={"skt": "tos"},
        )
    )


def nemo_month(path: Path, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One month of ``tos`` read with netCDF4 alone: north up, longitudes in -180..180."""
    with netCDF4.Dataset(path) as nc:
        values = nc["tos"][step].filled(np.nan).astype("float64")
        lat, lon = nc["y"][:].astype("float64"), nc["x"][:].astype("float64")
    lon = ((lon + 180.0) % 360.0) - 180.0
    order = np.argsort(lon)
    return values[::-1][:, order], lat[::-1], lon[order]


# -- curvilinear grids and axes that cannot be shown to be geographic: refused, naming the file


def test_a_curvilinear_nemo_file_is_refused_naming_the_file_and_its_2d_coordinates(tmp_path):
    path = write_nemo(tmp_path / "nemo_1m_20000101_20001231_grid_T.nc", 2000)
    provider = nemo_provider(tmp_path)
    with pytest.raises(ProviderError) as caught:
        provider.describe()
    assert str(caught.value) == f"local_t2m (grid): {path.as_uri()}: {CURVILINEAR}"
    with pytest.raises(ProviderError) as caught:
        provider.fetch(month("2000-03"))
    assert str(caught.value) == f"local_t2m (grid): {path.as_uri()}: {CURVILINEAR}"


def _dataset(dims: tuple[str, str], coords: dict, day_number: int = 0) -> xr.Dataset:
    """One day of ``t2m`` on (time, *dims), 6 x 8 cells, 2024-01-01 plus ``day_number``."""
    values = field(day_number, (1, 6, 8))
    data = xr.Dataset({"t2m": (("time", *dims), values, {"units": "K"})}, coords=coords)
    time = ("time", [float(day_number)], {"units": "days since 2024-01-01"})
    return data.assign_coords(time=time)


LAT6, LON8 = np.linspace(-5.0, 5.0, 6), np.linspace(10.0, 45.0, 8)
ROWS, COLUMNS = np.arange(6.0), np.arange(8.0)
WARPED = {
    "nav_lat": (("y", "x"), LAT6[:, None] + 0.1 * COLUMNS[None, :]),
    "nav_lon": (("y", "x"), np.broadcast_to(LON8, (6, 8))),
}


@pytest.mark.parametrize(
    ("dims", "coords", "message"),
    [
        pytest.param(
            ("y", "x"),
            {},
            "its y axis is the bare dimension 'y' (6 cells) with no "
            "coordinate values: its latitudes would be array indices; give it a 1-D "
            f"latitude coordinate, or {REGRID}",
            id="bare-dims",
        ),
        pytest.param(
            ("y", "x"),
            {"y": ROWS, "x": COLUMNS},
            "its y axis 'y' is not shown to be "
            "latitude: it has neither a latitude standard_name nor degrees_north units "
            "(units None), so its values (0..5) may be array indices or projected "
            "coordinates; if they are latitudes, give the coordinate units "
            f"'degrees_north', else {REGRID}",
            id="index-coordinates",
        ),
        pytest.param(
            ("y", "x"),
            {"y": ("y", ROWS, {"units": "m"}), "x": COLUMNS},
            "its y axis 'y' is not shown to be latitude",
            id="projected-metres",
        ),
        pytest.param(("y", "x"), WARPED, CURVILINEAR, id="2d-lat-lon"),
        pytest.param(
            ("y", "x"),
            {"y": ROWS, "x": COLUMNS, **WARPED},
            CURVILINEAR,
            id="2d-lat-lon-and-index-coordinates",
        ),
        pytest.param(
            ("rlat", "rlon"),
            {
                "rlat": ("rlat", LAT6, {"standard_name": "grid_latitude", "units": "degrees"}),
                "rlon": ("rlon", LON8, {"standard_name": "grid_longitude", "units": "degrees"}),
                "lat": (("rlat", "rlon"), WARPED["nav_lat"][1]),
                "lon": (("rlat", "rlon"), WARPED["nav_lon"][1]),
            },
            "lat(rlat, rlon)/lon(rlat, rlon): a curvilinear grid, which ref_assets cannot store",
            id="rotated-pole",
        ),
        pytest.param(
            ("lat", "lon"),
            {"lat": np.arange(0.0, 330.0, 55.0), "lon": LON8},
            "its latitude 'lat' runs from 0 to 275, outside -90..90: these are not latitudes",
            id="latitude-out-of-range",
        ),
        pytest.param(
            ("lat", "lon"),
            {"lat": LAT6, "lon": np.arange(0.0, 800.0, 100.0)},
            "its longitude 'lon' runs from 0 to 700, outside -180..360",
            id="longitude",
        ),
        pytest.param(
            ("lat", "lon"),
            {"lat": LAT6[[0, 2, 1, 3, 4, 5]], "lon": LON8},
            "its latitude 'lat' is not strictly increasing or decreasing",
            id="unordered-latitude",
        ),
        pytest.param(
            ("y", "x"),
            {"lat": ("y", LAT6), "lon": ("y", np.linspace(0, 5, 6))},
            "its x axis is the bare dimension 'x' (8 cells) with no coordinate values",
            id="points-along-y",
        ),
    ],
)
def test_a_grid_not_shown_to_be_latitude_and_longitude_fails_closed(
    tmp_path, dims, coords, message
):
    path = tmp_path / "t2m_20240101.nc"
    _dataset(dims, coords).to_netcdf(path, engine="netcdf4")
    provider = LocalFilesProvider(make_spec(tmp_path, "t2m_{year}{month}{day}.nc"))
    with pytest.raises(ProviderError) as caught:
        provider.fetch(day("2024-01-01"))
    assert str(caught.value).startswith(f"local_t2m (grid): {path.as_uri()}: {message}")


def test_y_and_x_in_degrees_or_as_lat_lon_coordinates_of_bare_dims_are_latitude_and_longitude(
    tmp_path,
):
    by_units = {
        "y": ("y", LAT6, {"units": "degrees_north"}),
        "x": ("x", LON8, {"standard_name": "longitude"}),
    }
    _dataset(("y", "x"), by_units).to_netcdf(tmp_path / "t2m_20240101.nc", engine="netcdf4")
    # Bare dims carrying 1-D lat/lon coordinates of their own (a regular grid written by CDO).
    on_bare_dims = {"lat": ("y", LAT6), "lon": ("x", LON8)}
    _dataset(("y", "x"), on_bare_dims, 1).to_netcdf(tmp_path / "t2m_20240102.nc", engine="netcdf4")
    provider = LocalFilesProvider(make_spec(tmp_path, "t2m_{year}{month}{day}.nc"))
    grid = provider.describe().grid
    np.testing.assert_array_equal(grid.y, LAT6[::-1])
    np.testing.assert_array_equal(grid.x, LON8)
    for key in ("2024-01-01", "2024-01-02"):
        with netCDF4.Dataset(tmp_path / f"t2m_{key.replace('-', '')}.nc") as nc:
            source = nc["t2m"][0].astype("float64")
        np.testing.assert_array_equal(provider.fetch(day(key)).data["t2m"].values, source[::-1])


def test_a_geographic_geotiff_off_the_globe_is_refused(tmp_path):
    band = np.arange(24, dtype="float32").reshape(4, 6)
    write_geotiff(tmp_path / "t2m_20240101.tif", [band], transform=Affine(1, 0, 0, 0, -1, 95))
    provider = LocalFilesProvider(make_spec(tmp_path, "t2m_{year}{month}{day}.tif"))
    with pytest.raises(ProviderError) as caught:
        provider.describe()
    assert str(caught.value).endswith(
        "t2m_20240101.tif: its latitude 'y' runs from 91.5 to 94.5, outside -90..90: these are "
        "not latitudes"
    )


def test_a_curvilinear_archive_is_refused_by_a_dagster_run_with_nothing_written(
    settings, write_spec, register_providers, materialize, tmp_path
):
    archive = tmp_path / "nemo"
    archive.mkdir()
    path = write_nemo(archive / "nemo_1m_20000101_20001231_grid_T.nc", 2000)
    register_providers("ref_assets.providers.local_files:LocalFilesProvider")
    write_spec(
        "nemo_tos",
        period="monthly",
        start="2000-01-01",
        end="2000-12-01",
        **nemo_spec_fields(archive),
    )

    result = materialize("nemo_tos", "2000-01...2000-03", raise_on_error=False)
    failure = step_failure(result)
    failed = failure.step_failure_data.user_failure_data.metadata["failed_periods"].value
    assert list(failed) == ["2000-01", "2000-02", "2000-03"]
    assert all(f"{path.as_uri()}: {CURVILINEAR}" in error for error in failed.values())
    with pytest.raises(StoreError, match="nemo_tos: no store at"):  # not even a layout
        ref_assets.dataset_status("nemo_tos", settings=settings)


# -- time axes: time_centered, time_counter, standard_name time, axis T


def test_a_regular_360_day_nemo_file_ingests_by_time_centered_through_dagster(
    settings, write_spec, register_providers, materialize, tmp_path
):
    archive = tmp_path / "nemo"
    archive.mkdir()
    files = {
        year: write_nemo(
            archive / f"nemo_1m_{year}0101_{year}1231_grid_T.nc", year, seed=year, curvilinear=False
        )
        for year in (2000, 2001)
    }
    provider = nemo_provider(archive)
    periods = provider.available_periods(month("1999-06"), month("2001-03"))
    assert periods[0] == month("2000-01") and periods[-1] == month("2001-03")
    assert len(periods) == 15 and provider.latest_available() == month("2001-12")

    register_providers("ref_assets.providers.local_files:LocalFilesProvider")
    write_spec(
        "nemo_tos",
        period="monthly",
        start="2000-01-01",
        end="2001-12-01",
        chunks={"y": 8, "x": 12},
        **nemo_spec_fields(archive),
    )
    assert materialize("nemo_tos", "2000-11...2001-02").success

    stored = ref_assets.open_dataset("nemo_tos", settings=settings)
    for key, year, step in (("2000-11", 2000, 10), ("2000-12", 2000, 11), ("2001-02", 2001, 1)):
        values, lat, lon = nemo_month(files[year], step)
        np.testing.assert_array_equal(stored.y.values, lat)
        np.testing.assert_array_equal(stored.x.values, lon)
        stored_values = stored["skt"].sel(time=np.datetime64(f"{key}-01")).values
        np.testing.assert_array_equal(stored_values, values)
        [item] = ref_assets.read_provenance("nemo_tos", key, settings=settings).sources
        assert (item.uri, item.sha256) == (files[year].as_uri(), sha256(files[year]))
    assert np.isnan(stored_values).sum() == 6  # the land cells' fill values
    status = ref_assets.dataset_status("nemo_tos", end=datetime(2001, 2, 1), settings=settings)
    assert [p.key for p in status.present] == ["2000-11", "2000-12", "2001-01", "2001-02"]


@pytest.mark.parametrize(
    ("name", "attrs"),
    [("ocean_time", {"standard_name": "time"}), ("tt", {"axis": "T"})],
)
def test_a_time_coordinate_is_known_by_standard_name_or_axis(tmp_path, name, attrs):
    stamps = np.array([0.0, 1.0, 2.0])
    data = xr.Dataset(
        {"t2m": (("record", "lat", "lon"), field(5, (3, 6, 8)), {"units": "K"})},
        coords={
            name: ("record", stamps, {"units": "days since 2024-01-01", **attrs}),
            "lat": LAT6,
            "lon": LON8,
        },
    )
    path = tmp_path / "t2m_202401.nc"
    data.to_netcdf(path, engine="netcdf4")
    provider = LocalFilesProvider(make_spec(tmp_path, "t2m_{year}{month}.nc"))
    assert provider.available_periods(day("2024-01-01"), day("2024-01-31")) == [
        day("2024-01-01"),
        day("2024-01-02"),
        day("2024-01-03"),
    ]
    with netCDF4.Dataset(path) as nc:
        source = nc["t2m"][2].astype("float64")
    np.testing.assert_array_equal(
        provider.fetch(day("2024-01-03")).data["t2m"].values, source[::-1]
    )


# -- symbolic links


@pytest.fixture
def linked_archive(tmp_path) -> tuple[Path, Path]:
    """``archive/t2m_2024010D.nc``: links into ``pool`` under other names (renamed views); day 1
    a broken link (the first file: the grid must come from the next), day 4 a link to a
    directory."""
    pool, archive = tmp_path / "pool", tmp_path / "archive"
    archive.mkdir()
    for d, name in ((2, "run_b.nc"), (3, "run_a.nc")):
        write_netcdf(pool / name, f"2024-01-0{d}", seed=d)
        (archive / f"t2m_2024010{d}.nc").symlink_to(Path("..") / "pool" / name)
    (archive / "t2m_20240101.nc").symlink_to(pool / "withdrawn.nc")
    (pool / "views").mkdir()
    (archive / "t2m_20240104.nc").symlink_to(pool / "views")
    return archive, pool


def test_links_to_files_are_files_and_a_broken_link_is_named_when_its_period_is_fetched(
    linked_archive,
):
    archive, pool = linked_archive
    provider = LocalFilesProvider(make_spec(archive, "t2m_{year}{month}{day}.nc"))
    # Availability never opens a one-period file: by name, the broken links' periods are listed.
    assert provider.available_periods(day("2024-01-01"), day("2024-01-05")) == [
        day(f"2024-01-0{d}") for d in (1, 2, 3, 4)
    ]
    for d, name in ((2, "run_b.nc"), (3, "run_a.nc")):
        fetched = provider.fetch(day(f"2024-01-0{d}"))
        np.testing.assert_array_equal(fetched.data["t2m"].values, expected(pool / name).values)
        [item] = fetched.sources
        link = archive / f"t2m_2024010{d}.nc"
        assert (item.uri, item.size) == (link.as_uri(), (pool / name).stat().st_size)
        assert item.sha256 == sha256(pool / name)
    assert provider.describe().grid.y[0] == 4.75  # from the first readable file

    with pytest.raises(ProviderError) as caught:
        provider.fetch(day("2024-01-01"))
    assert not isinstance(caught.value, SourceNotFoundError)
    assert str(caught.value) == (
        f"local_t2m period 2024-01-01: the archive's link {(archive / 't2m_20240101.nc').as_uri()}"
        f" points to {pool / 'withdrawn.nc'}, which does not exist; restore the target or "
        "remove the link"
    )
    with pytest.raises(ProviderError) as caught:
        provider.fetch(day("2024-01-04"))
    assert str(caught.value) == (
        f"local_t2m period 2024-01-04: the archive's entry {(archive / 't2m_20240104.nc').as_uri()}"
        " is a link to a directory, where a file is expected; replace it with the period's file "
        "or remove it"
    )


def test_a_latest_link_under_a_glob_is_read_and_a_broken_one_is_named(tmp_path):
    monthly = write_netcdf(tmp_path / "2024" / "t2m_202401.nc", "2024-01-01", 31, seed=7)
    (tmp_path / "latest").mkdir()
    (tmp_path / "latest" / "t2m.nc").symlink_to(monthly)
    provider = LocalFilesProvider(make_spec(tmp_path, "latest/*.nc"))
    assert provider.latest_available() == day("2024-01-31")
    fetched = provider.fetch(day("2024-01-20"))
    np.testing.assert_array_equal(fetched.data["t2m"].values, expected(monthly, 19).values)
    assert fetched.sources[0].sha256 == sha256(monthly)

    (tmp_path / "latest" / "t2m_next.nc").symlink_to(tmp_path / "2024" / "t2m_202402.nc")
    provider = LocalFilesProvider(make_spec(tmp_path, "latest/*.nc"))
    np.testing.assert_array_equal(
        provider.fetch(day("2024-01-20")).data["t2m"].values, expected(monthly, 19).values
    )
    broken = (
        f"the archive's link {(tmp_path / 'latest' / 't2m_next.nc').as_uri()} points to "
        f"{tmp_path / '2024' / 't2m_202402.nc'}, which does not exist; restore the target or "
        "remove the link"
    )
    with pytest.raises(ProviderError) as caught:  # it may hold February: which, nobody can tell
        provider.fetch(day("2024-02-01"))
    assert str(caught.value) == (
        "local_t2m period 2024-02-01: no readable file holds this period, and 1 file(s) that may "
        f"hold it cannot be read (local_t2m (indexing): {broken}): repair or remove them"
    )
    with pytest.raises(ProviderError, match="local_t2m \\(indexing\\): the archive's link"):
        provider.available_periods(day("2024-01-01"), day("2024-02-29"))


# -- a corrupt first file fails its own periods only


def test_a_truncated_first_file_fails_only_its_period(tmp_path):
    files = [
        write_netcdf(tmp_path / f"t2m_2024010{d}.nc", f"2024-01-0{d}", seed=d) for d in (1, 2, 3)
    ]
    _truncate(files[0])
    provider = LocalFilesProvider(make_spec(tmp_path, "t2m_{year}{month}{day}.nc"))
    for d in (2, 3):
        values = provider.fetch(day(f"2024-01-0{d}")).data["t2m"].values
        np.testing.assert_array_equal(values, expected(files[d - 1]).values)
    with pytest.raises(ProviderError) as caught:
        provider.fetch(day("2024-01-01"))
    assert str(caught.value).startswith(
        f"local_t2m period 2024-01-01: {files[0].as_uri()} cannot be read, it is truncated or "
        "corrupt"
    )


def test_an_unreadable_file_under_a_glob_names_itself_and_spares_the_others(tmp_path):
    (tmp_path / "a_broken.nc").write_bytes(b"<html>502 Bad Gateway</html>")
    good = write_netcdf(tmp_path / "b_good.nc", "2024-01-01", 2, seed=4)
    provider = LocalFilesProvider(make_spec(tmp_path, "*.nc"))
    np.testing.assert_array_equal(
        provider.fetch(day("2024-01-02")).data["t2m"].values, expected(good, 1).values
    )
    with pytest.raises(ProviderError) as caught:
        provider.fetch(day("2024-01-05"))
    assert str(caught.value) == (
        "local_t2m period 2024-01-05: no readable file holds this period, and 1 file(s) that may "
        f"hold it cannot be read (local_t2m (indexing): {(tmp_path / 'a_broken.nc').as_uri()}: "
        "neither NetCDF, GRIB nor GeoTIFF (the file starts with b'<html>50')): repair or remove "
        "them"
    )


def test_an_archive_of_unreadable_files_names_them(tmp_path):
    for d in (1, 2):
        (tmp_path / f"t2m_2024010{d}.nc").write_bytes(b"")
    provider = LocalFilesProvider(make_spec(tmp_path, "t2m_{year}{month}{day}.nc"))
    with pytest.raises(ProviderError) as caught:
        provider.describe()
    message = str(caught.value)
    assert message.startswith(
        "local_t2m: no file to take the dataset's grid from: the first 2 of 2 cannot be read ("
        f"local_t2m (grid): {(tmp_path / 't2m_20240101.nc').as_uri()}: neither NetCDF, GRIB "
        "nor GeoTIFF (the file starts with b''); local_t2m (grid): "
    )
    assert message.endswith("): repair or remove them")


def test_a_dagster_range_over_a_truncated_first_file_commits_the_good_periods(
    settings, write_spec, register_providers, materialize, tmp_path
):
    archive = tmp_path / "archive"
    files = [
        write_netcdf(archive / f"t2m_2024010{d}.nc", f"2024-01-0{d}", seed=d) for d in (1, 2, 3)
    ]
    _truncate(files[0])
    register_providers("ref_assets.providers.local_files:LocalFilesProvider")
    write_spec("local_t2m", **spec_fields(archive, "t2m_{year}{month}{day}.nc"))

    result = materialize("local_t2m", "2024-01-01...2024-01-03", raise_on_error=False)
    failure = step_failure(result)
    failed = failure.step_failure_data.user_failure_data.metadata["failed_periods"].value
    assert list(failed) == ["2024-01-01"]
    assert f"{files[0].as_uri()} cannot be read, it is truncated or corrupt" in failed["2024-01-01"]
    status = ref_assets.dataset_status("local_t2m", end=datetime(2024, 1, 3), settings=settings)
    assert [p.key for p in status.present] == ["2024-01-02", "2024-01-03"]
    stored = ref_assets.open_dataset("local_t2m", settings=settings)
    for d in (2, 3):
        source = expected(files[d - 1])
        np.testing.assert_array_equal(stored["t2m"].sel(time=f"2024-01-0{d}").values, source.values)
    np.testing.assert_array_equal(stored.x.values, source.lon.values)


# -- a remote archive that cannot be reached


def test_an_unreachable_remote_archive_is_named_redacted_with_what_to_check():
    with socket.socket() as probe:  # a loopback port nobody listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://reader:S3CRET@127.0.0.1:{port}/archive"
    provider = LocalFilesProvider(make_spec(url, "t2m_{year}{month}{day}.nc"))
    for call in (provider.describe, lambda: provider.fetch(day("2024-01-01"))):
        with pytest.raises(SourceUnavailableError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(
            f"local_t2m: cannot list the archive http://***@127.0.0.1:{port}/archive/"
            "t2m_{year}{month}{day}.nc (ClientConnectorError: Cannot connect to host"
        )
        assert message.endswith(
            "check that params.path is right and reachable from here (network, endpoint in "
            "params.storage_options), then run again"
        )
        assert "S3CRET" not in message

"""GRIB archives read by local_files, and ERA5's per-step ``expver`` kept in each period's record.

GRIB files are made here with ecCodes from its GRIB2 sample (a small global 15-degree grid, 0..360
longitudes, north first, as ERA5 comes) and the values and coordinates the provider delivers are
checked against each message decoded independently with ecCodes. NetCDF files carry ``expver`` in
both of ERA5's shapes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import ref_assets
from ref_assets.cli.provenance import describe_record
from ref_assets.periods import Period, PeriodType
from ref_assets.providers import local_files_grib
from ref_assets.providers.local_files import LocalFilesProvider
from ref_assets.providers.local_files_formats import SourceFileError, open_source
from ref_assets.providers.protocol import ProviderError
from ref_assets.specs import DatasetSpec
from ref_assets_tests.conftest import spec_dict, step_failure

# ecCodes after ref_assets (which loads pyproj and rasterio first: see local_files_grib).
import eccodes  # isort: skip

LATITUDES = (60.0, -60.0, 20.0)  # first, last, increment: 7 rows, north first
LONGITUDES = (0.0, 345.0, 15.0)  # 24 columns over 0..360
T2M, TP, T = 167, 228, 130  # ECMWF paramIds: 2 m temperature, total precipitation, temperature


def day(key: str) -> Period:
    return Period.from_key(PeriodType.DAILY, key)


def grib_message(
    param: int,
    date: str,
    hour: int = 0,
    *,
    step: int = 0,
    seed: int = 0,
    level: int | None = None,
    expver: str | None = None,
) -> bytes:
    """One GRIB2 message of ``param`` on the test grid, analysed (or forecast ``step`` hours ahead)
    at ``date`` ``hour``; on pressure ``level`` hPa if given."""
    sample = "regular_ll_sfc_grib2" if level is None else "regular_ll_pl_grib2"
    handle = eccodes.codes_grib_new_from_samples(sample)
    try:
        if expver is not None:  # ECMWF's local section (MARS labelling), as ERA5 has
            eccodes.codes_set_long(handle, "setLocalDefinition", 1)
            eccodes.codes_set_long(handle, "localDefinitionNumber", 1)
            eccodes.codes_set_string(handle, "expver", expver)
        (north, south, dy), (west, east, dx) = LATITUDES, LONGITUDES
        columns, rows = round((east - west) / dx) + 1, round((north - south) / dy) + 1
        eccodes.codes_set_long(handle, "Ni", columns)
        eccodes.codes_set_long(handle, "Nj", rows)
        eccodes.codes_set(handle, "latitudeOfFirstGridPointInDegrees", north)
        eccodes.codes_set(handle, "latitudeOfLastGridPointInDegrees", south)
        eccodes.codes_set(handle, "longitudeOfFirstGridPointInDegrees", west)
        eccodes.codes_set(handle, "longitudeOfLastGridPointInDegrees", east)
        eccodes.codes_set(handle, "iDirectionIncrementInDegrees", dx)
        eccodes.codes_set(handle, "jDirectionIncrementInDegrees", dy)
        eccodes.codes_set_long(handle, "dataDate", int(date.replace("-", "")))
        eccodes.codes_set_long(handle, "dataTime", hour * 100)
        eccodes.codes_set_long(handle, "paramId", param)
        eccodes.codes_set_long(handle, "step", step)
        if level is not None:
            eccodes.codes_set_long(handle, "level", level)
        scale, offset = (0.002, 0.0) if param == TP else (15.0, 280.0)
        values = np.random.default_rng(seed).normal(offset, scale, rows * columns)
        eccodes.codes_set_values(handle, np.abs(values) if param == TP else values)
        return eccodes.codes_get_message(handle)
    finally:
        eccodes.codes_release(handle)


def write_grib(path: Path, *messages: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(messages))
    return path


def decoded(path: Path) -> dict[tuple[str, str], dict[tuple[float, float], np.float32]]:
    """Every message of the file decoded by ecCodes alone: (shortName, valid date and time) ->
    {(latitude, longitude in -180..180): value as float32, as cfgrib delivers it}."""
    fields = {}
    with open(path, "rb") as file:
        while (handle := eccodes.codes_grib_new_from_file(file)) is not None:
            try:
                when = "{:08d}{:04d}".format(
                    eccodes.codes_get_long(handle, "validityDate"),
                    eccodes.codes_get_long(handle, "validityTime"),
                )
                latitudes = eccodes.codes_get_array(handle, "latitudes")
                longitudes = (eccodes.codes_get_array(handle, "longitudes") + 180.0) % 360.0 - 180.0
                values = eccodes.codes_get_values(handle).astype("float32")
                fields[(eccodes.codes_get_string(handle, "shortName"), when)] = dict(
                    zip(zip(latitudes, longitudes, strict=True), values, strict=True)
                )
            finally:
                eccodes.codes_release(handle)
    return fields


def assert_matches(values: np.ndarray, y: np.ndarray, x: np.ndarray, field: dict) -> None:
    """Every cell of ``values`` on (y, x) is the field's value at that latitude and longitude,
    and the grid covers the whole field."""
    assert values.shape == (y.size, x.size) and values.size == len(field)
    expected = np.array([[field[(lat, lon)] for lon in x] for lat in y], dtype="float32")
    np.testing.assert_array_equal(values, expected)


def make_spec(path: Path, pattern: str, variables: dict[str, str], **spec) -> DatasetSpec:
    units = {"t2m": "K", "tp": "m", "t": "K"}
    fields = {
        "provider": "local_files",
        "params": {"path": str(path), "pattern": pattern, "variables": variables},
        "variables": [{"name": name, "units": units[name]} for name in variables],
    }
    return DatasetSpec.model_validate(spec_dict("local_grib", **fields | spec))


def files_in(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_daily_grib_files_match_ecCodes_and_leave_no_index_beside_them(tmp_path):
    for d in (1, 2, 3):
        write_grib(tmp_path / f"t2m_2024010{d}.grib", grib_message(T2M, f"2024-01-0{d}", seed=d))
    before = files_in(tmp_path)
    provider = LocalFilesProvider(
        make_spec(tmp_path, "t2m_{year}{month}{day}.grib", {"t2m": "t2m"})
    )

    grid = provider.describe().grid  # read from the first file's path
    assert grid.x[0] == -180.0 and grid.x[-1] == 165.0 and grid.y[0] == 60.0  # wrapped, north up
    for d in (1, 2, 3):
        fetched = provider.fetch(day(f"2024-01-0{d}"))
        source = tmp_path / f"t2m_2024010{d}.grib"
        values = fetched.data["t2m"].values
        assert_matches(values, grid.y, grid.x, decoded(source)[("2t", f"2024010{d}0000")])
        assert fetched.data["t2m"].attrs["units"] == "K"
        [item] = fetched.sources
        assert (item.uri, item.size) == (source.as_uri(), source.stat().st_size)
        assert item.sha256 == sha256(source)
        assert fetched.flags == {}  # a message without ECMWF's local section has no expver
    assert files_in(tmp_path) == before  # no <file>.<hash>.idx written


def test_a_monthly_file_of_analysis_and_forecast_variables(tmp_path):
    """ERA5 as the CDS serves it: t2m analysed at 00 UTC, tp forecast from 18 UTC the day before
    (6 hours ahead): cfgrib splits them by level type, both are read by valid time. Ten days, to
    keep the test fast (every open indexes the whole file)."""
    messages = []
    for d in range(1, 11):
        valid = datetime(2024, 1, d)
        messages.append(grib_message(T2M, f"{valid:%Y-%m-%d}", seed=d))
        reference = valid - timedelta(hours=6)
        messages.append(grib_message(TP, f"{reference:%Y-%m-%d}", 18, step=6, seed=100 + d))
    source = write_grib(tmp_path / "2024" / "era5_202401.grib", *messages)
    before = files_in(tmp_path)
    spec = make_spec(tmp_path, "{year}/era5_{year}{month}.grib", {"t2m": "t2m", "tp": "tp"})
    provider = LocalFilesProvider(spec)

    available = provider.available_periods(day("2023-12-30"), day("2024-02-02"))
    assert [p.key for p in available] == [f"2024-01-{d:02d}" for d in range(1, 11)]
    fields = decoded(source)
    grid = provider.describe().grid
    for d in (1, 10):
        fetched = provider.fetch(day(f"2024-01-{d:02d}"))
        for name, short in (("t2m", "2t"), ("tp", "tp")):
            field = fields[(short, f"202401{d:02d}0000")]
            assert_matches(fetched.data[name].values, grid.y, grid.x, field)
        assert fetched.data["tp"].attrs["units"] == "m"
        assert fetched.sources[0].sha256 == sha256(source)
    assert files_in(tmp_path) == before


def test_ecCodes_loads_on_the_first_grib_read_after_pyproj_and_rasterio(tmp_path):
    """The ecCodes wheels bundle a PROJ of their own: it must load after pyproj's and rasterio's
    (or the process can crash at exit), and not at all in a process that reads no GRIB."""
    path = write_grib(tmp_path / "t2m.grib", grib_message(T2M, "2024-01-01"))
    script = f"""
import sys
import ref_assets.providers.local_files
from ref_assets.providers.local_files_formats import SourceFileError, open_source
assert "gribapi" not in sys.modules, "ecCodes loaded without a GRIB file read"
with open_source({str(path)!r}) as data:
    data["t2m"].values
loaded = list(sys.modules)
assert loaded.index("pyproj") < loaded.index("gribapi") > loaded.index("rasterio"), loaded
import pyproj
pyproj.Transformer.from_crs(4326, 3857).transform(10.0, 20.0)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_grib_bytes_are_decoded_from_a_private_copy_kept_for_the_next_period(tmp_path, monkeypatch):
    """Remote files are read whole into memory; cfgrib needs a path: an anonymous in-memory file
    on Linux, else a temporary file; the latest stays decoded until another file replaces it."""
    monkeypatch.setattr(local_files_grib, "_latest", None)
    first, second = (grib_message(T2M, f"2024-01-0{d}", seed=d) for d in (1, 2))
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    with open_source(first) as via_memory:
        memory = via_memory["t2m"].values[0]
        latitude = via_memory["latitude"].values
        longitude = (via_memory["longitude"].values + 180.0) % 360.0 - 180.0
    assert list(private.iterdir()) == []  # nothing on disk
    field = decoded(write_grib(tmp_path / "first.grib", first))[("2t", "202401010000")]
    assert_matches(memory, latitude, longitude, field)

    monkeypatch.delattr(os, "memfd_create")
    with open_source(second) as via_file:
        [copy] = private.iterdir()
        from_file = via_file["t2m"].values[0]
    field = decoded(write_grib(tmp_path / "second.grib", second))[("2t", "202401020000")]
    assert_matches(from_file, latitude, longitude, field)
    assert list(private.iterdir()) == [copy]  # kept for the next period of the same file
    with open_source(first) as again:
        assert not copy.exists()  # replaced
        np.testing.assert_array_equal(again["t2m"].values[0], memory)
    local_files_grib._latest.retire()
    assert list(private.iterdir()) == []


def test_the_periods_of_one_grib_file_are_decoded_from_one_opening(tmp_path, monkeypatch):
    """cfgrib indexes the whole file on every open: fetching each period of a monthly file must
    not open it again."""
    monkeypatch.setattr(local_files_grib, "_latest", None)
    days = [grib_message(T2M, f"2024-01-0{d}", seed=d) for d in (1, 2, 3, 4)]
    source = write_grib(tmp_path / "t2m_202401.grib", *days)
    provider = LocalFilesProvider(make_spec(tmp_path, "t2m_{year}{month}.grib", {"t2m": "t2m"}))
    grid = provider.describe().grid
    opened, decode = [], local_files_grib._decoded
    monkeypatch.setattr(local_files_grib, "_decoded", lambda s: opened.append(s) or decode(s))
    fields = decoded(source)
    for d in (1, 2, 3, 4):
        fetched = provider.fetch(day(f"2024-01-0{d}"))
        assert_matches(
            fetched.data["t2m"].values, grid.y, grid.x, fields[("2t", f"2024010{d}0000")]
        )
    assert len(opened) == 1


def test_levels_stay_a_dimension_and_single_valued_ones_are_dropped(tmp_path):
    levels = [grib_message(T, "2024-01-01", level=hpa, seed=hpa) for hpa in (850, 500)]
    with open_source(b"".join(levels)) as data:
        assert data["t"].dims == ("valid_time", "isobaricInhPa", "latitude", "longitude")
        assert data["isobaricInhPa"].values.tolist() == [850.0, 500.0]
    with open_source(grib_message(T2M, "2024-01-01")) as data:
        assert data["t2m"].dims == ("valid_time", "latitude", "longitude")
        assert sorted(data.coords) == ["latitude", "longitude", "valid_time"]  # no step, surface
        assert data["valid_time"].attrs["units"] == "seconds since 1970-01-01T00:00:00"
        assert data["valid_time"].values.tolist() == [datetime(2024, 1, 1, tzinfo=UTC).timestamp()]


def test_a_reduced_gaussian_grid_is_refused():
    handle = eccodes.codes_grib_new_from_samples("reduced_gg_sfc_grib2")
    try:
        eccodes.codes_set_long(handle, "paramId", T2M)
        message = eccodes.codes_get_message(handle)
    finally:
        eccodes.codes_release(handle)
    with pytest.raises(SourceFileError) as caught, open_source(message):
        pass
    assert str(caught.value) == (
        "variable 't2m' is on a reduced_gg grid with dimensions ('valid_time', 'values'), not on "
        "latitude/longitude axes: regrid it to a regular latitude/longitude grid first"
    )


def test_variables_at_different_valid_times_are_refused_naming_the_file(tmp_path):
    write_grib(
        tmp_path / "mixed_20240101.grib",
        grib_message(T2M, "2024-01-01"),
        grib_message(TP, "2024-01-01", step=6),
    )
    spec = make_spec(tmp_path, "mixed_{year}{month}{day}.grib", {"t2m": "t2m", "tp": "tp"})
    with pytest.raises(ProviderError) as caught:
        LocalFilesProvider(spec).fetch(day("2024-01-01"))
    # The only file cannot give the grid, so the dataset has none; the file says why.
    assert (
        f"local_grib (grid): {(tmp_path / 'mixed_20240101.grib').as_uri()}: its variables are at "
        "different valid times (t2m: one step at 2024-01-01T00:00:00; tp: one step at "
        "2024-01-01T06:00:00); put variables with different time steps in different files"
    ) in str(caught.value)


def test_grib_expver_per_message_is_the_periods_flag(tmp_path):
    write_grib(
        tmp_path / "t2m_202401.grib",
        grib_message(T2M, "2024-01-01", expver="0001"),
        grib_message(T2M, "2024-01-02", expver="0005"),
    )
    provider = LocalFilesProvider(make_spec(tmp_path, "t2m_{year}{month}.grib", {"t2m": "t2m"}))
    assert provider.fetch(day("2024-01-01")).flags == {"expver": "0001"}
    assert provider.fetch(day("2024-01-02")).flags == {"expver": "0005"}


@pytest.fixture
def grib_archive(write_spec, register_providers, tmp_path):
    """Three daily GRIB files read by local_files registered in ref.toml; the second truncated."""
    archive = tmp_path / "archive"
    for d in (1, 2, 3):
        write_grib(archive / f"t2m_2024010{d}.grib", grib_message(T2M, f"2024-01-0{d}", seed=d))
    truncated = archive / "t2m_20240102.grib"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    register_providers("ref_assets.providers.local_files:LocalFilesProvider")
    spec = make_spec(archive, "t2m_{year}{month}{day}.grib", {"t2m": "t2m"})
    write_spec("local_grib", **spec.model_dump(include={"provider", "params", "variables"}))
    return archive


def test_a_dagster_range_stores_grib_periods_and_refuses_a_truncated_file(
    settings, grib_archive, materialize
):
    before = files_in(grib_archive)
    result = materialize("local_grib", "2024-01-01...2024-01-03", raise_on_error=False)

    failed = step_failure(result).step_failure_data.user_failure_data.metadata["failed_periods"]
    assert list(failed.value) == ["2024-01-02"]
    assert failed.value["2024-01-02"].startswith(
        f"UnreadableFileError: local_grib period 2024-01-02: "
        f"{(grib_archive / 't2m_20240102.grib').as_uri()} cannot be read, it is truncated or "
        "corrupt (GribReadError: ecCodes PrematureEndOfFileError"
    )
    status = ref_assets.dataset_status("local_grib", end=datetime(2024, 1, 3), settings=settings)
    assert [p.key for p in status.present] == ["2024-01-01", "2024-01-03"]
    stored = ref_assets.open_dataset("local_grib", settings=settings)
    assert np.isnan(stored["t2m"].sel(time="2024-01-02").values).all()
    source = grib_archive / "t2m_20240103.grib"
    assert_matches(
        stored["t2m"].sel(time="2024-01-03").values,
        stored.y.values,
        stored.x.values,
        decoded(source)[("2t", "202401030000")],
    )
    [item] = ref_assets.read_provenance("local_grib", "2024-01-03", settings=settings).sources
    assert (item.uri, item.sha256) == (source.as_uri(), sha256(source))
    assert files_in(grib_archive) == before


# -- ERA5's expver in NetCDF files


def era5_netcdf(path: Path, expvers: list[str], *, old_shape: bool = False) -> xr.Dataset:
    """A month of daily t2m steps on (valid_time, latitude, longitude) with one expver per step:
    the CDS's shape (a string variable along valid_time) or the older one (an ``expver``
    dimension of 1 and 5, each step's values in its own slice and NaN in the other)."""
    steps = len(expvers)
    times = np.datetime64("2024-01-01") + np.arange(steps).astype("timedelta64[D]")
    latitude, longitude = np.arange(10.0, 7.0, -0.5), np.arange(0.0, 4.0, 0.5)
    values = np.random.default_rng(5).normal(280, 5, (steps, latitude.size, longitude.size))
    coords = {"valid_time": times, "latitude": latitude, "longitude": longitude}
    if old_shape:
        slices = np.full((steps, 2, *values.shape[1:]), np.nan)
        for step, expver in enumerate(expvers):
            slices[step, ["0001", "0005"].index(expver)] = values[step]
        data = xr.Dataset(
            {"t2m": (("valid_time", "expver", "latitude", "longitude"), slices, {"units": "K"})},
            coords=coords | {"expver": [1, 5]},
        )
    else:
        data = xr.Dataset(
            {"t2m": (("valid_time", "latitude", "longitude"), values, {"units": "K"})},
            coords=coords | {"expver": ("valid_time", np.array(expvers, dtype=object))},
        )
    data["valid_time"].encoding = {"units": "seconds since 1970-01-01", "dtype": "int64"}
    path.parent.mkdir(parents=True, exist_ok=True)
    data.to_netcdf(path, engine="netcdf4")
    return xr.Dataset({"t2m": (("valid_time", "latitude", "longitude"), values)}, coords=coords)


@pytest.mark.parametrize("old_shape", [False, True], ids=["expver-variable", "expver-dimension"])
def test_expver_of_each_step_is_kept_in_its_periods_record(
    settings, write_spec, register_providers, tmp_path, materialize, old_shape
):
    archive = tmp_path / "archive"
    source = era5_netcdf(
        archive / "era5_202401.nc", ["0001", "0001", "0005", "0005"], old_shape=old_shape
    )
    register_providers("ref_assets.providers.local_files:LocalFilesProvider")
    spec = make_spec(archive, "era5_{year}{month}.nc", {"t2m": "t2m"})
    write_spec("local_grib", **spec.model_dump(include={"provider", "params", "variables"}))

    materialize("local_grib", "2024-01-02...2024-01-03")

    records = {
        key: ref_assets.read_provenance("local_grib", key, settings=settings)
        for key in ("2024-01-02", "2024-01-03")
    }
    assert records["2024-01-02"].flags == {"expver": "0001"}
    assert records["2024-01-03"].flags == {"expver": "0005"}
    assert records["2024-01-03"].format == "ref-assets/record-v4"
    assert describe_record(records["2024-01-03"]).endswith("\n  flags            expver 0005")
    older = records["2024-01-03"].model_dump(mode="json", exclude={"flags"})
    older["format"] = "ref-assets/record-v2"  # as written before flags existed
    assert ref_assets.ProvenanceRecord.model_validate(older).flags is None
    stored = ref_assets.open_dataset("local_grib", settings=settings)
    for key, step in (("2024-01-02", 1), ("2024-01-03", 2)):
        np.testing.assert_array_equal(
            stored["t2m"].sel(time=key).values, source["t2m"][step].values.astype("float32")
        )


def test_an_expver_dimension_with_data_in_both_slices_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "era5_202401.nc"
    era5_netcdf(path, ["0001", "0005"], old_shape=True)
    with xr.open_dataset(path) as data:
        both = data.load()
    both["t2m"][0, 1] = both["t2m"][0, 0]  # the first step in both slices
    both.to_netcdf(path, engine="netcdf4")
    provider = LocalFilesProvider(make_spec(tmp_path, "era5_{year}{month}.nc", {"t2m": "t2m"}))
    assert provider.fetch(day("2024-01-02")).flags == {"expver": "0005"}
    with pytest.raises(ProviderError) as caught:
        provider.fetch(day("2024-01-01"))
    assert str(caught.value) == (
        f"local_grib period 2024-01-01: {path.as_uri()}: the time step has data in 2 slices of "
        "dimension 'expver' (['0001', '0005']), so whether it is final or preliminary cannot be "
        "told: each step needs data in exactly one slice (the CDS's current files carry one "
        "expver per step)"
    )


def test_the_fingerprint_is_a_stat_and_an_era5t_step_is_fetched_as_preliminary(tmp_path):
    path = write_grib(
        tmp_path / "t2m_202401.grib",
        grib_message(T2M, "2024-01-01", expver="0001"),
        grib_message(T2M, "2024-01-02", expver="0005"),
    )
    provider = LocalFilesProvider(make_spec(tmp_path, "t2m_{year}{month}.grib", {"t2m": "t2m"}))
    fingerprint = provider.fingerprint(day("2024-01-02"))
    assert fingerprint.size == path.stat().st_size and fingerprint.last_modified
    assert provider.fingerprint(day("2024-02-01")) is None  # no file holds it
    assert provider.fetch(day("2024-01-02")).fingerprint.preliminary
    final = provider.fetch(day("2024-01-01")).fingerprint
    assert not final.preliminary and final.same_version(fingerprint)

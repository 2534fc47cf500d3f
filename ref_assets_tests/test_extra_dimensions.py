"""Dimensions besides time, y and x (pressure levels, ensemble members, age classes): declared in
the spec with their coordinate values, selected by value from richer sources, stored as
``(time, *dimensions, y, x)``, covered by checksums, records, `verify` and the read API, and
refused whole when a source lacks them."""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np
import pytest
from pydantic import ValidationError

import ref_assets
from ref_assets.specs import DatasetSpec
from ref_assets.store.layout import StoreLayoutError
from ref_assets.store.repository import StoreError
from ref_assets.verification import verify_dataset
from ref_assets_tests.conftest import spec_dict, step_failure

LAT = np.array([3.0, 1.0, -1.0, -3.0])  # north up already
LON = np.array([10.0, 12.0, 14.0])
PLEV = np.array([1000.0, 925.0, 850.0, 700.0, 500.0])  # hPa, as ERA5's pressure_level


def write_levels_file(path: Path, day: int) -> None:
    """A day of ``t`` on (valid_time, pressure_level, lat, lon) and ``t2m`` on
    (valid_time, lat, lon), shaped like the Copernicus store's NetCDF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(day)
    with netCDF4.Dataset(path, "w") as nc:
        for name, size in (("valid_time", 1), ("pressure_level", PLEV.size)):
            nc.createDimension(name, size)
        nc.createDimension("latitude", LAT.size)
        nc.createDimension("longitude", LON.size)
        time = nc.createVariable("valid_time", "i8", ("valid_time",))
        time.units, time.calendar = "days since 2024-01-01", "proleptic_gregorian"
        time[:] = [day - 1]
        level = nc.createVariable("pressure_level", "f8", ("pressure_level",))
        level.units = "hPa"
        level[:] = PLEV
        for name, values in (("latitude", LAT), ("longitude", LON)):
            coordinate = nc.createVariable(name, "f8", (name,))
            coordinate.units = "degrees_north" if name == "latitude" else "degrees_east"
            coordinate[:] = values
        t = nc.createVariable("t", "f4", ("valid_time", "pressure_level", "latitude", "longitude"))
        t.units = "K"
        t[:] = rng.normal(250.0, 20.0, (1, PLEV.size, LAT.size, LON.size))
        t2m = nc.createVariable("t2m", "f4", ("valid_time", "latitude", "longitude"))
        t2m.units = "K"
        t2m[:] = rng.normal(285.0, 5.0, (1, LAT.size, LON.size))


def levels_spec(archive: Path, levels=(850, 500, 1000)) -> dict:
    return {
        "provider": "local_files",
        "params": {
            "path": str(archive),
            "pattern": "t_{year}{month}{day}.nc",
            "variables": {"t": "t", "t2m": "t2m"},
            "dimensions": {"level": "pressure_level"},
        },
        "dimensions": [
            {
                "name": "level",
                "values": list(levels),
                "units": "hPa",
                "attributes": {"standard_name": "air_pressure", "positive": "down"},
            }
        ],
        "variables": [
            {"name": "t", "units": "K", "dimensions": ["level"]},
            {"name": "t2m", "units": "K"},
        ],
        "storage": {"time_block": 4},
        "chunks": {"y": 2, "x": 3},
    }


def assert_nothing_stored(dataset_id: str, settings) -> None:
    with pytest.raises(StoreError, match="no store at"):
        ref_assets.dataset_status(dataset_id, settings=settings)


@pytest.fixture
def archive(tmp_path, register_providers) -> Path:
    register_providers("ref_assets.providers.local_files:LocalFilesProvider")
    archive = tmp_path / "archive"
    for day in (1, 2, 3):
        write_levels_file(archive / f"t_2024010{day}.nc", day)
    return archive


def test_a_subset_of_levels_is_stored_by_value_and_verifies(
    settings, write_spec, archive, materialize
):
    write_spec("upper_air", **levels_spec(archive))
    assert materialize("upper_air", "2024-01-01...2024-01-02").success
    assert materialize("upper_air", "2024-01-03").success

    stored = ref_assets.open_dataset("upper_air", settings=settings)
    assert stored["t"].dims == ("time", "level", "y", "x")
    assert stored["t2m"].dims == ("time", "y", "x")
    assert stored["level"].values.tolist() == [850, 500, 1000]
    assert stored["level"].attrs == {"standard_name": "air_pressure", "positive": "down",
                                     "units": "hPa"}  # fmt: skip
    for day in (1, 2, 3):
        with netCDF4.Dataset(archive / f"t_2024010{day}.nc") as nc:
            source_t, source_t2m = nc["t"][0].filled(np.nan), nc["t2m"][0].filled(np.nan)
        when = f"2024-01-0{day}"
        for level in (850, 500, 1000):
            np.testing.assert_array_equal(
                stored["t"].sel(time=when, level=level).values,
                source_t[PLEV.tolist().index(level)],
            )
        np.testing.assert_array_equal(stored["t2m"].sel(time=when).values, source_t2m)

    checks = verify_dataset("upper_air", settings=settings)
    assert [(c.period, c.ok) for c in checks] == [
        ("2024-01-01", True), ("2024-01-02", True), ("2024-01-03", True)
    ]  # fmt: skip
    record = ref_assets.read_provenance("upper_air", "2024-01-02", settings=settings)
    assert record.variables["t"].shape == [3, LAT.size, LON.size]
    assert record.spec["dimensions"][0]["values"] == [850, 500, 1000]


def test_verify_notices_an_edit_of_one_level(settings, write_spec, archive, materialize):
    write_spec("upper_air", **levels_spec(archive))
    assert materialize("upper_air", "2024-01-01").success
    store = ref_assets.reader._store("upper_air", settings)
    session = store.open().writable_session("main")
    import zarr

    zarr.open_array(session.store, path="t")[0, 1, 0, 0] = -1.0  # level 500 only
    session.commit("edit behind ref_assets' back")
    [check] = verify_dataset("upper_air", settings=settings)
    assert not check.ok and check.recorded != check.recomputed


def test_a_source_lacking_a_level_is_refused_whole(settings, write_spec, archive, materialize):
    write_spec("upper_air", **levels_spec(archive, levels=(850, 300)))
    result = materialize("upper_air", "2024-01-01", raise_on_error=False)
    message = str(step_failure(result).step_failure_data.error.message)
    assert "t_20240101.nc" in message
    assert "'pressure_level' lacks the values [300]" in message
    assert "1000.0, 925.0, 850.0, 700.0, 500.0" in message
    assert_nothing_stored("upper_air", settings)


def test_a_dimension_without_coordinate_values_is_refused(
    settings, write_spec, tmp_path, register_providers, materialize
):
    register_providers("ref_assets.providers.local_files:LocalFilesProvider")
    archive = tmp_path / "bare"
    write_levels_file(archive / "t_20240101.nc", 1)
    with netCDF4.Dataset(archive / "t_20240101.nc", "a") as nc:
        nc.renameVariable("pressure_level", "levels_in_hpa")  # the dimension loses its values
    write_spec("upper_air", **levels_spec(archive))
    result = materialize("upper_air", "2024-01-01", raise_on_error=False)
    message = str(step_failure(result).step_failure_data.error.message)
    assert "dimension 'pressure_level' has no coordinate values" in message
    assert_nothing_stored("upper_air", settings)


def test_changing_the_levels_of_a_store_is_refused(settings, write_spec, archive, materialize):
    write_spec("upper_air", **levels_spec(archive))
    assert materialize("upper_air", "2024-01-01").success
    write_spec("upper_air", **levels_spec(archive, levels=(850, 500)))
    result = materialize("upper_air", "2024-01-02", raise_on_error=False)
    description = step_failure(result).step_failure_data.user_failure_data.description
    assert f"0 of 1 periods were committed (1 not written): {StoreLayoutError.__name__}" in (
        description
    )
    assert "(dimensions changed: store has {'dimensions': {'level': [850, 500, 1000]}}" in (
        description
    )
    assert "Restore the previous spec" in description


def test_string_dimensions_such_as_age_classes(settings, write_spec, tmp_path, register_providers,
                                               materialize):  # fmt: skip
    register_providers("ref_assets.providers.local_files:LocalFilesProvider")
    archive = tmp_path / "ages"
    archive.mkdir()
    classes = ["f_00", "f_05", "m_00", "m_05"]
    values = np.random.default_rng(7).uniform(0, 100, (len(classes), LAT.size, LON.size))
    with netCDF4.Dataset(archive / "pop_2020.nc", "w") as nc:
        nc.createDimension("age_sex", len(classes))
        nc.createDimension("lat", LAT.size)
        nc.createDimension("lon", LON.size)
        labels = nc.createVariable("age_sex", str, ("age_sex",))
        labels[:] = np.array(classes, dtype=object)
        for name, coordinate in (("lat", LAT), ("lon", LON)):
            nc.createVariable(name, "f8", (name,))[:] = coordinate
        pop = nc.createVariable("pop", "f4", ("age_sex", "lat", "lon"))
        pop.units = "people"
        pop[:] = values
    write_spec(
        "population",
        provider="local_files",
        period="yearly",
        start="2020-01-01",
        end="2020-01-01",
        params={"path": str(archive), "pattern": "pop_{year}.nc", "variables": {"pop_total": "pop"},
                "dimensions": {"age_class": "age_sex"}},
        dimensions=[{"name": "age_class", "values": ["m_05", "f_00"]}],
        variables=[{"name": "pop_total", "units": "people", "dimensions": ["age_class"]}],
    )  # fmt: skip
    assert materialize("population", "2020").success
    stored = ref_assets.open_dataset("population", settings=settings)
    assert stored["age_class"].values.tolist() == ["m_05", "f_00"]
    np.testing.assert_allclose(
        stored["pop_total"].isel(time=0).values, values[[3, 0]].astype("float32")
    )
    assert all(c.ok for c in verify_dataset("population", settings=settings))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dimensions": []}, r"must name distinct entries of `dimensions` \(declared: \[\]\)"),
        ({"variables": [{"name": "t", "units": "K"}]}, r"\['level'\] are used by no variable"),
        (
            {"dimensions": [{"name": "level", "values": [850, 850]}]},
            r"coordinate values repeat: \['850'\]",
        ),
        ({"dimensions": [{"name": "time", "values": [1]}]}, "'time' is reserved"),
    ],
)
def test_malformed_dimensions_are_refused_naming_the_field(change, message):
    fields = {
        "dimensions": [{"name": "level", "values": [850, 500]}],
        "variables": [{"name": "t", "units": "K", "dimensions": ["level"]}],
    }
    with pytest.raises(ValidationError, match=message):
        DatasetSpec.model_validate(spec_dict(**(fields | change)))


def test_a_provider_without_extra_dimensions_refuses_them_once(settings, write_spec, capsys):
    from ref_assets.cli import main

    write_spec(
        "levels_synthetic",
        dimensions=[{"name": "level", "values": [850, 500]}],
        variables=[{"name": "t2m", "units": "degC", "dimensions": ["level"],
                    "attributes": {"standard_name": "air_temperature"}}],
    )  # fmt: skip
    assert main(["config", "validate"]) == 1
    assert (
        "levels_synthetic.yaml): dimensions: provider 'synthetic' delivers (y, x) fields only, "
        "so ['level'] cannot be filled"
    ) in capsys.readouterr().out

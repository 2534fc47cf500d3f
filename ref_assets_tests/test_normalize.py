import numpy as np
import pytest
import xarray as xr

from ref_assets.providers.normalize import GridShapeError, select_bbox, to_standard_grid


def era5_like() -> xr.Dataset:
    """ERA5-like: valid_time, latitude ascending, longitude 0..360, and a
    temperature variable named ``t`` that must not be taken for the time axis."""
    return xr.Dataset(
        {"t": (("valid_time", "latitude", "longitude"), np.arange(24.0).reshape(1, 3, 8))},
        coords={
            "valid_time": np.array(["2024-01-01T00"], "datetime64[ns]"),
            "latitude": [10.0, 11.0, 12.0],
            "longitude": np.arange(0.0, 360.0, 45.0),
        },
    )


def test_axes_are_renamed_wrapped_sorted_and_north_up():
    data = to_standard_grid(era5_like())
    assert list(data["t"].dims) == ["time", "y", "x"]
    assert data["x"].values.tolist() == [-180, -135, -90, -45, 0, 45, 90, 135]
    assert data["y"].values.tolist() == [12, 11, 10]
    # The value at 90E, 12N is where it was.
    assert (
        data["t"].sel(x=90.0, y=12.0).item()
        == era5_like()["t"].sel(longitude=90.0, latitude=12.0).item()
    )


def test_bbox_selection_pads_by_whole_cells_and_refuses_an_empty_box():
    data = to_standard_grid(era5_like())
    assert select_bbox(data, (-50, 10.5, 50, 12), pad_cells=1)["x"].values.tolist() == [
        -90,
        -45,
        0,
        45,
        90,
    ]
    with pytest.raises(GridShapeError, match="holds no cell"):
        select_bbox(data, (10, 40, 20, 50))


def test_a_variable_named_like_an_axis_is_not_taken_for_one():
    one_period = era5_like().isel(valid_time=0, drop=True)  # no time axis at all
    data = to_standard_grid(one_period)
    assert "t" in data.data_vars and "time" not in data.variables


def test_a_cyclic_longitude_column_is_kept_once():
    cyclic = era5_like().reindex(longitude=np.arange(0.0, 361.0, 45.0), method="nearest")
    data = to_standard_grid(cyclic)
    assert data["x"].values.tolist() == [-180, -135, -90, -45, 0, 45, 90, 135]

"""``ref-assets config validate`` runs every check a run makes before reading data (D8, item 7):
each dataset's provider is built from its params, offline, and every problem of every dataset
is reported with the dataset, its spec file and the field.

Before, `config validate` checked only that the provider was installed: specs that could never
run (a reversed bbox, a negative resolution, a misspelled param, a `variables` mapping that does
not match the spec, a GeoTIFF glob without date placeholders, a missing required param or
attribute) passed with 0 errors and failed only when run."""

import shutil
import socket
from importlib import resources

import pytest

from ref_assets.cli import main
from ref_assets.providers.chirps3 import Chirps3Params
from ref_assets.providers.local_files import LocalFilesParams
from ref_assets.providers.synthetic import SyntheticParams
from ref_assets.providers.worldpop import WorldPopParams
from ref_assets_tests.conftest import step_failure

LOCAL_FILES = {"path": "/srv/archive", "pattern": "t2m_{year}{month}{day}.nc"}


def _errors(out: str) -> list[str]:
    return [line.removeprefix("error: ") for line in out.splitlines() if line.startswith("error:")]


def test_every_problem_of_every_dataset_is_reported_with_dataset_file_and_field(
    settings, write_spec, capsys
):
    t2m = [{"name": "t2m", "units": "K", "attributes": {"standard_name": "air_temperature"}}]
    write_spec("good")
    write_spec("reversed_bbox", params={"bbox": [10.0, 0.0, 5.0, 5.0]})
    write_spec("negative_resolution", params={"resolution": -0.5})
    write_spec("no_standard_name", variables=[{"name": "t2m", "units": "degC"}])
    write_spec("chirps_without_bbox", provider="chirps3", params={}, variables=[
        {"name": "precip", "units": "mm/day"}
    ])  # fmt: skip
    write_spec("misspelled", provider="local_files", variables=t2m, params={
        "path": "/srv/archive", "patern": "t2m_{year}{month}{day}.nc", "variables": {"t2m": "t2m"}
    })  # fmt: skip
    write_spec("mismatched_variables", provider="local_files", variables=t2m, params={
        **LOCAL_FILES, "variables": {"temperature": "t2m"}
    })  # fmt: skip
    write_spec("undated_geotiffs", provider="local_files", variables=t2m, params={
        **LOCAL_FILES, "pattern": "*.tif", "variables": {"t2m": "band_1"}
    })  # fmt: skip
    write_spec("unknown_key", colour="red")

    assert main(["config", "validate"]) == 1
    out = capsys.readouterr().out
    spec_file = settings.user_spec_dir / "{}.yaml"
    expected = [
        ("reversed_bbox", "params.bbox: Value error, [10.0, 0.0, 5.0, 5.0] is not [west, south, "
         "east, north]: need west < east and south < north"),
        ("negative_resolution", "params.resolution: Input should be greater than 0"),
        ("no_standard_name", "variable 't2m' needs attributes.standard_name set to one of "
         "['air_temperature', 'precipitation_flux'] for the synthetic provider"),
        ("chirps_without_bbox", "params.bbox: Field required (provider 'chirps3' needs it)"),
        ("misspelled", "params.pattern: Field required (provider 'local_files' needs it)"),
        ("misspelled", "params.patern: Extra inputs are not permitted: provider 'local_files' "
         "has no such parameter (did you mean 'pattern'?)"),
        ("mismatched_variables", "params.variables maps ['temperature'], but the spec declares "
         "['t2m']: map each spec variable to its name in the files"),
        ("undated_geotiffs", "params.pattern: GeoTIFFs carry no time, so each must be named for "
         "its daily period with placeholders down to that period"),
    ]  # fmt: skip
    errors = _errors(out)
    for dataset_id, problem in expected:
        path = str(spec_file).format(dataset_id)
        assert f"dataset {dataset_id} ({path}): {problem}" in errors
    assert (
        f"dataset spec {spec_file}: colour: Extra inputs are not permitted".format("unknown_key")
        in errors
    )
    assert len(errors) == len(expected) + 1
    assert f"{len(errors)} error(s), 0 warning(s)" in out
    assert f"ok: dataset good ({str(spec_file).format('good')}): provider synthetic takes it" in (
        out
    )


def test_a_run_refuses_a_spec_with_the_message_validate_gives(
    settings, write_spec, materialize, capsys
):
    write_spec("reversed_bbox", params={"bbox": [10.0, 0.0, 5.0, 5.0]})
    assert main(["config", "validate"]) == 1
    [reported] = _errors(capsys.readouterr().out)
    problem = reported.split("): ", 1)[1]
    assert problem.startswith("params.bbox: ")
    result = materialize("reversed_bbox", "2024-01-01", raise_on_error=False)
    assert f"reversed_bbox: {problem}" in step_failure(result).step_failure_data.error.to_string()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve a name or open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access while validating: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_every_template_is_validated_by_building_its_provider_offline(settings, no_network, capsys):
    """Every provider's constructor is network-free: validate builds each template's provider
    (aggregate, chirps3, era5_land, local_files, worldpop) with all network access refused."""
    templates = resources.files("ref_assets") / "data" / "templates"
    names = sorted(t.name for t in templates.iterdir() if t.name.endswith(".yaml"))
    assert names == [
        "aggregate.yaml", "chirps3.yaml", "era5_land.yaml", "local_files.yaml", "worldpop.yaml",
    ]  # fmt: skip
    for name in names:
        with resources.as_file(templates / name) as path:
            shutil.copy(path, settings.user_spec_dir / name)

    assert main(["config", "validate"]) == 0
    out = capsys.readouterr().out
    for dataset_id, provider in [
        ("era5_land_east_africa_daily", "aggregate"),
        ("chirps3_east_africa", "chirps3"),
        ("era5_land_east_africa", "era5_land"),
        ("era5_t2m_local", "local_files"),
        ("worldpop_ken_nairobi", "worldpop"),
        ("demo_air_temperature", "synthetic"),
    ]:
        assert f"ok: dataset {dataset_id} (" in out
        assert f"): provider {provider} takes it" in out
    assert "0 error(s)" in out


REVERSED = "need west < east and south < north"
INFINITE = "Input should be a finite number"


@pytest.mark.parametrize(
    ("model", "bbox", "problem"),
    [
        *[
            (model, bbox, REVERSED)
            for model in (SyntheticParams, Chirps3Params, LocalFilesParams)
            for bbox in ([10.0, 0.0, 5.0, 5.0], [0.0, 5.0, 10.0, 0.0])
        ],
        *[
            (model, [float("-inf"), 0.0, float("inf"), 5.0], INFINITE)
            for model in (SyntheticParams, Chirps3Params, WorldPopParams, LocalFilesParams)
        ],
    ],
)
def test_provider_params_refuse_reversed_and_infinite_boxes(model, bbox, problem):
    """Before, the synthetic and chirps3 models took any four numbers (a reversed box failed
    later, or not at all), local_files' said only "with west < east" of a box reversed north to
    south, and worldpop's and local_files' took infinite bounds."""
    required = {
        SyntheticParams: {},
        Chirps3Params: {},
        WorldPopParams: {"country": "KEN"},
        LocalFilesParams: {**LOCAL_FILES, "variables": {"t2m": "t2m"}},
    }[model]
    with pytest.raises(ValueError, match="bbox") as raised:
        model.model_validate({**required, "bbox": bbox})
    assert problem in str(raised.value)


def test_an_infinite_resolution_is_refused():
    """An infinite resolution used to pass (it is > 0) and give a grid of 0 x 0 cells."""
    with pytest.raises(ValueError, match="resolution\n  Input should be a finite number"):
        SyntheticParams.model_validate({"resolution": float("inf")})


def test_a_box_smaller_than_one_cell_is_refused(settings, write_spec, capsys):
    """Before, a box smaller than half a cell gave a grid of no cells."""
    write_spec("tiny", params={"bbox": [0.0, 0.0, 0.1, 0.1], "resolution": 1.0})
    assert main(["config", "validate"]) == 1
    [reported] = _errors(capsys.readouterr().out)
    assert reported.endswith(
        "params.bbox: the box west=0.0 south=0.0 east=0.1 north=0.1 holds no whole cell of 1.0 "
        "degrees: make the box larger or the resolution finer"
    )

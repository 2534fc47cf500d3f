import logging

import dagster as dg
import pytest

from ref_assets.definitions import build_definitions
from ref_assets.specs import DatasetSpec, load_specs, packaged_spec_dir
from ref_assets_tests.conftest import spec_dict


def test_packaged_demo_spec_loads():
    catalog = load_specs([packaged_spec_dir()])
    assert catalog.errors == []
    demo = catalog.get("demo_air_temperature")
    assert (demo.provider, demo.period.value) == ("synthetic", "daily")


def test_malformed_spec_names_file_and_field_and_others_still_load(settings, write_spec, caplog):
    write_spec("good_one")
    bad = write_spec("bad_one", variables=[{"name": "t2m"}])  # units missing
    caplog.set_level(logging.WARNING)
    catalog = load_specs([settings.user_spec_dir])
    assert sorted(catalog.specs) == ["good_one"]
    [error] = catalog.errors
    assert error.path.name == f"{bad['id']}.yaml"
    assert error.field == "variables.0.units"
    assert "bad_one.yaml: variables.0.units" in caplog.text


@pytest.mark.parametrize(
    ("override", "field", "message"),
    [
        ({"id": "../escape"}, "id", "should match pattern"),
        ({"period": "weekly"}, "period", "hourly"),
        ({"start": "2024-01-15", "period": "monthly"}, None, "not the start of a monthly period"),
        ({"end": "2023-01-01"}, None, "before start"),
        ({"variables": [{"name": "time", "units": "1"}]}, "variables.0.name", "reserved"),
        ({"chunks": {"time": 10}}, "chunks.time", "Extra inputs"),
        ({"tittle": "typo"}, "tittle", "Extra inputs"),
    ],
)
def test_invalid_fields_are_reported_by_name(settings, write_spec, override, field, message):
    write_spec("broken", **override)
    [error] = load_specs([settings.user_spec_dir]).errors
    assert error.field == field
    assert message in error.message


def test_unreadable_yaml_and_duplicate_ids_are_reported(settings, write_spec):
    (settings.user_spec_dir / "garbage.yaml").write_text("id: [unclosed\n")
    write_spec("twin")
    (settings.user_spec_dir / "twin_copy.yaml").write_text(
        (settings.user_spec_dir / "twin.yaml").read_text()
    )
    catalog = load_specs([settings.user_spec_dir])
    messages = [str(e) for e in catalog.errors]
    assert any("garbage.yaml" in m and "cannot read YAML" in m for m in messages)
    assert any("twin_copy.yaml: id" in m and "also declared" in m for m in messages)
    assert "twin" not in catalog.specs


def test_user_spec_replaces_packaged_spec_of_same_id(settings, write_spec):
    write_spec("demo_air_temperature", title="My own demo")
    catalog = load_specs([packaged_spec_dir(), settings.user_spec_dir])
    assert catalog.get("demo_air_temperature").title == "My own demo"


def test_code_location_loads_with_a_broken_spec(settings, write_spec):
    write_spec("fine_dataset")
    write_spec("broken_dataset", period="fortnightly")
    (settings.user_spec_dir / "empty.yaml").write_text("")
    defs = build_definitions(settings)
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    datasets = {"demo_air_temperature", "fine_dataset"}
    assert keys == datasets | {f"source/{dataset}" for dataset in datasets} | {"stac/catalog"}
    asset = defs.resolve_assets_def("fine_dataset")
    assert asset.code_versions_by_key[dg.AssetKey("fine_dataset")]
    assert "Test dataset fine_dataset" in asset.descriptions_by_key[dg.AssetKey("fine_dataset")]


def test_code_version_follows_the_spec():
    from ref_assets.provenance import code_version

    base = DatasetSpec.model_validate(spec_dict())
    changed = DatasetSpec.model_validate(spec_dict(params={"seed": 4}))
    assert code_version(base, "1") == code_version(DatasetSpec.model_validate(spec_dict()), "1")
    assert code_version(base, "1") != code_version(changed, "1")
    assert code_version(base, "1") != code_version(base, "2")
    retitled = DatasetSpec.model_validate(spec_dict(title="New title", description="Reworded"))
    assert code_version(retitled, "1") == code_version(base, "1")

"""The STAC catalogue: a collection per dataset describing what its store holds (datacube
dimensions and variables, extents, the Icechunk asset with its snapshot and branch or tag),
valid against the STAC and datacube JSON schemas read from files (no network); written by the
command line to a directory or S3, and kept current by a Dagster asset's automation condition."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pystac
import pytest
from pystac.errors import STACValidationError

from ref_assets.catalog_stac import build_catalog, dataset_collection, write_catalog
from ref_assets.cli import main
from ref_assets.definitions import build_definitions
from ref_assets.defs.stac import CATALOG_KEY, StacDestination
from ref_assets.specs import DatasetSpec
from ref_assets.store.releases import tag
from ref_assets.store.repository import DatasetStore, StoreError
from ref_assets.store.writer import CommitPolicy, PeriodWriter
from ref_assets_tests.stac_validation import offline_stac_validation
from ref_assets_tests.test_extra_dimensions import levels_spec, write_levels_file

ATTRIBUTES = {
    "license": "CC BY 4.0",
    "source": "Synthetic test source",
    "references": "https://example.org/synthetic",
}


def test_a_collection_describes_what_the_store_holds_and_validates(settings, synthetic_dataset):
    _, store, batch_for = synthetic_dataset

    writer = PeriodWriter(store, run_id="test", policy=CommitPolicy(every=10))
    for key in ("2024-01-02", "2024-01-03", "2024-01-06"):  # a gap: the extent spans it
        writer.add(batch_for(key))
    writer.flush()

    collection = dataset_collection(store)
    with offline_stac_validation():
        schemas = collection.validate()
    assert "https://stac-extensions.github.io/datacube/v2.2.0/schema.json" in schemas

    assert collection.id == "test_t2m"
    [interval] = collection.extent.temporal.intervals
    assert [t.isoformat() for t in interval] == [
        "2024-01-02T00:00:00+00:00",
        "2024-01-07T00:00:00+00:00",  # the end of the last stored day
    ]
    # The grid's cells (0.5 degree centres from 0.25 to 5.75 and 40.25 to 43.75), edge to edge.
    assert collection.extent.spatial.bboxes == [[0.0, 40.0, 6.0, 44.0]]
    document = collection.to_dict()
    dimensions = document["cube:dimensions"]
    assert dimensions["time"] == {
        "type": "temporal",
        "extent": ["2024-01-02T00:00:00Z", "2024-01-06T00:00:00Z"],
        "step": "P1D",
    }
    assert dimensions["y"] == {
        "type": "spatial",
        "axis": "y",
        "extent": [40.25, 43.75],
        "step": -0.5,  # north up: latitude decreases along y
        "reference_system": 4326,
    }
    assert dimensions["x"]["extent"] == [0.25, 5.75] and dimensions["x"]["step"] == 0.5
    assert document["cube:variables"] == {
        "t2m": {
            "type": "data",
            "dimensions": ["time", "y", "x"],
            "unit": "degC",
            "description": "air_temperature",
        }
    }
    asset = collection.assets["icechunk"]
    assert asset.href == store.location
    assert asset.media_type == "application/vnd.zarr+icechunk"
    assert asset.roles == ["data"]
    assert asset.extra_fields["icechunk:branch"] == "main"
    assert asset.extra_fields["icechunk:snapshot_id"] == store.open().lookup_branch("main")
    assert "icechunk-timeseries" not in collection.assets  # no copy: no asset


def test_the_time_series_copy_is_an_asset_of_its_collection(settings, write_spec, materialize):
    from ref_assets.store.timeseries import timeseries_store, update_timeseries

    fields = write_spec(timeseries={"time_chunk": 4, "y": 4, "x": 6, "tile": 2})
    assert materialize("test_t2m", "2024-01-01...2024-01-02").success
    store = DatasetStore(settings.storage_root, "test_t2m")
    update_timeseries(DatasetSpec.model_validate(fields), store, run_id="test")
    copy = dataset_collection(store).assets["icechunk-timeseries"]
    assert copy.href == timeseries_store(store).location
    assert copy.extra_fields == {
        "icechunk:snapshot_id": timeseries_store(store).open().lookup_branch("main"),
        "icechunk:branch": "main",
    }
    with offline_stac_validation():
        dataset_collection(store).validate()
    tag(store, "v1")
    assert "icechunk-timeseries" not in dataset_collection(store, tag="v1").assets


def test_licence_and_producer_come_from_the_dataset_attributes(settings, write_spec, materialize):
    write_spec(attributes=ATTRIBUTES)
    assert materialize("test_t2m", "2024-01-01").success
    store = DatasetStore(settings.storage_root, "test_t2m")

    collection = dataset_collection(store)  # the store's attributes, as laid out
    # "CC BY 4.0" is no SPDX identifier: STAC's "other", the words kept beside it.
    assert collection.license == "other"
    assert collection.extra_fields["ref_assets:license"] == "CC BY 4.0"
    [producer] = collection.providers
    assert (producer.name, producer.roles, producer.url) == (
        "Synthetic test source",
        ["producer"],
        "https://example.org/synthetic",
    )
    with offline_stac_validation():
        collection.validate()

    # The spec changed since: its values win, and an SPDX identifier is used as it is.
    edited = write_spec(attributes={"license": "CC-BY-4.0"}, description="Edited")
    collection = dataset_collection(store, DatasetSpec.model_validate(edited))
    assert collection.license == "CC-BY-4.0" and collection.description == "Edited"
    # An annotation made since wins over both.
    assert main(["annotate", "test_t2m", "--attr", "license=CC0-1.0"]) == 0
    collection = dataset_collection(store, DatasetSpec.model_validate(edited))
    assert collection.license == "CC0-1.0"


def test_extra_dimensions_are_datacube_dimensions(
    settings, write_spec, materialize, tmp_path, register_providers
):
    register_providers("ref_assets.providers.local_files:LocalFilesProvider")
    archive = tmp_path / "archive"
    write_levels_file(archive / "t_20240101.nc", 1)
    write_spec("upper_air", **levels_spec(archive))
    assert materialize("upper_air", "2024-01-01").success

    collection = dataset_collection(DatasetStore(settings.storage_root, "upper_air"))
    with offline_stac_validation():
        collection.validate()
    document = collection.to_dict()
    assert document["cube:dimensions"]["level"] == {
        "type": "other",
        "values": [850.0, 500.0, 1000.0],
        "unit": "hPa",
    }
    assert document["cube:variables"]["t"]["dimensions"] == ["time", "level", "y", "x"]
    assert document["cube:variables"]["t2m"]["dimensions"] == ["time", "y", "x"]


def test_the_validator_is_real_and_offline(settings, synthetic_dataset):
    _, store, batch_for = synthetic_dataset

    writer = PeriodWriter(store, run_id="test")
    writer.add(batch_for("2024-01-01"))
    writer.flush()
    document = dataset_collection(store).to_dict()
    document["cube:dimensions"]["time"]["type"] = "spatial"  # a time axis without an axis
    broken = pystac.Collection.from_dict(document)
    with offline_stac_validation(), pytest.raises(STACValidationError, match="datacube"):
        broken.validate()
    # An extension whose schema is not vendored is an error naming it, not a download.
    document = dataset_collection(store).to_dict()
    document["stac_extensions"].append("https://stac-extensions.github.io/eo/v1.1.0/schema.json")
    with offline_stac_validation(), pytest.raises(Exception, match=r"eo/v1\.1\.0"):
        pystac.Collection.from_dict(document).validate()


def test_a_collection_at_a_tag_keeps_the_release_while_main_grows(settings, synthetic_dataset):
    _, store, batch_for = synthetic_dataset

    writer = PeriodWriter(store, run_id="test")
    writer.add(batch_for("2024-01-01"))
    writer.flush()
    release = tag(store, "v1")
    writer.add(batch_for("2024-01-02"))
    writer.flush()

    released = dataset_collection(store, tag="v1")
    assert released.assets["icechunk"].extra_fields == {
        "icechunk:snapshot_id": release.snapshot,
        "icechunk:tag": "v1",
    }
    assert released.to_dict()["cube:dimensions"]["time"]["extent"][1] == "2024-01-01T00:00:00Z"
    current = dataset_collection(store)
    assert current.to_dict()["cube:dimensions"]["time"]["extent"][1] == "2024-01-02T00:00:00Z"
    with offline_stac_validation():
        released.validate()
    with pytest.raises(StoreError, match="v2"):
        dataset_collection(store, tag="v2")


def test_the_command_writes_a_valid_catalogue_naming_what_it_left_out(
    settings, write_spec, materialize, tmp_path, capsys
):
    write_spec()
    write_spec("empty_one")  # no store yet
    assert materialize("test_t2m", "2024-01-01...2024-01-03").success
    destination = tmp_path / "stac"
    assert main(["stac", "--to", str(destination), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["collections"] == ["test_t2m"]
    assert set(report["skipped"]) == {"demo_air_temperature", "empty_one"}
    assert "materialize a period" in report["skipped"]["empty_one"]

    catalog = pystac.Catalog.from_file(str(destination / "catalog.json"))
    with offline_stac_validation():
        assert catalog.validate_all() == 0  # no items; the collections below are validated too
        [collection] = list(catalog.get_collections())
        collection.validate()
    assert collection.get_self_href() == str(destination / "test_t2m" / "collection.json")
    links = json.loads((destination / "test_t2m" / "collection.json").read_text())["links"]
    assert {link["rel"]: link["href"] for link in links} == {
        "root": "../catalog.json",
        "parent": "../catalog.json",
    }

    assert main(["stac", "--to", str(destination), "empty_one"]) == 2
    assert "no store to describe" in capsys.readouterr().err


def test_the_catalogue_is_written_to_s3(s3_settings, write_spec, materialize, s3_server):
    write_spec()
    assert materialize("test_t2m", "2024-01-01").success
    built = build_catalog(s3_settings.storage_root, {"test_t2m": None})
    destination = s3_server.root("stac/test")
    files = write_catalog(built.catalog, destination)
    assert sorted(files) == [
        f"{destination}/catalog.json",
        f"{destination}/test_t2m/collection.json",
    ]
    from ref_assets.store.s3 import S3Connection

    fs = S3Connection.from_environment().filesystem()
    document = json.loads(fs.cat_file(f"{destination}/test_t2m/collection.json"))
    assert document["assets"]["icechunk"]["href"] == f"{s3_settings.storage_root}/test_t2m"
    with offline_stac_validation():
        pystac.Collection.from_dict(document).validate()


def test_the_catalogue_asset_is_requested_once_a_period_lands(
    settings, write_spec, instance, materialize, tmp_path, monkeypatch
):
    write_spec()
    destination = tmp_path / "stac-from-dagster"
    defs = build_definitions()
    selection = dg.AssetSelection.assets(CATALOG_KEY)
    result = dg.evaluate_automation_conditions(defs, instance, asset_selection=selection)
    cursor = result.cursor
    materialize("test_t2m", "2024-01-01...2024-01-02")
    result = dg.evaluate_automation_conditions(
        defs, instance, asset_selection=selection, cursor=cursor
    )
    assert result.total_requested == 1

    monkeypatch.setenv("REF_STAC_ROOT", str(destination))
    job = defs.resolve_implicit_job_def_def_for_assets([CATALOG_KEY])
    run = job.execute_in_process(instance=instance, asset_selection=[CATALOG_KEY])
    [materialization] = run.asset_materializations_for_node("stac__catalog")
    assert materialization.metadata["collections"].value == 1
    assert set(materialization.metadata["left_out"].value) == {"demo_air_temperature"}
    collection = pystac.Collection.from_file(str(destination / "test_t2m" / "collection.json"))
    assert collection.to_dict()["cube:dimensions"]["time"]["extent"][1] == "2024-01-02T00:00:00Z"

    result = dg.evaluate_automation_conditions(
        defs, instance, asset_selection=selection, cursor=result.cursor
    )
    assert result.total_requested == 0  # handled
    materialize("test_t2m", "2024-01-03")
    result = dg.evaluate_automation_conditions(
        defs, instance, asset_selection=selection, cursor=result.cursor
    )
    assert result.total_requested == 1
    assert defs.resolve_sensor_def("stac_automation").default_status == (
        dg.DefaultSensorStatus.RUNNING
    )


def test_the_destination_is_a_setting(settings, monkeypatch, capsys):
    monkeypatch.delenv("REF_STAC_ROOT", raising=False)
    assert StacDestination().resolved_root() == str(Path(settings.configuration_dir) / "stac")
    assert main(["config", "set", "stac.root", "catalogue"]) == 0  # from the configuration dir
    assert StacDestination().resolved_root() == str(settings.configuration_dir / "catalogue")
    monkeypatch.setenv("REF_STAC_ROOT", "s3://bucket/stac")
    assert StacDestination().resolved_root() == "s3://bucket/stac"
    capsys.readouterr()
    assert main(["config", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["settings"]["stac.root"]
    assert shown == {"value": "s3://bucket/stac", "from": "REF_STAC_ROOT"}
    assert StacDestination(root="/elsewhere").resolved_root() == "/elsewhere"

"""Provenance records: their fields, their checksums against the bytes read, verification,
reproduction, export, survival of snapshot expiry, and re-syncing a wiped Dagster instance."""

import hashlib
import json
from datetime import UTC, datetime

import dagster as dg
import fsspec
import icechunk
import numpy as np
import pytest
import zarr

from ref_assets.catalog import load_catalog
from ref_assets.cli import main
from ref_assets.definitions import build_definitions
from ref_assets.defs.instance_sync import SyncReport, sync_instance
from ref_assets.defs.metadata import data_version_tags
from ref_assets.provenance import (
    ProvenanceRecord,
    export_records,
    iter_stored_records,
    read_provenance,
)
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import DatasetStore, StoreError
from ref_assets.verification import verify_dataset
from ref_assets_tests.conftest import stored_checksum

DATASET = "archive_t2m"
SECRET = "s3cr3t-token-value"
KEY = dg.AssetKey(DATASET)


@pytest.fixture
def archive(write_spec, register_providers, tmp_path):
    """Six daily .npy source files, read by a provider listed in ref.toml."""
    directory = tmp_path / "archive"
    directory.mkdir()
    rng = np.random.default_rng(5)
    for day in range(1, 7):
        values = rng.normal(15.0, 5.0, (4, 6)).astype("float32")
        np.save(directory / f"2024-01-0{day}.npy", values)
    register_providers("ref_assets_tests.example_providers:NpyArchiveProvider")
    write_spec(
        DATASET,
        provider="npy_archive",
        params={"directory": str(directory), "shape": [4, 6], "api_token": SECRET},
        variables=[{"name": "t2m", "units": "degC"}],
    )
    return directory


def _store(settings) -> DatasetStore:
    return DatasetStore(settings.storage_root, DATASET)


def _stored_checksum(settings, index: int) -> str:
    session = store_reader.session_for(_store(settings))
    return stored_checksum(session, store_reader.store_axis(session), index)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_record_fields_and_source_checksums_of_the_bytes_read(
    settings, archive, materialize, capsys
):
    result = materialize(DATASET, "2024-01-03")
    record = read_provenance(DATASET, "2024-01-03")
    source_file = archive / "2024-01-03.npy"

    [source] = record.sources
    assert source.uri == source_file.as_uri()
    assert source.sha256 == _sha256(source_file)
    assert source.size == source_file.stat().st_size
    assert source.last_modified is not None
    assert (record.dataset, record.period, record.partition_key) == (
        DATASET,
        "2024-01-03",
        "2024-01-03",
    )
    assert record.time_index == 2
    assert (record.provider, record.provider_version) == ("npy_archive", "1.0")
    assert record.checksum == _stored_checksum(settings, 2)
    spec = load_catalog(settings).get(DATASET)
    assert record.spec_fingerprint == spec.fingerprint()
    assert record.spec["runs"]["fetch_workers"] == 2  # resolved, defaults included
    assert record.spec["params"]["api_token"] == "***"
    [raw] = store_reader.read_records(store_reader.session_for(_store(settings)), [2]).values()
    assert SECRET not in json.dumps(raw)
    assert record.code_version == build_definitions().get_assets_def(KEY).code_versions_by_key[KEY]
    assert record.versions["icechunk"] == icechunk.__version__
    assert record.versions["zarr"] == zarr.__version__
    assert {"ref-assets", "dagster", "xarray", "numpy", "python"} <= set(record.versions)
    assert record.run_id == result.run_id
    assert record.fetched_at.tzinfo is not None and record.fetched_at <= record.written_at

    [materialization] = result.asset_materializations_for_node(DATASET)
    metadata = materialization.metadata
    assert metadata["record"].value == record.model_dump(mode="json", exclude_none=True)
    assert metadata["checksum"].value == record.checksum
    assert metadata["sources"].value.records[0].data["sha256"] == source.sha256
    assert materialization.tags["dagster/data_version"] == record.checksum

    assert main(["provenance", DATASET, "2024-01-03", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checksum"] == record.checksum
    assert main(["provenance", DATASET, "2024-01-03"]) == 0
    assert f"sha256 {source.sha256}" in capsys.readouterr().out
    assert main(["provenance", DATASET, "2024-01-05"]) == 2
    assert "period 2024-01-05 is not in the store" in capsys.readouterr().err


def test_a_range_run_writes_a_distinct_correct_record_per_period(settings, archive, materialize):
    result = materialize(DATASET, "2024-01-01...2024-01-06")
    records = list(iter_stored_records(_store(settings)))
    assert [period.key for period, _ in records] == [f"2024-01-0{d}" for d in range(1, 7)]
    for index, (period, record) in enumerate(records):
        assert (record.period, record.time_index, record.run_id) == (
            period.key,
            index,
            result.run_id,
        )
        assert record.sources[0].sha256 == _sha256(archive / f"{period.key}.npy")
        assert record.checksum == _stored_checksum(settings, index)
    assert len({record.checksum for _, record in records}) == 6
    by_partition = {
        m.partition: m.metadata["checksum"].value
        for m in result.asset_materializations_for_node(DATASET)
    }
    assert by_partition == {period.key: record.checksum for period, record in records}


def test_verify_passes_on_an_intact_store_and_names_a_period_altered_behind_our_back(
    settings, archive, materialize, capsys
):
    materialize(DATASET, "2024-01-01...2024-01-04")
    assert main(["verify", DATASET]) == 0
    assert "4 of 4 periods verified" in capsys.readouterr().out

    session = _store(settings).open().writable_session("main")
    zarr.open_group(session.store, mode="r+")["t2m"][2, 1, 1] = 99.0
    session.commit("an edit that bypasses ref_assets")

    assert [c.period for c in verify_dataset(DATASET) if not c.ok] == ["2024-01-03"]
    assert main(["verify", DATASET]) == 1
    out = capsys.readouterr().out
    assert f"MISMATCH {DATASET} 2024-01-03: stored values differ" in out
    assert out.count("MISMATCH") == 1
    assert main(["verify", DATASET, "--period", "2024-01-02"]) == 0
    assert main(["verify", DATASET, "--period", "2024-01-06"]) == 1
    assert "2024-01-06: not in the store" in capsys.readouterr().out


def test_records_survive_snapshot_expiry_and_garbage_collection(settings, archive, materialize):
    materialize(DATASET, "2024-01-01")
    materialize(DATASET, "2024-01-02")
    materialize(DATASET, "2024-01-03...2024-01-05")
    store = _store(settings)
    before = {period.key: record for period, record in iter_stored_records(store)}
    repo = store.open()
    history = [snapshot.id for snapshot in repo.ancestry(branch="main")]
    cutoff = datetime.now(UTC)
    expired = repo.expire_snapshots(cutoff)
    summary = repo.garbage_collect(cutoff)
    assert expired and summary.snapshots_deleted > 0  # history really was cut
    with pytest.raises(StoreError, match="cannot open snapshot"):
        store_reader.session_for(store, history[1])

    after = {period.key: record for period, record in iter_stored_records(_store(settings))}
    assert after == before and len(after) == 5
    assert all(check.ok for check in verify_dataset(DATASET))
    assert read_provenance(DATASET, "2024-01-04") == before["2024-01-04"]


def test_a_wiped_instance_is_resynced_from_the_stores(
    settings, archive, materialize, instance, tmp_path, monkeypatch, capsys
):
    materialize(DATASET, "2024-01-01")
    materialize(DATASET, "2024-01-02...2024-01-04")
    materialized = instance.get_materialized_partitions(KEY)
    assert len(materialized) == 4
    # The instance that ran them already agrees with the store: nothing to report.
    assert sync_instance(instance, [DATASET]) == {DATASET: SyncReport(present=4, reported=0)}

    wiped_home = tmp_path / "dagster_home_after_wipe"
    wiped_home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(wiped_home))
    assert main(["sync-instance"]) == 0  # every dataset, including ones never materialized
    out = capsys.readouterr().out
    assert f"{DATASET}: 4 periods in the store, 4 materializations reported" in out
    assert "demo_air_temperature: no store yet, nothing to report" in out
    with dg.DagsterInstance.get() as wiped:
        assert wiped.get_materialized_partitions(KEY) == materialized
        event = wiped.get_latest_materialization_event(KEY)
        record = read_provenance(DATASET, event.asset_materialization.partition)
        assert event.asset_materialization.tags["dagster/data_version"] == record.checksum
        assert event.asset_materialization.metadata["record"].value["checksum"] == record.checksum
        assert sync_instance(wiped, [DATASET])[DATASET].reported == 0  # idempotent


def test_reproduce_tells_a_changed_source_from_a_changed_result(
    settings, archive, write_spec, materialize, capsys
):
    write_spec("synthetic_t2m")
    materialize("synthetic_t2m", "2024-01-02")
    assert main(["reproduce", "synthetic_t2m", "2024-01-02"]) == 0
    assert "reproduced: identical inputs and identical output" in capsys.readouterr().out

    materialize(DATASET, "2024-01-02")
    assert main(["reproduce", DATASET, "2024-01-02"]) == 0
    source = archive / "2024-01-02.npy"
    np.save(source, np.full((4, 6), 1.5, dtype="float32"))  # the provider republished the day
    assert main(["reproduce", DATASET, "2024-01-02"]) == 1
    out = capsys.readouterr().out
    assert "the source changed, and so did the output" in out
    assert f"{source.as_uri()}: sha256" in out

    np.save(source, np.load(source))  # same values, but the spec now stores float64
    materialize(DATASET, "2024-01-02")
    write_spec(
        DATASET,
        provider="npy_archive",
        params={"directory": str(archive), "shape": [4, 6], "api_token": SECRET},
        variables=[{"name": "t2m", "units": "degC", "dtype": "float64"}],
    )
    assert main(["reproduce", DATASET, "2024-01-02"]) == 1
    out = capsys.readouterr().out
    assert "same inputs, different output" in out
    assert "note: the spec's value-shaping fields changed since" in out


def test_export_writes_one_record_file_per_period(settings, archive, materialize, tmp_path, capsys):
    materialize(DATASET, "2024-01-01...2024-01-03")
    destination = tmp_path / "exported"
    assert main(["provenance", "export", DATASET, str(destination)]) == 0
    assert "3 records written" in capsys.readouterr().out
    names = sorted(path.name for path in destination.iterdir())
    assert names == [f"2024-01-0{d}.record.json" for d in range(1, 4)]
    exported = json.loads((destination / "2024-01-02.record.json").read_text())
    expected = read_provenance(DATASET, "2024-01-02")
    assert exported == expected.model_dump(mode="json", exclude_none=True)

    assert export_records(DATASET, "memory://exports/archive") == 3
    memory = fsspec.filesystem("memory")
    text = memory.cat_file("/exports/archive/2024-01-02.record.json")
    assert json.loads(text) == exported


def test_sync_reports_a_period_the_instance_knows_with_another_checksum(
    settings, archive, materialize, instance
):
    materialize(DATASET, "2024-01-01...2024-01-02")
    np.save(archive / "2024-01-02.npy", np.full((4, 6), 3.0, dtype="float32"))
    with dg.instance_for_test() as elsewhere:  # another deployment rewrote the period
        job = build_definitions().resolve_implicit_job_def_def_for_assets([KEY])
        job.execute_in_process(instance=elsewhere, partition_key="2024-01-02")
    assert sync_instance(instance, [DATASET]) == {DATASET: SyncReport(present=2, reported=1)}
    event = instance.get_latest_materialization_event(KEY)
    assert event.asset_materialization.partition == "2024-01-02"
    assert event.asset_materialization.metadata["checksum"].value == (
        read_provenance(DATASET, "2024-01-02").checksum
    )


def test_verify_catches_an_altered_time_coordinate(settings, archive, materialize):
    materialize(DATASET, "2024-01-01...2024-01-03")
    session = _store(settings).open().writable_session("main")
    time = zarr.open_group(session.store, mode="r+")["time"]
    time[1] = time[1] + 366 * 86400
    session.commit("shift one period by a year")
    assert [c.period for c in verify_dataset(DATASET) if not c.ok] == ["2024-01-02"]


def test_records_of_format_v1_still_read(settings, archive, materialize):
    materialize(DATASET, "2024-01-01")
    v2 = read_provenance(DATASET, "2024-01-01").model_dump(mode="json", exclude_none=True)
    v1 = {k: v2[k] for k in V1_FIELDS} | {"format": "ref-assets/record-v1"}
    v1["ref_assets_version"] = "0.0.9"
    record = ProvenanceRecord.model_validate(v1)
    assert record.versions == {"ref-assets": "0.0.9"}
    assert record.checksum == v2["checksum"] and record.code_version is None


V1_FIELDS = [
    "dataset",
    "period",
    "period_start",
    "period_end",
    "time_index",
    "checksum",
    "provider",
    "provider_version",
    "sources",
    "variables",
    "spec_fingerprint",
    "run_id",
    "written_at",
]


def test_dagster_data_version_tags_match_dagsters_own():
    from dagster._core.definitions import data_version

    assert data_version_tags(read_record_stub()) == {
        data_version.DATA_VERSION_TAG: "sha256:00",
        data_version.DATA_VERSION_IS_USER_PROVIDED_TAG: "true",
        data_version.CODE_VERSION_TAG: "abc",
    }


def read_record_stub() -> ProvenanceRecord:
    return ProvenanceRecord.model_validate(
        {
            "format": "ref-assets/record-v2",
            "dataset": "d",
            "period": "2024-01-01",
            "period_start": "2024-01-01T00:00:00",
            "period_end": "2024-01-02T00:00:00",
            "time_index": 0,
            "provider": "p",
            "provider_version": "1",
            "spec_fingerprint": "f",
            "code_version": "abc",
            "sources": [],
            "checksum": "sha256:00",
            "variables": {},
            "run_id": "r",
            "written_at": "2024-01-02T00:00:00+00:00",
        }
    )

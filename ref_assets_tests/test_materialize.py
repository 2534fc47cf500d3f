"""Real Dagster materializations into temporary Icechunk repositories."""

import random

import dagster as dg
import numpy as np
import pytest
import zarr

import ref_assets
from ref_assets.periods import Period, PeriodType
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import UPDATES_PER_REPO_OBJECT, DatasetStore
from ref_assets_tests.conftest import step_failure, stored_checksum

KEYS = ["2024-01-01", "2024-01-02", "2024-01-04", "2024-01-09", "2024-01-10", "2024-01-12"]


def store_of(settings, dataset_id="test_t2m") -> DatasetStore:
    return DatasetStore(settings.storage_root, dataset_id)


def materialized_values(settings, dataset_id="test_t2m") -> dict:
    """Per written period: its values and its record's checksum, read from the store."""
    session = store_reader.session_for(store_of(settings, dataset_id))
    data = ref_assets.open_dataset(dataset_id, settings=settings)
    records = store_reader.read_records(session, store_reader.written_indices(session))
    return {
        record["period"]: (data.t2m.isel(time=index).values, record["checksum"])
        for index, record in records.items()
    }


def test_values_read_back_equal_what_the_provider_produced(settings, write_spec, materialize):
    spec = DatasetSpec.model_validate(write_spec())
    for key in KEYS:
        materialize(spec.id, key)
    provider = SyntheticProvider(spec)
    data = ref_assets.open_dataset(spec.id, settings=settings)
    assert data.t2m.dims == ("time", "y", "x")
    assert data.sizes["time"] == 12  # up to the newest written period, not the pre-sized block
    for key in KEYS:
        expected = provider.fetch(Period.from_key(PeriodType.DAILY, key)).data.t2m.values
        np.testing.assert_array_equal(data.t2m.sel(time=key).values, expected)
    np.testing.assert_array_equal(data.y.values, provider.grid.y)
    assert data.t2m.attrs["units"] == "degC"
    assert data.t2m.attrs["standard_name"] == "air_temperature"
    assert data.rio.crs.to_epsg() == 4326


def test_unwritten_periods_stay_missing_and_are_reported_missing(settings, write_spec, materialize):
    spec = DatasetSpec.model_validate(write_spec())
    for key in KEYS:
        materialize(spec.id, key)
    data = ref_assets.open_dataset(spec.id, settings=settings)
    assert bool(data.t2m.sel(time="2024-01-03").isnull().all())
    status = ref_assets.dataset_status(
        spec.id, end=Period.from_key(PeriodType.DAILY, "2024-01-14").start, settings=settings
    )
    assert [p.key for p in status.present] == KEYS
    assert [p.key for p in status.missing] == [
        "2024-01-03", "2024-01-05", "2024-01-06", "2024-01-07", "2024-01-08", "2024-01-11",
        "2024-01-13", "2024-01-14",
    ]  # fmt: skip


def test_rematerializing_a_period_keeps_its_checksum_and_leaves_others_untouched(
    settings, write_spec, materialize
):
    spec = DatasetSpec.model_validate(write_spec())
    for key in KEYS:
        materialize(spec.id, key)
    session = store_reader.session_for(store_of(settings))
    before = store_reader.read_records(session, store_reader.written_indices(session))
    values_before = materialized_values(settings)

    materialize(spec.id, "2024-01-04")

    session = store_reader.session_for(store_of(settings))
    after = store_reader.read_records(session, store_reader.written_indices(session))
    assert after.keys() == before.keys()
    rewritten = spec.time_index(spec.period_for_key("2024-01-04"))
    assert after[rewritten]["checksum"] == before[rewritten]["checksum"]
    assert after[rewritten]["run_id"] != before[rewritten]["run_id"]
    for index in before.keys() - {rewritten}:
        assert after[index] == before[index]  # same record, same run: not rewritten
    for key, (values, checksum) in materialized_values(settings).items():
        np.testing.assert_array_equal(values, values_before[key][0])
        assert checksum == values_before[key][1]


def test_shuffled_order_gives_the_same_store_as_in_order(settings, write_spec, materialize):
    write_spec("in_order")
    write_spec("shuffled")
    for key in KEYS:
        materialize("in_order", key)
    for key in random.Random(5).sample(KEYS, len(KEYS)):
        materialize("shuffled", key)
    in_order = ref_assets.open_dataset("in_order", settings=settings)
    shuffled = ref_assets.open_dataset("shuffled", settings=settings)
    # Same values, coordinates and attributes, except the title naming each dataset.
    assert in_order.drop_attrs().identical(shuffled.drop_attrs())
    for name in in_order.variables:
        assert in_order[name].attrs == shuffled[name].attrs
    ordered = materialized_values(settings, "in_order")
    assert {k: c for k, (_, c) in ordered.items()} == {
        k: c for k, (_, c) in materialized_values(settings, "shuffled").items()
    }


def test_metadata_checksum_matches_the_store_and_is_the_data_version(
    settings, write_spec, materialize, instance
):
    spec = DatasetSpec.model_validate(write_spec())
    result = materialize(spec.id, "2024-01-09")
    [event] = result.asset_materializations_for_node(spec.id)
    metadata = {key: value.value for key, value in event.metadata.items()}
    session = store_reader.session_for(store_of(settings))
    axis = store_reader.store_axis(session)
    assert metadata["period"] == "2024-01-09"
    assert metadata["time_index"] == 8
    assert metadata["snapshot_id"] == session.snapshot_id
    assert metadata["checksum"] == stored_checksum(session, axis, 8)
    assert metadata["bytes_written"] > 0
    [row] = metadata["variables"].records
    assert row.data["variable"] == "t2m" and row.data["shape"] == "8x12"
    assert 0 < row.data["nan_fraction"] < 1
    assert row.data["min"] < row.data["mean"] < row.data["max"]
    assert metadata["record"]["checksum"] == metadata["checksum"]
    latest = instance.get_latest_materialization_event(dg.AssetKey(spec.id))
    assert latest.asset_materialization.tags["dagster/data_version"] == metadata["checksum"]


def test_checksum_does_not_depend_on_chunking(settings, write_spec, materialize):
    write_spec("small_chunks", chunks={"y": 3, "x": 5})
    write_spec("whole_grid", chunks={})
    for dataset_id in ("small_chunks", "whole_grid"):
        materialize(dataset_id, "2024-01-02")
    checksums = set()
    for dataset_id in ("small_chunks", "whole_grid"):
        session = store_reader.session_for(store_of(settings, dataset_id))
        axis = store_reader.store_axis(session)
        checksums.add(stored_checksum(session, axis, 1))
        [record] = store_reader.read_records(session, [1]).values()
        checksums.add(record["checksum"])
    assert len(checksums) == 1
    group = zarr.open_group(
        store_reader.session_for(store_of(settings, "small_chunks")).store, mode="r"
    )
    assert group["t2m"].chunks == (1, 3, 5)


def test_the_time_axis_grows_in_blocks_beyond_its_first_size(settings, write_spec, materialize):
    spec = DatasetSpec.model_validate(write_spec())  # time_block 8
    materialize(spec.id, "2024-01-20")
    materialize(spec.id, "2024-01-02")
    group = zarr.open_group(store_reader.session_for(store_of(settings)).store, mode="r")
    assert group["t2m"].shape[0] == group["time"].shape[0] == 24
    data = ref_assets.open_dataset(spec.id, settings=settings)
    assert str(data.time.values[-1])[:10] == "2024-01-20"
    assert data.t2m.sel(time="2024-01-02").notnull().any()


def test_hourly_monthly_and_yearly_datasets_materialize(settings, write_spec, materialize):
    cases = {
        "hourly_t2m": ("hourly", "2024-03-01T00:00:00", "2024-03-01-13:00", 13),
        "monthly_t2m": ("monthly", "2023-11-01", "2024-02", 3),
        "yearly_t2m": ("yearly", "2001-01-01", "2003", 2),
    }
    for dataset_id, (period, start, key, index) in cases.items():
        write_spec(dataset_id, period=period, start=start)
        materialize(dataset_id, key)
        status = ref_assets.dataset_status(dataset_id, settings=settings)
        assert [p.key for p in status.present] == [key]
        data = ref_assets.open_dataset(dataset_id, settings=settings)
        assert data.sizes["time"] == index + 1
        assert data.t2m.isel(time=index).notnull().any()


def test_a_period_that_fails_validation_writes_nothing(
    settings, write_spec, materialize, monkeypatch
):
    spec = DatasetSpec.model_validate(write_spec())
    materialize(spec.id, "2024-01-01")
    snapshot = store_reader.session_for(store_of(settings)).snapshot_id
    original_fetch = SyntheticProvider.fetch

    def shifted_grid(self, period):
        fetched = original_fetch(self, period)
        return type(fetched)(fetched.data.assign_coords(x=fetched.data.x + 1.0), fetched.sources)

    monkeypatch.setattr(SyntheticProvider, "fetch", shifted_grid)
    result = materialize(spec.id, "2024-01-02", raise_on_error=False)
    assert not result.success
    failure = step_failure(result)
    message = failure.step_failure_data.error.to_string()
    assert "test_t2m period 2024-01-02: grid mismatch" in message
    assert store_reader.session_for(store_of(settings)).snapshot_id == snapshot


def test_a_downstream_asset_loads_the_periods_it_asks_for(settings, write_spec, instance):
    from ref_assets.definitions import build_definitions

    spec = DatasetSpec.model_validate(write_spec())
    defs = build_definitions(settings)
    upstream = defs.resolve_assets_def(spec.id)

    @dg.asset(
        partitions_def=upstream.partitions_def,
        ins={"field": dg.AssetIn(spec.id)},
        io_manager_key="mem_io_manager",
    )
    def field_mean(field):
        return field

    resources = {"mem_io_manager": dg.InMemoryIOManager()}  # the upstream brings its own
    for key in ("2024-01-03", "2024-01-05"):
        dg.materialize([upstream], partition_key=key, resources=resources, instance=instance)
    result = dg.materialize(
        [upstream.to_source_asset(), field_mean],
        partition_key="2024-01-05",
        resources=resources,
        instance=instance,
    )
    loaded = result.output_for_node("field_mean")
    assert [str(t)[:10] for t in loaded.time.values] == ["2024-01-05"]
    expected = SyntheticProvider(spec).fetch(spec.period_for_key("2024-01-05")).data.t2m
    np.testing.assert_array_equal(loaded.t2m.isel(time=0).values, expected.values)
    with pytest.raises(Exception, match=r"periods \['2024-01-04'\] are not in the store"):
        dg.materialize(
            [upstream.to_source_asset(), field_mean],
            partition_key="2024-01-04",
            resources=resources,
            instance=instance,
        )


def test_open_dataset_at_an_earlier_snapshot(settings, write_spec, materialize):
    spec = DatasetSpec.model_validate(write_spec())
    first = materialize(spec.id, "2024-01-01")
    [event] = first.asset_materializations_for_node(spec.id)
    snapshot = event.metadata["snapshot_id"].value
    materialize(spec.id, "2024-01-02")
    assert ref_assets.open_dataset(spec.id, settings=settings).sizes["time"] == 2
    earlier = ref_assets.open_dataset(spec.id, snapshot=snapshot, settings=settings)
    assert earlier.sizes["time"] == 1
    with pytest.raises(Exception, match="cannot open snapshot 'NOTASNAPSHOT'"):
        ref_assets.open_dataset(spec.id, snapshot="NOTASNAPSHOT", settings=settings)


def test_manifests_are_split_along_time_and_commits_name_the_period(
    settings, write_spec, materialize
):
    spec = DatasetSpec.model_validate(write_spec(storage={"time_block": 8, "manifest_split": 4}))
    result = materialize(spec.id, "2024-01-03")
    repo = store_of(settings).open()
    [(_any_array, dims)] = repo.config.manifest.splitting.split_sizes
    assert [size for _, size in dims] == [4]
    # The repository object's operations log stays short (it is rewritten on every commit).
    assert repo.config.num_updates_per_repo_info_file == UPDATES_PER_REPO_OBJECT
    [latest, *_] = repo.ancestry(branch="main")
    assert latest.message == f"test_t2m 2024-01-03 (run {result.run_id})"
    # No commit metadata: Icechunk re-encodes every commit's metadata on each commit.
    assert not latest.metadata


def test_a_spec_that_changes_the_store_structure_is_refused(settings, write_spec, materialize):
    write_spec()
    materialize("test_t2m", "2024-01-01")
    snapshot = store_reader.session_for(store_of(settings)).snapshot_id
    write_spec(storage={"time_block": 5}, chunks={"y": 2, "x": 6})
    result = materialize("test_t2m", "2024-01-02", raise_on_error=False)
    assert not result.success
    failure = step_failure(result)
    message = failure.step_failure_data.error.to_string()
    changed = "different structure (manifest_split, time_block changed"  # chunks may differ
    assert f"test_t2m: the store was laid out for a {changed}" in message
    assert "`ref-assets rebuild test_t2m`" in message
    assert store_reader.session_for(store_of(settings)).snapshot_id == snapshot

"""Runs that cover many partitions: streamed fetches, batched commits, per-partition metadata."""

import threading
import time

import dagster as dg
import numpy as np

import ref_assets
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import DatasetStore
from ref_assets_tests.conftest import step_failure, stored_checksum


def materializations(result, dataset_id: str) -> dict[str, dict]:
    return {
        event.partition: {k: v.value for k, v in event.metadata.items()}
        for event in result.asset_materializations_for_node(dataset_id)
    }


def test_a_range_is_one_run_with_batched_commits_and_its_own_metadata_per_partition(
    settings, write_spec, materialize
):
    spec = DatasetSpec.model_validate(write_spec(runs={"commit_every": 4, "fetch_workers": 3}))
    result = materialize(spec.id, "2024-01-01...2024-01-10")
    assert result.success
    by_partition = materializations(result, spec.id)
    keys = [f"2024-01-{day:02d}" for day in range(1, 11)]
    assert sorted(by_partition) == keys

    session = store_reader.session_for(DatasetStore(settings.storage_root, spec.id))
    axis = store_reader.store_axis(session)
    provider = SyntheticProvider(spec)
    data = ref_assets.open_dataset(spec.id, settings=settings)
    for index, key in enumerate(keys):
        metadata = by_partition[key]
        assert metadata["period"] == key and metadata["time_index"] == index
        assert metadata["checksum"] == stored_checksum(session, axis, index)
        assert metadata["record"]["period"] == key
        expected = provider.fetch(spec.period_for_key(key)).data.t2m.values
        np.testing.assert_array_equal(data.t2m.isel(time=index).values, expected)
    assert len({m["checksum"] for m in by_partition.values()}) == 10
    # Commits of 4, 4 and 2 periods: three snapshots, each shared by its periods.
    snapshots = [by_partition[key]["snapshot_id"] for key in keys]
    assert [snapshots.count(s) for s in dict.fromkeys(snapshots)] == [4, 4, 2]
    repo = DatasetStore(settings.storage_root, spec.id).open()
    messages = [snapshot.message for snapshot in repo.ancestry(branch="main")]
    assert f"test_t2m 2024-01-09..2024-01-10 (2 periods, run {result.run_id})" in messages


def test_progress_is_logged_after_each_commit(settings, write_spec, materialize, instance):
    spec = DatasetSpec.model_validate(write_spec(runs={"commit_every": 3}))
    result = materialize(spec.id, "2024-01-01...2024-01-07")
    lines = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if "periods committed" in entry.user_message
    ]
    assert [line.split(": ", 1)[1].split(" (")[0] for line in lines] == [
        "3/7 periods committed",
        "6/7 periods committed",
        "7/7 periods committed",
    ]
    assert all("periods/s, ETA" in line for line in lines)


def test_fetches_run_in_parallel_but_bounded_and_in_order(
    settings, write_spec, materialize, monkeypatch
):
    spec = DatasetSpec.model_validate(write_spec(runs={"fetch_workers": 3}))
    original_fetch = SyntheticProvider.fetch
    lock, active, peak = threading.Lock(), [0], [0]

    def slow_fetch(self, period):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return original_fetch(self, period)

    monkeypatch.setattr(SyntheticProvider, "fetch", slow_fetch)
    result = materialize(spec.id, "2024-01-01...2024-01-12")
    assert result.success
    assert peak[0] == 3
    records = store_reader.read_records(
        store_reader.session_for(DatasetStore(settings.storage_root, spec.id)), list(range(12))
    )
    assert [records[i]["period"] for i in range(12)] == [f"2024-01-{d:02d}" for d in range(1, 13)]


def test_a_failure_mid_range_keeps_what_was_committed_and_names_the_failed_periods(
    settings, write_spec, materialize, instance, monkeypatch
):
    spec = DatasetSpec.model_validate(write_spec(runs={"commit_every": 2}))
    original_fetch = SyntheticProvider.fetch
    broken = {"2024-01-04", "2024-01-07"}

    def flaky_fetch(self, period):
        if period.key in broken:
            raise ConnectionError(f"source unreachable for {period.key}")
        return original_fetch(self, period)

    monkeypatch.setattr(SyntheticProvider, "fetch", flaky_fetch)
    result = materialize(spec.id, "2024-01-01...2024-01-08", raise_on_error=False)
    assert not result.success
    failure = step_failure(result)
    message = failure.step_failure_data.error.to_string()
    assert "test_t2m: 2 of 8 periods failed (2024-01-04, 2024-01-07); the 6 others" in message
    assert failure.step_failure_data.user_failure_data.metadata["failed_periods"].value == {
        "2024-01-04": "ConnectionError: source unreachable for 2024-01-04",
        "2024-01-07": "ConnectionError: source unreachable for 2024-01-07",
    }
    status = ref_assets.dataset_status(
        spec.id, end=spec.period_for_key("2024-01-08").start, settings=settings
    )
    assert [p.key for p in status.missing] == sorted(broken)
    materialized = instance.get_materialized_partitions(dg.AssetKey(spec.id))
    assert materialized == {f"2024-01-0{d}" for d in (1, 2, 3, 5, 6, 8)}

    monkeypatch.setattr(SyntheticProvider, "fetch", original_fetch)
    assert materialize(spec.id, "2024-01-01...2024-01-08").success  # the rerun completes
    end = spec.period_for_key("2024-01-08").start
    assert ref_assets.dataset_status(spec.id, end=end, settings=settings).missing == []

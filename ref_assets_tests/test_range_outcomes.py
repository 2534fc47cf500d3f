"""Per-partition outcomes of range runs: each partition is reported as its commit lands, once,
with its checksum as data version; failed periods are failed; the instance agrees with the store."""

import logging
import time

import dagster as dg
import numpy as np
from dagster._core.definitions.data_version import extract_data_version_from_entry
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.backfill import execute_backfill_iteration

import ref_assets
from ref_assets.definitions import build_definitions
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import DatasetStore
from ref_assets_tests.conftest import step_failure

DATASET = "test_t2m"
KEY = dg.AssetKey(DATASET)
KEYS = [f"2024-01-0{day}" for day in range(1, 8)]
BROKEN = {"2024-01-02", "2024-01-05", "2024-01-06"}


def store_truth(settings) -> dict[str, str]:
    """Partition key -> checksum of every period the store holds, from the records."""
    session = store_reader.session_for(DatasetStore(settings.storage_root, DATASET))
    axis = store_reader.store_axis(session)
    indices = store_reader.written_indices(session)
    return {
        axis.period_at(index).key: record["checksum"]
        for index, record in store_reader.read_records(session, indices).items()
    }


def instance_truth(instance: dg.DagsterInstance) -> tuple[dict, dict[str, str]]:
    """Dagster's status of each partition, and the data version of its latest materialization."""
    partitions_def = build_definitions().get_assets_def(KEY).partitions_def
    statuses = instance.get_status_by_partition(KEY, KEYS, partitions_def)
    versions = {}
    for key in KEYS:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=KEY, asset_partitions=[key]), limit=1
        ).records
        if records:
            versions[key] = extract_data_version_from_entry(records[0].event_log_entry).value
    return {k: v.value if v else None for k, v in statuses.items()}, versions


def test_a_range_run_with_failing_periods_reports_each_partition_as_the_store_holds_it(
    settings, write_spec, materialize, instance, monkeypatch
):
    spec = DatasetSpec.model_validate(write_spec(runs={"commit_every": 2, "fetch_workers": 1}))
    original_fetch = SyntheticProvider.fetch
    seen_at_fetch: dict[str, set[str]] = {}

    def flaky_fetch(self, period):
        # What the instance already shows when each period is fetched: the run is still going.
        seen_at_fetch[period.key] = set(instance.get_materialized_partitions(KEY))
        if period.key in BROKEN:
            raise ConnectionError(f"source unreachable for {period.key}")
        return original_fetch(self, period)

    monkeypatch.setattr(SyntheticProvider, "fetch", flaky_fetch)
    result = materialize(DATASET, f"{KEYS[0]}...{KEYS[-1]}", raise_on_error=False)
    assert not result.success
    failure = step_failure(result)
    assert "3 of 7 periods failed (2024-01-02, 2024-01-05, 2024-01-06)" in str(
        failure.step_failure_data.error.message
    )
    assert failure.step_failure_data.user_failure_data.metadata["failed_periods"].value == {
        key: f"ConnectionError: source unreachable for {key}" for key in sorted(BROKEN)
    }

    stored = store_truth(settings)
    assert sorted(stored) == sorted(set(KEYS) - BROKEN)
    statuses, versions = instance_truth(instance)
    assert statuses == {key: "FAILED" if key in BROKEN else "MATERIALIZED" for key in KEYS}, (
        "Dagster's partition statuses must be the store's truth"
    )
    assert versions == stored, "each partition's data version is its stored checksum"

    # Reported once each, as their commits landed: 2024-01-01 and -03 were committed (a batch of
    # two) before 2024-01-07 was fetched, and Dagster showed them then.
    reported = [m.partition for m in result.asset_materializations_for_node(DATASET)]
    assert sorted(reported) == sorted(stored) and len(set(reported)) == len(reported)
    assert seen_at_fetch["2024-01-01"] == set()
    assert {"2024-01-01", "2024-01-03"} <= seen_at_fetch["2024-01-07"]
    assert "2024-01-04" not in seen_at_fetch["2024-01-04"]

    # Nothing is reported outside the run: every materialization belongs to it.
    records = instance.fetch_materializations(KEY, limit=100).records
    assert {record.run_id for record in records} == {result.run_id}

    # Fixed source, same range: now every partition is materialized, the store agrees.
    monkeypatch.setattr(SyntheticProvider, "fetch", original_fetch)
    rerun = materialize(DATASET, f"{KEYS[0]}...{KEYS[-1]}")
    assert rerun.success
    statuses, versions = instance_truth(instance)
    assert statuses == dict.fromkeys(KEYS, "MATERIALIZED")
    assert versions == store_truth(settings)
    end = spec.period_for_key(KEYS[-1]).start
    assert ref_assets.dataset_status(spec.id, end=end, settings=settings).missing == []


def test_a_single_partition_run_keeps_its_output_and_checksum_data_version(
    settings, write_spec, materialize, instance
):
    write_spec()
    result = materialize(DATASET, "2024-01-03")
    assert result.success
    [materialization] = result.asset_materializations_for_node(DATASET)
    assert materialization.partition == "2024-01-03"
    _, versions = instance_truth(instance)
    assert versions == store_truth(settings) == {"2024-01-03": versions["2024-01-03"]}
    assert versions["2024-01-03"].startswith("sha256:")


def test_a_backfill_counts_what_the_store_holds(settings, write_spec, register_providers, tmp_path):
    """A backfill of 7 days in runs of 3, through the backfill daemon's own iteration (in this
    process, runs launched synchronously: the daemon process waits 30 s between iterations),
    with two corrupt source files: its counts and the partitions' statuses are the store's."""
    directory = tmp_path / "archive"
    directory.mkdir()
    corrupt = {"2024-01-02", "2024-01-05"}
    for key in KEYS:
        if key in corrupt:
            (directory / f"{key}.npy").write_bytes(b"not a numpy file")
        else:
            np.save(directory / f"{key}.npy", np.full((4, 6), 15.0, "float32"))
    register_providers("ref_assets_tests.example_providers:NpyArchiveProvider")
    write_spec(
        provider="npy_archive",
        params={"directory": str(directory), "shape": [4, 6]},
        variables=[{"name": "t2m", "units": "degC"}],
        runs={"max_partitions_per_run": 3, "commit_every": 2},
    )
    synchronous = {  # runs are launched, and run, as the daemon submits them
        "run_launcher": {
            "module": "dagster._core.launcher.sync_in_memory_run_launcher",
            "class": "SyncInMemoryRunLauncher",
        },
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "DefaultRunCoordinator",
        },
    }
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="ref_assets.definitions", attribute="defs"),
        location_name="ref_assets",
    )
    with (
        dg.instance_for_test(overrides=synchronous) as instance,
        create_test_daemon_workspace_context(
            InProcessWorkspaceLoadTarget(origin), instance
        ) as workspace,
    ):
        asset_graph = workspace.create_request_context().asset_graph
        backfill = PartitionBackfill.from_asset_partitions(
            backfill_id="checks-backfill",
            asset_graph=asset_graph,
            partition_names=KEYS,
            asset_selection=[KEY],
            backfill_timestamp=time.time(),
            tags={},
            dynamic_partitions_store=instance,
            all_partitions=False,
            title=None,
            description=None,
            # Each run in this process too (a step subprocess would import ref_assets again).
            run_config={"execution": {"config": {"in_process": {}}}},
        )
        instance.add_backfill(backfill)
        for _ in range(5):
            list(execute_backfill_iteration(workspace, logging.getLogger("backfill_test")))
            backfill = instance.get_backfill("checks-backfill")
            if backfill.status != BulkActionStatus.REQUESTED:
                break
        runs = instance.get_runs(
            filters=dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id})
        )
        assert len(runs) == 3  # 7 partitions in runs of at most 3
        [status] = backfill.get_backfill_status_per_asset_key(workspace.create_request_context())
        counts = {s.value: n for s, n in status.partitions_counts_by_status.items() if n}

        stored = store_truth(settings)
        assert sorted(stored) == sorted(set(KEYS) - corrupt)
        assert counts == {"MATERIALIZED": len(stored), "FAILED": len(corrupt)}
        statuses, versions = instance_truth(instance)
        assert statuses == {key: "FAILED" if key in corrupt else "MATERIALIZED" for key in KEYS}
        assert versions == stored

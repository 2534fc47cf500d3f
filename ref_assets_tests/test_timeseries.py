"""The time-series copy: equal to the per-period store value for value after shuffled ingestion,
after a revision (which rewrites exactly its time chunk), after an update killed mid-way; its
Dagster asset is requested by its automation condition after a period lands."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
from datetime import datetime
from importlib import resources

import dagster as dg
import numpy as np
import pytest
import yaml

from ref_assets.batch import fetch_batch
from ref_assets.cli import main
from ref_assets.definitions import build_definitions
from ref_assets.defs.timeseries import timeseries_partitions
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.reader import open_dataset
from ref_assets.specs import DatasetSpec
from ref_assets.store import timeseries
from ref_assets.store.layout import StoreLayoutError, structure
from ref_assets.store.repository import DatasetStore, StoreError
from ref_assets.store.writer import CommitPolicy, PeriodWriter
from ref_assets.verification import verify_timeseries
from ref_assets_tests.conftest import spec_dict

# 8 x 12 cells in shards of 6 x 6 (a ragged edge) of 2 x 2 tiles, 4 periods a time chunk, on an
# axis grown in blocks of 8.
TIMESERIES = {"time_chunk": 4, "y": 6, "x": 6, "tile": 2}
DAYS = [str(day) for day in np.datetime64("2024-01-01") + np.arange(22)]


@pytest.fixture
def dataset(settings):
    spec = DatasetSpec.model_validate(spec_dict(timeseries=TIMESERIES))
    provider = SyntheticProvider(spec)
    store = DatasetStore(settings.storage_root, spec.id)

    def write(keys, *, batch_spec=spec, every=3):
        writer = PeriodWriter(store, run_id="test", policy=CommitPolicy(every=every))
        batch_provider = provider if batch_spec is spec else SyntheticProvider(batch_spec)
        for key in keys:
            writer.add(fetch_batch(batch_spec, batch_provider, batch_spec.period_for_key(key)))
        writer.flush()

    return spec, store, write


def assert_copy_equals_store(settings, spec) -> None:
    periods = open_dataset(spec.id, settings=settings)
    series = open_dataset(spec.id, layout="timeseries", settings=settings)
    assert series.sizes == periods.sizes
    np.testing.assert_array_equal(series.time.values, periods.time.values)
    np.testing.assert_array_equal(series.y.values, periods.y.values)
    assert (series.t2m.encoding["shards"], series.t2m.encoding["chunks"]) == ((4, 6, 6), (4, 2, 2))
    assert np.array_equal(series.t2m.values, periods.t2m.values, equal_nan=True)
    assert series.t2m.attrs == periods.t2m.attrs
    checks = verify_timeseries(spec.id, settings=settings)
    assert checks and all(check.ok for check in checks), checks


def test_copy_equals_the_store_after_shuffled_ingestion(settings, dataset):
    spec, store, write = dataset
    order = random.Random(5).sample(DAYS, len(DAYS))
    write(order[:9])  # a gappy store: the copy holds NaN where no period is
    first = timeseries.update_timeseries(spec, store, run_id="first")
    assert_copy_equals_store(settings, spec)
    write(order[9:])  # the rest, including periods past the axis' first block
    second = timeseries.update_timeseries(spec, store, run_id="second")
    assert_copy_equals_store(settings, spec)
    assert second.chunks and second.periods > 0
    assert set(first.chunks) <= set(range(6)) and second.chunks == sorted(second.chunks)
    # Current: a third update reads every chunk's checksums, finds them equal, commits nothing.
    third = timeseries.update_timeseries(spec, store, run_id="third")
    assert (third.chunks, third.snapshot) == ([], None)
    assert third.checked == list(range(6))


def test_a_revised_period_rewrites_exactly_its_time_chunk(settings, dataset):
    spec, store, write = dataset
    write(DAYS)
    timeseries.update_timeseries(spec, store, run_id="build")
    copy = timeseries.timeseries_store(store).open()
    before = copy.lookup_branch("main")

    # The same period from another version of the source (another seed: other values).
    revised = DatasetSpec.model_validate(
        spec_dict(timeseries=TIMESERIES, params={**spec.params, "seed": 4})
    )
    write(["2024-01-10"], batch_spec=revised)  # index 9: time chunk 2
    [stale] = [c for c in verify_timeseries(spec.id, settings=settings) if not c.ok]
    assert stale.chunk == 2 and "2024-01-10 copied from another version" in stale.problem

    update = timeseries.update_timeseries(spec, store, run_id="revision")
    assert (update.chunks, update.periods) == ([2], 4)
    diff = copy.diff(from_snapshot_id=before, to_snapshot_id=update.snapshot)
    touched = {path: {c[0] for c in chunks} for path, chunks in diff.updated_chunks.items()}
    assert touched == {"/t2m": {2}, f"/{timeseries.CHECKSUMS_PATH}": {2}, "/ref/builds": {2}}
    session = copy.readonly_session(branch="main")
    build = timeseries.chunk_builds(session, [2])[2]
    assert build["run_id"] == "revision" and build["upstream_snapshot"] == update.upstream_snapshot
    assert (build["first_period"], build["last_period"]) == ("2024-01-09", "2024-01-12")
    assert_copy_equals_store(settings, spec)


def test_an_update_failing_before_its_commit_leaves_the_copy_as_it_was(
    settings, dataset, monkeypatch
):
    spec, store, write = dataset
    write(DAYS[:10])
    built = timeseries.update_timeseries(spec, store, run_id="build")
    write(DAYS[10:])

    def refuse(session, message):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(timeseries, "commit_rebasing", refuse)
        with pytest.raises(StoreError, match="no space left"):
            timeseries.update_timeseries(spec, store, run_id="failing")
    copy = timeseries.timeseries_store(store).open()
    assert copy.lookup_branch("main") == built.snapshot  # nothing of the failed update
    assert any(not check.ok for check in verify_timeseries(spec.id, settings=settings))

    timeseries.update_timeseries(spec, store, run_id="rerun")
    assert_copy_equals_store(settings, spec)


def update_until_killed(storage_root: str, spec_fields: dict, rewriting) -> None:
    """Child process: update the copy, announcing (and then pausing) once the first time chunk
    has been written into the uncommitted session, so the parent kills it mid-update."""
    import time

    from ref_assets.store import timeseries as child_timeseries

    rewrite = child_timeseries._Update.rewrite

    def announce_then_pause(self, chunk):
        periods = rewrite(self, chunk)
        rewriting.set()
        time.sleep(60)
        return periods

    child_timeseries._Update.rewrite = announce_then_pause
    spec = DatasetSpec.model_validate(spec_fields)
    child_timeseries.update_timeseries(spec, DatasetStore(storage_root, spec.id), run_id="killed")


def test_an_update_killed_mid_way_leaves_the_copy_whole_and_a_rerun_completes(settings, dataset):
    spec, store, write = dataset
    write(DAYS[:6])
    built = timeseries.update_timeseries(spec, store, run_id="build")
    write(DAYS[6:])
    context = multiprocessing.get_context("spawn")  # icechunk does not survive fork
    rewriting = context.Event()
    child = context.Process(
        target=update_until_killed,
        args=(settings.storage_root, spec.model_dump(mode="json"), rewriting),
    )
    child.start()
    try:
        assert rewriting.wait(60), "the child never started rewriting"
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    finally:
        if child.is_alive():
            child.kill()
    assert child.exitcode == -signal.SIGKILL
    copy = timeseries.timeseries_store(store).open()
    assert copy.lookup_branch("main") == built.snapshot

    rerun = timeseries.update_timeseries(spec, store, run_id="rerun")
    assert rerun.chunks == [1, 2, 3, 4, 5]  # chunk 0 was current; chunk 1 held days 5-6
    assert_copy_equals_store(settings, spec)


def test_the_section_leaves_the_per_period_store_alone(settings, dataset):
    spec, store, write = dataset
    plain = DatasetSpec.model_validate(spec_dict())
    assert spec.values_fingerprint() == plain.values_fingerprint()
    provider = SyntheticProvider(plain)
    description = provider.describe()
    assert structure(spec, description) == structure(plain, description)
    # A store written without the section takes writes from the spec with it, and vice versa.
    PeriodWriter(DatasetStore(settings.storage_root, spec.id), run_id="plain").add(
        fetch_batch(plain, provider, plain.period_for_key("2024-01-01"))
    )
    write(["2024-01-02"])
    with pytest.raises(StoreError, match="no `timeseries` section"):
        timeseries.update_timeseries(plain, store, run_id="none")
    with pytest.raises(StoreError, match="no time-series copy"):
        open_dataset(spec.id, layout="timeseries", settings=settings)


def test_changed_chunking_is_refused_naming_what_to_do(settings, dataset):
    spec, store, write = dataset
    write(DAYS[:3])
    timeseries.update_timeseries(spec, store, run_id="build")
    other = DatasetSpec.model_validate(spec_dict(timeseries={**TIMESERIES, "tile": 3}))
    with pytest.raises(
        StoreLayoutError, match=r"timeseries_chunks changed.*test_t2m.timeseries aside"
    ):
        timeseries.update_timeseries(other, store, run_id="other")


def test_the_asset_is_requested_after_a_period_lands_and_updates_the_copy(
    settings, write_spec, instance, materialize
):
    write_spec(timeseries=TIMESERIES)
    defs = build_definitions()
    key = dg.AssetKey(["timeseries", "test_t2m"])
    selection = dg.AssetSelection.assets(key)
    result = dg.evaluate_automation_conditions(defs, instance, asset_selection=selection)
    assert result.total_requested == 0  # nothing stored, nothing to copy

    materialize("test_t2m", "2024-01-02...2024-01-05")
    result = dg.evaluate_automation_conditions(
        defs, instance, asset_selection=selection, cursor=result.cursor
    )
    assert result.get_requested_partitions(key) == {"2024"}

    job = defs.resolve_implicit_job_def_def_for_assets([key])
    run = job.execute_in_process(partition_key="2024", instance=instance, asset_selection=[key])
    [materialization] = run.asset_materializations_for_node("timeseries__test_t2m")
    assert materialization.metadata["periods_copied"].value == 4
    assert_copy_equals_store(settings, DatasetSpec.model_validate(spec_dict()))
    result = dg.evaluate_automation_conditions(
        defs, instance, asset_selection=selection, cursor=result.cursor
    )
    assert result.total_requested == 0  # handled

    materialize("test_t2m", "2024-01-03")  # a period rewritten (a revision, as the sensor asks)
    result = dg.evaluate_automation_conditions(
        defs, instance, asset_selection=selection, cursor=result.cursor
    )
    assert result.get_requested_partitions(key) == {"2024"}
    run = job.execute_in_process(partition_key="2024", instance=instance, asset_selection=[key])
    [materialization] = run.asset_materializations_for_node("timeseries__test_t2m")
    # Same values, same checksum: the copy's provenance says nothing changed.
    assert materialization.metadata["chunks_rewritten"].value == 0
    assert defs.resolve_sensor_def("timeseries_automation").default_status == (
        dg.DefaultSensorStatus.RUNNING
    )


def test_the_command_line_updates_and_verifies_the_copy(settings, dataset, write_spec, capsys):
    spec, _, write = dataset
    write_spec(timeseries=TIMESERIES)
    write(DAYS[:6])
    assert main(["timeseries", spec.id, "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert (built["chunks_rewritten"], built["periods"]) == ([0, 1], 6)
    write(DAYS[6:8])  # stored, not copied yet
    assert main(["verify", spec.id, "--json", "--quiet"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["checked"], report["verified"]) == (8, 8)  # the per-period store is fine
    assert report["timeseries"]["store"].endswith("test_t2m.timeseries")
    [lagging] = report["timeseries"]["mismatches"]
    assert (lagging["chunk"], lagging["first"], lagging["last"]) == (1, "2024-01-05", "2024-01-08")
    assert "2024-01-07, 2024-01-08 stored but not in the copy yet" in lagging["problem"]

    assert main(["timeseries", spec.id, "--start", "2024-01-05", "--end", "2024-01-08"]) == 0
    assert "rewrote 1 of 1 time chunks (4 periods)" in capsys.readouterr().out
    assert main(["verify", spec.id, "--quiet"]) == 0
    assert "time-series copy: 2 of 2 time chunks verified (8 periods)" in capsys.readouterr().out


def test_tiles_must_fill_the_shards():
    with pytest.raises(ValueError, match=r"tile 4 must divide y \(6\) and x \(6\)"):
        DatasetSpec.model_validate(spec_dict(timeseries={**TIMESERIES, "tile": 4}))


def test_the_instance_template_runs_automation_condition_sensors():
    template = yaml.safe_load((resources.files("ref_assets") / "data/dagster.yaml").read_text())
    with dg.instance_for_test(overrides=template) as instance:
        assert instance.auto_materialize_enabled and instance.auto_materialize_use_sensors


def test_a_copy_added_to_a_dataset_holding_periods_is_built_on_the_next_evaluation(
    settings, write_spec, instance, materialize
):
    write_spec()
    materialize("test_t2m", "2024-01-02...2024-01-05")
    write_spec(timeseries=TIMESERIES)  # the section comes later
    defs = build_definitions()
    key = dg.AssetKey(["timeseries", "test_t2m"])
    selection = dg.AssetSelection.assets(key)
    result = dg.evaluate_automation_conditions(defs, instance, asset_selection=selection)
    assert result.get_requested_partitions(key) == {"2024"}  # not 2025, 2026: nothing stored
    result = dg.evaluate_automation_conditions(
        defs, instance, asset_selection=selection, cursor=result.cursor
    )
    assert result.total_requested == 0  # requested once, not on every evaluation


def test_the_copy_is_partitioned_coarser_up_to_the_one_holding_the_last_period():
    hourly = DatasetSpec.model_validate(
        spec_dict(period="hourly", start="2024-01-01", end="2030-03-15", timeseries=TIMESERIES)
    )
    keys = timeseries_partitions(hourly).get_partition_keys()
    assert (keys[0], keys[-1], len(keys)) == ("2024-01", "2030-03", 75)  # a future end
    daily = DatasetSpec.model_validate(spec_dict(start="2023-06-01", timeseries=TIMESERIES))
    now = datetime(2026, 3, 2)
    keys = timeseries_partitions(daily, now).get_partition_keys(current_time=now)
    assert keys == ["2023", "2024", "2025", "2026"]  # this year: yesterday's period is in it


def test_a_period_whose_quality_check_failed_holds_its_partition_back(
    settings, write_spec, instance, materialize
):
    # The synthetic land-only field is partly NaN: no NaN allowed fails every period's check.
    write_spec(checks={"max_nan_fraction": 0.0}, timeseries=TIMESERIES)
    key = dg.AssetKey(["timeseries", "test_t2m"])
    selection = dg.AssetSelection.assets(key)
    defs = build_definitions()
    result = dg.evaluate_automation_conditions(defs, instance, asset_selection=selection)
    assert not materialize("test_t2m", "2024-01-02...2024-01-03", raise_on_error=False).success
    result = dg.evaluate_automation_conditions(
        defs, instance, asset_selection=selection, cursor=result.cursor
    )
    assert result.total_requested == 0

    write_spec(timeseries=TIMESERIES)  # the bound relaxed, the periods stored again: they pass
    materialize("test_t2m", "2024-01-02...2024-01-03")
    defs = build_definitions()
    result = dg.evaluate_automation_conditions(
        defs, instance, asset_selection=selection, cursor=result.cursor
    )
    assert result.get_requested_partitions(key) == {"2024"}


def test_an_update_racing_another_never_leaves_the_copy_older_than_the_store(
    settings, dataset, monkeypatch
):
    """An update read the per-period store; then a period is revised and another update copies
    the revision. The first one's commit must not put the older values back."""
    spec, store, write = dataset
    write(DAYS)
    timeseries.update_timeseries(spec, store, run_id="build")
    revised = DatasetSpec.model_validate(
        spec_dict(timeseries=TIMESERIES, params={**spec.params, "seed": 4})
    )
    real_open = DatasetStore.open
    raced = []

    class RacedRepository:
        """The per-period repository, revised (and copied) right after its first read."""

        def __init__(self, repository):
            self.repository = repository

        def readonly_session(self, **kwargs):
            session = self.repository.readonly_session(**kwargs)
            if not raced:
                raced.append(session.snapshot_id)
                write(["2024-01-10"], batch_spec=revised)
                timeseries.update_timeseries(spec, store, run_id="other")
            return session

    def open_raced(self, *args, **kwargs):
        repository = real_open(self, *args, **kwargs)
        slow = type(self) is DatasetStore and not raced
        return RacedRepository(repository) if slow else repository

    monkeypatch.setattr(DatasetStore, "open", open_raced)
    write(["2024-01-20"], batch_spec=revised)  # the slow update has a chunk of its own to write
    timeseries.update_timeseries(spec, store, run_id="slow")
    monkeypatch.undo()
    assert raced
    assert_copy_equals_store(settings, spec)


def test_the_command_line_start_alone_updates_up_to_the_newest_period(
    settings, dataset, write_spec, capsys
):
    spec, _, write = dataset
    write_spec(timeseries=TIMESERIES)
    write(DAYS[:12])
    assert main(["timeseries", spec.id, "--start", "2024-01-05", "--json"]) == 0
    update = json.loads(capsys.readouterr().out)  # --end defaults to the newest period
    assert (update["chunks_rewritten"], update["periods"]) == ([1, 2], 8)


def test_an_update_of_a_store_without_periods_says_what_to_do_and_creates_no_copy(
    settings, dataset
):
    spec, store, _ = dataset
    store.open_or_create(spec.manifest_split)  # a first run that failed before its first commit
    with pytest.raises(StoreError, match=r"holds no periods yet; materialize some first"):
        timeseries.update_timeseries(spec, store, run_id="early")
    assert not timeseries.timeseries_store(store).exists()


def test_the_command_line_end_alone_updates_from_the_first_period(
    settings, dataset, write_spec, capsys
):
    spec, _, write = dataset
    write_spec(timeseries=TIMESERIES)
    write(DAYS[:12])
    assert main(["timeseries", spec.id, "--end", "2024-01-06", "--json"]) == 0
    update = json.loads(capsys.readouterr().out)  # --start defaults to the first period
    assert (update["chunks_rewritten"], update["periods"]) == ([0, 1], 8)

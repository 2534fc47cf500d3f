"""Stores on S3, against a real S3-compatible server started by the tests (SeaweedFS `weed mini`
on loopback, `ref_assets_tests.s3_server`): the normal write path, concurrent spawned writers,
a server that dies mid-range, a writer killed mid-commit, and credentials kept out of sight."""

from __future__ import annotations

import json
import signal
import tempfile
import threading
import time
from datetime import timedelta

import icechunk as ic
import numpy as np
import pytest
from zarr.core.sync import sync

import ref_assets
from ref_assets.annotations import annotate
from ref_assets.batch import fetch_batch
from ref_assets.cli.main import main
from ref_assets.config import storage_root_problem
from ref_assets.provenance import export_records
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.rebuild import rechunk_dataset
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.store import repository, timeseries
from ref_assets.store import writer as store_writer
from ref_assets.store.branches import copy_periods, publish, start_work
from ref_assets.store.maintenance import RetentionPolicy, maintain
from ref_assets.store.releases import releases, tag
from ref_assets.store.repository import DatasetStore, StoreError
from ref_assets.store.s3 import S3Connection, S3Problem
from ref_assets.store.writer import CommitPolicy, PeriodWriter, write_period
from ref_assets.verification import verify_dataset
from ref_assets_tests.test_concurrency import days, run_at_once, two_writers_of_the_same_periods
from ref_assets_tests.test_crash import check_whole_or_absent, start_writer
from ref_assets_tests.test_maintenance import maintain_beside_a_writer
from ref_assets_tests.test_provider_local_files import expected, sha256, spec_fields, write_netcdf
from ref_assets_tests.test_timeseries import TIMESERIES, assert_copy_equals_store
from ref_assets_tests.workers import write_periods_on_machine


def provider_values(spec: DatasetSpec, keys: list[str]) -> dict[str, np.ndarray]:
    provider = SyntheticProvider(spec)
    return {
        key: provider.fetch(spec.period_for_key(key)).data.t2m.values.astype("float32")
        for key in keys
    }


def test_periods_materialized_on_s3_read_back_exactly(
    s3_settings, s3_server, write_spec, materialize
):
    spec_fields = write_spec()
    spec = DatasetSpec.model_validate(spec_fields)
    keys = days(4)

    result = materialize(spec.id, f"{keys[0]}...{keys[-1]}")

    assert result.success
    store = DatasetStore(s3_settings.storage_root, spec.id)
    assert store.on_s3 and store.exists()
    assert any("/snapshots/" in key for key in s3_server.list_keys(store.s3.prefix))
    assert not (s3_settings.configuration_dir / "stores").exists()  # nothing went to disk
    data = ref_assets.open_dataset(spec.id, settings=s3_settings)
    for key, values in provider_values(spec, keys).items():
        index = spec.time_index(spec.period_for_key(key))
        np.testing.assert_array_equal(data.t2m.isel(time=index).values, values)
    assert check_whole_or_absent(s3_settings, spec, provider_values(spec, keys)) == set(keys)


def test_eight_spawned_writers_of_distinct_periods_lose_nothing(s3_settings, write_spec, tmp_path):
    """Two machines of four writers: each machine's writers take turns, the machines race."""
    # A small time block: the writers also race to grow the axis.
    spec_fields = write_spec(storage={"time_block": 4})
    spec = DatasetSpec.model_validate(spec_fields)
    keys = days(24)
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]
    for machine in machines:
        machine.mkdir()

    shares = [(str(machines[i % 2]), keys[i::8]) for i in range(8)]
    run_at_once(write_periods_on_machine, shares, s3_settings.storage_root, spec_fields)

    assert check_whole_or_absent(s3_settings, spec, provider_values(spec, keys)) == set(keys)


def test_two_writers_of_the_same_periods_leave_one_whole_version(s3_settings, write_spec):
    two_writers_of_the_same_periods(
        s3_settings.storage_root, write_spec(storage={"time_block": 8}), 6
    )


def test_maintenance_beside_a_writer_on_s3_loses_no_commit(s3_settings, write_spec):
    """No lock on S3: expiry and garbage collection rewrite the repository object with a
    conditional write, as commits do, so one of two racing updates is refused, never lost."""
    spec = DatasetSpec.model_validate(write_spec())
    store = DatasetStore(s3_settings.storage_root, spec.id)
    provider = SyntheticProvider(spec)
    keys = days(10)
    batches = [fetch_batch(spec, provider, spec.period_for_key(key)) for key in keys]
    maintain_beside_a_writer(store, spec, batches)


def stored_count(store: DatasetStore) -> int:
    if not store.exists():
        return 0
    session = store_reader.session_for(store)
    return len(store_reader.written_indices(session)) if store_reader.store_axis(session) else 0


def test_a_server_killed_and_restarted_mid_range_leaves_whole_periods_and_a_rerun_completes(
    s3_settings, s3_server, write_spec
):
    spec_fields = write_spec(storage={"time_block": 4})
    spec = DatasetSpec.model_validate(spec_fields)
    keys = days(16)
    expected = provider_values(spec, keys)
    store = DatasetStore(s3_settings.storage_root, spec.id)
    writer = start_writer(s3_settings, spec_fields, keys)
    deadline = time.monotonic() + 60
    while stored_count(store) < 2 and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)

    s3_server.kill()  # mid-range: the writer is between, or inside, commits
    time.sleep(1.0)
    s3_server.start()  # same ports, same data
    # Bounded retries: the writer rides through the restart or fails; it never hangs.
    writer.wait(timeout=120)

    present = check_whole_or_absent(s3_settings, spec, expected)
    assert len(present) >= 2
    for key in keys:  # the rerun: nothing the restart left gets in its way
        if key not in present:
            write_period(
                store,
                fetch_batch(spec, SyntheticProvider(spec), spec.period_for_key(key)),
                run_id="rerun",
            )
    assert check_whole_or_absent(s3_settings, spec, expected) == set(keys)


def test_writers_killed_at_any_instant_on_s3_leave_whole_periods(s3_settings, write_spec):
    spec_fields = write_spec(storage={"time_block": 3})
    spec = DatasetSpec.model_validate(spec_fields)
    keys = days(9)
    expected = provider_values(spec, keys)
    store = DatasetStore(s3_settings.storage_root, spec.id)
    rng = np.random.default_rng(5)
    for trial in range(2):
        before = check_whole_or_absent(s3_settings, spec, expected)
        remaining = [key for key in keys if key not in before] or keys
        writer = start_writer(s3_settings, spec_fields, list(rng.permutation(remaining)))
        # Once it has committed (whatever the machine's load), at varied points after:
        # chunk writes, commits, axis growth.
        deadline = time.monotonic() + 60
        while stored_count(store) <= len(before) and time.monotonic() < deadline:
            if writer.poll() is not None:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        assert writer.returncode in (0, -signal.SIGKILL), f"trial {trial}: the writer failed"
        present = check_whole_or_absent(s3_settings, spec, expected)
        # Committed periods stay; the waited-for commit is there (unless all were before).
        assert present > before or present == before == set(keys), f"trial {trial}"
    provider = SyntheticProvider(spec)
    for key in keys:
        write_period(store, fetch_batch(spec, provider, spec.period_for_key(key)), run_id="rerun")
    assert check_whole_or_absent(s3_settings, spec, expected) == set(keys)


def test_credentials_appear_in_no_output_log_record_or_dagster_event(
    s3_settings, s3_server, write_spec, tmp_path, monkeypatch, capfd, caplog
):
    secrets = [s3_server.access_key, s3_server.secret_key]
    spec = DatasetSpec.model_validate(write_spec())
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    caplog.set_level("DEBUG")

    assert (
        main(
            [
                "materialize",
                spec.id,
                "--start",
                "2024-01-01",
                "--end",
                "2024-01-03",
                "--log-level",
                "DEBUG",
            ]
        )
        == 0
    )
    assert main(["config", "show"]) == 0
    assert main(["status", spec.id, "--json"]) == 0
    console = capfd.readouterr()
    assert "s3://" in console.out  # the root is shown, named without credentials

    session = store_reader.session_for(DatasetStore(s3_settings.storage_root, spec.id))
    records = store_reader.read_records(session, store_reader.written_indices(session))
    assert len(records) == 3
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs()
        events = [repr(e) for e in instance.all_logs(run.run_id)]
    assert any("ASSET_MATERIALIZATION" in event for event in events)
    written = b"".join(  # the run and event databases, compute logs, ref.toml, caches
        path.read_bytes()
        for directory in (home, s3_settings.configuration_dir)
        for path in directory.rglob("*")
        if path.is_file()
    )
    shown = "\n".join([console.out, console.err, caplog.text, json.dumps(records), *events])
    for secret in secrets:
        assert secret not in shown
        assert secret.encode() not in written


def test_a_local_files_archive_on_s3_lands_in_an_s3_store_and_its_records_export_to_s3(
    s3_settings, s3_server, write_spec, register_providers, tmp_path, materialize
):
    files = {
        d: write_netcdf(tmp_path / f"t2m_2024010{d}.nc", f"2024-01-0{d}", seed=d) for d in (1, 2)
    }
    for path in files.values():
        s3_server.put(f"archive/{path.name}", path.read_bytes())
    register_providers("ref_assets.providers.local_files:LocalFilesProvider")
    archive = s3_server.root("archive")
    fields = spec_fields(archive, "t2m_{year}{month}{day}.nc", bbox=[-60.0, -3.0, 60.0, 3.0])
    write_spec("local_t2m", chunks={"y": 6, "x": 5}, **fields)

    assert materialize("local_t2m", "2024-01-01...2024-01-02").success

    stored = ref_assets.open_dataset("local_t2m", settings=s3_settings)
    for d, path in files.items():
        source = expected(path).sel(lat=slice(3.0, -3.0), lon=slice(-60.0, 60.0))
        np.testing.assert_array_equal(stored["t2m"].sel(time=f"2024-01-0{d}").values, source)
    [item] = ref_assets.read_provenance("local_t2m", "2024-01-02", settings=s3_settings).sources
    assert (item.uri, item.sha256) == (f"{archive}/t2m_20240102.nc", sha256(files[2]))
    exports = s3_server.root("exports/local_t2m")
    assert export_records("local_t2m", exports, settings=s3_settings) == 2
    exported = sorted(s3_server.list_keys("exports/local_t2m/"))
    assert exported == [f"exports/local_t2m/2024-01-0{d}.record.json" for d in (1, 2)]


def test_annotations_releases_the_time_series_copy_rechunk_and_maintenance_work_on_s3(
    s3_settings, write_spec
):
    spec = DatasetSpec.model_validate(write_spec(timeseries=TIMESERIES))
    store = DatasetStore(s3_settings.storage_root, spec.id)
    provider = SyntheticProvider(spec)
    writer = PeriodWriter(store, run_id="s3", policy=CommitPolicy(every=3))
    for key in days(6):
        writer.add(fetch_batch(spec, provider, spec.period_for_key(key)))
    writer.flush()

    annotate(spec.id, "t2m", attributes={"checked": "yes"}, by="ann")
    release = tag(store, "v1")
    timeseries.update_timeseries(spec, store, run_id="copy")
    assert timeseries.timeseries_store(store).on_s3
    assert_copy_equals_store(s3_settings, spec)
    rechunk_dataset(spec, store, chunks={"y": 2, "x": 3}, settings=s3_settings, run_id="rc")

    data = ref_assets.open_dataset(spec.id, settings=s3_settings)
    assert data.t2m.attrs["checked"] == "yes" and data.t2m.encoding["chunks"] == (1, 2, 3)
    assert all(check.ok for check in verify_dataset(spec.id, settings=s3_settings))
    assert [r.name for r in releases(store)] == [release.name]
    report = maintain(store, RetentionPolicy(keep_last=1, grace=timedelta(0)))
    assert report.bytes_deleted > 0 and report.store_bytes_before > report.store_bytes_after > 0
    with pytest.raises(StoreError, match="is on S3"):
        maintain(store, RetentionPolicy(keep_last=1), dry_run=True)


def test_a_store_set_to_skip_conditional_writes_is_refused_to_writers(s3_settings, write_spec):
    spec = DatasetSpec.model_validate(write_spec())
    store = DatasetStore(s3_settings.storage_root, spec.id)
    config = ic.RepositoryConfig.default()
    config.storage = ic.StorageSettings(unsafe_use_conditional_update=False)
    ic.Repository.create(store._storage(), config=config)
    batch = fetch_batch(spec, SyntheticProvider(spec), spec.period_for_key("2024-01-01"))

    with pytest.raises(StoreError) as refused:
        write_period(store, batch, run_id="unsafe")

    assert "turn unsafe_use_conditional_update off" in str(refused.value)
    assert "Remove that setting from the repository's config" in str(refused.value)


def test_the_remains_of_a_dead_store_creation_on_s3_do_not_block_the_next(
    s3_settings, s3_server, write_spec, monkeypatch, caplog
):
    spec = DatasetSpec.model_validate(write_spec())
    store = DatasetStore(s3_settings.storage_root, spec.id)
    # What a creator killed before its repository object leaves: Icechunk's objects only.
    s3_server.put(f"{store.s3.prefix}/config.yaml", b"{}")
    s3_server.put(f"{store.s3.prefix}/snapshots/1CECHNK1CECHNK1CECHN", b"partial")
    monkeypatch.setattr(repository, "ABANDONED_CREATION_SECONDS", 1.0)
    batch = fetch_batch(spec, SyntheticProvider(spec), spec.period_for_key("2024-01-01"))

    write_period(store, batch, run_id="after the dead creation")

    assert "removing the remains of an interrupted store creation" in caplog.text

    assert check_whole_or_absent(s3_settings, spec, provider_values(spec, ["2024-01-01"])) == {
        "2024-01-01"
    }


def test_roots_and_endpoints_that_cannot_be_used_are_refused_saying_what_to_do():
    assert storage_root_problem("s3://bucket/prefix") is None
    assert "neither a local directory nor on S3" in storage_root_problem("gs://bucket/x")
    assert "not of the form s3://bucket/prefix" in storage_root_problem("s3://bucket/x?v=1")
    assert "holds credentials" in storage_root_problem("s3://key:secret@bucket/x")
    loopback = S3Connection.from_environment({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert loopback.allow_http
    with pytest.raises(S3Problem, match="plain http on a network"):
        S3Connection.from_environment({"AWS_ENDPOINT_URL": "http://10.0.0.5:9000"})
    trusted = {"AWS_ENDPOINT_URL": "http://10.0.0.5:9000", "REF_S3_ALLOW_HTTP": "1"}
    assert S3Connection.from_environment(trusted).allow_http
    assert not S3Connection.from_environment({"AWS_REGION": "eu-west-1"}).allow_http


def test_work_published_beside_a_writer_on_s3_keeps_both(s3_settings, write_spec):
    """publish moves main by compare-and-set: on S3, with no lock, a writer committing all
    along makes it replay (or find its set refused and look again); nothing is lost."""
    spec = DatasetSpec.model_validate(write_spec())
    store = DatasetStore(s3_settings.storage_root, spec.id)
    provider = SyntheticProvider(spec)
    keys = days(10)
    batches = {key: fetch_batch(spec, provider, spec.period_for_key(key)) for key in keys}
    write_period(store, batches[keys[0]], run_id="first")
    work = start_work(store, "rebuild", run_id="r")
    writer = PeriodWriter(store, run_id="work", branch=work.branch)
    writer.add(batches[keys[1]])
    writer.flush()
    failures = []

    def write_main():
        try:
            for key in keys[2:]:
                write_period(store, batches[key], run_id="sensor")
        except Exception as err:  # reported below: a thread's exception is otherwise lost
            failures.append(err)

    def replay(moved):
        copy_periods(
            store, spec, moved.periods, source_snapshot=moved.tip, branch=work.branch, message="r"
        )

    main_writer = threading.Thread(target=write_main)
    main_writer.start()
    while main_writer.is_alive() and stored_count(store) < 4:
        time.sleep(0.05)
    publish(work, replay=replay, max_attempts=50)
    main_writer.join()

    assert not failures
    assert check_whole_or_absent(s3_settings, spec, provider_values(spec, keys)) == set(keys)


@pytest.mark.parametrize("lost_as", ["unclean prefix", "conflict"])
def test_a_creator_that_loses_the_race_opens_the_winners_store(s3_settings, monkeypatch, lost_as):
    store = DatasetStore(s3_settings.storage_root, "raced")
    winner = store.open_or_create(manifest_split=8)
    # The loser looked before the winner's repository object existed, then tried to create:
    # Icechunk refuses the prefix the winner wrote into, or (when both wrote at once, seen with
    # 8 writers) reports that the repository object changed under it.
    looks = iter([False])
    real_exists = DatasetStore.exists
    monkeypatch.setattr(DatasetStore, "exists", lambda self: next(looks, real_exists(self)))
    if lost_as == "conflict":

        def create(*args, **kwargs):
            raise ic.ConflictError("repo info object was updated after this session started")

        monkeypatch.setattr(ic.Repository, "create", create)
    loser = store.open_or_create(manifest_split=8)
    assert loser.lookup_branch("main") == winner.lookup_branch("main")


def test_writers_on_one_machine_take_turns_and_catch_up_instead_of_failing_a_commit(
    s3_settings, write_spec, monkeypatch
):
    """On S3 a writer waits for this machine's turn to commit (a lock in the temporary
    directory), then replays its session on the tip that moved meanwhile before committing: no
    commit is tried in vain. Writers on other machines are kept safe by compare-and-set."""
    spec = DatasetSpec.model_validate(write_spec())
    store = DatasetStore(s3_settings.storage_root, spec.id)
    provider = SyntheticProvider(spec)
    batch_for = lambda key: fetch_batch(spec, provider, spec.period_for_key(key))  # noqa: E731
    write_period(store, batch_for("2024-01-01"), run_id="first")
    assert str(store.lock_path).startswith(tempfile.gettempdir())  # this machine's, not S3's
    real_write = store_writer._write_periods
    written = threading.Event()

    async def write(session, batches, run_id):
        result = await real_write(session, batches, run_id)
        written.set()
        return result

    monkeypatch.setattr(store_writer, "_write_periods", write)
    receipts = []
    with store.commit_turn(run_id="holder"):
        waiting = threading.Thread(
            target=lambda: receipts.append(
                write_period(store, batch_for("2024-01-02"), run_id="waiting")
            )
        )
        waiting.start()
        assert written.wait(60)
        time.sleep(0.5)
        assert waiting.is_alive()  # its values are written; its commit waits for the turn
        # The turn's holder commits another period, as a writer of this machine would.
        other = store.open().writable_session("main")
        sync(real_write(other, [batch_for("2024-01-03")], "holder"))
        holder_snapshot = other.commit("holder")
    waiting.join(60)

    [receipt] = receipts
    assert receipt.attempts == 1  # caught up on the holder's commit instead of failing one
    session = store_reader.session_for(store)
    assert session.snapshot_id == receipt.snapshot_id != holder_snapshot
    keys = ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert check_whole_or_absent(s3_settings, spec, provider_values(spec, keys)) == set(keys)


def test_a_machines_commit_turn_is_per_server_and_root(monkeypatch):
    """Two servers with a bucket of the same name hold two stores: their writers on one machine
    must not share a commit turn or its queue of sessions (found running two suites at once)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    here = DatasetStore("s3://climate/ref", "era5").lock_path
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9001")
    there = DatasetStore("s3://climate/ref", "era5").lock_path
    assert here != there and here.name == there.name == "era5.lock"
    assert DatasetStore("s3://climate/other", "era5").lock_path != there

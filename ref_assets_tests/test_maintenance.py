"""Releases (tags) and maintenance (snapshot expiry, then garbage collection): after it every
period verifies, tagged releases open with their own data, and the store shrinks by what was
reported; a dry run changes nothing and predicts the real run."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from ref_assets.batch import fetch_batch
from ref_assets.catalog import load_catalog
from ref_assets.cli.main import main as cli
from ref_assets.definitions import build_definitions
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.reader import open_dataset
from ref_assets.specs import DatasetSpec
from ref_assets.store.branches import leftover_work, start_work
from ref_assets.store.maintenance import RetentionError, RetentionPolicy, maintain
from ref_assets.store.reader import written_between
from ref_assets.store.releases import ReleaseError, releases, resolve, tag
from ref_assets.store.repository import DatasetStore, StoreError
from ref_assets.store.timeseries import timeseries_store, update_timeseries
from ref_assets.store.writer import write_period
from ref_assets.verification import verify_dataset, verify_timeseries
from ref_assets_tests.conftest import spec_dict

# Nothing writes while these tests maintain: unreferenced objects go at once.
NO_GRACE = timedelta(0)


def files(path: Path) -> dict[str, int]:
    return {
        os.path.relpath(os.path.join(d, n), path): os.path.getsize(os.path.join(d, n))
        for d, _, names in os.walk(path)
        for n in names
    }


def main_history(store) -> list[str]:
    return [snapshot.id for snapshot in store.open().ancestry(branch="main")]


def revision(seed: int):
    """A maker of periods whose values depend on ``seed``: a period written with another seed
    is a revision of it (other values, same grid)."""
    spec = DatasetSpec.model_validate(spec_dict(params={**spec_dict()["params"], "seed": seed}))
    provider = SyntheticProvider(spec)
    return lambda key: fetch_batch(spec, provider, spec.period_for_key(key))


def values(dataset: str, key: str, **where) -> np.ndarray:
    return open_dataset(dataset, **where).t2m.sel(time=key).values


@pytest.fixture
def revised(synthetic_dataset):
    """Four periods, each written three times (seeds 1, 2, 3), one commit each; release v1
    tags the first version of them all, nothing the second, main holds the third."""
    spec, store, _ = synthetic_dataset
    keys = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]
    for seed in (1, 2, 3):
        batch_for = revision(seed)
        for key in keys:
            write_period(store, batch_for(key), run_id=f"seed{seed}")
        if seed == 1:
            tag(store, "v1")
    return spec, store, keys


def test_a_release_opens_its_own_data_not_mains_later_data(revised):
    spec, store, keys = revised
    first, latest = revision(1)(keys[0]), revision(3)(keys[0])
    assert np.array_equal(values(spec.id, keys[0], tag="v1"), first.variables["t2m"], True)
    assert np.array_equal(values(spec.id, keys[0]), latest.variables["t2m"], True)
    second = tag(store, "v2", snapshot=main_history(store)[4])  # the second version's last
    assert [r.name for r in releases(store)] == ["v1", "v2"]
    assert second.snapshot == resolve(store, "v2") and "seed2" in second.message
    with pytest.raises(ReleaseError, match=r"releases are immutable"):
        tag(store, "v1")
    with pytest.raises(ReleaseError, match=r"not a valid release name"):
        tag(store, "../v3")
    with pytest.raises(ReleaseError, match=r"no release named 'v9' \(releases: v1, v2\)"):
        open_dataset(spec.id, tag="v9")
    with pytest.raises(ValueError, match="the time-series copy follows main only: open the "):
        open_dataset(spec.id, tag="v1", layout="timeseries")
    with pytest.raises(ValueError, match="names a snapshot already; give a tag or a snapshot"):
        open_dataset(spec.id, tag="v1", snapshot=resolve(store, "v1"))
    with pytest.raises(ReleaseError, match="no snapshot"):
        tag(store, "v3", snapshot="0" * 20)


def test_a_snapshot_never_published_is_tagged_only_when_forced(revised, write_spec, capsys):
    spec, store, keys = revised
    work = start_work(store, "publish", run_id="refused")
    write_period(store, revision(9)(keys[0]), run_id="refused", branch=work.branch)
    unpublished = store.open().lookup_branch(work.branch)
    with pytest.raises(ReleaseError, match=rf"never published.*work branch {work.branch} only"):
        tag(store, "v2", snapshot=unpublished)
    assert [r.name for r in releases(store)] == ["v1"]
    write_spec()
    assert cli(["tag", spec.id, "v2", "--snapshot", unpublished]) == 2
    assert "give --force to tag it anyway" in capsys.readouterr().err
    assert cli(["tag", spec.id, "v2", "--snapshot", unpublished, "--force"]) == 0
    assert resolve(store, "v2") == unpublished
    # A release's snapshot, off main's history after a rebuild say, may be tagged again.
    assert tag(store, "v2-again", snapshot=unpublished).snapshot == unpublished
    assert tag(store, "v0", snapshot=main_history(store)[-2]).name == "v0"


def test_after_maintenance_periods_verify_releases_open_and_bytes_shrink_as_reported(revised):
    spec, store, keys = revised
    tagged = values(spec.id, keys[1], tag="v1")
    before_files = files(store.path)
    history = main_history(store)
    second_version = history[4]  # neither tagged nor main's: its chunks become garbage
    second = revision(2)(keys[1]).variables["t2m"]
    assert np.array_equal(values(spec.id, keys[1], snapshot=second_version), second, True)

    report = maintain(store, RetentionPolicy(keep_last=2, grace=NO_GRACE))

    # 12 period commits, the layout's and the root: main keeps its 2 newest commits and the
    # root; the tagged ones leave main's history but stay, as releases.
    assert len(history) == 14
    assert len(main_history(store)) == 3
    assert report.expired_snapshots and set(report.expired_snapshots) <= set(history)
    assert second_version in report.expired_snapshots
    assert report.releases_kept == ["v1"]
    assert report.chunks_deleted > 0 and report.bytes_deleted > 0
    after_files = files(store.path)
    removed = before_files.keys() - after_files.keys()
    # What GC reports deleting is exactly the files gone from disk...
    assert sum(before_files[name] for name in removed) == report.bytes_deleted
    # ... and the store shrank by that, less what expiry wrote: the repository object, and
    # Icechunk's backup of the one it replaced (metadata files only).
    written = {
        name: after_files[name] - before_files.get(name, 0)
        for name in after_files
        if after_files[name] != before_files.get(name)
    }
    assert {name.split(os.sep)[0] for name in written} <= {"repo", "overwritten"}
    assert report.store_bytes_before == sum(before_files.values())
    assert report.store_bytes_after == sum(after_files.values())
    assert report.freed_bytes == report.bytes_deleted - sum(written.values())
    assert 0 <= sum(written.values()) < 20_000

    assert all(check.ok for check in verify_dataset(spec.id)), "every period verifies"
    assert np.array_equal(values(spec.id, keys[1], tag="v1"), tagged, True)
    v1 = verify_dataset(spec.id, snapshot=resolve(store, "v1"))
    assert len(v1) == len(keys) and all(check.ok for check in v1)
    # The untagged second version is gone, chunks and all: only main's newest version and the
    # tagged first one remain. Its chunk objects are its 4 records (values this small are
    # inlined in Icechunk's manifests, which went too), but for the last period's: the kept
    # commit before main's tip still holds that period's second version.
    with pytest.raises(StoreError, match="cannot open snapshot"):
        values(spec.id, keys[1], snapshot=second_version)
    chunks = {name for name in before_files if name.startswith("chunks")}
    assert len(chunks) == 3 * len(keys)  # one record a version
    assert report.chunks_deleted == len(chunks & removed) == len(keys) - 1


def test_a_dry_run_changes_nothing_and_predicts_the_real_run(revised):
    _, store, _ = revised
    policy = RetentionPolicy(keep_last=3, grace=NO_GRACE)
    before, history = files(store.path), main_history(store)

    killed = Path(store.root) / ".maintenance" / f"{store.name}.dry-run-killed"
    killed.mkdir(parents=True)  # the clone of a dry run killed a day ago
    os.utime(killed, (time.time() - 2 * 86400,) * 2)

    predicted = maintain(store, policy, dry_run=True)

    assert files(store.path) == before and main_history(store) == history
    assert not any((Path(store.root) / ".maintenance").iterdir()), "the clones are removed"
    real = maintain(store, policy)
    assert predicted.dry_run and not real.dry_run
    assert predicted.expired_snapshots == real.expired_snapshots != []
    for count in ("snapshots_deleted", "manifests_deleted", "chunks_deleted", "bytes_deleted"):
        assert getattr(predicted, count) == getattr(real, count), count
    assert predicted.store_bytes_before == real.store_bytes_before
    # The repository object expiry writes may differ by a few bytes (its timestamps).
    assert abs(predicted.store_bytes_after - real.store_bytes_after) < 100


def test_keep_last_and_keep_days(synthetic_dataset):
    spec, store, batch_for = synthetic_dataset
    for day in range(1, 4):
        write_period(store, batch_for(f"2024-01-0{day}"), run_id="old")
    middle = datetime.now(UTC)
    for day in range(4, 7):
        write_period(store, batch_for(f"2024-01-0{day}"), run_id="new")
    # 6 period commits, the layout's and the root.
    assert len(main_history(store)) == 8

    nothing = maintain(store, RetentionPolicy(keep_last=7, grace=NO_GRACE))
    assert nothing.expired_snapshots == [] and nothing.cutoff is None
    by_age = maintain(store, RetentionPolicy(keep_for=datetime.now(UTC) - middle, grace=NO_GRACE))
    kept = store.open().ancestry(branch="main")
    assert [s.written_at >= middle for s in kept] == [True, True, True, False]  # root last
    assert len(by_age.expired_snapshots) == 4  # the layout's and the 3 old periods' commits
    # Either rule keeps a snapshot: the age keeps the 3 newest whatever keep_last says.
    both = RetentionPolicy(keep_for=timedelta(days=1), keep_last=1, grace=NO_GRACE)
    assert maintain(store, both).expired_snapshots == []
    by_count = maintain(store, RetentionPolicy(keep_last=1, grace=NO_GRACE))
    assert len(by_count.expired_snapshots) == 2 and len(main_history(store)) == 2
    # A sensor whose cursor names an expired snapshot lists the store instead of diffing.
    repo = store.open()
    tip = repo.lookup_branch("main")
    assert written_between(repo, by_count.expired_snapshots[0], tip) is None
    assert len(verify_dataset(spec.id)) == 6 and all(c.ok for c in verify_dataset(spec.id))
    with pytest.raises(RetentionError, match="keep_days"):
        RetentionPolicy()
    # Named as the spec and the flags name them, in their units.
    with pytest.raises(
        RetentionError, match=r"keep_days \(--keep-days\) must not be negative, not -1$"
    ):
        RetentionPolicy.for_dataset(spec, keep_days=-1)
    with pytest.raises(RetentionError, match=r"grace_minutes \(--grace-minutes\) .* not -5$"):
        RetentionPolicy.for_dataset(spec, keep_last=1, grace_minutes=-5)


def test_expired_snapshots_kept_by_the_grace_are_explained(synthetic_dataset):
    _, store, batch_for = synthetic_dataset
    for day in range(1, 4):
        write_period(store, batch_for(f"2024-01-0{day}"), run_id="a")
    young = maintain(store, RetentionPolicy(keep_last=1))  # the default grace: an hour
    assert len(young.expired_snapshots) == 3 and young.snapshots_deleted == 0
    [note] = young.notes
    assert "3 of the 3 expired snapshots were written within the grace (60 min)" in note
    assert "--grace-minutes 0" in note
    done = maintain(store, RetentionPolicy(keep_last=1, grace=NO_GRACE))
    assert done.snapshots_deleted == 3 and not any("grace" in n for n in done.notes)


def test_live_work_keeps_its_base_and_abandoned_work_is_discarded(synthetic_dataset):
    _, store, batch_for = synthetic_dataset
    write_period(store, batch_for("2024-01-01"), run_id="a")
    live = start_work(store, "rebuild", run_id="running")
    for day in range(2, 6):
        write_period(store, batch_for(f"2024-01-0{day}"), run_id="sensor")

    report = maintain(store, RetentionPolicy(keep_last=1, grace=NO_GRACE))
    assert report.protected_branches == [live.branch]
    assert live.base in main_history(store), "the rebuild can still replay what landed since"

    later = datetime.now(UTC) + timedelta(days=8)  # the run died over a week ago
    dead = maintain(store, RetentionPolicy(keep_last=1, grace=NO_GRACE), now=later)
    assert dead.discarded_branches == [live.branch] and leftover_work(store, "rebuild") == []
    assert live.base not in main_history(store)


def test_the_command_line_tags_verifies_and_maintains(revised, write_spec, capsys):
    write_spec()  # the spec the store was written with, as the command line finds it
    spec, store, keys = revised
    assert cli(["tag", spec.id, "v3"]) == 0
    assert "v3" in capsys.readouterr().out
    assert cli(["tag", spec.id, "--list", "--json"]) == 0
    import json

    listed = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in listed["releases"]] == ["v1", "v3"]
    assert cli(["tag", spec.id, "v3"]) == 2
    assert "immutable" in capsys.readouterr().err
    assert cli(["maintain", spec.id, "--keep-last", "2", "--grace-minutes", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "would" in out
    assert cli(["maintain", spec.id, "--keep-last", "2", "--grace-minutes", "0", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["store"]["bytes_deleted"] > 0 and done["store"]["expired_snapshots"]
    assert done["timeseries"] is None  # the spec keeps no time-series copy
    assert cli(["verify", spec.id, "--tag", "v1", "--json"]) == 0
    verified = json.loads(capsys.readouterr().out)
    assert verified["verified"] == len(keys) and verified["release"] == "v1"
    assert verified["snapshot"] == resolve(store, "v1")
    assert cli(["verify", spec.id, "--tag", "v1", "--quiet"]) == 0
    # Which data was verified: the release, not main's tip.
    assert f"{spec.id} release v1 (snapshot {verified['snapshot']}): " in capsys.readouterr().out
    assert cli(["verify", spec.id, "--tag", "nope"]) == 2
    assert "no release named 'nope'" in capsys.readouterr().err
    assert cli(["maintain", spec.id]) == 2  # no policy in the spec, none given
    assert "keep_days" in capsys.readouterr().err


def test_the_maintenance_schedule_runs_its_job(write_spec, settings, materialize, instance):
    write_spec(
        retention={"keep_last": 1, "grace_minutes": 0},
        timeseries={"time_chunk": 8, "y": 4, "x": 6, "tile": 2},
    )
    write_spec("no_retention")
    write_spec(
        "weekday",
        retention={"keep_days": 1, "schedule": "0 4 * * 1-5", "default_status": "running"},
    )
    spec = load_catalog(settings).get("test_t2m")
    store = DatasetStore(settings.storage_root, "test_t2m")
    materialize("test_t2m", "2024-01-01...2024-01-03")
    update_timeseries(spec, store, run_id="copy 1")
    materialize("test_t2m", "2024-01-02")  # rewritten: its first records become garbage
    materialize("test_t2m", "2024-01-04")
    update_timeseries(spec, store, run_id="copy 2")  # the copy's second commit
    copy_history = main_history(timeseries_store(store))
    defs = build_definitions()
    schedule = defs.resolve_schedule_def("maintain_test_t2m_schedule")
    assert schedule.cron_schedule == "0 3 * * 0"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    names = {s.name for s in defs.schedules if s.job_name.startswith("maintain_")}
    assert names == {"maintain_test_t2m_schedule", "maintain_weekday_schedule"}, (
        "only datasets with a retention section"
    )
    weekday = defs.resolve_schedule_def("maintain_weekday_schedule")
    assert weekday.cron_schedule == "0 4 * * 1-5"
    assert weekday.default_status == dg.DefaultScheduleStatus.RUNNING

    result = defs.get_job_def("maintain_test_t2m").execute_in_process(instance=instance)
    assert result.success
    [observation] = [
        event.asset_observation_data.asset_observation
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.ASSET_OBSERVATION
    ]
    assert observation.asset_key == dg.AssetKey(["maintenance", "test_t2m"])
    [maintained] = [s for s in defs.resolve_all_asset_specs() if s.key == observation.asset_key]
    assert {dep.asset_key for dep in maintained.deps} == {dg.AssetKey("test_t2m")}
    metadata = observation.metadata
    assert metadata["maintenance/bytes_deleted"].value > 0
    assert metadata["maintenance/snapshots_expired"].value >= 1
    copy_report = metadata["maintenance/reports"].value[1]
    assert copy_report["repository"] == "test_t2m.timeseries"
    assert len(copy_history) == 3 and len(main_history(timeseries_store(store))) == 2
    assert copy_report["expired_snapshots"] and copy_report["bytes_deleted"] > 0
    for name, total in [
        ("bytes_deleted", metadata["maintenance/bytes_deleted"].value),
        ("chunks_deleted", metadata["maintenance/chunks_deleted"].value),
        ("expired_snapshots", metadata["maintenance/snapshots_expired"].value),
    ]:  # every number counts the store and its copy alike
        counts = [
            r[name] if isinstance(r[name], int) else len(r[name])
            for r in metadata["maintenance/reports"].value
        ]
        assert sum(counts) == total, name
    assert all(check.ok for check in verify_dataset("test_t2m"))
    assert all(check.ok for check in verify_timeseries("test_t2m"))
    # A dataset not materialized yet: its scheduled run succeeds, with nothing to observe.
    unborn = defs.get_job_def("maintain_weekday").execute_in_process(instance=instance)
    assert unborn.success
    assert not [e for e in unborn.all_events if e.event_type_value == "ASSET_OBSERVATION"]


def test_the_maintenance_job_logs_the_reports_notes(write_spec, settings, instance):
    write_spec(retention={"keep_last": 1})  # expired, but within the grace: a note says so
    spec = load_catalog(settings).get("test_t2m")
    store = DatasetStore(settings.storage_root, spec.id)
    write_period(store, revision(1)("2024-01-01"), run_id="w")
    result = (
        build_definitions().get_job_def("maintain_test_t2m").execute_in_process(instance=instance)
    )
    assert result.success
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(m.startswith("test_t2m: note: 1 of the 1 expired snapshots were") for m in messages)


def test_maintenance_beside_a_writer_loses_no_commit(synthetic_dataset):
    """Expiry and garbage collection both rewrite the repository object, under the commit
    lock, and collection spares objects younger than the grace (a writer's chunks before its
    commit): a writer committing meanwhile keeps every period. Without the lock, periods went
    missing in most runs."""
    spec, store, batch_for = synthetic_dataset
    keys = [f"2024-01-{day:02d}" for day in range(1, 13)]
    batches = [batch_for(key) for key in keys]
    maintain_beside_a_writer(store, spec, batches)


def maintain_beside_a_writer(store, spec, batches) -> None:
    """Maintain ``store`` again and again (keeping the last snapshot) while a thread writes
    ``batches`` one commit each; then every period must verify."""
    keys = [batch.period.key for batch in batches]
    write_period(store, batches[0], run_id="first")
    failures = []

    def write_rest():
        try:
            for batch in batches[1:]:
                write_period(store, batch, run_id="writer")
        except Exception as err:  # reported below: a thread's exception is otherwise lost
            failures.append(err)

    writer = threading.Thread(target=write_rest)
    writer.start()
    expired = 0
    while writer.is_alive():
        expired += len(maintain(store, RetentionPolicy(keep_last=1)).expired_snapshots)
    writer.join()
    expired += len(maintain(store, RetentionPolicy(keep_last=1)).expired_snapshots)
    assert not failures and expired > 0
    checks = verify_dataset(spec.id)
    assert [check.period for check in checks] == keys and all(check.ok for check in checks)


def test_a_rebuild_just_started_from_an_old_main_is_not_abandoned(synthetic_dataset):
    """The branch's tip is main's old tip; its creation, in Icechunk's operations log, is new."""
    _, store, batch_for = synthetic_dataset
    write_period(store, batch_for("2024-01-01"), run_id="long ago")
    time.sleep(1.0)  # main's tip is now a second old: "long ago" for the policy below
    work = start_work(store, "rebuild", run_id="just started")
    policy = RetentionPolicy(keep_last=1, abandoned_after=timedelta(seconds=0.5))
    assert maintain(store, policy).discarded_branches == []
    assert leftover_work(store, "rebuild") == [work.branch]
    a_day_later = datetime.now(UTC) + timedelta(days=1)
    assert maintain(store, policy, now=a_day_later).discarded_branches == [work.branch]

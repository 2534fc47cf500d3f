"""Work branches: writing off `main`, publishing by compare-and-set, replaying what landed on
`main` meanwhile, and copying periods between snapshots (absence included)."""

import pytest

from ref_assets.annotations import annotate
from ref_assets.store import reader as store_reader
from ref_assets.store.branches import (
    PublishError,
    copy_periods,
    discard,
    leftover_work,
    publish,
    start_work,
)
from ref_assets.store.writer import PeriodWriter, write_period
from ref_assets_tests.conftest import stored_checksum


@pytest.fixture
def setup(synthetic_dataset):
    """A store holding 2024-01-01, and a batch maker."""
    spec, store, batch_for = synthetic_dataset
    write_period(store, batch_for("2024-01-01"), run_id="first")
    return spec, store, batch_for


def written_keys(store, snapshot=None) -> list[str]:
    session = store_reader.session_for(store, snapshot)
    axis = store_reader.store_axis(session)
    return [axis.period_at(i).key for i in store_reader.written_indices(session)]


def write_on(store, branch, *batches) -> None:
    writer = PeriodWriter(store, run_id="work", branch=branch)
    for batch in batches:
        writer.add(batch)
    writer.flush()


def test_work_on_a_branch_is_invisible_on_main_until_published(setup):
    _, store, batch_for = setup
    work = start_work(store, "publish", run_id="run 1")
    assert work.branch == "publish.run-1"
    write_on(store, work.branch, batch_for("2024-01-02"))
    assert written_keys(store) == ["2024-01-01"]

    def never(moved):
        raise AssertionError(f"main did not move, yet replay was asked for {moved}")

    published = publish(work, replay=never)
    assert written_keys(store) == ["2024-01-01", "2024-01-02"]
    assert store.open().lookup_branch("main") == published.snapshot
    assert published.replayed == [] and leftover_work(store, "publish") == []


def test_what_landed_on_main_meanwhile_is_replayed_then_published(setup):
    spec, store, batch_for = setup
    work = start_work(store, "rebuild", run_id="r")
    write_on(store, work.branch, batch_for("2024-01-02"))
    update = batch_for("2024-01-03")
    write_period(store, update, run_id="sensor")  # lands on main during the work

    def replay(moved):
        copy_periods(
            store,
            spec,
            moved.periods,
            source_snapshot=moved.tip,
            branch=work.branch,
            message="replay",
        )

    published = publish(work, replay=replay)
    assert [m.periods.tolist() for m in published.replayed] == [[update.time_index]]
    assert published.replayed_periods == 1 and not published.replayed[0].annotations_changed
    assert written_keys(store) == ["2024-01-01", "2024-01-02", "2024-01-03"]
    session = store_reader.session_for(store)
    axis = store_reader.store_axis(session)
    assert stored_checksum(session, axis, update.time_index) == update.checksum
    [record] = store_reader.read_records(session, [update.time_index]).values()
    assert record["run_id"] == "sensor"  # copied as written, provenance included


def test_copying_from_an_earlier_snapshot_restores_absence(setup):
    spec, store, batch_for = setup
    work = start_work(store, "publish", run_id="r")
    bad = batch_for("2024-01-04")
    write_on(store, work.branch, bad, batch_for("2024-01-05"))
    branch_tip = store.open().lookup_branch(work.branch)
    assert written_keys(store, branch_tip) == ["2024-01-01", "2024-01-04", "2024-01-05"]
    copy_periods(
        store,
        spec,
        [bad.time_index],
        source_snapshot=work.base,
        branch=work.branch,
        message="take back 2024-01-04",
    )
    assert written_keys(store, store.open().lookup_branch(work.branch)) == [
        "2024-01-01",
        "2024-01-05",
    ]


def test_a_main_that_was_reset_elsewhere_is_not_overwritten(setup):
    _, store, batch_for = setup
    first = store.open().lookup_branch("main")
    write_period(store, batch_for("2024-01-02"), run_id="second")
    work = start_work(store, "rebuild", run_id="r")
    write_on(store, work.branch, batch_for("2024-01-03"))
    store.open().reset_branch("main", first)  # someone rolled main back behind the work's base
    with pytest.raises(PublishError, match="no longer descends"):
        publish(work, replay=lambda moved: None)
    assert store.open().lookup_branch("main") == first
    assert leftover_work(store, "rebuild") == [work.branch]
    discard(store, work.branch)
    assert leftover_work(store, "rebuild") == []


def test_publishing_gives_up_when_main_keeps_moving(setup):
    _, store, batch_for = setup
    work = start_work(store, "publish", run_id="r")
    days = iter(f"2024-01-{day:02d}" for day in range(2, 9))

    def land_another(moved):  # each replay is overtaken by yet another update
        write_period(store, batch_for(next(days)), run_id="sensor")

    write_period(store, batch_for(next(days)), run_id="sensor")
    with pytest.raises(PublishError, match="kept moving"):
        publish(work, replay=land_another, max_attempts=3)
    assert written_keys(store)[-1] == "2024-01-05"  # main holds the updates, not the work
    assert leftover_work(store, "publish") == [work.branch]


def test_an_annotation_landing_on_main_is_reported_to_the_replay(setup, settings):
    _, store, _ = setup
    work = start_work(store, "rebuild", run_id="r")
    annotate(store.dataset_id, "t2m", label="Air temperature", settings=settings)
    seen = []
    publish(work, replay=seen.append)
    [moved] = seen
    assert moved.annotations_changed and moved.periods.tolist() == []

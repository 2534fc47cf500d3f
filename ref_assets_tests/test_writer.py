"""The writer's commit path: periods of one commit in any order, and real conflicts (retried from
the new tip, or given up cleanly)."""

import asyncio
import gc
import warnings

import icechunk as ic
import pytest
import zarr
from zarr.core.sync import sync

from ref_assets.store import reader as store_reader
from ref_assets.store import writer as store_writer
from ref_assets.store.commits import MAX_COMMIT_ATTEMPTS
from ref_assets.store.layout import RECORDS_PATH
from ref_assets.store.repository import DatasetStore, StoreError
from ref_assets.store.writer import (
    CommitPolicy,
    PeriodWriter,
    _gather_bounded,
    write_period,
)
from ref_assets_tests.conftest import stored_checksum


@pytest.fixture
def setup(synthetic_dataset):
    """A store holding 2024-01-01, and a batch maker."""
    _, store, batch_for = synthetic_dataset
    write_period(store, batch_for("2024-01-01"), run_id="first")
    return store, batch_for


def compete_before_commits(monkeypatch, store: DatasetStore, index: int, times: int) -> list:
    """Before each of our next ``times`` commits, another writer commits the same period."""
    real_commit = ic.Session.commit
    competing = []

    def commit(self, message, *args, **kwargs):
        if len(competing) < times and "competitor" not in message:
            other = store.open().writable_session("main")
            zarr.open_group(other.store, mode="r+")[RECORDS_PATH][index] = '{"competitor": 1}'
            competing.append(real_commit(other, "competitor"))
        return real_commit(self, message, *args, **kwargs)

    monkeypatch.setattr(ic.Session, "commit", commit)
    return competing


def test_a_conflicting_commit_is_retried_and_the_later_writer_wins(setup, monkeypatch):
    store, batch_for = setup
    batch = batch_for("2024-01-02")
    competing = compete_before_commits(monkeypatch, store, batch.time_index, times=2)
    receipt = write_period(store, batch, run_id="ours")
    assert receipt.attempts == 3 and len(competing) == 2
    session = store_reader.session_for(store)
    [record] = store_reader.read_records(session, [batch.time_index]).values()
    assert record["run_id"] == "ours"
    axis = store_reader.store_axis(session)
    assert stored_checksum(session, axis, batch.time_index) == batch.checksum


def test_commits_beaten_by_other_periods_are_replayed_without_writing_again(setup, monkeypatch):
    """Other writers commit other periods before each of our first three commits: our session
    is replayed on each new tip (Icechunk's rebase) and committed, and our values are written
    only once."""
    store, batch_for = setup
    ours = batch_for("2024-01-02")
    theirs = [batch_for(key) for key in ("2024-01-03", "2024-01-04", "2024-01-05")]
    real_commit, real_write = ic.Session.commit, store_writer._write_periods
    writes, competing = [], []

    def commit(self, message, *args, **kwargs):
        if len(competing) < len(theirs) and "run ours" in message:
            # Committed as a writer in another process would (we hold the commit lock here).
            other = store.open().writable_session("main")
            sync(real_write(other, [theirs[len(competing)]], "theirs"))
            competing.append(real_commit(other, "theirs"))
        return real_commit(self, message, *args, **kwargs)

    async def write(session, batches, run_id):
        writes.append(run_id)
        return await real_write(session, batches, run_id)

    monkeypatch.setattr(ic.Session, "commit", commit)
    monkeypatch.setattr(store_writer, "_write_periods", write)
    receipt = write_period(store, ours, run_id="ours")
    assert writes.count("ours") == 1 and receipt.attempts == 4
    session = store_reader.session_for(store)
    assert session.snapshot_id == receipt.snapshot_id
    indices = [batch.time_index for batch in (ours, *theirs)]
    records = store_reader.read_records(session, indices)
    assert [records[i]["run_id"] for i in indices] == ["ours", "theirs", "theirs", "theirs"]
    axis = store_reader.store_axis(session)
    for batch in (ours, *theirs):
        assert stored_checksum(session, axis, batch.time_index) == batch.checksum


def test_endless_conflicts_give_up_with_nothing_of_ours_written(setup, monkeypatch):
    store, batch_for = setup
    batch = batch_for("2024-01-03")
    compete_before_commits(monkeypatch, store, batch.time_index, times=MAX_COMMIT_ATTEMPTS)
    with pytest.raises(StoreError, match="test_t2m period 2024-01-03: gave up after 8"):
        write_period(store, batch, run_id="ours")
    session = store_reader.session_for(store)
    [record] = store_reader.read_records(session, [batch.time_index]).values()
    assert record == {"competitor": 1}  # the competitor's commit, none of ours
    assert bool(store_reader.open_store_dataset(session).t2m.isel(time=2).isnull().all())


def test_one_commit_holds_periods_in_any_order_with_gaps_and_a_repeat(setup):
    store, batch_for = setup  # 2024-01-01 stored by an earlier run
    keys = ["2024-01-05", "2024-01-02", "2024-01-01", "2024-01-03", "2024-01-05"]
    writer = PeriodWriter(store, run_id="shuffled", policy=CommitPolicy(every=len(keys)))
    receipts = [receipt for key in keys for receipt in writer.add(batch_for(key))]
    assert [r.period_key for r in receipts] == keys
    assert len({r.snapshot_id for r in receipts}) == 1
    session = store_reader.session_for(store)
    axis = store_reader.store_axis(session)
    assert sorted(store_reader.written_indices(session)) == [0, 1, 2, 4]
    records = store_reader.read_records(session, [0, 1, 2, 4])
    for receipt in receipts:
        assert stored_checksum(session, axis, receipt.time_index) == receipt.record.checksum
        assert records[receipt.time_index]["run_id"] == "shuffled"
        assert receipt.bytes_written > 0
    first_write, repeat, rewrite = receipts[0], receipts[-1], receipts[2]
    assert first_write.record.previous is None
    # The repeat replaced the version written just before it in the same commit, and the
    # period stored by the earlier run keeps that version as its previous.
    assert repeat.record.previous.checksum == first_write.record.checksum
    assert rewrite.record.previous.checksum == rewrite.record.checksum
    assert records[4]["previous"]["checksum"] == first_write.record.checksum


def test_writes_cancelled_before_their_turn_are_closed_not_left_unawaited():
    # Another write failing cancels the rest; those never started must not linger as
    # never-awaited coroutines (a RuntimeWarning at garbage collection).
    async def failing_write():
        raise OSError("No space left on device")

    async def write():
        await asyncio.sleep(0.01)

    async def commit():
        with zarr.config.set({"async.concurrency": 1}):
            async with asyncio.TaskGroup() as both:
                both.create_task(_gather_bounded([write(), write(), write()]))
                both.create_task(failing_write())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ExceptionGroup):
            asyncio.run(commit())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]

"""Group commits (`store.commits.commit_in_turn`): writers that wait for the commit turn leave
their sessions to the next holder, who commits them with its own in one commit; a session whose
writer is gone, or that cannot replay on the tip, is not carried."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from zarr.core.sync import sync

from ref_assets.store import reader as store_reader
from ref_assets.store import writer as store_writer
from ref_assets.store.commits import _enqueue, _queue_dir, commit_in_turn
from ref_assets.store.writer import write_period
from ref_assets_tests.conftest import stored_checksum


@pytest.fixture
def stored(synthetic_dataset):
    _, store, batch_for = synthetic_dataset
    write_period(store, batch_for("2024-01-01"), run_id="first")
    return store, batch_for


def commits_on_main(store) -> int:
    return len(list(store.open().ancestry(branch="main")))


def queued(store) -> list:
    return sorted(_queue_dir(store, "main").glob("*"))


def wait_for(condition, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def writing(store, batch, run_id: str, receipts: dict) -> threading.Thread:
    def write() -> None:
        receipts[run_id] = write_period(store, batch, run_id=run_id)

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_writers_waiting_for_the_turn_land_in_one_commit(stored):
    store, batch_for = stored
    before = commits_on_main(store)
    batches = {f"w{i}": batch_for(f"2024-01-0{i + 2}") for i in range(3)}
    receipts: dict = {}
    with store.commit_turn(run_id="holder"):
        threads = [writing(store, batch, name, receipts) for name, batch in batches.items()]
        wait_for(lambda: len(queued(store)) == 3, "three queued sessions")
    for thread in threads:
        thread.join(60)

    assert len({receipt.snapshot_id for receipt in receipts.values()}) == 1
    assert commits_on_main(store) == before + 1
    session = store_reader.session_for(store)
    assert session.snapshot_id == receipts["w0"].snapshot_id
    assert (
        "+ 2 periods of 2 other writes (grouped)"
        in next(store.open().ancestry(branch="main")).message
    )
    axis = store_reader.store_axis(session)
    records = store_reader.read_records(session, [b.time_index for b in batches.values()])
    for name, batch in batches.items():
        assert records[batch.time_index]["run_id"] == name
        assert stored_checksum(session, axis, batch.time_index) == batch.checksum
    assert queued(store) == []  # every ticket and mark taken back


def test_a_session_left_by_a_writer_that_died_is_not_committed(stored):
    store, batch_for = stored
    orphan = batch_for("2024-01-02")
    session = store.open().writable_session("main")
    sync(store_writer._write_periods(session, [orphan], "died"))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    ticket = _enqueue(_queue_dir(store, "main"), session, 1)
    ticket.path.rename(ticket.path.with_name(f"{dead.stdout.strip()}-x-1.session"))

    # A writer that holds the turn carries only living writers' sessions.
    live = store.open().writable_session("main")
    sync(store_writer._write_periods(live, [batch_for("2024-01-03")], "live"))
    commit = commit_in_turn(store, store.open(), live, "live", periods=1, run_id="live")

    assert commit.grouped == 0 and queued(store) == []
    written = store_reader.written_indices(store_reader.session_for(store))
    assert orphan.time_index not in written
    assert batch_for("2024-01-03").time_index in written


def test_a_queued_session_that_cannot_replay_is_left_to_its_writer(stored):
    """While a writer waits, another commits the same period: the waiting session is not
    carried by the next holder (its replay is refused), and its writer writes again."""
    store, batch_for = stored
    contested, other = batch_for("2024-01-02"), batch_for("2024-01-03")
    receipts: dict = {}
    with store.commit_turn(run_id="holder"):
        waiting = writing(store, contested, "waiting", receipts)
        wait_for(lambda: len(queued(store)) == 1, "the waiting writer's session")
        meanwhile = store.open().writable_session("main")
        sync(store_writer._write_periods(meanwhile, [batch_for("2024-01-02")], "meanwhile"))
        meanwhile.commit("meanwhile")
        later = writing(store, other, "later", receipts)
        wait_for(lambda: len(queued(store)) == 2, "the later writer's session")
    waiting.join(60)
    later.join(60)

    assert receipts["waiting"].snapshot_id != receipts["later"].snapshot_id
    session = store_reader.session_for(store)
    records = store_reader.read_records(session, [contested.time_index, other.time_index])
    assert records[contested.time_index]["run_id"] == "waiting"  # written again, last
    assert records[contested.time_index]["previous"] is not None
    assert records[other.time_index]["run_id"] == "later"
    axis = store_reader.store_axis(session)
    for batch in (contested, other):
        assert stored_checksum(session, axis, batch.time_index) == batch.checksum


def test_a_queued_session_the_holder_cannot_read_is_left_and_the_holder_commits(stored):
    """A queued session that does not deserialize or replay here (a damaged file, or another
    server's store of the same name) never fails the holder's own commit."""
    store, batch_for = stored
    queue = _queue_dir(store, "main")
    queue.mkdir(parents=True, exist_ok=True)
    damaged = queue / f"{os.getpid()}-damaged-1.session"  # a living writer's
    damaged.write_bytes(b"not a session")
    session = store.open().writable_session("main")
    sync(store_writer._write_periods(session, [batch_for("2024-01-02")], "holder"))

    commit = commit_in_turn(store, store.open(), session, "holder", periods=1, run_id="holder")

    assert commit.grouped == 0 and damaged.exists()  # left to its writer
    assert store_reader.session_for(store).snapshot_id == commit.snapshot_id

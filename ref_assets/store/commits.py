"""Commits: replaying a beaten commit on the new tip, and group commits in one machine's turn.

`commit_rebasing` commits a session; while other writers commit first, it replays the session
on the new tip (Icechunk's rebase) and commits again, with bounded, jittered back-off.

`commit_in_turn` is how period writers commit. Writers take turns to commit
(`DatasetStore.commit_turn`). A writer that finds the turn taken leaves its session in the
store's queue on this machine (Icechunk's serialized session: the changes and the snapshot they
were made on; the values are already stored, and no credential is in it) and waits. Whoever
takes the turn next replays each queued session on the tip (with Icechunk's conflict checks),
merges those that replay into its own session, commits once and marks them done with its
snapshot. A writer that then gets the turn and finds its session done has landed; one not done
(its replay was refused, or the holder died before marking it) commits itself, exactly as it
would have alone.

>>> commit = commit_in_turn(  # doctest: +SKIP
...     store, repo, session, "era5 2024-01-01", periods=1, run_id="abc"
... )
>>> commit.snapshot_id, commit.grouped  # doctest: +SKIP
('1CECHNKREP0F1RSTCMT0', 3)

Measured with 8 processes writing one S3 store, one commit per period: benchmarks/s3_storage.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import icechunk as ic
from icechunk._icechunk_python import PySession

from ref_assets.store.repository import DatasetStore

logger = logging.getLogger(__name__)

# Commit tries of one write (replayed on the new tip between them), and writes of one set of
# periods: a conflict that survives this many is other writers rewriting the same periods.
MAX_COMMIT_ATTEMPTS = 8

# Sessions queued longer than this are dropped: their writer is stuck or gone (one that comes
# back finds its session not done and commits it itself).
STALE_SECONDS = 600.0


@dataclass(frozen=True)
class Commit:
    """A commit that landed: its snapshot, how many times it was tried, and how many other
    writers' sessions it carried (`commit_in_turn`)."""

    snapshot_id: str
    attempts: int
    grouped: int = 0


@dataclass(frozen=True)
class _Ticket:
    """A session queued for the next holder of the turn."""

    path: Path

    @property
    def done_path(self) -> Path:
        return self.path.with_suffix(".done")

    @property
    def pid(self) -> int:
        return int(self.path.stem.split("-")[0])

    @property
    def periods(self) -> int:
        return int(self.path.stem.split("-")[2])

    def landed(self) -> str | None:
        """The snapshot that carried this session, if one did."""
        try:
            return self.done_path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def withdraw(self) -> None:
        for path in (self.path, self.done_path):
            path.unlink(missing_ok=True)


def commit_rebasing(session: ic.Session, message: str) -> Commit:
    """Commit; while other writers commit first, replay this session's changes on the new tip
    and commit again: immediately the first time, then after a bounded, jittered back-off, at
    most ``MAX_COMMIT_ATTEMPTS`` tries in all (then `ic.ConflictError`). The values written are
    never written again: only Icechunk's snapshot is, which is what lets many writers of one S3
    store keep their aggregate rate (rewriting from the new tip on each conflict, as before,
    measured 0.27x one writer's rate with 8 writers; see benchmarks/s3_storage.py). A replay
    that cannot be done (another writer wrote the same chunks, grew the time axis or replaced
    the arrays) raises `ic.RebaseFailedError`: the caller writes again from the new tip.

    A plain first attempt keeps uncontended commits cheap: committing with ``rebase_with``
    every time measured 6.0 -> 9.2 ms per commit over 1,200 commits, against 5.6 -> 7.1 ms.

    The message is the commit's whole summary, with no commit metadata: Icechunk 2 keeps every
    commit's message and metadata in its repository object and decodes and re-encodes all of
    them on each commit, item by item; five metadata items a commit made the commit cost grow
    3.5 times as fast with history as none (measured over 2,000 commits)."""
    for attempt in range(1, MAX_COMMIT_ATTEMPTS):
        try:
            return Commit(session.commit(message), attempt)
        except ic.ConflictError:
            if attempt > 1:
                back_off(attempt)
            _replay(session, attempt)
    return Commit(session.commit(message), MAX_COMMIT_ATTEMPTS)


def _replay(session: ic.Session, attempt: int) -> None:
    """Replay ``session``'s changes on its branch's tip, after ``attempt`` commits."""
    try:
        session.rebase(ic.ConflictDetector())
    except ic.RebaseFailedError as refused:
        refused.commit_attempts = attempt  # for the caller's count
        raise


def back_off(attempt: int) -> None:
    """Sleep before retry ``attempt`` (from 2): bounded and jittered, so racing writers stop
    colliding in step."""
    time.sleep(random.uniform(0, min(0.05 * 2**attempt, 2.0)))


def commit_in_turn(
    store: DatasetStore,
    repo: ic.Repository,
    session: ic.Session,
    message: str,
    *,
    periods: int,
    run_id: str,
    branch: str = "main",
) -> Commit:
    """Commit ``session`` (``periods`` periods on ``branch`` of ``repo``, the repository of
    ``store``) in this machine's turn, with the sessions of the writers waiting for it; or
    learn that a holder of the turn committed it already. A grouped commit's message ends with
    what it carried: "+ 5 periods of 3 other writes (grouped)".

    Raises like `store.writer.commit_rebasing` (`ic.RebaseFailedError`: write again from the
    new tip)."""
    queue = _queue_dir(store, branch)
    ticket = None
    with contextlib.ExitStack() as turn:
        others_first = turn.enter_context(store.commit_turn(run_id=run_id, wait=False))
        if others_first is None:  # taken: queue this session, then wait for the turn
            ticket = _enqueue(queue, session, periods)
            others_first = turn.enter_context(store.commit_turn(run_id=run_id))
            snapshot = ticket.landed()
            ticket.withdraw()
            if snapshot is not None:
                return Commit(snapshot, 1)
        tip = repo.lookup_branch(branch) if others_first else session.snapshot_id
        if session.snapshot_id != tip:
            # Others committed while this session was written: replay it on the tip first,
            # sparing a commit bound to fail.
            _replay(session, attempt=0)
        carried = _carry_queued(queue, session, tip)
        if carried:
            carried_periods = sum(other.periods for other in carried)
            message = (
                f"{message} + {carried_periods} periods of {len(carried)} other writes (grouped)"
            )
        commit = commit_rebasing(session, message)
        for other in carried:
            _mark_done(other, commit.snapshot_id)
        return Commit(commit.snapshot_id, commit.attempts, grouped=len(carried))


def _queue_dir(store: DatasetStore, branch: str) -> Path:
    return store.lock_path.with_name(f"{store.name}.queue") / quote(branch, safe="")


def _enqueue(queue: Path, session: ic.Session, periods: int) -> _Ticket:
    """Write the serialized session where the next holder looks, whole or not at all."""
    queue.mkdir(parents=True, exist_ok=True)
    ticket = _Ticket(queue / f"{os.getpid()}-{uuid.uuid4().hex}-{periods}.session")
    partial = ticket.path.with_suffix(".partial")
    partial.write_bytes(session._session.as_bytes())  # what Session.fork() pickles, unforked
    partial.rename(ticket.path)
    return ticket


def _carry_queued(queue: Path, session: ic.Session, tip: str) -> list[_Ticket]:
    """Merge into ``session`` (on ``tip``) every queued session that replays on it; return
    their tickets. Sessions whose writer is gone are dropped: their runs failed, so their periods
    must not land unreported."""
    carried = []
    for path in sorted(queue.glob("*.session")) if queue.is_dir() else []:
        ticket = _Ticket(path)
        if not _alive(ticket.pid) or _age(path) > STALE_SECONDS:
            logger.info("%s: dropping a queued session whose writer is gone", path.name)
            ticket.withdraw()
            continue
        try:
            queued = ic.Session(PySession.from_bytes(path.read_bytes()))
            if queued.snapshot_id != tip:
                queued.rebase(ic.ConflictDetector())
        except FileNotFoundError:
            continue  # its writer took it back
        except (ic.IcechunkError, ValueError) as err:
            # Refused (its periods were rewritten meanwhile) or unreadable here: its writer,
            # which gets the turn later, commits it itself or writes again. Never ours to fail.
            logger.info("%s: not grouped, left to its writer (%s)", path.name, err)
            continue
        session.merge(queued)
        carried.append(ticket)
    for done in queue.glob("*.done") if queue.is_dir() else []:
        if not _alive(_Ticket(done).pid):  # carried, but its writer died before learning so
            done.unlink(missing_ok=True)
    return carried


def _mark_done(ticket: _Ticket, snapshot_id: str) -> None:
    partial = ticket.done_path.with_suffix(".partial-done")
    partial.write_text(snapshot_id)
    partial.rename(ticket.done_path)
    ticket.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process, alive
    return True


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0

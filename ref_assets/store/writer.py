"""Writing periods: each a region write at its own index plus its record, committed together.

>>> receipt = write_period(DatasetStore(root, spec.id), batch, run_id="manual")  # doctest: +SKIP
>>> receipt.snapshot_id  # doctest: +SKIP
'1CECHNKREP0F1RSTCMT0'

Re-writing a period replaces exactly its chunks. `PeriodWriter` writes many periods with batched
commits (see `CommitPolicy`); `observing_commits` lets a caller that does not build the writer
(the command line, around a Dagster run) hear of each commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import icechunk as ic
import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.core.sync import sync

from ref_assets.batch import PeriodBatch
from ref_assets.preview import Preview
from ref_assets.provenance import (
    PreviousVersion,
    ProvenanceRecord,
    RecordFormatError,
    build_record,
)
from ref_assets.specs import DatasetSpec
from ref_assets.store.commits import MAX_COMMIT_ATTEMPTS, back_off, commit_in_turn
from ref_assets.store.layout import (
    RECORDS_PATH,
    axis_length,
    capacity_for,
    check_structure,
    create_layout,
    grow_time_axis,
    has_layout,
    open_laid_out_root,
)
from ref_assets.store.repository import DatasetStore, StoreError

logger = logging.getLogger(__name__)

# Consecutive periods are stacked into one region write up to this size: a bounded copy, for
# far fewer (and concurrent) zarr calls.
STACKED_BYTES = 64 * 2**20

# Chunks per codec batch in the writer's arrays (zarr's default is 1). Measured on 365 periods:
# writing their records 0.38 -> 0.19 s CPU, reading the records they replace 0.20 -> 0.12 s.
CODEC_BATCH_SIZE = 32


@dataclass(frozen=True)
class WriteReceipt:
    """What a period write produced."""

    period_key: str
    snapshot_id: str
    time_index: int
    bytes_written: int
    record: ProvenanceRecord
    attempts: int
    preview: Preview | None = None  # drawn from the batch, so nothing is read back
    preview_problem: str | None = None


CommitObserver = Callable[[list[WriteReceipt]], None]

# Observers of every commit made in this context, besides each writer's own ``on_commit``.
_commit_observers: ContextVar[tuple[CommitObserver, ...]] = ContextVar(
    "commit_observers", default=()
)


@contextlib.contextmanager
def observing_commits(observer: CommitObserver) -> Iterator[None]:
    """Call ``observer(receipts)`` after each commit of any `PeriodWriter` in this context (this
    thread, and asyncio tasks started from it) until the block ends."""
    token = _commit_observers.set((*_commit_observers.get(), observer))
    try:
        yield
    finally:
        _commit_observers.reset(token)


@dataclass(frozen=True)
class CommitPolicy:
    """When a writer of many periods commits: every ``every`` periods or ``seconds`` after the
    oldest uncommitted one, whichever comes first. Per-period commits cost about 20 ms each;
    batching them is what makes long backfills fast."""

    every: int = 32
    seconds: float = 30.0


class PeriodWriter:
    """Writes periods into one dataset's store, committing them in batches.

    >>> writer = PeriodWriter(store, run_id="manual")  # doctest: +SKIP
    >>> for batch in batches:  # doctest: +SKIP
    ...     writer.add(batch)
    >>> receipts = writer.flush()  # doctest: +SKIP

    Each period's variables and its record go into the same commit, so a reader, or a crash at
    any instant, sees the period whole or not at all; periods not yet committed when the process
    dies are simply absent. Memory holds at most ``policy.every`` periods.
    """

    def __init__(
        self,
        store: DatasetStore,
        *,
        run_id: str,
        policy: CommitPolicy | None = None,
        on_commit: Callable[[list[WriteReceipt]], None] | None = None,
        branch: str = "main",
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.branch = branch
        self.policy = policy or CommitPolicy(every=1)
        self.on_commit = on_commit
        self._repo: ic.Repository | None = None
        self._capacity = 0
        self._pending: list[PeriodBatch] = []
        self._oldest_pending = 0.0

    def add(self, batch: PeriodBatch) -> list[WriteReceipt]:
        """Queue ``batch`` for the next commit; return the receipts of any commit this caused."""
        receipts = []
        with self._storage("writing", batch):
            if self._repo is None:
                self._repo = self.store.open_or_create(
                    batch.spec.manifest_split, run_id=self.run_id
                )
            if batch.time_index >= self._capacity:
                # Growing the axis is its own commit; uncommitted writes would conflict with it.
                receipts += self.flush()
                self._capacity = ensure_capacity(
                    self.store, self._repo, batch, run_id=self.run_id, branch=self.branch
                )
        if not self._pending:
            self._oldest_pending = time.monotonic()
        self._pending.append(batch)
        due = time.monotonic() - self._oldest_pending >= self.policy.seconds
        if len(self._pending) >= self.policy.every or due:
            receipts += self.flush()
        return receipts

    def flush(self) -> list[WriteReceipt]:
        """Write every pending period and commit them together (rewriting them from the new
        tip on conflict)."""
        if not self._pending:
            return []
        batches = self._pending
        spec = batches[0].spec
        first, last = batches[0].period.key, batches[-1].period.key
        if len(batches) == 1:
            message = f"{spec.id} {first} (run {self.run_id})"
        else:
            message = f"{spec.id} {first}..{last} ({len(batches)} periods, run {self.run_id})"
        commits = 0  # commit attempts, over every write of these periods
        for write in range(1, MAX_COMMIT_ATTEMPTS + 1):
            try:
                with self._storage("committing"):
                    if write > 1:
                        back_off(write)
                    session = self._repo.writable_session(self.branch)
                    if write > 1:
                        # The branch may have been rebuilt meanwhile (`store.branches.publish`):
                        # never write these periods into a layout their spec does not fit.
                        _capacity(session, batches[0])
                    written = sync(_write_periods(session, batches, self.run_id))
                    commit = commit_in_turn(
                        self.store,
                        self._repo,
                        session,
                        message,
                        periods=len(batches),
                        run_id=self.run_id,
                        branch=self.branch,
                    )
            except ic.ConflictError as err:
                commits += getattr(err, "commit_attempts", MAX_COMMIT_ATTEMPTS)
                logger.info("%s: write %d did not land (%s); writing again", message, write, err)
                continue
            commits += commit.attempts
            receipts = [
                WriteReceipt(
                    batch.period.key,
                    commit.snapshot_id,
                    batch.time_index,
                    size,
                    record,
                    commits,
                    batch.preview,
                    batch.preview_problem,
                )
                for batch, (record, size) in zip(batches, written, strict=True)
            ]
            self._pending = []
            if self.on_commit:
                self.on_commit(receipts)
            for observer in _commit_observers.get():
                observer(receipts)
            return receipts
        self._pending = []
        which = f"period {first}" if len(batches) == 1 else f"periods {first}..{last}"
        raise StoreError(
            f"{spec.id} {which}: gave up after {commits} conflicting commit attempts "
            "(other writers kept rewriting these periods or growing the time axis). Nothing was "
            "written; run the partitions again."
        )

    @contextlib.contextmanager
    def _storage(self, doing: str, batch: PeriodBatch | None = None) -> Iterator[None]:
        """Name the periods at stake in a storage failure, and drop the uncommitted ones: a
        session that failed halfway through a period must never be committed."""
        try:
            with self.store.reporting(lambda: f"{doing} {self._at_stake(batch)}"):
                yield
        except StoreError:
            self._pending = []
            raise

    def _at_stake(self, batch: PeriodBatch | None) -> str:
        """The uncommitted periods: those pending, and ``batch`` (being written)."""
        keys = [pending.period.key for pending in self._pending]
        keys += [batch.period.key] if batch is not None else []
        if len(keys) == 1:
            return f"period {keys[0]}"
        return f"periods {keys[0]}..{keys[-1]} ({len(keys)}, uncommitted)"


def write_period(
    store: DatasetStore, batch: PeriodBatch, *, run_id: str, branch: str = "main"
) -> WriteReceipt:
    """Write one period and commit it on its own (on ``branch``)."""
    writer = PeriodWriter(store, run_id=run_id, branch=branch)
    [receipt] = writer.add(batch)
    return receipt


def ensure_capacity(
    store: DatasetStore,
    repo: ic.Repository,
    batch: PeriodBatch,
    *,
    run_id: str | None = None,
    branch: str = "main",
) -> int:
    """Create the layout, or grow the time axis, so that the batch's index exists; return the
    axis length.

    Checked first without the lock (the common case: nothing to do); changed under the lock in
    its own commit, so the change is serialized with every other writer's. On S3 (no lock) a
    writer that lost the race to another's growth sees its commit refused and looks again.
    """
    length = _capacity(repo.readonly_session(branch=branch), batch)
    if length > batch.time_index:
        return length
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        if attempt > 1:
            back_off(attempt)
        with store.lock(run_id=run_id):
            session = repo.writable_session(branch)
            group = zarr.open_group(session.store, mode="a")
            needed = capacity_for(batch.spec, batch.time_index)
            if not has_layout(group):
                create_layout(group, batch.spec, batch.description, needed)
                message = f"{batch.spec.id}: create layout ({needed} periods)"
            else:
                check_structure(group, batch.spec, batch.description)
                if axis_length(group) > batch.time_index:
                    return axis_length(group)  # another writer grew it while we waited
                grow_time_axis(group, batch.spec, needed)
                message = f"{batch.spec.id}: grow time axis to {needed} periods"
            try:
                session.commit(message)
            except ic.ConflictError:
                logger.info("%s: another writer changed the layout first; looking again", message)
                continue
        logger.info(message)
        return needed
    raise StoreError(
        f"{batch.spec.id} period {batch.period.key}: gave up laying out the time axis after "
        f"{MAX_COMMIT_ATTEMPTS} conflicting attempts (other writers kept committing); nothing "
        "was written, run the partitions again."
    )


def _capacity(session: ic.Session, batch: PeriodBatch) -> int:
    """The axis length of the store (0 before its layout exists), checked against the spec."""
    group = open_laid_out_root(session.store)
    if group is None:
        return 0
    check_structure(group, batch.spec, batch.description)
    return axis_length(group)


async def _write_periods(
    session: ic.Session, batches: list[PeriodBatch], run_id: str
) -> list[tuple[ProvenanceRecord, int]]:
    """Write the periods and their records into ``session``; return each one's record and
    stored bytes.

    The arrays are opened once for all periods, and the periods' chunks are written (and
    compressed, in zarr's codec threads) concurrently rather than one period after another,
    while the records are read, built and written beside them. A period given twice is written
    once, as its last batch, whose record keeps the earlier one as the version it replaced.
    """
    arrays, records_array = await _open_arrays(session, batches[0].spec)
    last = list({batch.time_index: batch for batch in batches}.values())

    async def values_then_sizes() -> list[int]:
        await _write_values(arrays, last)
        return await _stored_sizes(session, arrays, batches)

    try:
        async with asyncio.TaskGroup() as both:  # either failing cancels the other
            sizes = both.create_task(values_then_sizes())
            records = both.create_task(_write_with_records(records_array, batches, last, run_id))
    except ExceptionGroup as failed:
        # The failure itself, so a full disk is reported as one (`DatasetStore.reporting`).
        raise failed.exceptions[0] from None
    return list(zip(records.result(), sizes.result(), strict=True))


async def _write_with_records(
    records_array: zarr.AsyncArray,
    batches: list[PeriodBatch],
    last: list[PeriodBatch],
    run_id: str,
) -> list[ProvenanceRecord]:
    """Build each batch's record (``last``: the last batch of each period) and write them."""
    replaced = await _replaced_versions(records_array, last)
    records, texts = [], {}
    for batch in batches:
        record = build_record(batch, run_id=run_id, previous=replaced[batch.time_index])
        replaced[batch.time_index] = record.as_previous()
        records.append(record)
        texts[batch.time_index] = record.to_json()  # the last of a period given twice wins
    await _write_records(records_array, texts)
    return records


async def _gather_bounded(work: Iterable[Awaitable]) -> list:
    """Await all of ``work`` concurrently, at most zarr's ``async.concurrency`` at a time."""
    limit = asyncio.Semaphore(zarr.config.get("async.concurrency"))

    async def bounded(one: Awaitable):
        try:
            async with limit:
                return await one
        finally:
            # Cancelled before its turn (another write failed): close it, never started.
            if asyncio.iscoroutine(one):
                one.close()

    return await asyncio.gather(*(bounded(one) for one in work))


async def _open_arrays(
    session: ic.Session, spec: DatasetSpec
) -> tuple[dict[str, zarr.AsyncArray], zarr.AsyncArray]:
    """The variables' arrays and the records array, each opened once for a whole commit."""
    group = await zarr.api.asynchronous.open_group(session.store, mode="r+")
    arrays = {name: _in_batches(await group.getitem(name)) for name in spec.variables_by_name}
    return arrays, _in_batches(await group.getitem(RECORDS_PATH))


def _in_batches(array: zarr.AsyncArray) -> zarr.AsyncArray:
    """``array`` with its chunks encoded and decoded in batches of ``CODEC_BATCH_SIZE``.

    zarr's default pipeline handles one chunk per batch: a chain of coroutines per chunk, which
    costs more than encoding a small chunk. Set on this array only (zarr's config is
    process-wide, and other threads open arrays too)."""
    pipeline = array.codec_pipeline
    if getattr(pipeline, "batch_size", CODEC_BATCH_SIZE) < CODEC_BATCH_SIZE:
        # AsyncArray is a frozen dataclass; zarr sets this field the same way when it opens one.
        object.__setattr__(
            array, "codec_pipeline", dataclasses.replace(pipeline, batch_size=CODEC_BATCH_SIZE)
        )
    return array


async def _replaced_versions(
    records_array: zarr.AsyncArray, batches: list[PeriodBatch]
) -> dict[int, PreviousVersion | None]:
    """By time index, the version each write replaces (from its stored record): one read per
    run of consecutive periods."""
    runs = _consecutive_runs([batch.time_index for batch in batches], len(batches))
    texts = await _gather_bounded(records_array.getitem(slice(r[0], r[-1] + 1)) for r in runs)
    stored = {
        index: text
        for run, got in zip(runs, texts, strict=True)
        for index, text in zip(run, got, strict=True)
    }
    return {
        batch.time_index: _previous_version(batch, stored[batch.time_index]) for batch in batches
    }


async def _write_values(arrays: dict[str, zarr.AsyncArray], batches: list[PeriodBatch]) -> None:
    """Write every batch's variables at its index: one region write per run of consecutive
    periods (zarr's per-call cost is paid once a run, not once a period), the runs at once."""
    by_index = {batch.time_index: batch for batch in batches}

    async def write_run(name: str, run: list[int]) -> None:
        # Stacked only when its turn comes, so few stacked copies exist at once.
        values = np.stack([by_index[index].variables[name] for index in run])
        await arrays[name].setitem(slice(run[0], run[-1] + 1), values)

    writes = []
    for name in arrays:
        present = [index for index, batch in by_index.items() if name in batch.variables]
        period_bytes = by_index[present[0]].variables[name].nbytes if present else 1
        for run in _consecutive_runs(present, max(1, STACKED_BYTES // period_bytes)):
            writes.append(write_run(name, run))
    await _gather_bounded(writes)


async def _write_records(records_array: zarr.AsyncArray, records: dict[int, str]) -> None:
    """Write each record (JSON text) at its time index, one write per run of consecutive ones
    (as Python strings: zarr encodes those about twice as fast as fixed-width numpy ones)."""
    await _gather_bounded(
        records_array.setitem(
            slice(run[0], run[-1] + 1), np.array([records[i] for i in run], dtype=object)
        )
        for run in _consecutive_runs(list(records), len(records))
    )


def _consecutive_runs(indices: list[int], longest: int) -> list[list[int]]:
    """``indices`` sorted and cut into runs of consecutive ones, each at most ``longest``."""
    runs: list[list[int]] = []
    for index in sorted(indices):
        if runs and index == runs[-1][-1] + 1 and len(runs[-1]) < longest:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


async def _stored_sizes(
    session: ic.Session, arrays: dict[str, zarr.AsyncArray], batches: list[PeriodBatch]
) -> list[int]:
    return await _gather_bounded(_stored_bytes(session, arrays, batch) for batch in batches)


def _previous_version(batch: PeriodBatch, text) -> PreviousVersion | None:
    """The version of the period a write replaces (its stored record), if any, so a revision's
    record keeps the fingerprint and checksum it replaced. A stored record that does not read is
    no reason to refuse the write that replaces it."""
    if not text:
        return None
    try:
        stored = ProvenanceRecord.from_stored(
            json.loads(str(text)), batch.spec.id, batch.period.key
        )
    except (ValueError, RecordFormatError) as err:
        logger.warning("%s: the replaced record is not kept as previous: %s", batch.spec.id, err)
        return None
    return stored.as_previous()


async def _stored_bytes(session: ic.Session, arrays: dict, batch: PeriodBatch) -> int:
    """Bytes of the chunks this period occupies after compression (all-NaN chunks take none)."""
    total = 0
    for name in batch.variables:
        for key in _chunk_keys(arrays[name], name, batch.time_index):
            try:
                total += await session.store.getsize(key)
            except FileNotFoundError:
                continue
    return total


def _chunk_keys(array: zarr.AsyncArray, name: str, index: int) -> list[str]:
    """The keys of every chunk of variable ``name`` at time index ``index``."""
    chunks_per_axis = [
        range(-(-size // chunk))
        for size, chunk in zip(array.shape[1:], array.chunks[1:], strict=True)
    ]
    return [
        f"{name}/c/{index}/{'/'.join(map(str, position))}"
        for position in itertools.product(*chunks_per_axis)
    ]

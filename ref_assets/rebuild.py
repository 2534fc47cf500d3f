"""Rebuilding and rechunking a dataset's store through a work branch, its annotations stashed.

>>> rebuild_dataset(spec, provider, store, settings=settings, run_id="r1")  # doctest: +SKIP
Rewrite(dataset_id='era5_land_east_africa', purpose='rebuild', periods=8760, ...)
>>> chunks = {"y": 100, "x": 100}
>>> rechunk_dataset(spec, store, chunks=chunks, settings=settings, run_id="r2")  # doctest: +SKIP

- **rebuild** (`rebuild_dataset`): after an incompatible spec change (grid, variables, dtype,
  units, extra dimensions, start, time block), lay the store out anew for the spec and fetch
  again, from the provider and with the new spec, every period ``main`` held.
- **rechunk** (`rechunk_dataset`): give the variables other spatial chunks and copy every period
  from the old layout (values and records unchanged, so every checksum stays valid); no provider.

Both run the same stages, each reported to ``on_stage(stage)`` (`STAGES`): stash the
annotations (`ref_assets.annotations_stash`; a stash left by an earlier try is kept and restored
from) -> discard work branches of the same purpose left by a run that died -> branch off ``main``
(`store.branches.start_work`) -> replace the arrays by the new layout on the branch -> fill it ->
(a rebuild of a ``checks.publish: validated`` dataset checks what it fetched, as a run would)
-> restore the annotations onto the branch (the stash, then ``main``'s own at the work's base) ->
verify every period on the branch against its record -> publish: move ``main`` to the branch by
compare-and-set, replaying onto the branch exactly the periods (and annotations) that landed on
``main`` meanwhile -> clear the stash. Until the publish, ``main``, its data and its annotations
are untouched: a run killed at any point, or failing, leaves them as they were and keeps the
stash; running it again finishes the work.

Design (rechunk):
- Spatial chunks are recorded in the store's structure but are no part of its compatibility
  with a spec (`store.layout.REWRITABLE_FIELDS`): the writer writes each period's region into
  whatever chunks the store has. So a spec's new `chunks` take effect through a rechunk, and a
  rechunk may give a store chunks its spec does not name (``--chunks``).
- Along time a chunk stays one period: writers of distinct periods, running at once, must never
  rewrite a shared chunk. Reads of long series at a point belong to the time-series copy (the
  spec's `timeseries` section); a rechunk asked for other time chunks is refused saying so.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import zarr
from filelock import FileLock, Timeout

from ref_assets import annotations_stash
from ref_assets.annotations import Annotations, read_annotations
from ref_assets.batch import PeriodFailure, PeriodStream
from ref_assets.config import Settings
from ref_assets.periods import Period
from ref_assets.providers.protocol import Provider
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.store.branches import (
    MainMoved,
    Published,
    WorkBranch,
    copy_periods,
    discard,
    leftover_work,
    publish,
    start_work,
)
from ref_assets.store.layout import (
    RECORDS_PATH,
    capacity_for,
    create_layout,
    incompatible_changes,
    open_laid_out_root,
    spatial_chunks,
    spec_structure,
    structure,
)
from ref_assets.store.repository import DatasetStore, StoreError
from ref_assets.store.writer import CommitPolicy, PeriodWriter, WriteReceipt
from ref_assets.verification import verify_dataset

if TYPE_CHECKING:
    from ref_assets.providers.protocol import Description

logger = logging.getLogger(__name__)

STAGES = ("stash", "discard", "branch", "layout", "fill", "restore", "verify", "publish", "clear")


class RebuildError(StoreError):
    """A rebuild or rechunk that cannot be done or did not complete; ``main`` is untouched."""


@dataclass(frozen=True)
class Rewrite:
    """What a rebuild or rechunk did (``published`` None: nothing, ``note`` says why)."""

    dataset_id: str
    purpose: str  # "rebuild" or "rechunk"
    published: str | None  # the snapshot main now points at
    periods: int = 0  # periods fetched again (rebuild) or copied (rechunk)
    dropped: list[str] = field(default_factory=list)  # periods the new spec no longer covers
    replayed: int = 0  # periods that landed on main during the work, replayed onto it
    annotations: int = 0  # operator annotations (keys) the published store holds
    chunks: tuple[int, int] | None = None  # the store's spatial chunks now
    stash_cleared: bool = False
    note: str = ""  # why nothing was done, or what is left to do


Stage = Callable[[str], None]


def rebuild_dataset(
    spec: DatasetSpec,
    provider: Provider,
    store: DatasetStore,
    *,
    settings: Settings,
    run_id: str,
    on_stage: Stage | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Rewrite:
    """Rebuild the store for ``spec`` on a branch, fetching every period ``main`` held again
    from ``provider``, and publish it (see the module). ``on_progress(done, total)`` follows
    the fill: ``(0, total)`` as it starts, then after each commit. A spec that fits the store
    already is no reason to rebuild: nothing is done."""
    description = provider.describe()
    with _one_rewrite(store):
        group = _laid_out_main(store)
        stored = group.attrs["ref_assets"]["structure"]
        changes = incompatible_changes(stored, structure(spec, description))
        if changes is None:
            note = f"{spec.id}: the store fits the spec already; nothing to rebuild"
            if stored["chunks"] != structure(spec, description)["chunks"]:
                note += (
                    f" (its chunks {stored['chunks']} differ from the spec's; "
                    f"`ref-assets rechunk {spec.id}` gives it the spec's)"
                )
            return _nothing_to_do(store, "rebuild", settings, tuple(stored["chunks"]), note)
        if stored["period"] != spec.period.value:
            raise RebuildError(
                f"{spec.id}: the spec's period is {spec.period.value}, the store's "
                f"{stored['period']}: periods of another type are another dataset. Give the "
                "spec a new id (and keep or delete this store)."
            )
        logger.info("%s: rebuilding for the spec (%s changed)", spec.id, changes[0])
        stage = on_stage or (lambda name: None)
        work = _start(store, "rebuild", settings, run_id, stage)
        old_axis = store_reader.store_axis(store_reader.session_for(store, work.base))
        kept, dropped = _periods_for(spec, old_axis, _written(store, work.base))

        stage("layout")
        length = capacity_for(spec, spec.time_index(kept[-1])) if kept else spec.time_block
        _replace_layout(
            store, work, spec.id, lambda root: _lay_out_anew(root, spec, description, length)
        )

        stage("fill")
        _fetch_onto(work, spec, provider, kept, run_id, on_progress)
        _check_validated(work, spec, settings, [p.key for p in kept])

        def replay(moved: MainMoved) -> None:
            tip_axis = store_reader.store_axis(store_reader.session_for(store, moved.tip))
            held = set(_written(store, moved.tip).tolist())
            present = [i for i in moved.periods.tolist() if i in held]
            again, _ = _periods_for(spec, tip_axis, np.asarray(present, dtype="int64"))
            gone, _ = _periods_for(
                spec, tip_axis, np.asarray(sorted(set(moved.periods.tolist()) - held), "int64")
            )
            _fetch_onto(work, spec, provider, again, run_id, None)
            _check_validated(work, spec, settings, [p.key for p in again])
            _remove_from(work, spec, gone, run_id)
            _verify_branch(work, settings, [p.key for p in again])

        published, annotations = _finish(work, settings, stage, replay, [p.key for p in kept])
        return Rewrite(
            spec.id,
            "rebuild",
            published.snapshot,
            periods=len(kept),
            dropped=[p.key for p in dropped],
            replayed=published.replayed_periods,
            annotations=annotations,
            chunks=tuple(structure(spec, description)["chunks"]),
            stash_cleared=True,
            note=_stale_timeseries_copy(store),
        )


def rechunk_dataset(
    spec: DatasetSpec,
    store: DatasetStore,
    *,
    chunks: Mapping[str, int] | None = None,
    description: Description | None = None,
    settings: Settings,
    run_id: str,
    on_stage: Stage | None = None,
) -> Rewrite:
    """Give the store's variables the spatial ``chunks`` (``{"y": N, "x": N}``; default: the
    spec's; larger than the grid: the grid's, which ``note`` says) on a branch, copy every
    period into them from ``main``, and publish it (see the module). The spec must fit the store
    but for its chunks (otherwise: `rebuild_dataset`): with the provider's ``description`` the
    whole structure is compared (a grid changed in ``params`` too); without it, only what the
    spec alone decides (`spec_structure`)."""
    requested = dict(chunks or {})
    if unknown := sorted(set(requested) - {"y", "x"}):
        raise RebuildError(
            _time_chunks_refused(spec.id)
            if "time" in unknown
            else (f"{spec.id}: chunks {unknown} are no dimension to chunk; give y=N and x=N")
        )
    if bad := {k: v for k, v in requested.items() if not isinstance(v, int) or v < 1}:
        raise RebuildError(f"{spec.id}: chunks {bad}: a chunk holds at least one cell a side")
    with _one_rewrite(store):
        group = _laid_out_main(store)
        stored = group.attrs["ref_assets"]["structure"]
        expected = spec_structure(spec) if description is None else structure(spec, description)
        if changes := incompatible_changes({k: stored.get(k) for k in expected}, expected):
            raise RebuildError(
                f"{spec.id}: the spec differs from the store in more than its chunks "
                f"({changes[0]} changed: store has {changes[1]}, spec gives {changes[2]}); "
                f"`ref-assets rebuild {spec.id}` rebuilds the store for it"
            )
        target = spatial_chunks(
            requested.get("y") or spec.chunks.y,
            requested.get("x") or spec.chunks.x,
            stored["grid_shape"],
        )
        capped = _capped_note(spec.id, requested, target, stored["grid_shape"])
        if list(target) == stored["chunks"]:
            note = f"{spec.id}: the store has chunks y={target[0]}, x={target[1]} already"
            note += f" ({capped})" if capped else ""
            return _nothing_to_do(store, "rechunk", settings, target, note)
        stage = on_stage or (lambda name: None)
        work = _start(store, "rechunk", settings, run_id, stage)
        held = _written(store, work.base)
        axis = store_reader.store_axis(store_reader.session_for(store, work.base))

        stage("layout")
        _replace_layout(store, work, spec.id, lambda root: _rechunk_arrays(root, target))

        stage("fill")
        copy_periods(
            store,
            spec,
            held,
            source_snapshot=work.base,
            branch=work.branch,
            message=f"{spec.id}: rechunk: copy {len(held)} periods from {work.base}",
            run_id=run_id,
        )

        def replay(moved: MainMoved) -> None:
            copy_periods(
                store,
                spec,
                moved.periods,
                source_snapshot=moved.tip,
                branch=work.branch,
                message=f"{spec.id}: rechunk: replay {len(moved.periods)} periods from {moved.tip}",
                run_id=run_id,
            )

        keys = [axis.period_at(i).key for i in held.tolist()] if axis else []
        published, annotations = _finish(work, settings, stage, replay, keys)
        return Rewrite(
            spec.id,
            "rechunk",
            published.snapshot,
            periods=len(held),
            replayed=published.replayed_periods,
            annotations=annotations,
            chunks=target,
            stash_cleared=True,
            note=f"{spec.id}: {capped}" if capped else "",
        )


def _capped_note(
    dataset_id: str, requested: Mapping[str, int], target: tuple[int, int], grid_shape: list[int]
) -> str:
    """What to say when chunks asked for (``--chunks``) are larger than the grid, and so capped
    to it ("" when none is)."""
    got = dict(zip("yx", target, strict=True))
    if all(value == got[name] for name, value in requested.items()):
        return ""
    asked = ", ".join(f"{name}={value}" for name, value in requested.items())
    message = f"chunks {asked} capped to the grid: {grid_shape[0]} x {grid_shape[1]}"
    logger.info("%s: %s", dataset_id, message)
    return message


def parse_chunks(dataset_id: str, text: str) -> dict[str, int]:
    """``y=N,x=N`` (either alone) as ``{"y": N, "x": N}``; time chunks are refused.

    >>> parse_chunks("demo", "y=50, x=100")
    {'y': 50, 'x': 100}
    """
    chunks: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = item.partition("=")
        name = name.strip()
        if name == "time":
            raise RebuildError(_time_chunks_refused(dataset_id))
        if not equals or name not in ("y", "x") or not value.strip().isdigit():
            raise RebuildError(
                f"{dataset_id}: chunks {text!r}: write y=N,x=N (cells a side, either alone)"
            )
        chunks[name] = int(value)
    if not chunks:
        raise RebuildError(f"{dataset_id}: chunks {text!r}: write y=N,x=N")
    return chunks


def _time_chunks_refused(dataset_id: str) -> str:
    return (
        f"{dataset_id}: along time a chunk is always one period: runs write distinct periods "
        "at once, and two of them must never rewrite a shared chunk. For reading long series "
        "at points, give the spec a `timeseries` section (the time-series copy, chunked along "
        "time); rechunk takes y=N,x=N only"
    )


def _stale_timeseries_copy(store: DatasetStore) -> str:
    """What to do about the dataset's time-series copy after a rebuild ("" when it has none):
    the copy's structure includes the store's, so it refuses to update until built again."""
    from ref_assets.store.timeseries import timeseries_store

    copy = timeseries_store(store)
    if not copy.exists():
        return ""
    return (
        f"{store.dataset_id}: the time-series copy {copy.location} holds the old layout and "
        "refuses updates: move it aside (or delete it), and the next update "
        f"(`ref-assets timeseries {store.dataset_id}`, or its Dagster asset) builds it again"
    )


@contextlib.contextmanager
def _one_rewrite(store: DatasetStore) -> Iterator[None]:
    """Refuse a second rebuild or rechunk of the same store while one runs: each would discard
    the other's branch as left over. A file lock: the kernel frees it when its process dies."""
    path = store.lock_path.with_name(f"{store.name}.rewrite.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RebuildError(
            f"{store.dataset_id}: another rebuild or rechunk of this store is running (it "
            f"holds {path}); wait for it to end"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _laid_out_main(store: DatasetStore) -> zarr.Group:
    """``main``'s root group; a RebuildError when there is no store or no layout yet (nothing
    to rebuild, and nothing to stash)."""
    group = open_laid_out_root(store_reader.session_for(store).store)
    if group is None:
        raise RebuildError(
            f"{store.no_periods_yet()}; there is nothing to rebuild: materialize periods, "
            "which lays the store out for the spec as it is"
        )
    return group


def _nothing_to_do(
    store: DatasetStore, purpose: str, settings: Settings, chunks: tuple[int, int], note: str
) -> Rewrite:
    """The store is as asked already (perhaps published by a run that died before clearing its
    stash, or deleting its branch): discard work branches left over, and clear a stash whose
    every log entry ``main`` holds; keep any other, saying so."""
    dataset_id = store.dataset_id
    for branch in leftover_work(store, purpose):
        discard(store, branch)
    saved = annotations_stash.read_stash(dataset_id, settings=settings)
    cleared = False
    if saved is not None:
        held = {change.id for change in read_annotations(dataset_id, settings=settings).history}
        if {change.id for change in saved.history} <= held:
            cleared = annotations_stash.clear(dataset_id, settings=settings)
            note += f"; cleared the annotation stash {saved.path}, which main holds"
        else:
            note += (
                f"; the annotation stash {saved.path} holds log entries main lacks and is kept "
                f"(`ref-assets annotate {dataset_id} --stash restore` gives them to main)"
            )
    logger.info(note)
    return Rewrite(dataset_id, purpose, None, chunks=chunks, stash_cleared=cleared, note=note)


def _start(
    store: DatasetStore, purpose: str, settings: Settings, run_id: str, stage: Stage
) -> WorkBranch:
    stage("stash")
    saved = annotations_stash.read_stash(store.dataset_id, settings=settings)
    if saved is None:
        annotations_stash.stash(store.dataset_id, settings=settings)
    else:  # an earlier try's: kept, whatever main holds now (the restore adds main's too)
        logger.info("%s: keeping the annotation stash %s", store.dataset_id, saved.path)
    stage("discard")
    for branch in leftover_work(store, purpose):
        logger.info(
            "%s: discarding branch %s left by a %s that died", store.dataset_id, branch, purpose
        )
        discard(store, branch)
    stage("branch")
    return start_work(store, purpose, run_id=run_id)


def _written(store: DatasetStore, snapshot: str) -> np.ndarray:
    return store_reader.written_index_array(store_reader.session_for(store, snapshot))


def _periods_for(
    spec: DatasetSpec, axis: store_reader.StoreAxis | None, indices: np.ndarray
) -> tuple[list[Period], list[Period]]:
    """The periods at ``indices`` of a store laid out on ``axis``: those the spec covers (from
    its start to its last period), and those it no longer does."""
    if axis is None:
        return [], []
    last = spec.last_period()
    kept, dropped = [], []
    for index in indices.tolist():
        period = axis.period_at(index)
        covered = period.start >= spec.start and (last is None or period.start <= last.start)
        (kept if covered else dropped).append(Period(spec.period, period.start))
    return kept, dropped


def _replace_layout(
    store: DatasetStore, work: WorkBranch, dataset_id: str, lay_out: Callable[[zarr.Group], None]
) -> None:
    """Replace the branch's arrays by ``lay_out(root)``'s, in one commit."""
    session = store.open().writable_session(work.branch)
    with store.reporting(f"laying out branch {work.branch}"):
        lay_out(zarr.open_group(session.store, mode="r+"))
        session.commit(f"{dataset_id}: {work.purpose}: new layout")


def _lay_out_anew(
    root: zarr.Group, spec: DatasetSpec, description: Description, length: int
) -> None:
    """Remove every array and group of ``root`` (the annotation log too: the restore writes it
    back) and its attributes, then create the spec's layout."""
    for name in list(root.keys()):
        del root[name]
    root.attrs.put({})
    create_layout(root, spec, description, length)


def _rechunk_arrays(root: zarr.Group, chunks: tuple[int, int]) -> None:
    """Recreate each variable's array with spatial ``chunks``: same shape, data type, codecs,
    fill value and attributes (annotations included), no values yet."""
    layout = dict(root.attrs["ref_assets"])
    for name in layout["structure"]["variables"]:
        old = root[name]
        metadata = old.metadata
        extra = len(old.shape) - 3  # time, extra dimensions, y, x
        del root[name]
        root.create_array(
            name,
            shape=old.shape,
            chunks=(1, *[1] * extra, *chunks),
            dtype=old.dtype,
            fill_value=metadata.fill_value,
            filters=old.filters,
            serializer=old.serializer,
            compressors=old.compressors,
            dimension_names=metadata.dimension_names,
            attributes=old.attrs.asdict(),
        )
    root.attrs["ref_assets"] = {
        **layout,
        "structure": {**layout["structure"], "chunks": list(chunks)},
    }


def _fetch_onto(
    work: WorkBranch,
    spec: DatasetSpec,
    provider: Provider,
    periods: list[Period],
    run_id: str,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    """Fetch ``periods`` with the spec and write them on the work branch in batched commits (as
    a range run does); any period that fails stops the work, naming each one that failed."""
    if not periods:
        return
    done = 0
    if on_progress is not None:  # the fill starts now: a rate measured from here
        on_progress(0, len(periods))

    def committed(receipts: list[WriteReceipt]) -> None:
        nonlocal done
        done += len(receipts)
        if on_progress is not None:
            on_progress(done, len(periods))

    writer = PeriodWriter(
        work.store,
        run_id=run_id,
        policy=CommitPolicy(spec.runs.commit_every, spec.runs.commit_seconds),
        on_commit=committed,
        branch=work.branch,
    )
    failures: list[PeriodFailure] = []
    for item in PeriodStream(spec, provider, tuple(periods), spec.runs.fetch_workers):
        if isinstance(item, PeriodFailure):
            failures.append(item)
        else:
            writer.add(item)
    writer.flush()
    if failures:
        raise RebuildError(
            f"{spec.id}: {len(failures)} of {len(periods)} periods could not be fetched again "
            f"({_first_few([f'{f.period.key}: {f.error}' for f in failures])}). Nothing was "
            "published: main, its data and annotations are as they were. Once the source "
            f"answers, run the {work.purpose} again."
        )


def _check_validated(
    work: WorkBranch, spec: DatasetSpec, settings: Settings, keys: list[str]
) -> None:
    """For a ``checks.publish: validated`` dataset, check the periods fetched again on the
    branch as a run would: a rebuild must not publish what a run would refuse to. Any that
    fails stops the work, naming each (``main`` keeps its versions, in the old layout)."""
    if spec.checks.publish != "validated" or not keys:
        return
    from ref_assets.catalog import configured_vocabulary
    from ref_assets.quality import check_stored_periods

    session = work.store.open().readonly_session(branch=work.branch)
    vocabulary = configured_vocabulary(settings)
    refused = [q for q in check_stored_periods(spec, vocabulary, session, keys) if not q.passed]
    if refused:
        raise RebuildError(
            f"{spec.id}: {len(refused)} of {len(keys)} periods fetched again fail their checks "
            f"({_first_few([f'{q.period}: {q.description}' for q in refused])}), and the spec "
            "publishes only periods that pass (checks.publish: validated). Nothing was "
            "published: main, its data and annotations are as they were. Fix the source or the "
            f"spec's checks, then run the {work.purpose} again."
        )


def _remove_from(work: WorkBranch, spec: DatasetSpec, periods: list[Period], run_id: str) -> None:
    """Remove ``periods`` from the branch (fill values delete their chunks): they left ``main``
    while the work ran."""
    if not periods:
        return
    store = work.store
    session = store.open().writable_session(work.branch)
    root = zarr.open_group(session.store, mode="r+")
    for period in periods:
        index = spec.time_index(period)
        for name in [*spec.variables_by_name, RECORDS_PATH]:
            array = root[name]
            array[index] = array.metadata.fill_value
    with store.lock(run_id=run_id):
        session.commit(f"{spec.id}: {work.purpose}: remove {len(periods)} periods gone from main")


def _finish(
    work: WorkBranch,
    settings: Settings,
    stage: Stage,
    replay: Callable[[MainMoved], None],
    expected: list[str],
) -> tuple[Published, int]:
    """Restore the annotations onto the filled branch, verify it, publish it (replaying what
    landed on main meanwhile) and clear the stash; return what `publish` returned and the
    number of annotations (keys) the published store holds."""
    dataset_id = work.store.dataset_id
    stage("restore")
    _restore_annotations(work, settings)
    stage("verify")
    _verify_branch(work, settings, None, expected)

    def replay_all(moved: MainMoved) -> None:
        replay(moved)
        if moved.annotations_changed:
            since = read_annotations(dataset_id, snapshot=moved.since, settings=settings)
            _apply_main_annotations(work, settings, moved.tip, since.annotations)

    stage("publish")
    published = publish(work, replay=replay_all)
    stage("clear")
    annotations_stash.clear(dataset_id, settings=settings)
    state = read_annotations(dataset_id, snapshot=published.snapshot, settings=settings)
    count = len(state.annotations.dataset) + sum(map(len, state.annotations.variables.values()))
    return published, count


def _restore_annotations(work: WorkBranch, settings: Settings) -> None:
    """The stash onto the branch, then ``main``'s annotations at the work's base (newer than an
    earlier try's stash): keys the stash has and main took back since are taken back."""
    dataset_id = work.store.dataset_id
    saved = annotations_stash.read_stash(dataset_id, settings=settings)
    annotations_stash.restore(dataset_id, branch=work.branch, settings=settings)
    base = read_annotations(dataset_id, snapshot=work.base, settings=settings)
    behind = saved is None or not {c.id for c in saved.history} <= {c.id for c in base.history}
    # Main holds every stashed change: its state is the newer one, removals included.
    _apply_main_annotations(work, settings, work.base, None if behind else saved.annotations)


def _apply_main_annotations(
    work: WorkBranch, settings: Settings, snapshot: str, before: Annotations | None
) -> None:
    """Give the branch ``main``'s annotations and log at ``snapshot``; keys set in ``before``
    (an earlier state of main) that main no longer has are taken back."""
    dataset_id = work.store.dataset_id
    now = read_annotations(dataset_id, snapshot=snapshot, settings=settings)
    removals = {}
    if before is not None:
        for target in [None, *before.variables]:
            if gone := sorted(set(before.of(target)) - set(now.annotations.of(target))):
                removals[target] = gone
    annotations_stash.apply_annotations(
        work.store, now.annotations, now.history, branch=work.branch, removals=removals
    )


def _verify_branch(
    work: WorkBranch,
    settings: Settings,
    periods: list[str] | None,
    expected: list[str] | None = None,
) -> None:
    """Check the periods on the branch's tip against their records (every period, or
    ``periods``); any that fails, or an ``expected`` period missing, stops the work."""
    if periods is not None and not periods:
        return
    dataset_id = work.store.dataset_id
    tip = work.store.open().lookup_branch(work.branch)
    checks = verify_dataset(dataset_id, periods=periods, snapshot=tip, settings=settings)
    failed = [f"{c.period}: {c.problem}" for c in checks if not c.ok]
    if expected is not None:
        failed += [
            f"{key}: not on the branch"
            for key in sorted(set(expected) - {c.period for c in checks})
        ]
    if failed:
        raise RebuildError(
            f"{dataset_id}: {len(failed)} periods on branch {work.branch} do not verify "
            f"({_first_few(failed)}). Nothing was published: main, its data and annotations "
            f"are as they were; the branch is kept for inspection until the next {work.purpose}."
        )


def _first_few(problems: list[str], most: int = 5) -> str:
    """The first ``most`` problems, ``; ``-separated, and ``...`` when there are more."""
    return "; ".join(problems[:most]) + ("; ..." if len(problems) > most else "")

"""Work on a branch, then publish it to ``main`` by compare-and-set, replaying what landed since.

Rewrites of a whole store (a rebuild, a rechunk) and validate-then-publish runs write on a branch
of the dataset's repository, which readers of ``main`` never see. Publishing moves ``main`` to the
branch's tip only if ``main`` still points at the snapshot the work started from; if it moved (a
sensor-driven update landed), the caller's ``replay`` puts exactly the periods committed since onto
the branch, and publishing tries again from the new tip::

    work = start_work(store, "rebuild", run_id="r1")
    ...  # write on work.branch (PeriodWriter(..., branch=work.branch)), verify it
    published = publish(work, replay=lambda moved: rewrite(moved.periods, moved.tip))

A work branch that was never published (its process died) is listed by `leftover_work` and
removed by `discard`: ``main`` never depended on it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import icechunk as ic
import numpy as np
import zarr

from ref_assets.specs import DatasetSpec
from ref_assets.store.commits import commit_rebasing
from ref_assets.store.layout import (
    RECORDS_PATH,
    axis_length,
    capacity_for,
    grow_time_axis,
    incompatible_changes,
    open_laid_out_root,
)
from ref_assets.store.reader import READ_BLOCK, written_between
from ref_assets.store.repository import DatasetStore, StoreError
from ref_assets.store.writer import STACKED_BYTES

logger = logging.getLogger(__name__)

# Each attempt replays what landed on `main` during the previous one, which takes far less time
# than the whole work did; only writers landing faster than they can be replayed exhaust this.
MAX_PUBLISH_ATTEMPTS = 8

ANNOTATION_LOG_PATH = "/ref/annotations"
_BRANCH_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


class PublishError(StoreError):
    """The work could not be published; ``main`` is untouched (the message says what to do)."""


@dataclass(frozen=True)
class WorkBranch:
    """A branch of the dataset's repository holding work not yet published."""

    store: DatasetStore
    branch: str
    base: str  # main's tip when the work began
    purpose: str


@dataclass(frozen=True)
class MainMoved:
    """What landed on ``main`` between two of its snapshots."""

    since: str
    tip: str
    periods: np.ndarray  # time indices whose period was written or rewritten (int64, sorted)
    annotations_changed: bool  # the annotation log grew


@dataclass(frozen=True)
class Published:
    """``main`` now points at ``snapshot``, the work's tip; ``replayed`` lists what was replayed."""

    snapshot: str
    replayed: list[MainMoved] = field(default_factory=list)

    @property
    def replayed_periods(self) -> int:
        return sum(len(moved.periods) for moved in self.replayed)


def work_branch_name(purpose: str, run_id: str) -> str:
    """The branch a piece of work writes on: ``<purpose>.<run id>`` (characters Icechunk and
    file systems accept)."""
    return f"{purpose}.{_BRANCH_UNSAFE.sub('-', run_id)}"


def start_work(store: DatasetStore, purpose: str, *, run_id: str) -> WorkBranch:
    """Branch off ``main``'s tip, for work ``purpose`` (``rebuild``, ``rechunk``, ``publish``) of
    run ``run_id``. A branch of that name left by an earlier try is discarded first."""
    repo = store.open()
    name = work_branch_name(purpose, run_id)
    with store.reporting(f"starting {purpose} branch {name}"), store.lock(run_id=run_id):
        if name in repo.list_branches():
            repo.delete_branch(name)
        base = repo.lookup_branch("main")
        repo.create_branch(name, base)
    logger.info("%s: %s works on branch %s from snapshot %s", store.dataset_id, purpose, name, base)
    return WorkBranch(store, name, base, purpose)


def leftover_work(store: DatasetStore, purpose: str) -> list[str]:
    """Branches of ``purpose`` that were never published nor discarded (their run died)."""
    repo = store.open()
    return sorted(b for b in repo.list_branches() if b.startswith(f"{purpose}."))


def discard(store: DatasetStore, branch: str) -> None:
    """Delete an unpublished work branch (its snapshots go at the next garbage collection)."""
    repo = store.open()
    with store.reporting(f"discarding branch {branch}"), store.lock():
        if branch in repo.list_branches():
            repo.delete_branch(branch)


def main_moved(repo: ic.Repository, since: str, tip: str, *, rebases: bool = False) -> MainMoved:
    """What landed on ``main`` from ``since`` to ``tip``, from Icechunk's diff. A ``since`` that
    is no ancestor of ``tip`` (``main`` was reset by another publish) is refused: replaying
    cannot reconcile two rewrites. So is a layout changed in between (a rebuild or rechunk
    published): copying periods into the old layout and publishing it would undo that. A
    replay that ``rebases`` (starts the branch again from ``tip`` and copies the work onto it)
    takes a rechunk along: only a change of more than the chunks is refused then."""
    periods = written_between(repo, since, tip)
    if periods is None:
        raise PublishError(
            f"main no longer descends from snapshot {since}: another rebuild or publish reset "
            "it meanwhile. Nothing was published; run this again from the new main."
        )
    before, now = _layout_at(repo, since), _layout_at(repo, tip)
    if before is not None and (
        incompatible_changes(before, now) is not None if rebases else before != now
    ):
        raise PublishError(
            f"main was rebuilt or rechunked since snapshot {since} (its layout changed): this "
            "work was laid out for the old one, and publishing it would undo that. Nothing was "
            "published; run it again, which writes in the new layout."
        )
    diff = repo.diff(from_snapshot_id=since, to_snapshot_id=tip)
    annotations = ANNOTATION_LOG_PATH in diff.updated_chunks or any(
        str(path) == ANNOTATION_LOG_PATH for path in diff.new_arrays
    )
    return MainMoved(since, tip, periods, annotations)


def _layout_at(repo: ic.Repository, snapshot: str) -> dict | None:
    """The store's structure at ``snapshot`` (None before its first layout)."""
    root = open_laid_out_root(repo.readonly_session(snapshot_id=snapshot).store)
    return None if root is None else root.attrs["ref_assets"]["structure"]


def publish(
    work: WorkBranch,
    *,
    replay: Callable[[MainMoved], None],
    rebases: bool = False,
    max_attempts: int = MAX_PUBLISH_ATTEMPTS,
) -> Published:
    """Move ``main`` to the work branch's tip if ``main`` is still where the work began (or
    where the last replay left it), under the dataset's commit lock; otherwise call
    ``replay(moved)`` to put what landed on ``main`` onto the branch, and try again (``rebases``:
    the replay starts the branch again from ``moved.tip``, so a rechunk of ``main`` is taken
    along; `main_moved`). The branch is deleted once published. On any failure ``main`` is
    untouched and the branch is kept."""
    store = work.store
    repo = store.open()
    expected = work.base
    replayed: list[MainMoved] = []
    for _ in range(max_attempts):
        with store.reporting(f"publishing branch {work.branch}"), store.lock():
            tip = repo.lookup_branch("main")
            if tip == expected:
                snapshot = repo.lookup_branch(work.branch)
                # Compare-and-set: refused if main moved since the lookup above (the lock keeps
                # ref_assets' writers out on local storage; the check keeps out anything else,
                # and on S3, where there is no lock, every other writer: then look again).
                try:
                    repo.reset_branch("main", snapshot, from_snapshot_id=expected)
                except ic.ConflictError:
                    continue
                repo.delete_branch(work.branch)
                logger.info(
                    "%s: published %s (branch %s) as main at %s",
                    store.dataset_id,
                    work.purpose,
                    work.branch,
                    snapshot,
                )
                return Published(snapshot, replayed)
        try:
            moved = main_moved(repo, expected, tip, rebases=rebases)
        except PublishError as err:  # which dataset, and which work, for the run's failure
            raise PublishError(f"{store.dataset_id} ({work.purpose}): {err}") from None
        logger.info(
            "%s: main moved during the %s (%d periods written since %s); replaying them onto %s",
            store.dataset_id,
            work.purpose,
            len(moved.periods),
            expected,
            work.branch,
        )
        replay(moved)
        replayed.append(moved)
        expected = tip
    raise PublishError(
        f"{store.dataset_id}: main kept moving while the {work.purpose} was replaying what had "
        f"landed ({max_attempts} attempts); nothing was published and branch {work.branch} is "
        "kept. Pause the dataset's sensors and schedules, then run it again."
    )


def copy_periods(
    store: DatasetStore,
    spec: DatasetSpec,
    indices: np.ndarray | list[int],
    *,
    source_snapshot: str,
    branch: str,
    message: str,
    run_id: str | None = None,
) -> str | None:
    """Copy the periods at ``indices`` (their values and records) from ``source_snapshot`` onto
    ``branch`` in one commit, and return its snapshot (None when there is nothing to copy).

    The two layouts may differ in chunks, not in grid or variables. A period the source does
    not hold is removed from the branch (fill values delete chunks), so copying from an earlier
    snapshot restores a period's earlier state, absence included: also beyond the source's time
    axis, or from a source laid out before any period (a store's first commit)."""
    indices = sorted({int(i) for i in indices})
    if not indices:
        return None
    repo = store.open()
    with store.reporting(f"copying {len(indices)} periods onto branch {branch}"):
        source = open_laid_out_root(repo.readonly_session(snapshot_id=source_snapshot).store)
        source_length = axis_length(source) if source is not None else 0
        session = repo.writable_session(branch)
        target = zarr.open_group(session.store, mode="r+")
        if axis_length(target) <= indices[-1]:
            grow_time_axis(target, spec, capacity_for(spec, indices[-1]))
        names = [*spec.variables_by_name, RECORDS_PATH]
        period_bytes = max(1, sum(target[n].nbytes // max(1, target[n].shape[0]) for n in names))
        longest = max(1, min(READ_BLOCK, STACKED_BYTES // period_bytes))
        for first, last in _spans(indices, longest):
            for name in names:
                held = _held(source, source_length, target[name], name, first, last)
                target[name][first : last + 1] = held
        with store.lock(run_id=run_id):
            return commit_rebasing(session, message).snapshot_id


def _held(
    source: zarr.Group | None,
    source_length: int,
    target: zarr.Array,
    name: str,
    first: int,
    last: int,
) -> np.ndarray:
    """What the source holds of ``target``'s array at ``first``..``last``: fill values where it
    holds nothing (no layout yet, or beyond its time axis)."""
    if source is not None and last < source_length:
        return source[name][first : last + 1]
    kind = target.dtype if target.dtype.kind == "f" else object  # records: text
    held = np.full((last - first + 1, *target.shape[1:]), target.fill_value, dtype=kind)
    if source is not None and first < source_length:
        held[: source_length - first] = source[name][first:source_length]
    return held


def _spans(indices: list[int], longest: int) -> list[tuple[int, int]]:
    """Sorted indices as (first, last) runs of consecutive ones, each at most ``longest``."""
    spans: list[tuple[int, int]] = []
    for index in indices:
        if spans and index == spans[-1][1] + 1 and index - spans[-1][0] < longest:
            spans[-1] = (spans[-1][0], index)
        else:
            spans.append((index, index))
    return spans

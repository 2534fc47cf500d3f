"""Retention and maintenance: expire old snapshots of a store, then delete what nothing uses.

Every commit stays in an Icechunk repository until it is expired, and each commit rewrites the
repository's list of snapshots, so a long-lived store grows and commits slow down with its
history. `maintain` applies a `RetentionPolicy` (the spec's ``retention`` section, or flags):

1. **Abandoned work** (``rebuild.*``, ``rechunk.*``, ``publish.*`` branches left by runs that died,
   `ref_assets.store.branches`) is discarded once nothing happened to it for
   ``abandoned_after`` (default 7 days): no commit on it, and its creation (Icechunk's
   operations log) that long ago. A running rebuild commits on its branch far more often than
   that, and every live branch's base on ``main`` is kept (below), so maintenance never pulls
   history out from under work that is still going to publish.
2. **Expiry**: snapshots of ``main`` older than the cut-off leave its history. The cut-off keeps
   every snapshot newer than ``keep_for`` *and* the ``keep_last`` newest commits of ``main``
   (the earlier of the two cut-offs), and never passes the base of a live work branch (its
   publish compares ``main`` with that snapshot and replays what landed since). Tagged
   snapshots (releases) are always kept, as are ``main``'s tip and the repository's root.
   Expiry rewrites the repository object, which local storage cannot update atomically: it
   runs under the dataset's commit lock.
3. **Garbage collection**: snapshots, manifests and chunks no surviving snapshot, branch or tag
   uses are deleted, if older than ``grace`` (default an hour): a writer writes its chunks
   before it takes the lock to commit them, so younger unreferenced objects may be a commit in
   progress; ``grace=0`` is for a store nothing writes to meanwhile. It also runs under the
   lock: Icechunk 2.3's garbage collection rewrites the repository object as well, and beside
   a writer, without the lock, it dropped commits (tested). Writers wait for it (up to the
   lock's timeout, `LOCK_TIMEOUT_SECONDS`); it lists every object of the repository.
   On S3 there is no lock (`DatasetStore.lock`): the repository object is updated there with a
   conditional write, so a commit racing expiry or collection is refused and retried, never
   dropped (tested beside a writer: ref_assets_tests/test_s3.py).

>>> store = DatasetStore(settings.storage_root, "demo_air_temperature")  # doctest: +SKIP
>>> policy = RetentionPolicy.for_dataset(spec, keep_last=100)  # doctest: +SKIP
>>> [report] = maintain_dataset(store, policy, dry_run=True)  # doctest: +SKIP
>>> report.expired_snapshots, report.bytes_deleted, report.notes  # doctest: +SKIP
(['5VBV400GMRA8HHXQNB90', ...], 24268, [])

Icechunk cannot expire in a dry run, so ``dry_run=True`` does the whole maintenance on a clone
of the repository (local stores only, refused on S3: under ``<root>/.maintenance``; chunks and
manifests, which Icechunk never rewrites, are hard links, the rest is copied) and reports what
went there: the same snapshots, objects and bytes as the real run would, given that nothing
commits in between. The store is not changed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import icechunk as ic

from ref_assets.store.repository import CACHING, DatasetStore, StoreError

if TYPE_CHECKING:
    from ref_assets.specs import DatasetSpec

logger = logging.getLogger(__name__)

# Work branches (`ref_assets.store.branches.work_branch_name`): `<purpose>.<run id>`.
WORK_PURPOSES = ("rebuild", "rechunk", "publish")
DEFAULT_GRACE = timedelta(hours=1)
DEFAULT_ABANDONED_AFTER = timedelta(days=7)
# A dry run's clone left behind (its process killed) this long ago is removed by the next one.
STALE_CLONE_SECONDS = 86400
# Objects Icechunk writes once and never rewrites: a dry run's clone links them.
_IMMUTABLE_DIRECTORIES = ("chunks", "manifests")


class RetentionError(StoreError):
    """A retention policy that cannot apply; the message says what to give."""


@dataclass(frozen=True)
class RetentionPolicy:
    """What maintenance keeps: snapshots of ``main`` newer than ``keep_for`` and its
    ``keep_last`` newest commits (either rule keeps a snapshot), every tagged snapshot, and
    unreferenced objects younger than ``grace``; work branches untouched for ``abandoned_after``
    are discarded."""

    keep_for: timedelta | None = None
    keep_last: int | None = None
    grace: timedelta = DEFAULT_GRACE
    abandoned_after: timedelta = DEFAULT_ABANDONED_AFTER

    def __post_init__(self) -> None:
        if self.keep_for is None and self.keep_last is None:
            raise RetentionError(
                "a retention policy keeps snapshots by age (keep_days), by count (keep_last) or "
                "both: give at least one (the spec's `retention` section, or --keep-days / "
                "--keep-last)"
            )
        if self.keep_last is not None and self.keep_last < 1:
            raise RetentionError(
                f"keep_last (--keep-last) must be 1 or more, not {self.keep_last}: main's tip "
                "is always kept"
            )
        # Named as the spec and the flags name them ("-1 day, 23:55:00" is timedelta's).
        for name, key, unit in (
            ("keep_for", "keep_days (--keep-days)", 86400),
            ("grace", "grace_minutes (--grace-minutes)", 60),
            ("abandoned_after", "abandoned_days", 86400),
        ):
            value = getattr(self, name)
            if value is not None and value < timedelta(0):
                raise RetentionError(
                    f"{key} must not be negative, not {value.total_seconds() / unit:g}"
                )

    @classmethod
    def for_dataset(
        cls,
        spec: DatasetSpec | None,
        *,
        keep_days: float | None = None,
        keep_last: int | None = None,
        grace_minutes: float | None = None,
    ) -> RetentionPolicy:
        """The spec's ``retention`` section; ``keep_days`` or ``keep_last`` given here replace
        both of its keep rules, ``grace_minutes`` its grace. Its other settings (abandoned
        work) apply either way."""
        section = spec.retention if spec is not None else None
        if section is not None and keep_days is None and keep_last is None:
            keep_days, keep_last = section.keep_days, section.keep_last
        if grace_minutes is None:
            grace_minutes = section.grace_minutes if section else DEFAULT_GRACE.total_seconds() / 60
        abandoned = timedelta(days=section.abandoned_days) if section else DEFAULT_ABANDONED_AFTER
        try:
            return cls(
                keep_for=None if keep_days is None else timedelta(days=keep_days),
                keep_last=keep_last,
                grace=timedelta(minutes=grace_minutes),
                abandoned_after=abandoned,
            )
        except RetentionError as err:
            dataset = spec.id if spec is not None else "the dataset"
            raise RetentionError(f"{dataset}: {err}") from None

    def describe(self) -> dict[str, Any]:
        days = None if self.keep_for is None else self.keep_for.total_seconds() / 86400
        return {
            "keep_days": days,
            "keep_last": self.keep_last,
            "grace_minutes": self.grace.total_seconds() / 60,
            "abandoned_days": self.abandoned_after.total_seconds() / 86400,
        }


@dataclass(frozen=True)
class MaintenanceReport:
    """What a maintenance did (or, for a dry run, would do) to one repository: the dataset's
    store or its time-series copy."""

    dataset: str
    repository: str  # the repository's name under the storage root
    dry_run: bool
    policy: dict[str, Any]
    cutoff: datetime | None  # snapshots of main written before it were expired (None: none)
    expired_snapshots: list[str]
    discarded_branches: list[str]  # abandoned work branches
    protected_branches: list[str]  # live work branches whose base on main was kept
    releases_kept: list[str]
    snapshots_deleted: int
    manifests_deleted: int
    chunks_deleted: int
    transaction_logs_deleted: int
    attributes_deleted: int
    bytes_deleted: int  # Icechunk's count of the objects garbage collection deleted
    store_bytes_before: int  # every file of the repository, on disk (dry run: the prediction)
    store_bytes_after: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        """How much smaller the repository became on disk: ``bytes_deleted`` less what expiry
        wrote (the repository object and Icechunk's backup of the one it replaced)."""
        return self.store_bytes_before - self.store_bytes_after

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["cutoff"] = self.cutoff.isoformat() if self.cutoff else None
        data["freed_bytes"] = self.freed_bytes
        return data


def maintain(
    store: DatasetStore,
    policy: RetentionPolicy,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> MaintenanceReport:
    """Discard abandoned work, expire snapshots, collect garbage (module docstring); with
    ``dry_run``, do it on a clone and report what would go, changing nothing."""
    started = time.monotonic()
    now = now or datetime.now(UTC)
    repo = store.open()
    if not dry_run:
        before = store.storage_bytes()
        with store.reporting("maintaining the store"):
            outcome = _expire_and_collect(repo, policy, now, store.lock(run_id="maintenance"))
        after = store.storage_bytes()
    elif store.on_s3:
        raise StoreError(
            f"{store.dataset_id}: a maintenance dry run works on a copy of the repository, which "
            f"is made for local stores only; {store.location} is on S3. Copy it to a local "
            "directory and run the dry run with REF_STORAGE_ROOT there, or run the maintenance "
            "itself (releases are always kept; `retention` in the spec says what goes)."
        )
    else:
        scratch = Path(store.root) / ".maintenance"
        prefix = f"{store.name}.dry-run-"
        with store.reporting("maintaining a copy of the store (dry run)"):
            scratch.mkdir(parents=True, exist_ok=True)
            _remove_stale_clones(scratch, prefix)
        with (
            store.reporting("maintaining a copy of the store (dry run)"),
            tempfile.TemporaryDirectory(prefix=prefix, dir=scratch) as directory,
        ):
            clone = Path(directory) / store.name
            with store.lock(run_id="maintenance dry run"):  # a consistent copy
                _clone(store.path, clone)
                before = store_bytes(store.path)
            outcome = _expire_and_collect(_open(clone), policy, now, contextlib.nullcontext())
            after = store_bytes(clone)
    report = MaintenanceReport(
        dataset=store.dataset_id,
        repository=store.name,
        dry_run=dry_run,
        policy=policy.describe(),
        store_bytes_before=before,
        store_bytes_after=after,
        seconds=round(time.monotonic() - started, 3),
        **outcome,
    )
    logger.info(
        "%s: %smaintenance expired %d snapshots, deleted %d objects (%d bytes)",
        store.name,
        "dry-run " if dry_run else "",
        len(report.expired_snapshots),
        report.snapshots_deleted + report.manifests_deleted + report.chunks_deleted,
        report.bytes_deleted,
    )
    return report


def maintain_dataset(
    store: DatasetStore,
    policy: RetentionPolicy,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[MaintenanceReport]:
    """`maintain` the dataset's store, then its time-series copy if it has one: derived data
    with a history of its own (a commit per update), kept by the same policy."""
    from ref_assets.store.timeseries import timeseries_store

    reports = [maintain(store, policy, dry_run=dry_run, now=now)]
    copy = timeseries_store(store)
    if copy.exists():
        reports.append(maintain(copy, policy, dry_run=dry_run, now=now))
    return reports


def _expire_and_collect(
    repo: ic.Repository,
    policy: RetentionPolicy,
    now: datetime,
    lock: contextlib.AbstractContextManager,
) -> dict[str, Any]:
    notes = []
    with lock:
        discarded = []
        since = now - policy.abandoned_after
        active = _branches_active_since(repo, since)
        for branch in sorted(repo.list_branches()):
            if not branch.startswith(tuple(f"{p}." for p in WORK_PURPOSES)):
                continue
            tip = repo.lookup_snapshot(repo.lookup_branch(branch))
            if branch not in active and tip.written_at < since:
                repo.delete_branch(branch)
                discarded.append(branch)
        ancestry = list(repo.ancestry(branch="main"))
        cutoff = expiry_cutoff(ancestry, policy, now)
        protected = []
        if cutoff is not None:
            on_main = {snapshot.id: snapshot for snapshot in ancestry}
            for branch in sorted(set(repo.list_branches()) - {"main"}):
                base = _base_on_main(repo, branch, on_main)
                if base is not None and base.written_at < cutoff:
                    cutoff = base.written_at  # exclusive bound: the base is kept
                    protected.append(branch)
        expired = sorted(repo.expire_snapshots(cutoff)) if cutoff is not None else []
        releases = sorted(repo.list_tags())
        # Under the lock as well: Icechunk 2.3's garbage collection rewrites the repository
        # object too (measured: even when it deletes nothing), and a commit landing between
        # its read and its write would be dropped (the test with a writer alongside shows it).
        summary = repo.garbage_collect(datetime.now(UTC) - policy.grace)
    if cutoff is None:
        notes.append(f"main has no snapshot the policy lets go ({len(ancestry)} in its history)")
    if (waiting := len(expired) - summary.snapshots_deleted) > 0 and policy.grace:
        # Else a user sees "expire 14 snapshots ... delete 0 snapshots" and no reason.
        notes.append(
            f"{waiting} of the {len(expired)} expired snapshots were written within the grace "
            f"({policy.grace.total_seconds() / 60:g} min), so they and what only they use stay "
            "in case a writer is still committing: a maintenance after that deletes them "
            "(--grace-minutes 0 when nothing writes meanwhile)"
        )
    if summary.objects_failed_to_delete:
        notes.append(
            f"{summary.objects_failed_to_delete} objects could not be deleted; the next "
            "maintenance deletes them"
        )
    return {
        "cutoff": cutoff,
        "expired_snapshots": expired,
        "discarded_branches": discarded,
        "protected_branches": protected,
        "releases_kept": releases,
        "snapshots_deleted": summary.snapshots_deleted,
        "manifests_deleted": summary.manifests_deleted,
        "chunks_deleted": summary.chunks_deleted,
        "transaction_logs_deleted": summary.transaction_logs_deleted,
        "attributes_deleted": summary.attributes_deleted,
        "bytes_deleted": summary.bytes_deleted,
        "notes": notes,
    }


def expiry_cutoff(
    ancestry: list[ic.SnapshotInfo], policy: RetentionPolicy, now: datetime
) -> datetime | None:
    """The instant before which ``main``'s snapshots expire (exclusive: a snapshot written at
    it is kept), from ``main``'s ancestry (newest first); None when the policy keeps them all.
    Either rule keeps a snapshot, so the cut-off is the earlier of the two."""
    cutoffs = []
    if policy.keep_for is not None:
        cutoffs.append(now - policy.keep_for)
    if policy.keep_last is not None:
        commits = [snapshot for snapshot in ancestry if snapshot.parent_id is not None]
        if len(commits) <= policy.keep_last:
            return None
        cutoffs.append(commits[policy.keep_last - 1].written_at)
    return min(cutoffs)


def _branches_active_since(repo: ic.Repository, since: datetime) -> set[str]:
    """Branches created, reset or committed to since ``since``, from Icechunk's operations log
    (newest first, read back only that far). A branch's tip alone would not do: a rebuild that
    just started from an old ``main`` has a tip as old as that."""
    active = set()
    for update in repo.ops_log():
        if update.updated_at < since:
            break
        kind = update.kind
        if isinstance(kind, ic.UpdateType.BranchCreated | ic.UpdateType.BranchReset):
            active.add(kind.name)
        elif isinstance(kind, ic.UpdateType.NewCommit | ic.UpdateType.CommitAmended):
            active.add(kind.branch)
    return active


def _base_on_main(
    repo: ic.Repository, branch: str, on_main: dict[str, ic.SnapshotInfo]
) -> ic.SnapshotInfo | None:
    """The newest snapshot of ``branch``'s history that is also ``main``'s: where its work
    began (or where its last replay caught up)."""
    for snapshot in repo.ancestry(branch=branch):
        if snapshot.id in on_main:
            return on_main[snapshot.id]
    return None


def store_bytes(path: Path) -> int:
    """The bytes of every file under ``path`` (the repository), as on disk."""
    return sum(size for _, size in _files(path))


def _files(path: Path) -> Iterator[tuple[str, int]]:
    for directory, _, names in os.walk(path):
        for name in names:
            full = os.path.join(directory, name)
            with contextlib.suppress(FileNotFoundError):  # deleted while listing
                yield full, os.stat(full, follow_symlinks=False).st_size


def _clone(source: Path, target: Path) -> None:
    """Copy the repository at ``source`` to ``target``, linking its immutable objects (copied
    where the file system cannot link), keeping modification times (garbage collection's
    age)."""
    for directory, _, names in os.walk(source):
        relative = Path(directory).relative_to(source)
        (target / relative).mkdir(parents=True, exist_ok=True)
        immutable = bool(relative.parts) and relative.parts[0] in _IMMUTABLE_DIRECTORIES
        for name in names:
            origin, copy = Path(directory) / name, target / relative / name
            if immutable:
                try:
                    os.link(origin, copy)
                    continue
                except OSError:
                    pass
            shutil.copy2(origin, copy)


def _remove_stale_clones(scratch: Path, prefix: str) -> None:
    """Remove the clones of dry runs killed before they could (a dry run takes seconds to
    minutes; one a day old is no longer in use)."""
    stale = time.time() - STALE_CLONE_SECONDS
    for clone in scratch.glob(f"{prefix}*"):
        with contextlib.suppress(FileNotFoundError):
            if clone.stat().st_mtime < stale:
                shutil.rmtree(clone, ignore_errors=True)


def _open(path: Path) -> ic.Repository:
    return ic.Repository.open(
        ic.local_filesystem_storage(str(path)), config=ic.RepositoryConfig(caching=CACHING)
    )

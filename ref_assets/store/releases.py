"""Releases: named, immutable snapshots of a dataset's store that people can cite.

A release is an Icechunk tag on a snapshot (by default ``main``'s tip). Tags are never moved nor
reused: a release names the same data for good, and retention (`ref_assets.store.maintenance`)
keeps every tagged snapshot whatever its age::

    release = tag(store, "v2024.1")          # main's tip now
    open_dataset("demo_air_temperature", tag="v2024.1")   # that data, whatever main holds later
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import icechunk as ic

from ref_assets.store.repository import DatasetStore, StoreError

# Letters, digits, dots, dashes and underscores, starting with a letter or digit: safe as an
# Icechunk ref, as a file name (local storage) and on the command line.
TAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class ReleaseError(StoreError):
    """A release that cannot be made or found; the message says what to do."""


@dataclass(frozen=True)
class Release:
    """A tag ``name`` on ``snapshot``, written at ``written_at`` with commit ``message``."""

    name: str
    snapshot: str
    written_at: datetime
    message: str


def tag(
    store: DatasetStore, name: str, snapshot: str | None = None, *, force: bool = False
) -> Release:
    """Tag ``snapshot`` (default: ``main``'s tip) as release ``name``. An invalid or existing
    name is refused (releases are immutable), as is a snapshot the store does not hold, and,
    unless ``force``, one that was never published: neither in ``main``'s history nor another
    release's (a work branch's, holding perhaps periods a validated run refused)."""
    if not TAG_NAME.fullmatch(name):
        raise ReleaseError(
            f"{store.dataset_id}: {name!r} is not a valid release name: use up to 100 letters, "
            "digits, '.', '-' or '_', starting with a letter or digit (e.g. v2024.1)"
        )
    repo = store.open()
    # Local storage has no atomic ref updates: a tag written beside a commit could drop it.
    with store.reporting(f"tagging release {name}"), store.lock(run_id=f"tag {name}"):
        if name in repo.list_tags():
            existing = repo.lookup_tag(name)
            raise ReleaseError(
                f"{store.dataset_id}: release {name!r} exists (snapshot {existing}); releases "
                "are immutable: choose another name"
            )
        target = snapshot or repo.lookup_branch("main")
        info = _snapshot_info(store, repo, target)
        if snapshot and not force:
            _check_published(store, repo, target)
        repo.create_tag(name, target)
    return Release(name, target, info.written_at, info.message)


def releases(store: DatasetStore) -> list[Release]:
    """Every release of the store, oldest snapshot first."""
    repo = store.open()
    with store.reporting("listing releases"):
        found = []
        for name in repo.list_tags():
            snapshot = repo.lookup_tag(name)
            info = repo.lookup_snapshot(snapshot)
            found.append(Release(name, snapshot, info.written_at, info.message))
    return sorted(found, key=lambda release: (release.written_at, release.name))


def resolve(store: DatasetStore, name: str) -> str:
    """The snapshot release ``name`` tags; an unknown name is an error listing the releases."""
    repo = store.open()
    with store.reporting(f"looking up release {name}"):
        names = repo.list_tags()
        if name in names:
            return repo.lookup_tag(name)
    known = ", ".join(sorted(names)) if names else "none yet"
    raise ReleaseError(
        f"{store.dataset_id}: no release named {name!r} (releases: {known}); make one with "
        f"`ref-assets tag {store.dataset_id} NAME`"
    )


def _snapshot_info(store: DatasetStore, repo: ic.Repository, snapshot: str) -> ic.SnapshotInfo:
    try:
        return repo.lookup_snapshot(snapshot)
    except ic.IcechunkError:
        raise ReleaseError(
            f"{store.dataset_id}: the store holds no snapshot {snapshot!r} (it may have been "
            "expired by maintenance); `ref-assets tag DATASET NAME` tags main's tip"
        ) from None


def _check_published(store: DatasetStore, repo: ic.Repository, snapshot: str) -> None:
    """Refuse a snapshot readers of ``main`` never saw: in neither ``main``'s history nor a
    release. Such a snapshot is a work branch's (a rebuild's, a validated run's whose periods
    may have failed their checks), and a release of it would publish data nobody published."""
    if snapshot in {info.id for info in repo.ancestry(branch="main")}:
        return
    if snapshot in {repo.lookup_tag(tag) for tag in repo.list_tags()}:
        return
    holders = [
        branch
        for branch in sorted(repo.list_branches() - {"main"})
        if snapshot in {info.id for info in repo.ancestry(branch=branch)}
    ]
    where = f"it is on work branch {', '.join(holders)} only" if holders else "no branch holds it"
    raise ReleaseError(
        f"{store.dataset_id}: snapshot {snapshot} was never published: it is not in main's "
        f"history nor a release's ({where}), so it may hold periods that were never checked or "
        "that a validated run refused. Tag a snapshot of main's history (`ref-assets tag "
        f"{store.dataset_id} NAME` tags main's tip), or give --force to tag it anyway"
    )

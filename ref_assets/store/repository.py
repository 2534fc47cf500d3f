"""One Icechunk repository per dataset, under a storage root.

The root is a local directory or ``s3://bucket/prefix`` (`ref_assets.store.s3`: the server and
credentials come from the environment). Each dataset's repository lives at
``<root>/<dataset_id>``.

On S3, conditional writes make Icechunk's ref updates compare-and-set: a commit that lost a race
fails with a conflict and is rebased and retried (with bounded, jittered back-off) by its
writer, so no lock is needed and `DatasetStore.lock` holds none there. The server's support for
them is proven before a process first writes (`ref_assets.store.s3.check_conditional_writes`).

Local filesystem storage has no atomic ref updates, so
concurrent commits can silently drop each other (measured with icechunk 2.3: 4 writers of 64
periods into a laid-out store, no lock: 57 landed, no error raised);
every commit and every layout change therefore happens under an inter-process lock,
``<root>/.locks/<dataset_id>.lock``. The lock is an ``flock``: the kernel releases it when its
holder dies, so a killed run never leaves a lock that blocks the next. Its holder (pid, host, run
id) is recorded beside it, in ``<dataset_id>.holder``, so a run that has to wait can say for whom.

Storage failures (a full disk, a corrupt repository file, an unusable lock path) are raised as
`StorageFailure`, naming the dataset, what was being done (the periods at stake), the file or
location and what to do; see `DatasetStore.reporting`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import icechunk as ic

from ref_assets.config import storage_root_problem
from ref_assets.secrets import redact
from ref_assets.specs import DATASET_ID_PATTERN
from ref_assets.store.s3 import (
    S3Connection,
    S3Location,
    S3Problem,
    check_conditional_writes,
    conditional_writes_problem,
    is_s3,
)

if TYPE_CHECKING:  # imported by the writers that lock: readers (`status`) need no lock
    import fsspec
    from filelock import FileLock

logger = logging.getLogger(__name__)

_DATASET_ID = re.compile(DATASET_ID_PATTERN)

# Icechunk warns on every open of local storage that it is unsafe for concurrent commits; we hold
# an inter-process lock around every commit, so the warning would only teach users to ignore logs.
ic.set_logs_filter("warn,icechunk_arrow_object_store=error,icechunk_storage::readback=error")

# A commit holds the lock for tens of milliseconds, so a wait beyond a few seconds is worth a
# word (another run's long commit, or a stuck process); past the timeout, the run gives up.
LOCK_NOTICE_SECONDS = 5.0
LOCK_NOTICE_EVERY_SECONDS = 60.0
LOCK_TIMEOUT_SECONDS = 600.0

# On S3, each request that fails (a server restarting, a network blip) is tried up to 8 times,
# waiting 0.1 s doubling to at most 5 s between tries (about 16 s in all): a restart is ridden
# through, a server that stays away fails the run in bounded time (Icechunk's default backs off
# to 3 minutes).
S3_RETRIES = ic.StorageRetriesSettings(max_tries=8, initial_backoff_ms=100, max_backoff_ms=5_000)

# On S3, objects of a store creation this old with no repository object are a dead creation's.
ABANDONED_CREATION_SECONDS = 30.0

# Icechunk's default caches (500,000 snapshot nodes, 15 million chunk references) keep every
# superseded snapshot and manifest shard of a long-lived writer: measured here over 3,650
# per-period commits, resident memory grew to 1.7 GB and commit time from 20 to 49 ms. Bounded
# caches keep both flat; they still hold the manifests of a store of decades of periods.
CACHING = ic.CachingConfig(num_snapshot_nodes=1_000, num_chunk_refs=200_000)

# What Icechunk 2 writes at a repository's root (`repo` last: a repository exists once it is).
_ICECHUNK_ENTRIES = frozenset(
    {
        "repo",
        "config.yaml",
        "snapshots",
        "manifests",
        "transactions",
        "chunks",
        "refs",
        "overwritten",
    }
)

# Icechunk 2's repository object, rewritten on every commit, carries a log of the latest
# operations (1,000 by default, each naming a backup copy) before it links to older ones; at 50
# the object stops growing after 50 commits instead of 1,000 (measured: commit cost's growth
# over 2,000 commits 4.0 -> 3.0 ms). Only reading the whole operations log needs more fetches.
UPDATES_PER_REPO_OBJECT = 50

# How icechunk 2 words a file it cannot decode: garbage (bad magic numbers, FormatError) or a
# truncated file (zstd: "Src size is incorrect").
_CORRUPTION_SIGNS = (
    "invalid magic numbers",
    "Src size is incorrect",
    "deserializ",
    "decompress",
    "unexpected end of file",
)
# The repository objects an icechunk error's context names, and their paths in the repository.
_OBJECTS_IN_CONTEXT = (
    (re.compile(r"snapshot_id=(\w+)"), "snapshots/{}"),
    (re.compile(r"manifest_id=(\w+)"), "manifests/{}"),
    (re.compile(r"fetch_repo_info()"), "repo"),
)


class StoreError(RuntimeError):
    """A store that cannot be opened or used; the message names the dataset and location."""


class StorageFailure(StoreError):
    """The storage refused an operation (full disk, corrupt file, unusable lock path); the message
    names the dataset, what was being done, the file or location, and what to do."""


def repository_config(manifest_split: int) -> ic.RepositoryConfig:
    """Repository config with manifests split along time, so that a commit of one period rewrites
    one manifest shard instead of the whole array's manifest (storage stays linear in periods)."""
    config = ic.RepositoryConfig.default()
    config.num_updates_per_repo_info_file = UPDATES_PER_REPO_OBJECT
    config.manifest = ic.ManifestConfig(
        splitting=ic.ManifestSplittingConfig.from_dict(
            {
                ic.ManifestSplitCondition.AnyArray(): {
                    ic.ManifestSplitDimCondition.DimensionName("time"): manifest_split
                }
            }
        )
    )
    return config


class DatasetStore:
    """Where one dataset's repository lives, and how to open, create and lock it.

    >>> store = DatasetStore("/tmp/stores", "demo_air_temperature")
    >>> store.location
    '/tmp/stores/demo_air_temperature'
    """

    # Appended to the dataset id to name the repository, its lock and holder (a store derived
    # from the dataset's, such as its time-series copy, sets its own; ids never hold a dot).
    SUFFIX = ""

    def __init__(self, root: str, dataset_id: str) -> None:
        if not _DATASET_ID.match(dataset_id):
            raise StoreError(
                f"invalid dataset id {dataset_id!r}: use lower-case letters, digits and "
                "underscores, starting with a letter"
            )
        problem = storage_root_problem(root)
        if problem:
            raise StoreError(f"{dataset_id}: {problem}")
        self.dataset_id = dataset_id
        self.root = root
        self.name = dataset_id + self.SUFFIX
        if is_s3(root):
            self.s3: S3Location | None = S3Location.parse(root).child(self.name)
            self._local: Path | None = None
        else:
            self.s3 = None
            self._local = Path(root) / self.name

    @property
    def on_s3(self) -> bool:
        return self.s3 is not None

    @property
    def path(self) -> Path:
        """The repository's local directory; a StoreError on S3 (callers that need one there
        say what they do instead)."""
        if self._local is None:
            raise StoreError(f"{self.dataset_id}: the store at {self.location} has no local path")
        return self._local

    @property
    def url(self) -> str:
        """Where the repository lives: a local path or an s3:// URL (never with credentials)."""
        return self.s3.url if self.s3 is not None else str(self.path)

    @property
    def location(self) -> str:
        """Where the repository lives, as messages and metadata show it (credentials masked)."""
        return redact(self.url)

    def _connection(self) -> S3Connection:
        try:
            return S3Connection.from_environment()
        except S3Problem as err:
            raise StoreError(f"{self.dataset_id}: {err}") from None

    def _storage(self) -> ic.Storage:
        if self.s3 is not None:
            return self._connection().icechunk_storage(self.s3)
        return ic.local_filesystem_storage(str(self.path))

    def filesystem(self) -> tuple[fsspec.AbstractFileSystem, str]:
        """An fsspec file system and the repository's path in it (local or S3)."""
        import fsspec

        if self.s3 is not None:
            return self._connection().filesystem(), f"{self.s3.bucket}/{self.s3.prefix}"
        return fsspec.filesystem("file"), str(self.path)

    def storage_bytes(self) -> int:
        """Bytes the repository occupies (every object under its path; 0 if there is none)."""
        fs, path = self.filesystem()
        with self.reporting("measuring the store"):
            try:
                return int(fs.du(path, total=True))
            except FileNotFoundError:
                return 0

    @property
    def lock_path(self) -> Path:
        """The local lock file. On S3 there is no shared file system: a local file in the
        temporary directory (keyed by the root), which serializes only the processes of this
        machine; used by what must never run twice at once here (rewrites)."""
        if self.s3 is not None:
            import hashlib
            import tempfile

            # The endpoint too: one bucket name on two servers is two stores.
            where = f"{self._connection().endpoint_url or 'aws'} {self.root}"
            key = hashlib.sha256(where.encode()).hexdigest()[:16]
            return Path(tempfile.gettempdir()) / "ref_assets-locks" / key / f"{self.name}.lock"
        return Path(self.root) / ".locks" / f"{self.name}.lock"

    def exists(self) -> bool:
        with self.reporting("opening the store"):
            return ic.Repository.exists(self._storage())

    def open(self) -> ic.Repository:
        """Open the existing repository; StoreError says what to do when there is none."""
        if not self.exists():
            raise StoreError(
                f"{self.dataset_id}: no store at {self.location}; materialize a period of the "
                "dataset first (or check REF_STORAGE_ROOT / [storage] root in ref.toml)"
            )
        return self._open_existing()

    def open_or_create(self, manifest_split: int, *, run_id: str | None = None) -> ic.Repository:
        """Open the repository, creating it (with its persisted config) if it does not exist.
        This is the writers' way in: on S3 it first proves the server's conditional writes."""
        if self.s3 is not None:
            return self._open_or_create_on_s3(manifest_split)
        if self.exists():
            return self._open_existing()
        with self.lock(run_id=run_id):
            if self.exists():  # another process created it while we waited
                return self._open_existing()
            self._clear_interrupted_creation()
            with self.reporting("creating the store"):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                ic.Repository.create(self._storage(), config=repository_config(manifest_split))
            logger.info("%s: created repository at %s", self.dataset_id, self.location)
            return self._open_existing()

    def _open_or_create_on_s3(self, manifest_split: int) -> ic.Repository:
        """Without a lock: Icechunk creates the repository object last and conditionally, so of
        racing creators one wins and the others open what it made. A creator that died halfway
        left objects but no repository object; once they are `ABANDONED_CREATION_SECONDS` old
        (no live creation takes that long) they are removed and the creation tried again."""
        assert self.s3 is not None
        try:
            # Probed beside the repositories, never inside one's prefix (creation wants it empty).
            root = S3Location.parse(self.root)
            check_conditional_writes(self._connection(), root.bucket, root.prefix)
        except S3Problem as err:
            raise StoreError(f"{self.dataset_id}: {err}") from None
        deadline = time.monotonic() + 2 * ABANDONED_CREATION_SECONDS
        while not self.exists():
            try:
                with self.reporting("creating the store"):
                    ic.Repository.create(self._storage(), config=repository_config(manifest_split))
                logger.info("%s: created repository at %s", self.dataset_id, self.location)
                break
            except (StorageFailure, ic.ConflictError):
                # Losing the race surfaces either way: the winner's repository object is there
                # ("repo info object was updated"), or its other objects made the prefix unclean.
                if self.exists():  # another writer created it first
                    break
                if time.monotonic() > deadline or not self._remains_of_creation():
                    raise
                time.sleep(random.uniform(0.2, 1.0))
        repo = self._open_existing()
        problem = conditional_writes_problem(repo.config.storage)
        if problem:
            raise StoreError(f"{self.dataset_id}: the store at {self.location}: {problem}.")
        return repo

    def _remains_of_creation(self) -> bool:
        """Whether the prefix holds only Icechunk objects (no repository object); those of a
        creation dead for `ABANDONED_CREATION_SECONDS` are removed. False for anything else."""
        fs, path = self.filesystem()
        objects = fs.find(path, detail=True)
        names = {key[len(path) :].lstrip("/").split("/")[0] for key in objects}
        if not names or names - _ICECHUNK_ENTRIES:
            return False
        newest = max(info["LastModified"] for info in objects.values())
        if (datetime.now(UTC) - newest).total_seconds() > ABANDONED_CREATION_SECONDS:
            logger.warning(
                "%s: removing the remains of an interrupted store creation at %s",
                self.dataset_id,
                self.location,
            )
            fs.rm(list(objects))
        return True

    def _clear_interrupted_creation(self) -> None:
        """Remove what a creation killed halfway left (Icechunk's folders, no repository
        object): Icechunk creates only in an empty prefix, so it would block every later
        creation. Called under the lock with no repository there; anything else in the folder
        is not ours and is refused, untouched."""
        if not self.path.is_dir() or not any(self.path.iterdir()):
            return
        foreign = sorted(p.name for p in self.path.iterdir() if p.name not in _ICECHUNK_ENTRIES)
        if foreign:
            raise StoreError(
                f"{self.dataset_id}: {self.location} holds no Icechunk repository but other "
                f"files ({', '.join(foreign[:5])}); it is not a store ref_assets created. Move "
                "them away, or set another storage root (REF_STORAGE_ROOT / [storage] root)."
            )
        logger.warning(
            "%s: removing the remains of an interrupted store creation at %s",
            self.dataset_id,
            self.location,
        )
        shutil.rmtree(self.path)

    def _open_existing(self) -> ic.Repository:
        # The persisted config (manifest splitting) is kept; the caches are bounded, and stores
        # created before UPDATES_PER_REPO_OBJECT get it too.
        config = ic.RepositoryConfig(
            caching=CACHING, num_updates_per_repo_info_file=UPDATES_PER_REPO_OBJECT
        )
        if self.s3 is not None:
            config.storage = ic.StorageSettings(retries=S3_RETRIES)
        with self.reporting("opening the store"):
            return ic.Repository.open(self._storage(), config=config)

    def no_periods_yet(self) -> str:
        """The message for a store that exists but holds no period."""
        return (
            f"{self.dataset_id}: the store at {self.location} holds no periods yet; materialize "
            f"some first (`ref-assets materialize {self.dataset_id} --start PERIOD --end PERIOD`, "
            "or from the Dagster UI)"
        )

    @contextlib.contextmanager
    def reporting(self, action: str | Callable[[], str]) -> Iterator[None]:
        """Raise a storage failure inside the block as `StorageFailure` naming the dataset,
        ``action`` (what was being done, with the periods at stake; a callable is asked when the
        failure happens), the file and what to do. Commit conflicts pass through untouched:
        writers retry them."""
        try:
            yield
        except (StoreError, ic.ConflictError):
            raise
        except (OSError, ic.IcechunkError) as err:
            doing = action() if callable(action) else action
            raise StorageFailure(self._explain(err, doing)) from err

    def _explain(self, err: Exception, action: str) -> str:
        text = str(err)
        cause = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        where = f"{self.dataset_id}: {action} failed"
        if (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
            sign in text for sign in ("No space left on device", "Disk quota exceeded")
        ):
            return (
                f"{where}: no space left for the store at {self.location} ({cause}). Free space "
                "on that file system (or move the storage root), then run it again: periods "
                "committed before are kept, and nothing uncommitted is visible to readers."
            )
        if isinstance(err, ic.FormatError) or any(sign in text for sign in _CORRUPTION_SIGNS):
            found = _corrupt_object(text)
            what = (
                f"the repository file {self.url}/{found} is corrupt"
                if found
                else f"a file of the repository at {self.location} is corrupt"
            )
            return (
                f"{where}: {what} ({cause}). Restore the store from a backup, or move "
                f"{self.location} aside and materialize the dataset again to rebuild it."
            )
        return (
            f"{where}: storage error at {self.location}: {cause}. Check that the storage root is "
            "reachable and writable (permissions, mounts), then run it again."
        )

    @contextlib.contextmanager
    def lock(self, *, run_id: str | None = None) -> Iterator[None]:
        """Serialize commits and layout changes on local storage: hold the dataset's
        inter-process commit lock, recording who holds it. On S3 it holds nothing: conditional
        writes make every ref update a compare-and-set, and the committers rebase and retry
        (what needs a consistent view beyond one commit checks `on_s3` itself).

        A wait longer than `LOCK_NOTICE_SECONDS` is logged (a warning naming the lock and its
        holder), again every `LOCK_NOTICE_EVERY_SECONDS`; after `LOCK_TIMEOUT_SECONDS` the wait
        ends in a StoreError saying what to do."""
        if self.s3 is not None:
            yield
            return
        with self._file_lock(run_id):
            yield

    @contextlib.contextmanager
    def commit_turn(self, *, run_id: str | None = None, wait: bool = True) -> Iterator[bool | None]:
        """Take this machine's turn to commit periods, yielding whether another writer held it
        first (then the branch has likely moved: catch up before committing); with ``wait``
        false, yield None at once if it is taken, holding nothing. It is the commit lock
        (`lock`) on local storage; on S3 the same lock in the temporary directory
        (`lock_path`), which lines up only this machine's writers, so their commits stop
        beating each other (and can be grouped: `store.commits.commit_in_turn`), while writers
        on other machines stay safe by compare-and-set as before."""
        with self._file_lock(run_id, wait=wait) as waited:
            yield waited

    @contextlib.contextmanager
    def _file_lock(self, run_id: str | None, *, wait: bool = True) -> Iterator[bool | None]:
        """Hold the lock file, yielding whether it was taken first (None, and nothing held,
        when it was and ``wait`` is false)."""
        from filelock import FileLock, Timeout

        lock = FileLock(self.lock_path)
        waited: bool | None = False
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                waited = True if wait else None
                if wait:
                    self._acquire(lock)
        except OSError as err:
            raise StorageFailure(self._lock_path_problem(err)) from err
        if waited is None:
            yield None
            return
        try:
            self._record_holder(run_id)
            yield waited
        finally:
            lock.release()

    def _acquire(self, lock: FileLock) -> None:
        from filelock import Timeout

        started = time.monotonic()
        deadline = started + LOCK_TIMEOUT_SECONDS
        notice_at = started + LOCK_NOTICE_SECONDS
        while True:
            wait_until = min(notice_at, deadline)
            try:
                lock.acquire(timeout=max(0.0, wait_until - time.monotonic()))
                return
            except Timeout:
                waited = time.monotonic() - started
                if wait_until == deadline:
                    raise StoreError(
                        f"{self.dataset_id}: waited {waited:.0f} s for the commit lock at "
                        f"{self.lock_path}, held by {self._holder()}; nothing more was written. "
                        "If that process is stuck, stop it (the lock is freed when its holder "
                        "exits), then run the partitions again."
                    ) from None
                logger.warning(
                    "%s: the commit lock at %s is held by %s; waiting (%.0f s so far, at most "
                    "%.0f s)",
                    self.dataset_id,
                    self.lock_path,
                    self._holder(),
                    waited,
                    LOCK_TIMEOUT_SECONDS,
                )
                notice_at += LOCK_NOTICE_EVERY_SECONDS

    @property
    def _holder_path(self) -> Path:
        return self.lock_path.with_name(f"{self.name}.holder")

    def _record_holder(self, run_id: str | None) -> None:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "run_id": run_id,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        # Information for waiting runs only: a full disk must fail the commit, not this note.
        with contextlib.suppress(OSError):
            self._holder_path.write_text(json.dumps(holder))

    def _holder(self) -> str:
        """Who holds the lock, as recorded by the holder (a plain write: a torn read or a holder
        that predates the record says so)."""
        try:
            holder = json.loads(self._holder_path.read_text())
            run = f", run {holder['run_id']}" if holder.get("run_id") else ""
            return f"pid {holder['pid']} on {holder['host']}{run} since {holder['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process (not recorded)"

    def _lock_path_problem(self, err: OSError) -> str:
        path, parent = self.lock_path, self.lock_path.parent
        where = f"{self.dataset_id}: cannot take the commit lock {path}"
        if isinstance(err, IsADirectoryError) or path.is_dir():
            return (
                f"{where}: that path is a directory. Remove the directory (ref_assets creates "
                "the lock file itself), then run again."
            )
        if parent.exists() and not parent.is_dir():
            return (
                f"{where}: {parent} is a file, not a directory. Remove or rename that file, then "
                "run again."
            )
        if isinstance(err, PermissionError):
            return f"{where}: permission denied. Make {parent} writable for this user."
        return f"{where}: {err}. Check that {parent} is a writable directory, then run again."


def _corrupt_object(text: str) -> str | None:
    """The path, in the repository, of the object an icechunk error says it could not decode."""
    for pattern, path in _OBJECTS_IN_CONTEXT:
        if match := pattern.search(text):
            return path.format(*match.groups())
    return None

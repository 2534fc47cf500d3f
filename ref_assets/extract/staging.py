"""The staging area: where extractions land, each with its record, until they expire.

::

    <staging>/<dataset>/<key>-<random>.nc | .zarr/ | .csv    the output
    <staging>/<dataset>/<key>.json                   its record, written last, naming its output
    <staging>/<dataset>/.partial-...                 an extraction being written (local), or
                                                     being uploaded (S3)

``<staging>`` is a local directory or ``s3://bucket/prefix`` (the server and credentials from
the environment, as for storage roots). An output counts once its record is there: the output
is written under a temporary name, then renamed (local) or copied and the copy deleted (S3),
then the record is written (atomically: a rename, or one PUT). A reader, a reuse or a clean-up
never takes a half-written output for one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ref_assets.extract.request import ExtractionError
from ref_assets.files import atomic_write_bytes
from ref_assets.secrets import redact
from ref_assets.store.s3 import S3Connection, S3Location, S3Problem, is_s3

PARTIAL_PREFIX = ".partial-"


class StagingArea:
    """A staging area at ``url`` (a local directory or ``s3://bucket/prefix``).

    >>> StagingArea("/tmp/staging").output("demo_air_temperature", "abc-1234", ".nc")
    '/tmp/staging/demo_air_temperature/abc-1234.nc'
    """

    def __init__(self, url: str) -> None:
        self.url = url
        if redact(url) != url or ("://" in url and not is_s3(url)):
            raise ExtractionError(
                f"staging area {redact(url)}: give a directory or s3://bucket/prefix, with no "
                "credentials in it (they come from the environment, as for storage roots)"
            )
        if is_s3(url):
            try:
                location = S3Location.parse(url)
                self.fs = S3Connection.from_environment().filesystem()
            except S3Problem as err:
                raise ExtractionError(f"staging area {url}: {err}") from None
            self.root = f"{location.bucket}/{location.prefix}".rstrip("/")
            self.local: Path | None = None
        else:
            import fsspec

            self.fs = fsspec.filesystem("file")
            self.local = Path(url).expanduser().absolute()  # records name outputs absolutely
            self.root = self.url = str(self.local)

    @property
    def location(self) -> str:
        return redact(self.url)

    def output(self, dataset: str, name: str, suffix: str) -> str:
        return f"{self.root}/{dataset}/{name}{suffix}"

    def record(self, dataset: str, key: str) -> str:
        return f"{self.root}/{dataset}/{key}.json"

    def url_of(self, path: str) -> str:
        return path if self.local is not None else f"s3://{path}"

    def holds(self, record: dict) -> bool:
        """Whether the output ``record`` names is there (not deleted behind our back)."""
        self.fs.invalidate_cache()
        return bool(record.get("output_path")) and self.fs.exists(record["output_path"])

    def read_record(self, path: str) -> dict | None:
        """The record at ``path``; None when there is none, or it does not read (a record is
        written whole, so that is one written by something else)."""
        try:
            with self.fs.open(path, "rb") as handle:
                record = json.loads(handle.read())
        except FileNotFoundError:
            return None
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def write_record(self, path: str, record: dict) -> None:
        data = json.dumps(record, indent=1).encode()
        if self.local is not None:
            atomic_write_bytes(Path(path), data)
        else:
            self.fs.pipe_file(path, data)  # one PUT: the object is there whole or not at all

    @contextlib.contextmanager
    def scratch(self, dataset: str, key: str) -> Iterator[Path]:
        """A local directory to write an output in, removed afterwards: beside the output on
        local staging (so the final rename stays on one file system), else a temporary one."""
        import tempfile

        if self.local is not None:
            parent = self.local / dataset
            parent.mkdir(parents=True, exist_ok=True)
            directory = parent / f"{PARTIAL_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
            directory.mkdir()
        else:
            directory = Path(tempfile.mkdtemp(prefix="ref-assets-extract-"))
        try:
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def publish(self, written: Path, target: str) -> None:
        """Move the finished output ``written`` (local) to ``target``, a name no other
        extraction uses: renamed on local staging; on S3 uploaded under a temporary name,
        copied into place and the upload deleted."""
        if self.local is not None:
            os.rename(written, target)
            return
        partial = f"{Path(target).parent}/{PARTIAL_PREFIX}{Path(target).name}"
        self.fs.put(str(written), partial, recursive=written.is_dir())
        self.fs.copy(partial, target, recursive=written.is_dir())
        self.remove(partial)

    def remove(self, path: str) -> None:
        """Remove a file or directory (prefix), if there is one."""
        self.fs.invalidate_cache()  # s3fs lists from a cache that our own writes made stale
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path, recursive=True)

    def size(self, path: str) -> int:
        try:
            return int(self.fs.du(path, total=True))
        except FileNotFoundError:
            return 0

    def stored(self, path: str) -> dict[str, dict[str, Any]]:
        """The files (objects) under ``path``, or ``path`` itself if it is one: an S3 server
        may list a prefix whose objects are all deleted as an empty directory."""
        if self.fs.isdir(path):
            found = self.fs.find(path, detail=True, withdirs=False)
        else:
            found = {path: self.fs.info(path)} if self.fs.exists(path) else {}
        return {name: info for name, info in found.items() if info.get("type") == "file"}

    def datasets(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        return sorted(
            Path(entry["name"]).name
            for entry in self.fs.ls(self.root, detail=True)
            if entry["type"] == "directory"
        )

    def entries(self, dataset: str) -> list[str]:
        return sorted(Path(p).name for p in self.fs.ls(f"{self.root}/{dataset}", detail=False))


def _modified(info: dict[str, Any]) -> float:
    value = info.get("mtime", info.get("LastModified", info.get("created", 0)))
    return value.timestamp() if isinstance(value, datetime) else float(value)


def output_sha256(path: Path) -> str:
    """The sha256 of a file; of a directory (Zarr), of its manifest: one line per file, sorted,
    ``<relative path> <sha256 of the file>``."""
    if path.is_file():
        return _file_sha256(path)
    lines = [
        f"{file.relative_to(path).as_posix()} {_file_sha256(file)}\n"
        for file in sorted(p for p in path.rglob("*") if p.is_file())
    ]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class RemovedOutput:
    """An output the clean-up deleted, and why: ``expired`` (its record's ``expires`` passed),
    ``unfinished`` (no record names it: an extraction that died, or the loser of two identical
    ones at once; older than the TTL)."""

    dataset: str
    name: str
    url: str
    bytes: int
    reason: str
    expired_at: str | None = None

    def as_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "name": self.name,
            "url": self.url,
            "bytes": self.bytes,
            "reason": self.reason,
            "expired_at": self.expired_at,
        }


@dataclass
class CleanupReport:
    """What a clean-up of a staging area removed, and how many outputs it kept."""

    staging: str
    removed: list[RemovedOutput] = field(default_factory=list)
    kept: int = 0

    @property
    def bytes_freed(self) -> int:
        return sum(item.bytes for item in self.removed)

    def as_json(self) -> dict:
        return {
            "staging": self.staging,
            "removed": [item.as_json() for item in self.removed],
            "bytes_freed": self.bytes_freed,
            "kept": self.kept,
        }


def expired(record: dict, now: datetime) -> bool:
    return datetime.fromisoformat(record["expires"]) <= now


def clean(area: StagingArea, *, ttl_hours: float, now: datetime | None = None) -> CleanupReport:
    """Delete every output whose record has expired (the output, then its record), and what
    no record names (extractions that died, the loser of two identical ones at once) once older
    than the TTL; report each one."""
    now = now or datetime.now(UTC)
    report = CleanupReport(area.location)
    area.fs.invalidate_cache()
    for dataset in area.datasets():
        names = area.entries(dataset)
        named: set[str] = set()  # the outputs live records name
        for name in (name for name in names if name.endswith(".json")):
            path = f"{area.root}/{dataset}/{name}"
            record = area.read_record(path)
            if record is None or "expires" not in record:
                continue  # not one of ours: left alone
            output = record.get("output_path", "")
            if not expired(record, now):
                report.kept += 1
                named.add(output)
                continue
            size = area.size(output) if output else 0
            if output:
                area.remove(output)
            # An identical request may have staged a new output and record since: that record
            # is left alone (the old output is the only one removed).
            current = area.read_record(path)
            if current is not None and current.get("output_path") == output:
                area.remove(path)
            report.removed.append(
                RemovedOutput(
                    dataset,
                    Path(output).name,
                    area.url_of(output),
                    size,
                    "expired",
                    record["expires"],
                )
            )
        for name in (name for name in names if not name.endswith(".json")):
            path = f"{area.root}/{dataset}/{name}"
            if path in named or not area.fs.exists(path):
                continue
            files = area.stored(path)
            if not files:
                continue  # an empty prefix: nothing is stored there
            age = now.timestamp() - max(_modified(info) for info in files.values())
            if age > ttl_hours * 3600:
                size = sum(int(info.get("size", 0)) for info in files.values())
                area.remove(path)
                report.removed.append(
                    RemovedOutput(dataset, name, area.url_of(path), size, "unfinished")
                )
    return report

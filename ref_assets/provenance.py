"""Provenance: the record stored with every period, in the same commit as its data.

A record says which source items (with the SHA-256 of the bytes read) produced the period, with
which provider, spec, code and package versions, in which Dagster run and when, and what was
written (the output checksum, see `ref_assets.checksum`). Records live in the store itself, in
``ref/records`` along the time axis (one chunk per period): a commit costs O(1) in the number of
periods, and a record is current data, so it survives snapshot expiry and garbage collection and
outlives any Dagster instance.

>>> record = read_provenance("demo_air_temperature", "2024-01-01")  # doctest: +SKIP
>>> record.checksum, [s.sha256 for s in record.sources]  # doctest: +SKIP
('sha256:...', ['9f86d0...'])
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ref_assets.config import Settings, load_settings
from ref_assets.files import atomic_write_bytes
from ref_assets.periods import Period
from ref_assets.providers.protocol import SourceFingerprint
from ref_assets.secrets import redact
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.store.layout import LAYOUT_VERSION
from ref_assets.store.repository import DatasetStore, StoreError

if TYPE_CHECKING:
    from ref_assets.batch import PeriodBatch

RECORD_FORMAT = "ref-assets/record-v4"  # v3 added flags; v4 fingerprint and previous
# The distributions whose versions shape a period's values or its storage.
RECORDED_PACKAGES = ("ref-assets", "dagster", "icechunk", "zarr", "xarray", "numpy")


class ProvenanceNotFoundError(LookupError):
    """The store holds no record for the period (it was never written)."""


class RecordFormatError(StoreError):
    """A stored record that does not read as a provenance record (written by an incompatible
    version, or damaged); the message names the dataset, the period and the fields."""


class SourceRecord(BaseModel):
    """One input: where it came from, its size and the SHA-256 of the bytes read."""

    model_config = ConfigDict(frozen=True)
    uri: str
    size: int
    sha256: str
    etag: str | None = None
    last_modified: str | None = None


class PreviousVersion(BaseModel):
    """What a period held before it was written again (a revision, or a plain re-run): the
    source fingerprint and output checksum of the replaced version, and when it was written."""

    model_config = ConfigDict(frozen=True, extra="allow")
    fingerprint: dict[str, Any] | None = None
    checksum: str
    written_at: datetime | None = None
    run_id: str | None = None


class VariableRecord(BaseModel):
    """One variable's storage type and statistics. A period without a finite value (all NaN:
    an all-ocean box of a land-only product) has no minimum, mean or maximum: None, which the
    stored JSON leaves out."""

    model_config = ConfigDict(frozen=True)
    units: str
    dtype: str
    shape: list[int]
    minimum: float | None = None
    mean: float | None = None
    maximum: float | None = None
    nan_fraction: float


class ProvenanceRecord(BaseModel):
    """The record of one period. Fields added after format v1 are optional, so records written
    by earlier versions still read; unknown fields (from later versions) are kept."""

    model_config = ConfigDict(frozen=True, extra="allow")

    format: str
    dataset: str
    period: str
    partition_key: str | None = None
    period_start: datetime
    period_end: datetime
    time_index: int
    provider: str
    provider_version: str
    spec: dict[str, Any] | None = Field(default=None, description="resolved spec, secrets masked")
    spec_fingerprint: str
    code_version: str | None = None
    sources: list[SourceRecord]
    checksum: str = Field(description="output checksum: ref_assets.checksum, format period-v1")
    variables: dict[str, VariableRecord]
    flags: dict[str, str] | None = Field(
        default=None, description="per-step source flags, such as ERA5 expver (0005: ERA5T)"
    )
    fingerprint: dict[str, Any] | None = Field(
        default=None,
        description="the source version read (ETag, Last-Modified, size, stage, preliminary), "
        "compared with the provider's current one to find revisions",
    )
    previous: PreviousVersion | None = Field(
        default=None, description="the version this write replaced, if the period was stored"
    )
    versions: dict[str, str] | None = None
    run_id: str
    fetched_at: datetime | None = None
    written_at: datetime

    @model_validator(mode="after")
    def _versions_of_format_v1(self) -> ProvenanceRecord:
        # Format v1 recorded only ref_assets' own version.
        v1_version = (self.model_extra or {}).get("ref_assets_version")
        if self.versions is None and v1_version:
            object.__setattr__(self, "versions", {"ref-assets": v1_version})
        return self

    @property
    def source_fingerprint(self) -> SourceFingerprint | None:
        return SourceFingerprint.from_dict(self.fingerprint) if self.fingerprint else None

    def as_previous(self) -> PreviousVersion:
        """This record as the `previous` of the record that replaces it."""
        return PreviousVersion(
            fingerprint=self.fingerprint,
            checksum=self.checksum,
            written_at=self.written_at,
            run_id=self.run_id,
        )

    def to_json(self) -> str:
        """Compact JSON, as stored."""
        return self.model_dump_json(exclude_none=True)

    @classmethod
    def from_stored(cls, raw: Any, dataset_id: str, period_key: str) -> ProvenanceRecord:
        """The record read from a store; `RecordFormatError` naming the period if it does not
        validate, so one odd record is reported as such instead of a bare validation error."""
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            fields = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in err.errors()
            )
            raise RecordFormatError(
                f"{dataset_id} period {period_key}: the stored record does not read as a "
                f"{RECORD_FORMAT} record ({fields}); upgrade ref_assets if a newer version wrote "
                f"it, or materialize the period again to rewrite it"
            ) from None


def code_version(spec: DatasetSpec, provider_version: str | None) -> str:
    """Changes when anything that shapes the stored values does: the resolved spec, the
    provider's version or the store layout (the Dagster asset's code version)."""
    parts = [
        spec.values_fingerprint(),
        spec.provider,
        provider_version or "unavailable",
        str(LAYOUT_VERSION),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@cache
def package_versions() -> dict[str, str]:
    """Versions of the recorded packages (and Python) in this process."""
    versions = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def build_record(
    batch: PeriodBatch, *, run_id: str, previous: PreviousVersion | None = None
) -> ProvenanceRecord:
    """The record of a prepared period, written by whoever commits it; ``previous`` is what
    the period held before (when it was already stored)."""
    spec = batch.spec
    return ProvenanceRecord(
        format=RECORD_FORMAT,
        dataset=spec.id,
        period=batch.period.key,
        partition_key=batch.period.key,
        period_start=batch.period.start,
        period_end=batch.period.end,
        time_index=batch.time_index,
        provider=batch.provider,
        provider_version=batch.provider_version,
        spec=spec.public_dump(),
        spec_fingerprint=spec.fingerprint(),
        code_version=code_version(spec, batch.provider_version),
        sources=[SourceRecord(**redact(asdict(source))) for source in batch.sources],
        checksum=batch.checksum,
        variables={
            name: VariableRecord(
                units=spec.variables_by_name[name].units,
                dtype=str(values.dtype),
                shape=list(values.shape),
                **asdict(batch.stats[name]),
            )
            for name, values in batch.variables.items()
        },
        flags=batch.flags or None,
        fingerprint=redact(batch.fingerprint.to_dict()) if batch.fingerprint else None,
        previous=previous,
        versions=package_versions(),
        run_id=run_id,
        fetched_at=batch.fetched_at,
        written_at=datetime.now(UTC),
    )


def iter_stored_records(
    store: DatasetStore, snapshot: str | None = None
) -> Iterator[tuple[Period, ProvenanceRecord]]:
    """Every period the store holds with its record, in time order, read in blocks."""
    session = store_reader.session_for(store, snapshot)
    axis = store_reader.store_axis(session)
    if axis is None:
        return
    indices = store_reader.written_indices(session)
    for index, raw in store_reader.iter_records(session, indices):
        period = axis.period_at(index)
        yield period, ProvenanceRecord.from_stored(raw, store.dataset_id, period.key)


def read_provenance(
    dataset_id: str,
    period: str | Period,
    *,
    snapshot: str | None = None,
    settings: Settings | None = None,
) -> ProvenanceRecord:
    """The record of one period (a partition key, its start in ISO form or a `Period`), read
    from the store."""
    store = DatasetStore((settings or load_settings()).storage_root, dataset_id)
    session = store_reader.session_for(store, snapshot)
    axis = store_reader.store_axis(session)
    if axis is None:
        raise ProvenanceNotFoundError(f"{dataset_id}: the store at {store.location} is empty")
    if isinstance(period, str):
        period = Period.from_text(axis.period, period, dataset=dataset_id)
    index = axis.index_of(period)
    stored = store_reader.read_records(session, [index]) if index >= 0 else {}
    if index not in stored:
        raise ProvenanceNotFoundError(
            f"{dataset_id}: period {period.key} is not in the store at {store.location}, so it "
            f"has no record (see `ref-assets status {dataset_id}`)"
        )
    return ProvenanceRecord.from_stored(stored[index], dataset_id, period.key)


def export_records(dataset_id: str, destination: str, *, settings: Settings | None = None) -> int:
    """Write ``<period>.record.json`` for every stored period into ``destination``: a local
    directory (each file written atomically) or an fsspec URL such as ``s3://bucket/prefix``
    (each file one PUT, which object stores apply atomically). File names are the partition
    keys without ``:`` (hourly keys hold one), so they are valid everywhere. Returns the number
    of records written."""
    store = DatasetStore((settings or load_settings()).storage_root, dataset_id)
    if "://" in destination and not destination.startswith("file://"):
        import fsspec  # only for object-store destinations

        filesystem, root = fsspec.core.url_to_fs(destination)

        def write(name: str, data: bytes) -> None:
            filesystem.pipe_file(f"{root.rstrip('/')}/{name}", data)
    else:
        directory = Path(destination.removeprefix("file://")).expanduser()
        if directory.exists() and not directory.is_dir():
            raise StoreError(f"{dataset_id}: export destination {directory} is not a directory")

        def write(name: str, data: bytes) -> None:
            atomic_write_bytes(directory / name, data)

    count = 0
    for period, record in iter_stored_records(store):
        data = (record.model_dump_json(indent=2, exclude_none=True) + "\n").encode()
        write(f"{period.key.replace(':', '')}.record.json", data)
        count += 1
    return count

"""Checking stored periods against their provenance records.

- `verify_dataset`: recompute each period's output checksum from the store and compare it with
  the checksum its record holds (finds values changed behind ref_assets' back, or damage).
- `verify_timeseries`: check each time chunk of the dataset's time-series copy against the
  per-period store (the checksums it was built from against the records, then its values).
- `reproduce_period`: fetch the inputs again, rebuild the period in memory and compare both the
  input and the output checksums with the record (did the source change, or the result?).

>>> failures = [c for c in verify_dataset("demo_air_temperature") if not c.ok]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from ref_assets.batch import fetch_batch
from ref_assets.config import Settings, load_settings
from ref_assets.periods import IndexRanges, Period
from ref_assets.provenance import (
    ProvenanceRecord,
    RecordFormatError,
    code_version,
    package_versions,
    read_provenance,
)
from ref_assets.providers.protocol import Provider
from ref_assets.providers.registry import ProviderRegistry
from ref_assets.secrets import redact
from ref_assets.specs import DatasetSpec, values_fingerprint_of
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import DatasetStore
from ref_assets.store.timeseries import ChunkCheck, check_chunks, timeseries_store


@dataclass(frozen=True)
class PeriodCheck:
    """One period's stored values checked against its record."""

    period: str
    recorded: str | None
    recomputed: str | None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_dataset(
    dataset_id: str,
    *,
    periods: Iterable[str] | None = None,
    snapshot: str | None = None,
    settings: Settings | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[PeriodCheck]:
    """Check every stored period (or only ``periods``: partition keys or ISO starts) against its
    record. ``on_progress(done, total)`` is called before the first period is read back
    (``done`` 0) and after each."""
    store = DatasetStore((settings or load_settings()).storage_root, dataset_id)
    session = store_reader.session_for(store, snapshot)
    axis = store_reader.store_axis(session)
    if axis is None:
        return [PeriodCheck(key, None, None, "the store is empty") for key in periods or []]
    written = store_reader.written_index_array(session)
    checks: list[PeriodCheck] = []
    if periods is not None:
        chosen = [Period.from_text(axis.period, text, dataset=dataset_id) for text in periods]
        wanted = {axis.index_of(period): period.key for period in chosen}
        asked = np.array(sorted(wanted), dtype="int64")
        present = IndexRanges.of(written).contains(asked)
        checks += [
            PeriodCheck(wanted[int(index)], None, None, "not in the store")
            for index in asked[~present]
        ]
        written = asked[present]
    written = written.tolist()  # the periods checked: one read each
    records = store_reader.read_records(session, written)
    if on_progress is not None:
        on_progress(0, len(written))
    read = store_reader.stored_checksums(session, axis, written)
    for done, (index, recomputed) in enumerate(read, start=1):
        if on_progress is not None:
            on_progress(done, len(written))
        key = axis.period_at(index).key
        checks.append(check_against_record(dataset_id, key, records.get(index), recomputed))
    return sorted(checks, key=lambda check: check.period)


def verify_timeseries(
    dataset_id: str,
    *,
    settings: Settings | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[ChunkCheck] | None:
    """Check every time chunk of the dataset's time-series copy against the per-period store at
    its tip: the checksums each chunk was built from must be those of the per-period records
    (a chunk that lags behind a new or revised period is named), and its values must equal the
    per-period values. None when the dataset has no copy. ``on_progress`` as `verify_dataset`."""
    store = DatasetStore((settings or load_settings()).storage_root, dataset_id)
    copy = timeseries_store(store)
    if not copy.exists():
        return None
    upstream = store_reader.session_for(store)
    session = store_reader.session_for(copy)
    if store_reader.store_axis(session) is None or store_reader.store_axis(upstream) is None:
        return []
    chunks, check = check_chunks(upstream, session)
    if on_progress is not None:
        on_progress(0, len(chunks))
    checks = []
    for done, chunk in enumerate(chunks, start=1):
        checks.append(check(chunk))
        if on_progress is not None:
            on_progress(done, len(chunks))
    return checks


def check_against_record(
    dataset_id: str, key: str, stored_record: dict | None, recomputed: str
) -> PeriodCheck:
    """Compare the checksum ``recomputed`` from period ``key``'s stored values with the one
    its stored record (raw, as read) holds."""
    if stored_record is None:
        return PeriodCheck(key, None, recomputed, "the period has no record")
    try:
        record = ProvenanceRecord.from_stored(stored_record, dataset_id, key)
    except RecordFormatError as err:
        problem = str(err).removeprefix(f"{dataset_id} period {key}: ")
        return PeriodCheck(key, None, recomputed, problem)
    if record.period != key:
        problem = f"the record at this position describes period {record.period}"
    elif record.checksum != recomputed:
        problem = "stored values differ from the values the record describes"
    else:
        problem = None
    return PeriodCheck(key, record.checksum, recomputed, problem)


@dataclass(frozen=True)
class Reproduction:
    """A period rebuilt from its sources, compared with its record."""

    dataset: str
    period: str
    recorded: ProvenanceRecord
    rebuilt_checksum: str
    changed_inputs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def inputs_identical(self) -> bool:
        return not self.changed_inputs

    @property
    def output_identical(self) -> bool:
        return self.rebuilt_checksum == self.recorded.checksum

    @property
    def verdict(self) -> str:
        if self.inputs_identical and self.output_identical:
            return "reproduced: identical inputs and identical output"
        if self.output_identical:
            return "the source changed, but the rebuilt output is identical"
        if not self.inputs_identical:
            return "the source changed, and so did the output"
        return (
            "same inputs, different output: the code, the spec or the environment changed "
            "(see the notes)"
        )


def reproduce_period(
    spec: DatasetSpec,
    registry: ProviderRegistry,
    period_key: str,
    *,
    settings: Settings | None = None,
) -> Reproduction:
    """Fetch ``period_key`` again with the spec's provider and compare with the stored record."""
    period = spec.period_for_key(period_key)
    recorded = read_provenance(spec.id, period, settings=settings)
    provider = registry.create(spec)
    batch = fetch_batch(spec, provider, period)
    before = {s.uri: s.sha256 for s in recorded.sources}
    now = {redact(s.uri): s.sha256 for s in batch.sources}  # recorded URIs were masked too
    changed = [
        f"{uri}: sha256 {before[uri][:12]}... now {now[uri][:12]}..."
        for uri in sorted(before.keys() & now.keys())
        if before[uri] != now[uri]
    ]
    changed += [f"{uri}: read before, not now" for uri in sorted(before.keys() - now.keys())]
    changed += [f"{uri}: read now, not before" for uri in sorted(now.keys() - before.keys())]
    return Reproduction(
        spec.id,
        period.key,
        recorded,
        batch.checksum,
        changed,
        _differences(recorded, spec, provider),
    )


def _differences(recorded: ProvenanceRecord, spec: DatasetSpec, provider: Provider) -> list[str]:
    """What changed since the record was written, among what can change an output."""
    notes = []
    if recorded.spec is not None:
        before = values_fingerprint_of(recorded.spec)
        if before != spec.values_fingerprint():
            notes.append(
                f"the spec's value-shaping fields changed since (fingerprint {before} -> "
                f"{spec.values_fingerprint()})"
            )
    current_code = code_version(spec, provider.version)
    if recorded.code_version and recorded.code_version != current_code:
        notes.append(f"code version {recorded.code_version} -> {current_code}")
    if recorded.provider_version != provider.version:
        notes.append(f"provider version {recorded.provider_version} -> {provider.version}")
    current = package_versions()
    for name, version in sorted((recorded.versions or {}).items()):
        if current.get(name) != version:
            notes.append(f"{name} {version} -> {current.get(name)}")
    return notes

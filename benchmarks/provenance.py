"""Provenance benchmark: what the records cost, side by side, in one run.

    .venv/bin/python benchmarks/provenance.py          # ~1 minute; writes RESULTS-provenance.md
    .venv/bin/python benchmarks/provenance.py --quick   # small sizes, to check the script works

On the backfill benchmark's grid (400 x 400 float32 daily synthetic periods), in one process:

- writing with one commit per period, with full provenance records against a minimal record
  (period and checksum only): the record's cost per commit, and whether commit time stays flat
  as periods accumulate (records are one chunk per period, so it should);
- the bytes of a record, of all records, and of the data they describe;
- ``verify`` (recompute every checksum from the store) against a plain read of the same periods;
- exporting every record to a directory, against reading the records only.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent


def run(workdir: Path, count: int) -> dict:
    from backfill import directory_bytes, keys, provider_and_spec

    from ref_assets.batch import fetch_batch
    from ref_assets.config import Settings
    from ref_assets.provenance import ProvenanceRecord, build_record, export_records
    from ref_assets.store import reader as store_reader
    from ref_assets.store import writer as writer_module
    from ref_assets.store.repository import DatasetStore
    from ref_assets.store.writer import PeriodWriter
    from ref_assets.verification import verify_dataset

    provider, spec = provider_and_spec("bench")
    batches = [fetch_batch(spec, provider, spec.period_for_key(key)) for key in keys(count)]

    def minimal_record(batch, *, run_id):
        record = build_record(batch, run_id=run_id)
        return record.model_copy(update={"spec": None, "versions": None, "sources": []})

    def write(root: Path, record_builder) -> list[float]:
        store = DatasetStore(str(root), spec.id)
        writer = PeriodWriter(store, run_id="bench")
        seconds = []
        with mock.patch.object(writer_module, "build_record", record_builder):
            for batch in batches:
                start = time.perf_counter()
                writer.add(batch)
                seconds.append(time.perf_counter() - start)
        return seconds[1:]  # the first creates the layout

    minimal = write(workdir / "minimal", minimal_record)
    full = write(workdir / "full", build_record)
    settings = Settings(configuration_dir=workdir, storage_root=str(workdir / "full"))
    store = DatasetStore(settings.storage_root, spec.id)
    session = store_reader.session_for(store)
    records = store_reader.read_records(session, store_reader.written_indices(session))
    record_bytes = [len(ProvenanceRecord.model_validate(r).to_json()) for r in records.values()]

    start = time.perf_counter()
    checks = verify_dataset(spec.id, settings=settings)
    verify_seconds = time.perf_counter() - start
    assert all(check.ok for check in checks) and len(checks) == count
    start = time.perf_counter()
    data = store_reader.open_store_dataset(store_reader.session_for(store))
    for index in range(count):
        data.t2m.isel(time=index).values  # noqa: B018 - the read is the point
    read_seconds = time.perf_counter() - start

    start = time.perf_counter()
    store_reader.read_records(session, store_reader.written_indices(session))
    records_seconds = time.perf_counter() - start
    start = time.perf_counter()
    export_records(spec.id, str(workdir / "export"), settings=settings)
    export_seconds = time.perf_counter() - start
    tenth = max(count // 10, 1)
    return {
        "count": count,
        "minimal_ms": 1000 * statistics.median(minimal),
        "full_ms": 1000 * statistics.median(full),
        "full_first_ms": 1000 * statistics.median(full[:tenth]),
        "full_last_ms": 1000 * statistics.median(full[-tenth:]),
        "record_bytes": statistics.median(record_bytes),
        "store_bytes": directory_bytes(workdir / "full" / spec.id),
        "minimal_store_bytes": directory_bytes(workdir / "minimal" / spec.id),
        "verify_seconds": verify_seconds,
        "read_seconds": read_seconds,
        "records_seconds": records_seconds,
        "export_seconds": export_seconds,
    }


def render(r: dict) -> str:
    import icechunk
    import zarr

    import ref_assets

    n = r["count"]
    rows = [
        ("commit per period, minimal record (median ms)", f"{r['minimal_ms']:.1f}", "1.00"),
        (
            "commit per period, full record (median ms)",
            f"{r['full_ms']:.1f}",
            f"{r['full_ms'] / r['minimal_ms']:.2f}",
        ),
        (
            f"full record: last {n // 10} commits against first {n // 10}",
            f"{r['full_last_ms']:.1f} / {r['full_first_ms']:.1f}",
            f"{r['full_last_ms'] / r['full_first_ms']:.2f}",
        ),
        (
            "store bytes, full against minimal records",
            f"{r['store_bytes'] / 1e6:.1f} MB / {r['minimal_store_bytes'] / 1e6:.1f} MB",
            f"{r['store_bytes'] / r['minimal_store_bytes']:.3f}",
        ),
        ("one record (median JSON bytes)", f"{r['record_bytes']:.0f}", ""),
        (
            "verify every period, against a plain read of the same periods",
            f"{n / r['verify_seconds']:.0f} / {n / r['read_seconds']:.0f} periods/s",
            f"{r['read_seconds'] / r['verify_seconds']:.2f}",
        ),
        (
            "export every record, against reading them only",
            f"{n / r['export_seconds']:.0f} / {n / r['records_seconds']:.0f} records/s",
            f"{r['records_seconds'] / r['export_seconds']:.2f}",
        ),
    ]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    return f"""# Provenance benchmark results

Written by `.venv/bin/python benchmarks/provenance.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.
Machine: {platform.machine()}, Python {platform.python_version()}; ref_assets
{ref_assets.__version__}, icechunk {icechunk.__version__}, zarr {zarr.__version__}.
{n} daily periods of 400 x 400 float32 (0.64 MB each), one commit per period, local storage.

| measure | value | ratio |
| --- | --- | --- |
{table}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes; no results file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ref-provenance-bench-") as workdir:
        result = run(Path(workdir), 20 if args.quick else 300)
    report = render(result)
    print(report)
    if not args.quick:
        (HERE / "RESULTS-provenance.md").write_text(report)


if __name__ == "__main__":
    main()

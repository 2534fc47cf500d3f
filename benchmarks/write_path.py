"""Write-path benchmark: `PeriodWriter` against one bulk `to_icechunk`, same prepared periods.

    .venv/bin/python benchmarks/write_path.py          # 365 periods; its RESULTS.md section
    .venv/bin/python benchmarks/write_path.py --quick  # 40 periods; prints only

The periods (synthetic 400 x 400 float32, benchmarks/backfill.py's grid) are fetched and prepared
(checked, checksummed, with statistics and preview) before any clock starts, so the provider's cost
is excluded and only the write path is compared:

  bulk     the periods already stacked into one in-memory array, written by one xarray
           `to_icechunk` (chunk = one period, like ref_assets' layout) and one commit
  writer   ref_assets' `PeriodWriter` in a new store, committing every ``runs.commit_every`` (32)
           periods, as a range run does; includes creating the layout

Both run in this one process, interleaved (bulk, writer, bulk, writer...), best of ``--repeat``.
The writer's time is split into phases by wrapping its steps (`ref_assets.store.writer`'s
private step functions, so this file follows their names). The values are written while the
records are read, built and written, so those steps overlap: they are also given together, as
the union of their intervals; "other" is what no step covers (session creation, the commit
lock, Python bookkeeping).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import platform
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from backfill import keys, provider_and_spec
from results import replace_section

SECTION = "## Write path: PeriodWriter against one bulk to_icechunk (`benchmarks/write_path.py`)"


def prepared_batches(count: int) -> list:
    from ref_assets.batch import fetch_batch

    provider, spec = provider_and_spec("write_path")
    return [fetch_batch(spec, provider, spec.period_for_key(key)) for key in keys(count)]


def write_bulk(workdir: Path, batches: list) -> tuple[float, float]:
    """Wall and CPU seconds for one `to_icechunk` of the stacked periods plus its commit."""
    import icechunk as ic
    import xarray as xr
    from icechunk.xarray import to_icechunk

    grid = batches[0].description.grid
    stack = np.stack([batch.variables["t2m"] for batch in batches])
    times = np.array([batch.period.start for batch in batches], dtype="datetime64[ns]")
    data = xr.Dataset({"t2m": (("time", "y", "x"), stack)}, coords={"time": times, **grid.coords()})
    start, cpu = time.perf_counter(), time.process_time()
    repo = ic.Repository.create(ic.local_filesystem_storage(str(workdir / "bulk")))
    session = repo.writable_session("main")
    to_icechunk(data, session, encoding={"t2m": {"chunks": (1, *grid.shape)}})
    session.commit("bulk")
    return time.perf_counter() - start, time.process_time() - cpu


def write_with_period_writer(workdir: Path, batches: list) -> tuple[float, float, dict[str, float]]:
    """Wall and CPU seconds for `PeriodWriter` to write and commit every batch, and its phases'
    wall seconds."""
    from ref_assets.store.repository import DatasetStore
    from ref_assets.store.writer import CommitPolicy, PeriodWriter

    spec = batches[0].spec
    store = DatasetStore(str(workdir / "stores"), spec.id)
    writer = PeriodWriter(
        store,
        run_id="bench",
        policy=CommitPolicy(spec.runs.commit_every, spec.runs.commit_seconds),
    )
    with _phase_timers() as phases:
        start, cpu = time.perf_counter(), time.process_time()
        committed = sum(len(writer.add(batch)) for batch in batches) + len(writer.flush())
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert committed == len(batches), (committed, len(batches))
    sequential = sum(t for phase, t in phases.items() if phase not in CONCURRENT)
    return seconds, cpu, {**phases, "other": seconds - sequential}


# Steps the writer runs beside each other (the values compress while the records are handled):
# each is reported with its own wall time, and together by the union of their intervals.
CONCURRENT = (
    "read replaced records",
    "build records",
    "region writes",
    "record writes",
    "stored-size look-ups",
)


@contextlib.contextmanager
def _phase_timers() -> Iterator[dict[str, float]]:
    """Time the writer's steps by wrapping them; "other" is the time no step covers."""
    import icechunk as ic

    from ref_assets.store import writer as writer_module

    totals: dict[str, float] = defaultdict(float)
    concurrent: list[tuple[float, float]] = []

    def timed(phase: str, fn: Callable) -> Callable:
        def record(start: float) -> None:
            end = time.perf_counter()
            totals[phase] += end - start
            if phase in CONCURRENT:
                concurrent.append((start, end))

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    record(start)

            return wrapper

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                record(start)

        return wrapper

    targets = [
        (writer_module, "_open_arrays", "open group and arrays"),
        (writer_module, "_replaced_versions", "read replaced records"),
        (writer_module, "build_record", "build records"),
        (writer_module, "_write_values", "region writes"),
        (writer_module, "_write_records", "record writes"),
        (writer_module, "_stored_sizes", "stored-size look-ups"),
        (ic.Session, "commit", "commit"),
        (writer_module, "ensure_capacity", "layout / capacity"),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]
    for owner, name, phase in targets:
        setattr(owner, name, timed(phase, getattr(owner, name)))
    try:
        yield totals
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
        totals[TOGETHER] = _union(concurrent)


TOGETHER = "values and records, together (wall)"


def _union(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by any of ``intervals``."""
    covered, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        covered += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return covered


def versions() -> str:
    import icechunk
    import xarray
    import zarr

    return (
        f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, "
        f"Python {platform.python_version()}; icechunk {icechunk.__version__}, "
        f"zarr {zarr.__version__}, xarray {xarray.__version__}, numpy {np.__version__}"
    )


def render(
    count: int,
    repeat: int,
    megabytes: float,
    bulk: tuple[float, float],
    writer: tuple[float, float],
    phases: dict,
) -> str:
    (bulk, bulk_cpu), (writer, writer_cpu) = bulk, writer
    lines = [
        SECTION,
        "",
        f"Written by `.venv/bin/python benchmarks/write_path.py` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. {versions()}.",
        f"{count} prepared periods of 400 x 400 float32 ({megabytes:.0f} MB) held in memory; "
        f"the provider's cost excluded; local filesystem; best of {repeat}, interleaved.",
        "",
        "| writer | seconds | MB/s | ratio to bulk | CPU seconds | ratio to bulk (CPU) |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| one bulk `to_icechunk` + commit | {bulk:.2f} | {megabytes / bulk:.0f} | 1.00 "
        f"| {bulk_cpu:.2f} | 1.00 |",
        f"| `PeriodWriter`, commit every 32 | {writer:.2f} | {megabytes / writer:.0f} | "
        f"{bulk / writer:.2f} | {writer_cpu:.2f} | {bulk_cpu / writer_cpu:.2f} |",
        "",
        "CPU seconds are the process's, all threads: on a shared machine they move less than "
        "wall time, and the writer's work is CPU-bound on a local disk.",
        "",
        "`PeriodWriter` phases (wall time of the best run; the steps marked * run beside "
        'each other, so their row "together" is what they cost; "other" is the rest):',
        "",
        "| phase | seconds | share | ms a period |",
        "| --- | --- | --- | --- |",
    ]
    for phase, seconds in sorted(phases.items(), key=lambda item: -item[1]):
        name = f"{phase} *" if phase in CONCURRENT else phase
        lines.append(
            f"| {name} | {seconds:.2f} | {seconds / writer:.0%} | {1000 * seconds / count:.2f} |"
        )
    target = "met" if bulk / writer >= 0.8 else "**missed**"
    lines += [
        "",
        f"Target: `PeriodWriter` at least 0.8 of bulk: {bulk / writer:.2f}, {target}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="40 periods; no RESULTS.md")
    parser.add_argument("--count", type=int, help="periods (default 365, or 40 with --quick)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each writer")
    args = parser.parse_args()
    count = args.count or (40 if args.quick else 365)
    batches = prepared_batches(count)
    megabytes = sum(b.variables["t2m"].nbytes for b in batches) / 1e6
    bulk_runs, writer_runs = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-write-path-") as workdir:
            bulk_runs.append(write_bulk(Path(workdir), batches))
            writer_runs.append(write_with_period_writer(Path(workdir), batches))
        print(f"bulk {bulk_runs[-1][0]:.2f} s, writer {writer_runs[-1][0]:.2f} s", file=sys.stderr)
    *writer, phases = min(writer_runs, key=lambda run: run[0])
    report = render(count, args.repeat, megabytes, min(bulk_runs), tuple(writer), phases)
    print(report)
    if not args.quick and not args.count:
        replace_section(SECTION, report)


if __name__ == "__main__":
    main()

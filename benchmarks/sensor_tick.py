"""Sensor tick benchmark: the cost of one availability-sensor tick over a store of 100 stored
periods against one of 100,000 (and, with --hourly-since-1950, 674,000), one new period
available, side by side in one run. Appends its section to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/sensor_tick.py                       # 100 vs 100,000
    .venv/bin/python benchmarks/sensor_tick.py --hourly-since-1950   # and 674,000 hours
    .venv/bin/python benchmarks/sensor_tick.py --quick               # 100 vs 2,000, no RESULTS.md

What a tick is here: `ref_assets.updates.plan_updates`, the whole decision of a dataset's
sensor, in the steady state of an operating dataset: the previous tick saw the store at some
snapshot; since then the sensor's last run committed one more period (a real `PeriodWriter`
commit), and the provider now publishes the next one. The tick reads the commits since its
cursor (Icechunk's diff), asks the provider about periods after the ones it has seen, and plans
exactly one run. The Dagster sensor adds a query of runs in progress (independent of the
store's size) and JSON (de)serialization of its cursor (ranges: one pair for a gap-free store).

How the stores are built cheaply: an hourly dataset on a 2 x 2 grid with the default layout
(time blocks and manifest shards of 744 hours, so a commit touches one small shard); the layout
is created and the axis grown by ref_assets' own writer; then every period but the newest gets a
record chunk, in bulk commits of 50,000 (a short placeholder text, not a full record: which
periods are stored is what a tick reads, and the records' contents are read only for revisions,
which are off here), and the newest period is written and committed for real. The first,
full-listing tick (a new or reset cursor) is measured too, for context: it is the one that
lists every period.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import ClassVar

import numpy as np
import zarr
from results import replace_section

from ref_assets.batch import fetch_batch
from ref_assets.periods import Period
from ref_assets.providers.protocol import Description, FetchedPeriod
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.specs import DatasetSpec
from ref_assets.store.layout import RECORDS_PATH
from ref_assets.store.repository import DatasetStore
from ref_assets.store.writer import PeriodWriter, ensure_capacity
from ref_assets.updates import plan_updates

OBSERVATIONS_HEADING = "### Observable source assets instead"
START = "1950-01-01T00:00:00"
REPEATS = 15


def make_spec(dataset_id: str) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "id": dataset_id,
            "title": "Sensor benchmark",
            "provider": "synthetic",
            "params": {"bbox": [0.0, 0.0, 1.0, 1.0], "resolution": 0.5},
            "period": "hourly",
            "start": START,
            "variables": [
                {"name": "t2m", "units": "degC", "attributes": {"standard_name": "air_temperature"}}
            ],
        }
    )


class PublishingProvider:
    """The synthetic fields, published up to a movable latest period."""

    name: ClassVar[str] = "synthetic"
    version: ClassVar[str] = "bench"

    def __init__(self, spec: DatasetSpec, latest_index: int) -> None:
        self.spec, self.fields = spec, SyntheticProvider(spec)
        self.latest = Period(spec.period, spec.period.at(latest_index, spec.start))

    def describe(self) -> Description:
        return self.fields.describe()

    def latest_available(self) -> Period:
        return self.latest

    def available_periods(self, first: Period, last: Period) -> list[Period]:
        last = min(last, self.latest)
        count = max(self.spec.period.index(last.start, first.start) + 1, 0)
        return [Period(first.type, first.type.at(i, first.start)) for i in range(count)]

    def fetch(self, period: Period) -> FetchedPeriod:
        return self.fields.fetch(period)


def build_store(root: str, stored: int) -> tuple[DatasetSpec, DatasetStore, float]:
    """A store holding periods 0..stored-1 (see the module docstring); returns the seconds."""
    began = time.perf_counter()
    spec = make_spec(f"bench_{stored}")
    store = DatasetStore(root, spec.id)
    provider = SyntheticProvider(spec)
    last = fetch_batch(spec, provider, Period(spec.period, spec.period.at(stored, spec.start)))
    repo = store.open_or_create(spec.manifest_split)
    ensure_capacity(store, repo, last, run_id="bench")
    # Commits of 50,000 records: one session holding 674,000 changes grew past 800 MB and
    # had not committed after 12 minutes.
    block = 50_000
    for first in range(0, stored - 1, block):
        count = min(block, stored - 1 - first)
        session = repo.writable_session("main")
        records = zarr.open_array(session.store, path=RECORDS_PATH, mode="r+")
        records[first : first + count] = np.full(count, "stored", dtype=object)
        session.commit(f"{spec.id}: placeholder records {first}..{first + count - 1}")
    return spec, store, time.perf_counter() - began


def commit_period(spec: DatasetSpec, store: DatasetStore, index: int) -> None:
    batch = fetch_batch(
        spec, SyntheticProvider(spec), Period(spec.period, spec.period.at(index, spec.start))
    )
    writer = PeriodWriter(store, run_id="bench")
    writer.add(batch)
    writer.flush()


def measure(root: str, stored: int) -> dict:
    spec, store, build_seconds = build_store(root, stored)
    # The previous tick: the store held stored-1 periods, the provider published up to them.
    began = time.perf_counter()
    before = plan_updates(spec, PublishingProvider(spec, stored - 2), store, None)
    full_scan = time.perf_counter() - began
    assert before.full_scan and len(before.state.written) == stored - 1
    commit_period(spec, store, stored - 1)  # the last run's commit
    provider = PublishingProvider(spec, stored)  # and one new period is published
    timings = []
    for _ in range(REPEATS):
        began = time.perf_counter()
        plan = plan_updates(spec, provider, store, before.state)
        timings.append(time.perf_counter() - began)
    assert not plan.full_scan and len(plan.state.written) == stored
    [requested] = plan.missing
    assert requested.count == 1 and spec.time_index(requested.first) == stored
    return {
        "stored": stored,
        "tick_ms": statistics.median(timings) * 1000,
        "tick_min_ms": min(timings) * 1000,
        "full_scan_ms": full_scan * 1000,
        "build_s": build_seconds,
        "last_period": requested.first.key,
    }


def observation_cost(count: int) -> str:
    """The alternative design's bookkeeping, for context: per-partition data versions of a
    source as `AssetObservation`s in a local (SQLite) Dagster instance, ``count`` of them, one
    event each, as an observable source asset reporting an ETag per period would write them."""
    import os
    import warnings

    import dagster as dg

    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="ref-observations-") as home:
        with dg.instance_for_test(temp_dir=home) as instance:
            key = dg.AssetKey("source_hours")
            began = time.perf_counter()
            for i in range(count):
                instance.report_runless_asset_event(
                    dg.AssetObservation(
                        key, partition=f"p{i}", tags={"dagster/data_version": f"etag-{i}"}
                    )
                )
            seconds = time.perf_counter() - began
        size = sum(os.path.getsize(Path(d, f)) for d, _, files in os.walk(home) for f in files)
    each = seconds / count
    return (
        f"Observable source assets instead (context): {count:,} per-partition observations "
        f"(one data version each) into a local SQLite instance took {seconds:.1f} s "
        f"({each * 1000:.1f} ms each) and {size / 1e6:.1f} MB; at that rate the 674,000 hours "
        f"since 1950 are {each * 674_000 / 3600:.1f} hours and "
        f"{size / count * 674_000 / 1e9:.2f} GB of event log before the first automation decision."
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="100 vs 2,000; no RESULTS.md")
    parser.add_argument(
        "--hourly-since-1950", action="store_true", help="also 674,000 stored hours"
    )
    parser.add_argument(
        "--observations",
        type=int,
        default=0,
        metavar="N",
        help="only measure N per-partition observations in a Dagster instance (the "
        "alternative design's cost) and append that line",
    )
    args = parser.parse_args()
    if args.observations:
        line = observation_cost(args.observations)
        print(line)
        # A subsection of the tick's: run this after the main report, which replaces it.
        replace_section(OBSERVATIONS_HEADING, f"{OBSERVATIONS_HEADING}\n\n{line}\n")
        return
    sizes = [100, 2_000] if args.quick else [100, 100_000]
    if args.hourly_since_1950:
        sizes.append(674_000)
    results = []
    with tempfile.TemporaryDirectory(prefix="ref-sensor-bench-") as root:
        for size in sizes:
            results.append(measure(root, size))
            print(results[-1], flush=True)
    base = results[0]["tick_ms"]
    lines = [
        "",
        "## Sensor tick (`benchmarks/sensor_tick.py`)",
        "",
        f"Run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {platform.machine()}, "
        f"Python {platform.python_version()}, icechunk {version('icechunk')}, "
        f"dagster {version('dagster')}. Hourly dataset from 1950 on a 2 x 2 grid; one new "
        f"period available; median of {REPEATS} ticks (`plan_updates`, the sensor's whole "
        "decision) after the sensor's previous run committed one period.",
        "",
        "| stored periods | tick (median) | tick (min) | ratio to 100 | first tick (full listing) "
        "| store built in | requested |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['stored']:,} | {r['tick_ms']:.1f} ms | {r['tick_min_ms']:.1f} ms | "
            f"{r['tick_ms'] / base:.2f}x | {r['full_scan_ms']:.0f} ms | {r['build_s']:.0f} s | "
            f"{r['last_period']} |"
        )
    lines.append("")
    report = "\n".join(lines)
    print(report)
    if not args.quick:
        replace_section(lines[1], report.lstrip("\n"))


if __name__ == "__main__":
    main()

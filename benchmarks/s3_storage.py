"""Stores on S3 against local stores, on a real S3-compatible server started here (SeaweedFS
`weed mini` on loopback, `ref_assets_tests.s3_server`; the same machine, so this measures the
protocol and the server, not a network).

    .venv/bin/python benchmarks/s3_storage.py           # about 2 minutes; its RESULTS.md section
    .venv/bin/python benchmarks/s3_storage.py --quick   # a few periods; prints only

commits  one `PeriodWriter` committing every period (as a run of one partition does) into a new
         store, local and on S3, interleaved over rounds (median of each); then the same periods
         in one commit (a range run's batching at its largest) on each.
writers  8 spawned processes writing distinct periods (one commit each, through `write_period`,
         rebasing on conflict) into one S3 store, against 1 process writing as many periods:
         aggregate periods per second from the barrier's release to the last commit.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from results import machine_load, replace_section

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SECTION = "## Stores on S3 against local stores (`benchmarks/s3_storage.py`)"
GRID = {"bbox": [0.0, 40.0, 30.0, 60.0], "resolution": 0.1, "seed": 1, "land_only": False}


def spec_fields(dataset_id: str) -> dict:
    return {
        "id": dataset_id,
        "title": "Benchmark S3",
        "provider": "synthetic",
        "params": GRID,
        "period": "daily",
        "start": "2000-01-01",
        "variables": [
            {"name": "t2m", "units": "degC", "attributes": {"standard_name": "air_temperature"}}
        ],
        "storage": {"time_block": 366},
    }


def prepared(fields: dict, count: int):
    from ref_assets.batch import fetch_batch
    from ref_assets.providers.synthetic import SyntheticProvider
    from ref_assets.specs import DatasetSpec

    spec = DatasetSpec.model_validate(fields)
    provider = SyntheticProvider(spec)
    keys = [str(day) for day in np.datetime64("2000-01-01") + np.arange(count)]
    return [fetch_batch(spec, provider, spec.period_for_key(key)) for key in keys]


def write(root: str, batches, every: int) -> float:
    """Seconds to write ``batches`` into a new store under ``root``, committing every
    ``every`` periods (the store created beforehand, outside the timing)."""
    from ref_assets.store.repository import DatasetStore
    from ref_assets.store.writer import CommitPolicy, PeriodWriter

    store = DatasetStore(root, batches[0].spec.id)
    store.open_or_create(batches[0].spec.manifest_split)
    writer = PeriodWriter(store, run_id="bench", policy=CommitPolicy(every, 3600.0))
    started = time.perf_counter()
    for batch in batches:
        writer.add(batch)
    writer.flush()
    return time.perf_counter() - started


def writer_process(root: str, fields: dict, keys: list[str], barrier) -> tuple[float, float]:
    """In a spawned process: prepare the periods, wait for the others, write each in its own
    commit; the wall-clock times of the release and of the last commit."""
    from ref_assets.batch import fetch_batch
    from ref_assets.providers.synthetic import SyntheticProvider
    from ref_assets.specs import DatasetSpec
    from ref_assets.store.repository import DatasetStore
    from ref_assets.store.writer import write_period

    spec = DatasetSpec.model_validate(fields)
    provider = SyntheticProvider(spec)
    batches = [fetch_batch(spec, provider, spec.period_for_key(key)) for key in keys]
    store = DatasetStore(root, spec.id)
    barrier.wait()
    started = time.time()
    for batch in batches:
        write_period(store, batch, run_id=f"bench-{os.getpid()}")
    return started, time.time()


def concurrent_rate(root: str, fields: dict, keys: list[str], writers: int) -> float:
    """Aggregate periods per second of ``writers`` processes sharing ``keys``."""
    from ref_assets.specs import DatasetSpec
    from ref_assets.store import reader as store_reader
    from ref_assets.store.repository import DatasetStore

    store = DatasetStore(root, fields["id"])
    spec = DatasetSpec.model_validate(fields)
    write(root, prepared(fields, 1), 1)  # the layout first: the writers time period commits
    context = multiprocessing.get_context("spawn")  # icechunk does not survive fork
    shares = [keys[i::writers] for i in range(writers)]
    with context.Manager() as manager, ProcessPoolExecutor(writers, mp_context=context) as pool:
        barrier = manager.Barrier(writers)
        futures = [pool.submit(writer_process, root, fields, share, barrier) for share in shares]
        spans = [future.result(timeout=1800) for future in futures]
    written = store_reader.written_indices(store_reader.session_for(store))
    expected = {spec.time_index(spec.period_for_key(key)) for key in keys}
    lost = expected - set(written)
    if lost:
        raise AssertionError(f"{len(lost)} of {len(keys)} periods lost with {writers} writers")
    return len(keys) / (max(end for _, end in spans) - min(start for start, _ in spans))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few periods; prints only")
    parser.add_argument("--part", choices=["commits", "writers", "all"], default="all")
    args = parser.parse_args()
    periods, rounds, per_writer = (6, 1, 2) if args.quick else (40, 3, 6)

    from ref_assets_tests.s3_server import S3Server

    lines = []
    with tempfile.TemporaryDirectory() as tmp, S3Server.started(Path(tmp) / "s3") as server:
        os.environ.update(server.environment())
        local_root, s3_root = str(Path(tmp) / "stores"), server.root("stores")
        if args.part in ("commits", "all"):
            batches = prepared(spec_fields("bench_s3"), periods)
            per_commit: dict[str, list[float]] = {"local": [], "s3": []}
            for n in range(rounds):
                for name, root in (("local", local_root), ("s3", s3_root)):
                    seconds = write(f"{root}/round{n}", batches, every=1)
                    per_commit[name].append(seconds / periods * 1000)
            bulk = {
                name: write(f"{root}/bulk", batches, every=periods) / periods * 1000
                for name, root in (("local", local_root), ("s3", s3_root))
            }
            local, s3 = (statistics.median(per_commit[k]) for k in ("local", "s3"))
            lines += [
                f"{periods} daily 200 x 300 float32 periods, {rounds} round(s) interleaved "
                "(median), each into a new store:",
                "",
                "| storage | one commit per period (ms/period) | all in one commit (ms/period) |",
                "| --- | --- | --- |",
                f"| local | {local:.1f} | {bulk['local']:.1f} |",
                f"| S3 (weed mini, loopback) | {s3:.1f} | {bulk['s3']:.1f} |",
                f"| S3 / local | {s3 / local:.2f}x | {bulk['s3'] / bulk['local']:.2f}x |",
                "",
            ]
        if args.part in ("writers", "all"):
            keys = [str(day) for day in np.datetime64("2001-01-01") + np.arange(8 * per_writer)]
            one = concurrent_rate(f"{s3_root}/one", spec_fields("bench_one"), keys, 1)
            eight = concurrent_rate(f"{s3_root}/eight", spec_fields("bench_eight"), keys, 8)
            lines += [
                f"{len(keys)} distinct periods into one S3 store, one commit each "
                "(`write_period`), no period lost:",
                "",
                "| writers | aggregate periods/s |",
                "| --- | --- |",
                f"| 1 process | {one:.1f} |",
                f"| 8 spawned processes | {eight:.1f} |",
                f"| 8 / 1 | {eight / one:.2f}x |",
                "",
            ]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join(
        [
            SECTION,
            "",
            f"{when}, {platform.machine()}, {machine_load()} (ratios, not absolute numbers).",
            "",
            *lines,
        ]
    )
    print(text)
    if not args.quick and args.part == "all":
        replace_section(SECTION, text)


if __name__ == "__main__":
    main()

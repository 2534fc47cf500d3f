"""Stores on S3 against local stores, on a real S3-compatible server started here (SeaweedFS
`weed mini` on loopback, `ref_assets_tests.s3_server`; the same machine, so this measures the
protocol and the server, not a network).

    .venv/bin/python benchmarks/s3_storage.py           # about 3 minutes; its RESULTS.md section
    .venv/bin/python benchmarks/s3_storage.py --quick   # a few periods; prints only

commits  one `PeriodWriter` committing every period (as a run of one partition does) into a new
         store, local and on S3, interleaved over rounds (median of each); then the same periods
         as a range run commits them (`CommitPolicy` default, 32 at a time) and in one commit;
         against one bulk write of the same values (plain zarr into an Icechunk repository on
         the same server, one call, one commit): the target's "one writer within 0.7x of a bulk
         write".
writers  spawned processes writing distinct periods into one S3 store, the provider's work done
         before a barrier (so only ours and the server's is timed), each process warmed up by
         one write of its own first (a run's start-up is not what is compared); aggregate periods
         per second from the barrier's release to the last commit. One commit per period (as
         runs of one partition), by 1 process, by 8 on one machine (they take turns,
         `DatasetStore.commit_turn`) and by 8 as if on 8 machines (each its own temporary
         directory: only compare-and-set between them); then each process one block of
         consecutive periods in one commit (as range runs).
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
from results import machine_load, replace_section, synthetic_daily_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SECTION = "## Stores on S3 against local stores (`benchmarks/s3_storage.py`)"
GRID = {"bbox": [0.0, 40.0, 30.0, 60.0], "resolution": 0.1, "seed": 1, "land_only": False}


def spec_fields(dataset_id: str) -> dict:
    return synthetic_daily_spec(dataset_id, "Benchmark S3", GRID, storage={"time_block": 366})


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


def bulk_write(url: str, batches) -> float:
    """Seconds to write the same values as one array into a new Icechunk repository at ``url``
    (the same server, one period a chunk, as the stores are) with plain zarr, in one call and
    one commit: Icechunk's own bulk path, without ref_assets' records, checks or batching."""
    import icechunk as ic
    import zarr

    from ref_assets.store.s3 import S3Connection, S3Location

    values = np.stack([batch.variables["t2m"] for batch in batches])
    storage = S3Connection.from_environment().icechunk_storage(S3Location.parse(url))
    repo = ic.Repository.create(storage)
    session = repo.writable_session("main")
    chunks = (1, *values.shape[1:])
    zarr.create_array(session.store, name="warm", data=values[:1], chunks=chunks)
    session.commit("the connection, before the timing")
    started = time.perf_counter()
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="t2m", data=values, chunks=chunks)
    session.commit("bulk")
    return time.perf_counter() - started


def writer_process(
    root: str, fields: dict, keys: list[str], every: int, machine: str | None, warm: str, barrier
) -> tuple[float, float, dict[str, int]]:
    """In a spawned process: prepare the periods, write ``warm`` (this process's start-up),
    wait for the others, write ``keys`` committing every ``every``; the wall-clock times of the
    release and of the last commit, and each commit's snapshot with its attempts."""
    import tempfile

    from ref_assets.batch import fetch_batch
    from ref_assets.providers.synthetic import SyntheticProvider
    from ref_assets.specs import DatasetSpec
    from ref_assets.store.repository import DatasetStore
    from ref_assets.store.writer import CommitPolicy, PeriodWriter, write_period

    if machine:
        tempfile.tempdir = machine  # where this "machine" takes its commit turns
    spec = DatasetSpec.model_validate(fields)
    provider = SyntheticProvider(spec)
    batches = [fetch_batch(spec, provider, spec.period_for_key(key)) for key in keys]
    store = DatasetStore(root, spec.id)
    write_period(store, fetch_batch(spec, provider, spec.period_for_key(warm)), run_id="warm")
    barrier.wait()
    started = time.time()
    writer = PeriodWriter(store, run_id=f"bench-{os.getpid()}", policy=CommitPolicy(every, 3600))
    receipts = [receipt for batch in batches for receipt in writer.add(batch)]
    receipts += writer.flush()
    return started, time.time(), {r.snapshot_id: r.attempts for r in receipts}


def concurrent_rate(
    root: str, fields: dict, keys: list[str], writers: int, every: int, machines: list[str]
) -> tuple[float, int, float]:
    """Aggregate periods per second of ``writers`` processes sharing ``keys`` (consecutive
    blocks), each committing every ``every`` periods, process i on ``machines[i % len]``; the
    commits that landed (a group commit carries several writers' periods); and the commit
    attempts per write."""
    from ref_assets.specs import DatasetSpec
    from ref_assets.store import reader as store_reader
    from ref_assets.store.repository import DatasetStore

    store = DatasetStore(root, fields["id"])
    spec = DatasetSpec.model_validate(fields)
    write(root, prepared(fields, 1), 1)  # the layout first: the writers time period commits
    context = multiprocessing.get_context("spawn")  # icechunk does not survive fork
    size = len(keys) // writers
    shares = [keys[i * size : (i + 1) * size] for i in range(writers)]
    warm = [str(np.datetime64("2000-06-01") + np.timedelta64(i, "D")) for i in range(writers)]
    with context.Manager() as manager, ProcessPoolExecutor(writers, mp_context=context) as pool:
        barrier = manager.Barrier(writers)
        futures = [
            pool.submit(
                writer_process,
                *(root, fields, share, every, machines[i % len(machines)], warm[i], barrier),
            )
            for i, share in enumerate(shares)
        ]
        spans = [future.result(timeout=1800) for future in futures]
    written = store_reader.written_indices(store_reader.session_for(store))
    expected = {spec.time_index(spec.period_for_key(key)) for key in keys}
    lost = expected - set(written)
    if lost:
        raise AssertionError(f"{len(lost)} of {len(keys)} periods lost with {writers} writers")
    seconds = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
    landed = {snapshot for *_, commits in spans for snapshot in commits}
    attempts = sum(sum(commits.values()) for *_, commits in spans)
    return len(keys) / seconds, len(landed), attempts / (len(keys) / every)


def met(ratio: float, target: float) -> str:
    return "met" if ratio >= target else "**MISSED**"


def commits_part(local_root: str, s3_root: str, periods: int, rounds: int) -> list[str]:
    batches = prepared(spec_fields("bench_s3"), periods)
    per_commit: dict[str, list[float]] = {"local": [], "s3": []}
    for n in range(rounds):
        for name, root in (("local", local_root), ("s3", s3_root)):
            seconds = write(f"{root}/round{n}", batches, every=1)
            per_commit[name].append(seconds / periods * 1000)
    ranged = {
        name: write(f"{root}/range", batches, every=32) / periods * 1000
        for name, root in (("local", local_root), ("s3", s3_root))
    }
    single = {
        name: write(f"{root}/single", batches, every=periods) / periods * 1000
        for name, root in (("local", local_root), ("s3", s3_root))
    }
    bulk = bulk_write(f"{s3_root}/bulk", batches) / periods * 1000
    local, s3 = (statistics.median(per_commit[k]) for k in ("local", "s3"))
    return [
        f"{periods} daily 200 x 300 float32 periods, {rounds} round(s) of one commit per period "
        "interleaved (median), each into a new store:",
        "",
        "| storage | one commit per period | a range run (32 a commit) | all in one commit |",
        "| --- | --- | --- | --- |",
        f"| local (ms/period) | {local:.1f} | {ranged['local']:.1f} | {single['local']:.1f} |",
        f"| S3, weed mini on loopback (ms/period) | {s3:.1f} | {ranged['s3']:.1f} "
        f"| {single['s3']:.1f} |",
        f"| S3 / local | {s3 / local:.2f}x | {ranged['s3'] / ranged['local']:.2f}x "
        f"| {single['s3'] / single['local']:.2f}x |",
        f"| one bulk write (zarr into Icechunk, one commit) = {bulk:.1f} ms/period: ours / it "
        f"| {bulk / s3:.2f}x | {bulk / ranged['s3']:.2f}x | {bulk / single['s3']:.2f}x |",
        "",
        f"Target: one writer on S3 within 0.7x of one bulk write to the same server: a range run "
        f"{bulk / ranged['s3']:.2f}x, {met(bulk / ranged['s3'], 0.7)}; a run of one partition "
        f"(one commit a period) {bulk / s3:.2f}x, {met(bulk / s3, 0.7)}",
        "",
    ]


def writers_part(s3_root: str, tmp: str, per_writer: int) -> list[str]:
    keys = [str(day) for day in np.datetime64("2001-01-01") + np.arange(8 * per_writer)]
    one_machine = [str(Path(tmp) / "machine-0")]
    own_machines = [str(Path(tmp) / f"machine-{i}") for i in range(8)]
    for machine in own_machines:
        Path(machine).mkdir(exist_ok=True)
    block = f"{per_writer} periods per commit"
    cases = [
        ("1 process, one commit per period", 1, 1, one_machine),
        ("8 processes on one machine, one commit per period", 8, 1, one_machine),
        ("8 processes on 8 machines, one commit per period", 8, 1, own_machines),
        (f"1 process, {block}", 1, per_writer, one_machine),
        (f"8 processes on one machine, {block}", 8, per_writer, one_machine),
        (f"8 processes on 8 machines, {block}", 8, per_writer, own_machines),
    ]
    rates = {}
    for n, (label, writers, every, machines) in enumerate(cases):
        fields = spec_fields(f"bench_writers_{n}")
        rates[label] = concurrent_rate(f"{s3_root}/w{n}", fields, keys, writers, every, machines)
    one = rates[cases[0][0]][0]
    one_block = rates[cases[3][0]][0]
    rows = []
    for label, _, every, _ in cases:
        rate, landed, attempts = rates[label]
        alike = one if every == 1 else one_block
        rows.append(f"| {label} | {rate:.1f} | {rate / alike:.2f}x | {landed} | {attempts:.2f} |")
    same, spread = rates[cases[1][0]][0] / one, rates[cases[2][0]][0] / one
    return [
        f"{len(keys)} distinct periods into one S3 store, no period lost in any case:",
        "",
        "| writers | aggregate periods/s | / 1 process alike | commits landed "
        "| commit attempts per write |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Target: 8 concurrent writers of distinct periods >= 1.0x one writer's rate, one commit "
        f"per period: on one machine {same:.2f}x, {met(same, 1.0)}; on 8 machines "
        f"{spread:.2f}x, {met(spread, 1.0)}",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few periods; prints only")
    parser.add_argument("--part", choices=["commits", "writers", "all"], default="all")
    args = parser.parse_args()
    periods, rounds, per_writer = (6, 1, 2) if args.quick else (64, 3, 8)

    from ref_assets_tests.s3_server import S3Server

    lines = []
    with tempfile.TemporaryDirectory() as tmp, S3Server.started(Path(tmp) / "s3") as server:
        os.environ.update(server.environment())
        local_root, s3_root = str(Path(tmp) / "stores"), server.root("stores")
        if args.part in ("commits", "all"):
            lines += commits_part(local_root, s3_root, periods, rounds)
        if args.part in ("writers", "all"):
            lines += writers_part(s3_root, tmp, per_writer)
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

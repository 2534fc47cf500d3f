"""Backfill benchmark: ref_assets against plain Icechunk, side by side, in one run.

    .venv/bin/python benchmarks/backfill.py            # all scenarios, writes benchmarks/RESULTS.md
    .venv/bin/python benchmarks/backfill.py --quick    # small sizes, to check the script works

Every scenario runs in its own process (so peak memory is its own) on the same grid and the same
synthetic periods, and includes producing the data (the provider's fetch), so the numbers compare
whole pipelines. Results are ratios; absolute seconds are given only for context.

Scenarios:
  generate        produce the periods only, one thread (the floor every pipeline pays)
  generate_threads  the same on the run's fetch threads (`runs.fetch_workers`, 2): the floor
                  of a range run, which fetches on those threads
  icechunk_loop   (a) hand-written: one region write and one commit per period
  bulk            (b) one xarray to_zarr of all periods into Icechunk, one commit
  ref_core        ref_assets without Dagster: `PeriodStream` (fetch threads, checks, checksum,
                  statistics, preview) into `PeriodWriter` (batched commits)
  ref_range       (c) ref_assets: one Dagster run of all partitions (streamed, batched commits,
                  each partition's materialization and check events) on a SQLite instance,
                  as `ref-assets materialize` and the local deployment run it
  ref_per_run     (d) ref_assets: one Dagster run per partition (a sample), SQLite instance
  commit_cost     ref_assets per-period commits into one store: cost of the first and last 100
                  commits, and the store's bytes
  plain_commits   the same with a hand-written loop (the control: Icechunk's own growth)
  bulk_store      the same periods in one commit (the reference for storage amplification)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from results import replace_section, synthetic_daily_spec

HERE = Path(__file__).resolve().parent
HEADING = "## Backfill: ref_assets against bulk and hand-written writers (`benchmarks/backfill.py`)"
GRID = {"bbox": [-50.0, -50.0, 50.0, 50.0], "resolution": 0.25, "seed": 1, "land_only": False}


def spec_fields(dataset_id: str) -> dict:
    return synthetic_daily_spec(
        dataset_id,
        "Benchmark field",
        GRID,
        storage={"time_block": 366},
        runs={"commit_every": 32, "fetch_workers": 2},
    )


def keys(count: int) -> list[str]:
    return [str(day) for day in np.datetime64("2000-01-01") + np.arange(count)]


def provider_and_spec(dataset_id: str = "bench"):
    from ref_assets.providers.synthetic import SyntheticProvider
    from ref_assets.specs import DatasetSpec

    spec = DatasetSpec.model_validate(spec_fields(dataset_id))
    return SyntheticProvider(spec), spec


def values(provider, spec, key: str) -> np.ndarray:
    return provider.fetch(spec.period_for_key(key)).data.t2m.values


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---- scenarios (each runs in a child process and returns a dict) ----


def scenario_generate(workdir: Path, count: int) -> dict:
    provider, spec = provider_and_spec()
    start = time.perf_counter()
    for key in keys(count):
        values(provider, spec, key)
    return {"seconds": time.perf_counter() - start, "periods": count}


def scenario_generate_threads(workdir: Path, count: int) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    provider, spec = provider_and_spec()
    start = time.perf_counter()
    with ThreadPoolExecutor(spec.runs.fetch_workers) as pool:
        for _ in pool.map(lambda key: values(provider, spec, key), keys(count)):
            pass
    return {"seconds": time.perf_counter() - start, "periods": count}


def scenario_ref_core(workdir: Path, count: int) -> dict:
    from ref_assets.batch import PeriodStream
    from ref_assets.store.repository import DatasetStore
    from ref_assets.store.writer import CommitPolicy, PeriodWriter

    provider, spec = provider_and_spec("core")
    periods = tuple(spec.period_for_key(key) for key in keys(count))
    start = time.perf_counter()
    writer = PeriodWriter(
        DatasetStore(str(workdir / "stores"), spec.id),
        run_id="bench",
        policy=CommitPolicy(spec.runs.commit_every, spec.runs.commit_seconds),
    )
    written = 0
    for batch in PeriodStream(spec, provider, periods, spec.runs.fetch_workers):
        written += len(writer.add(batch))
    written += len(writer.flush())
    assert written == count, (written, count)
    return {"seconds": time.perf_counter() - start, "periods": count}


def _plain_repo(path: Path, count: int, ny: int, nx: int):
    import icechunk as ic
    import zarr

    from ref_assets.store.repository import repository_config

    repo = ic.Repository.create(ic.local_filesystem_storage(str(path)), repository_config(366))
    session = repo.writable_session("main")
    root = zarr.group(session.store)
    root.create_array(
        "t2m",
        shape=(count, ny, nx),
        chunks=(1, ny, nx),
        dtype="float32",
        fill_value=np.nan,
        dimension_names=["time", "y", "x"],
    )
    session.commit("layout")
    return repo


def _plain_loop(workdir: Path, count: int) -> tuple[float, list[float], int]:
    """(a): one region write and one commit per period; returns total seconds, each
    period's write+commit seconds, and the store's bytes."""
    import zarr

    provider, spec = provider_and_spec()
    ny, nx = provider.grid.shape
    start = time.perf_counter()
    repo = _plain_repo(workdir / "loop", count, ny, nx)
    durations = []
    for index, key in enumerate(keys(count)):
        period_values = values(provider, spec, key)
        began = time.perf_counter()
        session = repo.writable_session("main")
        zarr.open_array(session.store, path="t2m", mode="r+")[index] = period_values
        session.commit(f"period {key}")
        durations.append(time.perf_counter() - began)
    return time.perf_counter() - start, durations, directory_bytes(workdir / "loop")


def scenario_icechunk_loop(workdir: Path, count: int) -> dict:
    seconds, _, _ = _plain_loop(workdir, count)
    return {"seconds": seconds, "periods": count}


def scenario_plain_commits(workdir: Path, count: int) -> dict:
    _, durations, size = _plain_loop(workdir, count)
    return {
        "periods": count,
        "first_100_ms": 1000 * float(np.mean(durations[:100])),
        "last_100_ms": 1000 * float(np.mean(durations[-100:])),
        "bytes": size,
    }


def scenario_bulk(workdir: Path, count: int) -> dict:
    import icechunk as ic
    import xarray as xr
    from icechunk.xarray import to_icechunk

    provider, spec = provider_and_spec()
    start = time.perf_counter()
    stack = np.stack([values(provider, spec, key) for key in keys(count)])
    data = xr.Dataset(
        {"t2m": (("time", "y", "x"), stack)},
        coords={"time": np.array(keys(count), dtype="datetime64[ns]"), **provider.grid.coords()},
    )
    repo = ic.Repository.create(ic.local_filesystem_storage(str(workdir / "bulk")))
    session = repo.writable_session("main")
    to_icechunk(data, session, encoding={"t2m": {"chunks": (1, *provider.grid.shape)}})
    session.commit("bulk")
    return {"seconds": time.perf_counter() - start, "periods": count}


def _dagster_job(workdir: Path, dataset_id: str):
    os.environ["REF_CONFIGURATION"] = str(workdir / "ref")
    (workdir / "dagster").mkdir()  # the SQLite instance's home
    datasets = workdir / "ref" / "datasets"
    datasets.mkdir(parents=True, exist_ok=True)
    import yaml

    (datasets / f"{dataset_id}.yaml").write_text(yaml.safe_dump(spec_fields(dataset_id)))
    import dagster as dg

    from ref_assets.definitions import build_definitions

    key = dg.AssetKey(dataset_id)
    job = build_definitions().resolve_implicit_job_def_def_for_assets([key])
    return dg, functools.partial(job.execute_in_process, asset_selection=[key])


def scenario_ref_range(workdir: Path, count: int) -> dict:
    from ref_assets.defs.assets import range_run_tags

    dg, execute = _dagster_job(workdir, "bench_range")
    all_keys = keys(count)
    start = time.perf_counter()
    with dg.DagsterInstance.local_temp(str(workdir / "dagster")) as instance:
        result = execute(
            instance=instance,
            tags=range_run_tags(all_keys[0], all_keys[-1]),
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
        )
    assert result.success
    return {"seconds": time.perf_counter() - start, "periods": count}


def scenario_ref_per_run(workdir: Path, count: int) -> dict:
    dg, execute = _dagster_job(workdir, "bench_single")
    start = time.perf_counter()
    with dg.DagsterInstance.local_temp(str(workdir / "dagster")) as instance:
        for key in keys(count):
            result = execute(
                instance=instance,
                partition_key=key,
                run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            )
            assert result.success
    return {"seconds": time.perf_counter() - start, "periods": count}


def scenario_commit_cost(workdir: Path, count: int) -> dict:
    from ref_assets.batch import fetch_batch
    from ref_assets.store.repository import DatasetStore
    from ref_assets.store.writer import PeriodWriter

    provider, spec = provider_and_spec("commits")
    store = DatasetStore(str(workdir / "stores"), spec.id)
    durations = []

    def timed_commit(receipts) -> None:
        durations.append(time.perf_counter() - committing[0])

    writer = PeriodWriter(store, run_id="bench", on_commit=timed_commit)
    committing = [0.0]
    for key in keys(count):
        batch = fetch_batch(spec, provider, spec.period_for_key(key))
        committing[0] = time.perf_counter()  # region write + commit of this period
        writer.add(batch)
    return {
        "periods": count,
        "first_100_ms": 1000 * float(np.mean(durations[:100])),
        "last_100_ms": 1000 * float(np.mean(durations[-100:])),
        "bytes": directory_bytes(store.path),
    }


def scenario_bulk_store(workdir: Path, count: int) -> dict:
    import zarr

    from ref_assets.batch import fetch_batch
    from ref_assets.provenance import build_record
    from ref_assets.store.layout import RECORDS_PATH
    from ref_assets.store.repository import DatasetStore
    from ref_assets.store.writer import ensure_capacity

    provider, spec = provider_and_spec("bulk")
    store = DatasetStore(str(workdir / "stores"), spec.id)
    repo = store.open_or_create(spec.manifest_split)
    batches = (fetch_batch(spec, provider, spec.period_for_key(key)) for key in keys(count))
    first = next(batches)
    last = fetch_batch(spec, provider, spec.period_for_key(keys(count)[-1]))
    ensure_capacity(store, repo, last)  # the whole axis at once
    session = repo.writable_session("main")
    group = zarr.open_group(session.store, mode="r+")
    for batch in [first, *batches]:
        group["t2m"][batch.time_index] = batch.variables["t2m"]
        group[RECORDS_PATH][batch.time_index] = build_record(batch, run_id="bulk").to_json()
    session.commit("bulk")
    return {"periods": count, "bytes": directory_bytes(store.path)}


SCENARIOS = {
    name[len("scenario_") :]: fn for name, fn in globals().items() if name.startswith("scenario_")
}


def run_child(name: str, count: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as workdir:
        done = subprocess.run(
            [sys.executable, __file__, "--scenario", name, "--count", str(count), workdir],
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode:
        raise RuntimeError(f"scenario {name} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {name} x{count}: {result}", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--count", type=int)
    parser.add_argument("--quick", action="store_true", help="small sizes; no RESULTS.md")
    parser.add_argument("workdir", nargs="?")
    args = parser.parse_args()
    if args.scenario:  # child
        result = SCENARIOS[args.scenario](Path(args.workdir), args.count)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    year, decade, sample = (365, 3650, 10) if not args.quick else (20, 60, 3)
    results = {
        "generate": run_child("generate", year),
        "generate_threads": run_child("generate_threads", year),
        "a": run_child("icechunk_loop", year),
        "b": run_child("bulk", year),
        "core": run_child("ref_core", year),
        "c": run_child("ref_range", year),
        "d": run_child("ref_per_run", sample),
        "c_decade": run_child("ref_range", decade),
        "commits": run_child("commit_cost", decade),
        "plain_commits": run_child("plain_commits", decade),
        "bulk_store": run_child("bulk_store", decade),
    }
    report = render(results, year, decade, sample)
    print(report)
    if not args.quick:
        replace_section(HEADING, report)


def render(r: dict, year: int, decade: int, sample: int) -> str:
    import dagster
    import icechunk
    import xarray
    import zarr

    import ref_assets

    cells = 400 * 400
    period_mb = cells * 4 / 1e6

    def rate(result: dict) -> float:
        return result["periods"] / result["seconds"]

    b = rate(r["b"])
    floor = rate(r["generate_threads"])
    rows = [
        ("generate only, one thread", r["generate"]),
        ("generate only, the run's 2 fetch threads (the floor)", r["generate_threads"]),
        ("(a) hand-written Icechunk loop, commit per period", r["a"]),
        ("(b) one bulk to_zarr into Icechunk", r["b"]),
        ("ref_assets core, no Dagster (PeriodStream into PeriodWriter)", r["core"]),
        (f"(c) ref_assets, one Dagster run of {year} partitions", r["c"]),
        (f"(d) ref_assets, one Dagster run per partition ({sample} runs)", r["d"]),
        (f"(c) ref_assets, one Dagster run of {decade} partitions", r["c_decade"]),
    ]
    table = "\n".join(
        f"| {label} | {res['periods']} | {rate(res):.1f} | {rate(res) * period_mb:.1f} | "
        f"{rate(res) / b:.2f} | {rate(res) / floor:.2f} | {res['seconds']:.1f} | "
        f"{res['peak_rss_mb']:.0f} |"
        for label, res in rows
    )
    commits, plain = r["commits"], r["plain_commits"]
    commit_rows = "\n".join(
        f"| {label} | {res['first_100_ms']:.1f} ms | {res['last_100_ms']:.1f} ms | "
        f"{res['last_100_ms'] / res['first_100_ms']:.2f} | {res['bytes'] / 1e6:.0f} | "
        f"{res['peak_rss_mb']:.0f} |"
        for label, res in (
            ("ref_assets (`PeriodWriter`, one period per commit)", commits),
            ("hand-written loop (control)", plain),
        )
    )
    amplification = commits["bytes"] / r["bulk_store"]["bytes"]
    growth = commits["last_100_ms"] / commits["first_100_ms"]
    memory = r["c_decade"]["peak_rss_mb"] / r["c"]["peak_rss_mb"]
    c_ratio = rate(r["c"]) / b
    end_to_end = rate(r["c"]) / floor
    core = rate(r["core"]) / floor

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    return f"""{HEADING}

Written by `.venv/bin/python benchmarks/backfill.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.
Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()};
ref_assets {ref_assets.__version__}, dagster {dagster.__version__}, icechunk {icechunk.__version__},
zarr {zarr.__version__}, xarray {xarray.__version__}, numpy {np.__version__}.
Grid: 400 x 400 float32 (daily synthetic 2 m temperature), {period_mb:.2f} MB a period,
{year * period_mb:.0f} MB over {year} periods; local filesystem storage; every scenario includes
producing its periods. Dagster runs use a SQLite instance (each partition's planned,
materialization and check events are written to it, as in a local deployment).

| scenario | periods | periods/s | MB/s | to (b) | to the floor | seconds | peak RSS MB |
| --- | --- | --- | --- | --- | --- | --- | --- |
{table}

Per-period commits into one store of {decade} periods (region write + commit, measured per commit):

| writer | first 100 commits | last 100 commits | last / first | store MB | peak RSS MB |
| --- | --- | --- | --- | --- | --- |
{commit_rows}

The same {decade} periods in one commit: {r["bulk_store"]["bytes"] / 1e6:.0f} MB. What these numbers
mean: `benchmarks/README.md`.

### Targets

| target | measured | |
| --- | --- | --- |
| (c) throughput at least 0.7 of (b) | {c_ratio:.2f} | {verdict(c_ratio >= 0.7)} |
| end to end: (c) at least 0.9 of the floor | {end_to_end:.2f} | {verdict(end_to_end >= 0.9)} |
| ref_assets core at least 0.9 of the floor | {core:.2f} | {verdict(core >= 0.9)} |
| storage amplification at most 1.5 | {amplification:.2f} | {verdict(amplification <= 1.5)} |
| last-100 commit cost at most 1.3 x first-100 | {growth:.2f} | {verdict(growth <= 1.3)} |
| peak memory of (c) at {decade} within 1.2 x at {year} | {memory:.2f} | {verdict(memory <= 1.2)} |
"""


if __name__ == "__main__":
    main()

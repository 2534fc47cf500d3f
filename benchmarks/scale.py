"""Scale benchmark: `ref-assets status` and the code location's load for an hourly dataset
since 1950 (about 674,000 partitions) against a daily dataset of 100 partitions, side by side in
one run, as ratios. Replaces its own section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/scale.py            # about a minute
    .venv/bin/python benchmarks/scale.py --quick    # fewer repeats, no RESULTS.md

Each measurement is a fresh process, as a user or the Dagster code server starts it (imports
included, bytecode compiled): `status` is the real command (text output; `--json` for the hourly
store with few periods lists all 674,000 keys and is timed too), the code location load is
`build_definitions()` plus the repository snapshot Dagster's code server sends to the webserver.
Stores: the 100-period dataset holds 6 periods; the hourly one 6 periods (a young store), or
20,000 scattered periods (every 7th hour: 20,000 gaps) written as placeholder records in one
commit, as `sensor_tick.py` does (which periods exist is all status reads).

    .venv/bin/python benchmarks/scale.py --part commits   # about 3 minutes
    .venv/bin/python benchmarks/scale.py --part memory    # about 4 minutes

`--part commits`: commit cost as a store's history grows. `PeriodWriter` committing one period at a
time into a store of 3,650 daily periods, interleaved period by period with a hand-written loop
(region write and commit, nothing else: Icechunk's own growth) into a second store, so that the
machine's load falls on both alike; CPU time of the process (all its threads) and wall time of
each commit, first and last 100 (after the first, which lays the store out), and the size of
Icechunk's repository object at the end. The grid is small (100 x 100), so the per-commit
overhead is a larger share than on the backfill benchmark's 400 x 400 grid.

`--part memory`: peak resident memory of a range run (one Dagster run, `execute_in_process` on a
SQLite instance, as `ref-assets materialize` runs it) of 365 and of 3,650 daily periods on a 4 x 4
grid, each in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import yaml
import zarr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results import replace_section  # noqa: E402

PYTHON = sys.executable
CLI = str(Path(PYTHON).with_name("ref-assets"))
HEADING = "## Scale: status and code location of 674,000 hourly partitions (`benchmarks/scale.py`)"
COMMITS_HEADING = (
    "## Scale: commit cost as a store's history grows (`benchmarks/scale.py --part commits`)"
)
MEMORY_HEADING = "## Scale: peak memory of a range run (`benchmarks/scale.py --part memory`)"
LOAD = (
    "from ref_assets.definitions import build_definitions\n"
    "from dagster._core.remote_representation.external_data import RepositorySnap\n"
    "RepositorySnap.from_def(build_definitions().get_repository_def())\n"
)


def spec_fields(dataset_id: str, period: str, start: str, end: str | None) -> dict:
    fields = {
        "id": dataset_id,
        "title": f"Scale benchmark {dataset_id}",
        "provider": "synthetic",
        "params": {"bbox": [0.0, 0.0, 1.0, 1.0], "resolution": 0.5},
        "period": period,
        "start": start,
        "variables": [
            {"name": "t2m", "units": "degC", "attributes": {"standard_name": "air_temperature"}}
        ],
    }
    return fields | ({"end": end} if end else {})


def configuration(root: Path, fields: dict, written: list[int], placeholders: int = 0) -> Path:
    """A configuration directory holding only this spec, its store holding ``written`` periods
    (really written) and ``placeholders`` record-only periods every 7th index after them."""
    from ref_assets.batch import fetch_batch
    from ref_assets.providers.synthetic import SyntheticProvider
    from ref_assets.specs import DatasetSpec
    from ref_assets.store.layout import RECORDS_PATH
    from ref_assets.store.repository import DatasetStore
    from ref_assets.store.writer import write_period

    config = root / fields["id"]
    (config / "datasets").mkdir(parents=True)
    (config / "datasets" / f"{fields['id']}.yaml").write_text(yaml.safe_dump(fields))
    spec = DatasetSpec.model_validate(fields)
    store = DatasetStore(str(config / "stores"), spec.id)
    provider = SyntheticProvider(spec)
    last = written[-1]
    if placeholders:
        last = written[-1] + 7 * placeholders
    for index in sorted({*written, last}):
        period = spec.period_for_key(spec.period.key(spec.period.at(index, spec.start)))
        write_period(store, fetch_batch(spec, provider, period), run_id="bench")
    if placeholders:
        session = store.open().writable_session("main")
        records = zarr.open_array(session.store, path=RECORDS_PATH, mode="r+")
        indices = written[-1] + 7 * np.arange(1, placeholders)
        records.set_coordinate_selection(indices, np.full(indices.size, "stored", dtype=object))
        session.commit(f"{spec.id}: {placeholders} placeholder records")
    return config


def timed(command: list[str], config: Path, repeats: int) -> dict:
    """Median and minimum wall seconds, and median CPU seconds, of ``command`` in fresh
    processes (the first run, which compiles bytecode and warms the page cache, is not kept)."""
    env = os.environ | {"REF_CONFIGURATION": str(config)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("REF_STORAGE_ROOT", None)
    walls, cpus = [], []
    for attempt in range(repeats + 1):
        before = os.times()
        began = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - began
        after = os.times()
        if attempt:
            walls.append(wall)
            cpus.append(
                after.children_user
                + after.children_system
                - before.children_user
                - before.children_system
            )
    return {"wall": statistics.median(walls), "min": min(walls), "cpu": statistics.median(cpus)}


def commit_growth(count: int, workdir: Path) -> dict:
    """Per-period commits of `PeriodWriter` and of a hand-written loop, interleaved; each
    commit's CPU and wall seconds (values fetched and prepared before the clock starts)."""
    import icechunk as ic

    from ref_assets.batch import fetch_batch
    from ref_assets.providers.synthetic import SyntheticProvider
    from ref_assets.specs import DatasetSpec
    from ref_assets.store.repository import CACHING, DatasetStore, repository_config
    from ref_assets.store.writer import PeriodWriter

    fields = spec_fields("commits", "daily", "2000-01-01", None)
    fields["params"] = {"bbox": [-12.5, -12.5, 12.5, 12.5], "resolution": 0.25, "seed": 1}
    fields["storage"] = {"time_block": 366}
    spec = DatasetSpec.model_validate(fields)
    provider = SyntheticProvider(spec)
    writer = PeriodWriter(DatasetStore(str(workdir / "stores"), spec.id), run_id="bench")
    storage = ic.local_filesystem_storage(str(workdir / "loop"))
    ic.Repository.create(storage, repository_config(spec.manifest_split))
    loop = ic.Repository.open(storage, config=ic.RepositoryConfig(caching=CACHING))
    session = loop.writable_session("main")
    zarr.group(session.store).create_array(
        "t2m",
        shape=(count, *provider.grid.shape),
        chunks=(1, *provider.grid.shape),
        dtype="float32",
        fill_value=np.nan,
    )
    session.commit("layout")
    times: dict[str, list[tuple[float, float]]] = {"writer": [], "loop": []}

    def timed(name: str, commit, *args) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        commit(*args)
        times[name].append((time.process_time() - cpu, time.perf_counter() - wall))

    def loop_commit(index: int, values: np.ndarray) -> None:
        session = loop.writable_session("main")
        zarr.open_array(session.store, path="t2m", mode="r+")[index] = values
        session.commit(f"commits {index}")

    for index in range(count):
        batch = fetch_batch(
            spec, provider, spec.period_for_key(spec.period.key(spec.period.at(index, spec.start)))
        )
        timed("writer", writer.add, batch)
        timed("loop", loop_commit, index, batch.variables["t2m"])
    result = {"count": count, "grid": list(provider.grid.shape)}
    for name, pairs in times.items():
        # The writer's first commit creates the store's layout: not a period's commit.
        cpu, wall = np.array(pairs[1:]).T * 1000
        result[name] = {
            "first_cpu_ms": float(cpu[:100].mean()),
            "last_cpu_ms": float(cpu[-100:].mean()),
            "first_wall_ms": float(wall[:100].mean()),
            "last_wall_ms": float(wall[-100:].mean()),
        }
    result["writer"]["repo_object_bytes"] = (writer.store.path / "repo").stat().st_size
    result["loop"]["repo_object_bytes"] = (workdir / "loop" / "repo").stat().st_size
    return result


def range_run_memory(count: int, workdir: Path) -> dict:
    """One range run of ``count`` daily periods on a 4 x 4 grid, as `ref-assets materialize`
    runs it (``execute_in_process`` on a SQLite instance); its seconds."""
    import dagster as dg

    fields = spec_fields("memory", "daily", "2000-01-01", None)
    fields["params"] = {"bbox": [0.0, 0.0, 2.0, 2.0], "resolution": 0.5, "seed": 1}
    fields["runs"] = {"commit_every": 32, "fetch_workers": 2}
    (workdir / "datasets").mkdir(parents=True)
    (workdir / "datasets" / "memory.yaml").write_text(yaml.safe_dump(fields))
    os.environ["REF_CONFIGURATION"] = str(workdir)
    from ref_assets.definitions import build_definitions
    from ref_assets.defs.assets import range_run_tags

    key = dg.AssetKey("memory")
    job = build_definitions().resolve_implicit_job_def_def_for_assets([key])
    last = str(np.datetime64("2000-01-01") + count - 1)
    (workdir / "home").mkdir()
    began = time.perf_counter()
    with dg.DagsterInstance.local_temp(str(workdir / "home")) as instance:
        result = job.execute_in_process(
            instance=instance,
            asset_selection=[key],
            tags=range_run_tags("2000-01-01", last),
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
        )
        assert result.success
    return {"count": count, "seconds": time.perf_counter() - began}


def child(part: str, count: int) -> dict:
    """Run one measurement in a fresh process; its result, with its peak resident memory."""
    with tempfile.TemporaryDirectory(prefix=f"ref-scale-{part}-") as workdir:
        command = [PYTHON, __file__, "--child", part, str(count), workdir]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            env=os.environ | {"REF_CONFIGURATION": workdir},
        )
    if done.returncode:
        raise RuntimeError(f"{part} x{count} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {part} x{count}: {result}", file=sys.stderr)
    return result


def machine() -> str:
    return (
        f"Run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {platform.machine()}, "
        f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the end), Python "
        f"{platform.python_version()}; ref_assets {version('ref-assets')}, dagster "
        f"{version('dagster')}, icechunk {version('icechunk')}, zarr {version('zarr')}."
    )


def render_commits(r: dict) -> str:
    rows = []
    for name, label in (
        ("writer", "`PeriodWriter`, one period a commit"),
        ("loop", "hand-written loop (Icechunk alone)"),
    ):
        w = r[name]
        rows.append(
            f"| {label} | {w['first_cpu_ms']:.1f} | {w['last_cpu_ms']:.1f} | "
            f"{w['last_cpu_ms'] / w['first_cpu_ms']:.2f} | {w['first_wall_ms']:.1f} | "
            f"{w['last_wall_ms']:.1f} | {w['last_wall_ms'] / w['first_wall_ms']:.2f} | "
            f"{w['repo_object_bytes'] / 1000:.0f} |"
        )
    added = (r["writer"]["last_cpu_ms"] - r["writer"]["first_cpu_ms"]) - (
        r["loop"]["last_cpu_ms"] - r["loop"]["first_cpu_ms"]
    )
    ny, nx = r["grid"]
    growth = r["writer"]["last_cpu_ms"] / r["writer"]["first_cpu_ms"]
    relative = growth / (r["loop"]["last_cpu_ms"] / r["loop"]["first_cpu_ms"])
    return "\n".join(
        [
            COMMITS_HEADING,
            "",
            f"{machine()} {r['count']:,} daily periods of {ny} x {nx} float32, one commit each, "
            "the two writers interleaved period by period; means of the first and last 100 commits "
            "(ms). CPU is the process's (all threads).",
            "",
            "| writer | CPU first | CPU last | CPU last/first | wall first | wall last | "
            "wall last/first | repository object KB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"Growth the writer adds to Icechunk's own (CPU, last minus first 100, writer minus "
            f"loop): {added:+.1f} ms a commit; the writer's last/first over the loop's: "
            f"{relative:.2f}. A run takes minutes, and the shared machine's load drifts over it "
            "(which both writers' last/first carry alike, the reason for the loop beside it): "
            "the relative figure is the one a drifting load does not move.",
            "",
            "Before the writer dropped its commit metadata and shortened Icechunk's operations "
            "log (the same script on the same machine, two runs, 2026-12-03): `PeriodWriter` "
            "last/first 2.22 and 1.52 (1.48 and 1.42 relative to the loop), growth added to "
            "the loop's +24.9 and +11.3 ms a commit, repository object 287 KB (the loop's 152 "
            "KB). After, two earlier runs: 1.25 and 1.44 (1.09 and 1.03 relative), +5.1 and +5.6 "
            "ms.",
            "",
            f"Target: last 100 commits at most 1.3 x the first 100 (`PeriodWriter`, CPU): "
            f"{growth:.2f} ({relative:.2f} relative to the loop), "
            f"{'met' if growth <= 1.3 else '**missed**'}.",
        ]
    )


def render_memory(runs: list[dict]) -> str:
    small, large = runs
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    extra = large["count"] - small["count"]
    per_partition = (large["peak_rss_mb"] - small["peak_rss_mb"]) / extra
    verdict = "met" if ratio <= 1.2 else "**missed**"
    return "\n".join(
        [
            MEMORY_HEADING,
            "",
            f"{machine()} One range run (`execute_in_process` on a SQLite instance, as `ref-assets "
            "materialize` runs it; commits of 32) of daily periods on a 4 x 4 grid, each in a "
            "fresh process.",
            "",
            "| partitions | seconds | peak RSS MB |",
            "| --- | --- | --- |",
            *(
                f"| {run['count']:,} | {run['seconds']:.0f} | {run['peak_rss_mb']:.0f} |"
                for run in runs
            ),
            "",
            f"Peak RSS grows by {per_partition * 1000:.0f} KB a partition: the events Dagster "
            "keeps for the step (see benchmarks/README.md).",
            "",
            f"Target: peak RSS of a range run of {large['count']:,} partitions within 1.2 x that "
            f"of {small['count']:,}: {ratio:.2f}, {verdict}.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes; no RESULTS.md")
    parser.add_argument("--part", choices=["status", "commits", "memory"], action="append")
    parser.add_argument("--child", nargs=3, metavar=("PART", "COUNT", "WORKDIR"))
    args = parser.parse_args()
    if args.child:
        part, count, workdir = args.child[0], int(args.child[1]), Path(args.child[2])
        if part == "commits":
            result = commit_growth(count, workdir)
        else:
            result = range_run_memory(count, workdir)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    parts = args.part or ["status", "commits", "memory"]
    if "commits" in parts:
        report = render_commits(child("commits", 300 if args.quick else 3650))
        print(report)
        if not args.quick:
            replace_section(COMMITS_HEADING, report)
    if "memory" in parts:
        sizes = (40, 400) if args.quick else (365, 3650)
        runs = [child("memory", count) for count in sizes]
        report = render_memory(runs)
        print(report)
        if not args.quick:
            replace_section(MEMORY_HEADING, report)
    if "status" in parts:
        status(args.quick)


def status(quick: bool) -> None:
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="ref-scale-") as tmp:
        root = Path(tmp)
        small = configuration(
            root, spec_fields("daily_100", "daily", "2024-01-01", "2024-04-09"), [0, 1, 2, 5, 6, 9]
        )
        young = configuration(
            root, spec_fields("hourly_1950", "hourly", "1950-01-01T00:00", None), [0, 1, 2, 5, 6, 9]
        )
        scattered = configuration(
            root,
            spec_fields("hourly_scattered", "hourly", "1950-01-01T00:00", None),
            [0],
            placeholders=20_000,
        )
        rows = [
            ("status, 100 daily partitions, 6 stored", [CLI, "status", "daily_100"], small),
            ("status, 674k hourly partitions, 6 stored", [CLI, "status", "hourly_1950"], young),
            (
                "status, 674k hourly, 20,000 stored every 7th hour",
                [CLI, "status", "hourly_scattered"],
                scattered,
            ),
            (
                "status --json, 674k hourly, 6 stored (lists 674k keys)",
                [CLI, "status", "hourly_1950", "--json"],
                young,
            ),
            ("code location load, 100 daily partitions", [PYTHON, "-c", LOAD], small),
            ("code location load, 674k hourly partitions", [PYTHON, "-c", LOAD], young),
            ("the floor: `python -c 'import icechunk'`", [PYTHON, "-c", "import icechunk"], young),
        ]
        results = [(name, timed(command, config, repeats)) for name, command, config in rows]
    report = render(results, repeats)
    print(report)
    if not quick:
        replace_section(HEADING, report)


def render(results: list[tuple[str, dict]], repeats: int) -> str:
    base_status, base_load = results[0][1]["wall"], results[4][1]["wall"]
    slowest = max(results[1][1]["wall"], results[2][1]["wall"])
    floor = results[6][1]["wall"]
    lines = [
        HEADING,
        "",
        f"Run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {platform.machine()}, "
        f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the end), Python "
        f"{platform.python_version()}; ref_assets {version('ref-assets')}, dagster "
        f"{version('dagster')}, icechunk {version('icechunk')}, zarr {version('zarr')}. Each "
        f"figure is a fresh process, median of {repeats} after a warm-up run.",
        "",
        "| what | wall s (median) | wall s (min) | CPU s | ratio to its 100-partition row |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, (name, r) in enumerate(results):
        base = base_status if i < 4 else base_load
        ratio = f"{r['wall'] / base:.2f}" if i < 6 else ""
        lines.append(f"| {name} | {r['wall']:.2f} | {r['min']:.2f} | {r['cpu']:.2f} | {ratio} |")
    lines += [
        "",
        "Before issue 12 (same machine, busy): `status` of the hourly dataset with 6 stored "
        "periods took 18.7 s wall (10.5 s CPU), 545x the 100-partition dataset. Target: under "
        "1 s for any store content. The floor row is what any command reading a store pays "
        "before its first line of work: Icechunk's Python package imports zarr (and zarr imports "
        "fsspec and universal_pathlib, installed with Dagster). `status` imports nothing for "
        "editing (tomlkit, filelock, platformdirs are imported where ref.toml is written or a "
        "commit lock taken); its own logic takes tens of milliseconds.",
        "",
        f"Target: `status` of the hourly dataset under 1 s wall, any store content: "
        f"{slowest:.2f} s (median of its slower row; the floor {floor:.2f} s), "
        f"{'met' if slowest < 1 else '**missed**'}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

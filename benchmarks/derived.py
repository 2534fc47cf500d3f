"""Derived-product benchmark: a monthly aggregate of 31 daily periods against reading them.

    .venv/bin/python benchmarks/derived.py           # its RESULTS.md section
    .venv/bin/python benchmarks/derived.py --quick   # a small grid; prints only

The input (synthetic 400 x 400 float32 daily periods, benchmarks/backfill.py's grid, January 2000)
is written before any clock starts. Then, interleaved and best of ``--repeat``:

  read          the 31 periods read into memory from the input's store (one zarr slice): the floor
  read (xarray) the same through `ref_assets.open_dataset(...).sel(time=...)`, as a user reads
  numpy mean   the mean of the 31 periods already in memory
  aggregate    `AggregateProvider.fetch`: opens the input store, lists its periods, checks the
               coverage, reads the 31 periods and their records, computes the mean (NaN-aware)
  materialize  the whole product period without Dagster: aggregate, prepare (checks, checksum,
               statistics), write with its record and commit into a new product store
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from datetime import UTC, datetime

import numpy as np
from backfill import GRID
from results import replace_section, timed

SECTION = "## Derived products: a monthly mean of 31 daily periods (`benchmarks/derived.py`)"
DAYS = [f"2000-01-{day:02d}" for day in range(1, 32)]


def input_spec(grid: dict):
    from ref_assets.specs import DatasetSpec

    return DatasetSpec.model_validate(
        {
            "id": "bench_daily",
            "title": "Benchmark input",
            "provider": "synthetic",
            "params": grid,
            "period": "daily",
            "start": "2000-01-01",
            "variables": [
                {"name": "t2m", "units": "degC", "attributes": {"standard_name": "air_temperature"}}
            ],
            "storage": {"time_block": 366},
        }
    )


def product_spec(dataset_id: str):
    from ref_assets.specs import DatasetSpec

    return DatasetSpec.model_validate(
        {
            "id": dataset_id,
            "title": "Benchmark monthly mean",
            "provider": "aggregate",
            "params": {"input": "bench_daily", "statistic": "mean"},
            "period": "monthly",
            "start": "2000-01-01",
            "variables": [{"name": "t2m", "units": "degC"}],
        }
    )


def write_input(root: str, grid: dict) -> int:
    """The 31 daily periods, written as a range run writes them; returns their bytes."""
    from ref_assets.batch import fetch_batch
    from ref_assets.providers.synthetic import SyntheticProvider
    from ref_assets.store.repository import DatasetStore
    from ref_assets.store.writer import CommitPolicy, PeriodWriter

    spec = input_spec(grid)
    provider = SyntheticProvider(spec)
    writer = PeriodWriter(DatasetStore(root, spec.id), run_id="bench", policy=CommitPolicy(32))
    total = 0
    for key in DAYS:
        batch = fetch_batch(spec, provider, spec.period_for_key(key))
        total += sum(values.nbytes for values in batch.variables.values())
        writer.add(batch)
    writer.flush()
    return total


def read_slice(root: str) -> np.ndarray:
    import zarr

    from ref_assets.store import reader as store_reader
    from ref_assets.store.repository import DatasetStore

    session = store_reader.session_for(DatasetStore(root, "bench_daily"))
    return zarr.open_array(session.store, path="t2m", mode="r")[0:31]


def read_xarray(root: str) -> np.ndarray:
    import ref_assets

    data = ref_assets.open_dataset("bench_daily")
    return data.t2m.sel(time=slice("2000-01-01", "2000-01-31")).values


def aggregate_once() -> np.ndarray:
    from ref_assets.periods import Period, PeriodType
    from ref_assets.providers.aggregate import AggregateProvider

    provider = AggregateProvider(product_spec("bench_monthly"))
    return provider.fetch(Period.from_key(PeriodType.MONTHLY, "2000-01")).data.t2m.values


def materialize_once(root: str, attempt: int) -> None:
    from ref_assets.batch import fetch_batch
    from ref_assets.periods import Period, PeriodType
    from ref_assets.providers.aggregate import AggregateProvider
    from ref_assets.store.repository import DatasetStore
    from ref_assets.store.writer import write_period

    spec = product_spec(f"bench_monthly_{attempt}")  # a new store each time: layout included
    batch = fetch_batch(
        spec, AggregateProvider(spec), Period.from_key(PeriodType.MONTHLY, "2000-01")
    )
    write_period(DatasetStore(root, spec.id), batch, run_id="bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 100 x 100 grid; prints only")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    grid = {**GRID, "resolution": 1.0} if args.quick else GRID
    with tempfile.TemporaryDirectory(prefix="ref-derived-") as workdir:
        os.environ["REF_CONFIGURATION"] = workdir
        os.environ.pop("REF_STORAGE_ROOT", None)
        from ref_assets.config import load_settings

        root = load_settings().storage_root
        nbytes = write_input(root, grid)
        best: dict[str, float] = {}
        stack = read_slice(root)  # warm-up: imports, first open
        mean = aggregate_once().astype("float32")  # as the product stores it
        np.testing.assert_array_equal(mean, stack.astype("float64").mean(axis=0).astype("float32"))
        for attempt in range(args.repeat):
            runs = {
                "read": lambda: read_slice(root),
                "read (xarray)": lambda: read_xarray(root),
                "numpy mean": lambda: stack.astype("float64").mean(axis=0),
                "aggregate": aggregate_once,
                "materialize": lambda attempt=attempt: materialize_once(root, attempt),
            }
            for name, work in runs.items():
                seconds, _ = timed(work)
                best[name] = min(best.get(name, seconds), seconds)
    import icechunk
    import xarray
    import zarr

    ny, nx = stack.shape[1:]
    lines = [
        SECTION,
        "",
        f"Written by `.venv/bin/python benchmarks/derived.py` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. {platform.machine()}, {os.cpu_count()} cores "
        f"(shared with two other jobs: loaded), Python {platform.python_version()}; icechunk "
        f"{icechunk.__version__}, zarr {zarr.__version__}, xarray {xarray.__version__}, numpy "
        f"{np.__version__}.",
        f"31 daily periods of {ny} x {nx} float32 ({nbytes / 2**20:.0f} MB) on local disk; "
        f"best of {args.repeat}, interleaved.",
        "",
        "| step | ms | ratio to read |",
        "| --- | --- | --- |",
        *(
            f"| {name} | {seconds * 1000:.0f} | {seconds / best['read']:.2f} |"
            for name, seconds in best.items()
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        replace_section(SECTION, text)


if __name__ == "__main__":
    main()

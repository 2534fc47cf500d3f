"""Extraction benchmark: a point series of 10 years of days at 10 points, extracted to a staging
area, against reading the same values with `open_dataset` in-process.

    .venv/bin/python benchmarks/extraction.py          # 3,650 days of 50 x 50; its section
    .venv/bin/python benchmarks/extraction.py --quick  # 400 days; prints only

One dataset of daily 50 x 50 float32 periods (2010-01-01 on) is written by ref_assets' own
`PeriodWriter` (real records and checksums; the cheap values of `benchmarks/timeseries.py`), and
its time-series copy built by `update_timeseries` (time chunks of 365 days, shards of 50 x 50,
tiles of 10 x 10). Then, in one process, the readers taking turns, best of 3 each:

  with the copy     `extract` of the 10 points over every day (NetCDF; a fresh staging area
                    each time, so nothing is reused), which reads the copy, against
                    `open_dataset(..., layout="timeseries")` and a vectorized selection of the
                    same 10 cells (``.values``) (target: within 2x)
  without the copy  the same `extract` with the copy moved aside (it then reads the per-period
                    store, one chunk a day), against `open_dataset(...)` of the per-period store
                    and the same selection
  CSV               the extraction with the copy as CSV, for context
  memory            the whole grid over one year and over every day (NetCDF), with blocks of
                    4 MiB of values: the peak of Python's heap (`tracemalloc`, numpy arrays
                    included) while each runs, which streaming keeps flat in the request's size

The extraction's time includes what `open_dataset` does not: resolving the request, the
checksums of the 3,650 period records drawn on (for the output's record: from the copy's own
chunk of them when it serves the request, else one record read per period, as many reads as the
values), writing and hashing the output and writing its record.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from results import machine_load, replace_section, synthetic_daily_spec
from timeseries import batch, interleaved

SECTION = "## Extraction: a point series to a staging area (`benchmarks/extraction.py`)"
SIDE = 50
POINTS = 10
TARGET = 2.0


def make_spec(days: int):
    from ref_assets.specs import DatasetSpec

    return DatasetSpec.model_validate(
        synthetic_daily_spec(
            "bench_extraction",
            "Extraction benchmark",
            {"bbox": [0.0, 0.0, SIDE / 10, SIDE / 10], "resolution": 0.1},
            start="2010-01-01",
            end=str(np.datetime64("2010-01-01") + np.timedelta64(days - 1, "D")),
            timeseries={"time_chunk": 365, "y": SIDE, "x": SIDE, "tile": 10},
        )
    )


def build(workdir: Path, days: int):
    from ref_assets.providers.synthetic import SyntheticProvider
    from ref_assets.store.repository import DatasetStore
    from ref_assets.store.timeseries import update_timeseries
    from ref_assets.store.writer import CommitPolicy, PeriodWriter

    spec = make_spec(days)
    description = SyntheticProvider(spec).describe()
    store = DatasetStore(str(workdir / "stores"), spec.id)
    began = time.perf_counter()
    writer = PeriodWriter(store, run_id="bench", policy=CommitPolicy(365, 1e9))
    for index in range(days):
        writer.add(batch(spec, description, index))
    writer.flush()
    written = time.perf_counter() - began
    began = time.perf_counter()
    update_timeseries(spec, store, run_id="bench")
    return spec, store, written, time.perf_counter() - began


def measure(workdir: Path, days: int) -> dict:
    import xarray as xr

    from ref_assets.config import load_settings
    from ref_assets.extract import extract, make_request
    from ref_assets.reader import open_dataset

    spec, store, written_seconds, copy_seconds = build(workdir, days)
    os.environ["REF_CONFIGURATION"] = str(workdir / "ref")
    os.environ["REF_STORAGE_ROOT"] = str(store.root)
    settings = load_settings()
    rng = np.random.default_rng(7)
    lon = rng.uniform(0, SIDE / 10, POINTS).round(3)
    lat = rng.uniform(0, SIDE / 10, POINTS).round(3)
    points = tuple(zip(lon.tolist(), lat.tolist(), strict=True))
    runs = iter(range(1_000_000))

    def extraction(fmt: str):
        def run(_case) -> dict:
            request = make_request(dataset=spec.id, points=points, format=fmt)
            staging = str(workdir / f"staging-{next(runs)}")
            result = extract(request, settings=settings, staging=staging)
            assert not result.reused
            return result.record

        return run

    def in_process(layout: str):
        def run(_case) -> np.ndarray:
            data = open_dataset(spec.id, layout=layout, settings=settings)
            cells = data.t2m.sel(
                x=xr.DataArray(lon, dims="point"),
                y=xr.DataArray(lat, dims="point"),
                method="nearest",
            )
            return cells.values

        return run

    # The same values, whichever way they are read.
    record = extraction("netcdf")(None)
    assert record["read_from"] == {"timeseries": days, "periods": 0}, record["read_from"]
    staged = xr.open_dataset(record["output"]).t2m.values
    np.testing.assert_array_equal(staged, in_process("timeseries")(None))

    cases = [None] * 3
    with_copy = interleaved(
        {"extract": extraction("netcdf"), "open_dataset": in_process("timeseries")}, cases
    )
    csv = interleaved({"extract_csv": extraction("csv")}, cases[:1])
    copy_path = Path(f"{store.path}.timeseries")
    aside = copy_path.with_name(copy_path.name + ".aside")
    copy_path.rename(aside)
    try:
        record = extraction("netcdf")(None)
        assert record["read_from"] == {"timeseries": 0, "periods": days}, record["read_from"]
        without_copy = interleaved(
            {"extract": extraction("netcdf"), "open_dataset": in_process("periods")}, cases
        )
    finally:
        aside.rename(copy_path)
    memory = {span: peak_memory(spec, settings, workdir, span) for span in (365, days)}
    return {
        "memory": memory,
        "days": days,
        "build": (written_seconds, copy_seconds),
        "with": {k: min(v) for k, v in with_copy.items()},
        "without": {k: min(v) for k, v in without_copy.items()},
        "csv": statistics.median(csv["extract_csv"]),
        "output_bytes": record["bytes"],
    }


def peak_memory(spec, settings, workdir: Path, periods: int) -> float:
    """MiB: the peak of the traced heap while the whole grid's first ``periods`` days are
    extracted in blocks of 4 MiB of values."""
    import tracemalloc

    from ref_assets.extract import extract, make_request, plan

    end = str(np.datetime64("2010-01-01") + np.timedelta64(periods - 1, "D"))
    request = make_request(dataset=spec.id, end=end)
    default, plan.BLOCK_BYTES = plan.BLOCK_BYTES, 4 * 2**20
    tracemalloc.start()
    try:
        extract(request, settings=settings, staging=str(workdir / f"memory-{periods}"))
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
        plan.BLOCK_BYTES = default


def versions() -> str:
    import icechunk
    import xarray
    import zarr

    return (
        f"{platform.machine()}, {machine_load()}, Python {platform.python_version()}; icechunk "
        f"{icechunk.__version__}, zarr {zarr.__version__}, xarray {xarray.__version__}"
    )


def render(r: dict) -> str:
    with_copy, without = r["with"], r["without"]
    ratio = with_copy["extract"] / with_copy["open_dataset"]
    ratio_without = without["extract"] / without["open_dataset"]
    written, copied = r["build"]
    return "\n".join(
        [
            SECTION,
            "",
            f"Written by `.venv/bin/python benchmarks/extraction.py` on "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. {versions()}.",
            f"{r['days']:,} daily periods of {SIDE} x {SIDE} float32, local filesystem; "
            f"{POINTS} random points over every day; best of 3, the readers taking turns.",
            "",
            "| read | how | ms | ratio |",
            "| --- | --- | --- | --- |",
            f"| with the time-series copy | `extract` to NetCDF in a staging area | "
            f"{with_copy['extract']:.0f} | {ratio:.2f} |",
            f'| | `open_dataset(layout="timeseries")` + the 10 cells\' `.values` | '
            f"{with_copy['open_dataset']:.0f} | 1.00 |",
            f"| | `extract` to CSV (context) | {r['csv']:.0f} | "
            f"{r['csv'] / with_copy['open_dataset']:.2f} |",
            f"| without the copy (per-period store) | `extract` to NetCDF | "
            f"{without['extract']:.0f} | {ratio_without:.2f} |",
            f"| | `open_dataset()` + the 10 cells' `.values` | {without['open_dataset']:.0f} | "
            "1.00 |",
            "",
            f"Memory (the whole {SIDE} x {SIDE} grid to NetCDF, blocks of 4 MiB of values): "
            + ", ".join(
                f"{span:,} days ({span * SIDE * SIDE * 4 / 2**20:.1f} MiB of values): peak "
                f"{peak:.1f} MiB traced"
                for span, peak in r["memory"].items()
            )
            + ".",
            "",
            f"Building: the per-period store {written:.1f} s, its time-series copy {copied:.1f} s. "
            f"The staged NetCDF is {r['output_bytes']:,} bytes. The extraction also gathers the "
            f"checksums of the {r['days']:,} period records it draws on (from the copy's chunk "
            "of them; without the copy, one record read per period, as many reads as the "
            "values), writes and hashes the output and writes its record.",
            "",
            f"Target: a point series of {r['days']:,} days at {POINTS} points extracted within "
            f"{TARGET:g}x of reading it with `open_dataset` in-process (time-series copy): "
            f"{ratio:.2f}, {'met' if ratio <= TARGET else '**missed**'}; without the copy "
            f"{ratio_without:.2f}.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="400 days; print only")
    args = parser.parse_args()
    days = 400 if args.quick else 3650
    workdir = Path(tempfile.mkdtemp(prefix="extraction-bench-"))
    try:
        results = measure(workdir, days)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = render(results)
    print(text)
    if not args.quick:
        replace_section(SECTION, text)


if __name__ == "__main__":
    main()

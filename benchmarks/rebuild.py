"""Rebuild and rechunk against writing the same periods once.

    .venv/bin/python benchmarks/rebuild.py           # its RESULTS.md section
    .venv/bin/python benchmarks/rebuild.py --quick   # a small grid, 12 periods; prints only

60 synthetic daily periods (200 x 200 float32 by default) are written once as a range run writes
them (`PeriodStream` fetching on `runs.fetch_workers` threads, `PeriodWriter` committing every
`runs.commit_every`), into a store whose operator has annotated it: that is the "write once"
time. Then, on the same store, one after another (each run once: the machine is shared):

  rechunk  `rechunk_dataset` from one chunk a period to 50 x 50 chunks: stash, branch, new
           arrays, copy every period from main, restore, verify every period, publish, clear
  rebuild  `rebuild_dataset` for the spec with float64 values: the same stages, the periods
           fetched again from the provider (as the write did) instead of copied

Each is split by stage (`ref_assets.rebuild.STAGES`, timed from one stage's start to the next).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import UTC, datetime

from results import machine_load, replace_section

SECTION = "## Rebuild and rechunk against writing once (`benchmarks/rebuild.py`)"
GRID = {"bbox": [0.0, 0.0, 50.0, 50.0], "resolution": 0.25, "seed": 1, "land_only": False}


def spec_fields(dtype: str = "float32", grid: dict = GRID) -> dict:
    return {
        "id": "bench_rebuild",
        "title": "Benchmark rebuild",
        "provider": "synthetic",
        "params": grid,
        "period": "daily",
        "start": "2000-01-01",
        "variables": [
            {
                "name": "t2m",
                "units": "degC",
                "dtype": dtype,
                "attributes": {"standard_name": "air_temperature"},
            }
        ],
        "storage": {"time_block": 366},
    }


def write_once(spec, store, periods) -> float:
    from ref_assets.batch import PeriodStream
    from ref_assets.providers.synthetic import SyntheticProvider
    from ref_assets.store.writer import CommitPolicy, PeriodWriter

    started = time.perf_counter()
    writer = PeriodWriter(
        store,
        run_id="bench",
        policy=CommitPolicy(spec.runs.commit_every, spec.runs.commit_seconds),
    )
    for batch in PeriodStream(spec, SyntheticProvider(spec), periods, spec.runs.fetch_workers):
        writer.add(batch)
    writer.flush()
    return time.perf_counter() - started


def staged(run) -> tuple[float, dict[str, float]]:
    """Run ``run(on_stage)``; its total seconds and the seconds of each stage."""
    marks: list[tuple[str, float]] = []
    started = time.perf_counter()
    run(lambda stage: marks.append((stage, time.perf_counter())))
    ended = time.perf_counter()
    stages = {
        stage: (marks[n + 1][1] if n + 1 < len(marks) else ended) - at
        for n, (stage, at) in enumerate(marks)
    }
    return ended - started, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 periods of 40 x 40; prints only")
    args = parser.parse_args()
    count = 12 if args.quick else 60
    grid = {**GRID, "bbox": [0.0, 0.0, 10.0, 10.0]} if args.quick else GRID
    side = 20 if args.quick else 50  # the rechunk's chunks (the spec's: the whole grid)
    with tempfile.TemporaryDirectory(prefix="ref-rebuild-") as workdir:
        os.environ["REF_CONFIGURATION"] = workdir
        os.environ.pop("REF_STORAGE_ROOT", None)
        from ref_assets.annotations import annotate
        from ref_assets.config import load_settings
        from ref_assets.providers.synthetic import SyntheticProvider
        from ref_assets.rebuild import rebuild_dataset, rechunk_dataset
        from ref_assets.specs import DatasetSpec
        from ref_assets.store.repository import DatasetStore

        settings = load_settings()
        spec = DatasetSpec.model_validate(spec_fields(grid=grid))
        store = DatasetStore(settings.storage_root, spec.id)
        periods = tuple(
            spec.period_for_key(f"2000-{1 + d // 28:02d}-{1 + d % 28:02d}") for d in range(count)
        )
        written = write_once(spec, store, periods)
        annotate(spec.id, "t2m", label="Air temperature", by="bench")
        rechunk, rechunk_stages = staged(
            lambda on_stage: rechunk_dataset(
                spec,
                store,
                chunks={"y": side, "x": side},
                settings=settings,
                run_id="bench-rechunk",
                on_stage=on_stage,
            )
        )
        new = DatasetSpec.model_validate(spec_fields("float64", grid))
        rebuild, rebuild_stages = staged(
            lambda on_stage: rebuild_dataset(
                new,
                SyntheticProvider(new),
                store,
                settings=settings,
                run_id="bench-rebuild",
                on_stage=on_stage,
            )
        )
    import icechunk
    import zarr

    ny, nx = SyntheticProvider(spec).describe().grid.shape
    stage_names = list(rebuild_stages)
    lines = [
        SECTION,
        "",
        f"Written by `.venv/bin/python benchmarks/rebuild.py` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. {platform.machine()}, {os.cpu_count()} cores "
        f"({machine_load()}), Python {platform.python_version()}; icechunk "
        f"{icechunk.__version__}, zarr {zarr.__version__}. {count} daily periods of {ny} x {nx} "
        "float32 on local disk, each run once.",
        "",
        "| run | s | ratio to writing once |",
        "| --- | --- | --- |",
        f"| write once (fetch + write, commit every {spec.runs.commit_every}) | {written:.2f} "
        "| 1.00 |",
        f"| rechunk to {side} x {side} (copy) | {rechunk:.2f} | {rechunk / written:.2f} |",
        f"| rebuild as float64 (fetch again) | {rebuild:.2f} | {rebuild / written:.2f} |",
        "",
        "| stage | rechunk s | rebuild s |",
        "| --- | --- | --- |",
        *(
            f"| {name} | {rechunk_stages.get(name, 0.0):.2f} | {rebuild_stages[name]:.2f} |"
            for name in stage_names
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        replace_section(SECTION, text)


if __name__ == "__main__":
    main()

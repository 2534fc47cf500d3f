"""Time-series layout benchmark: a point series over 10 years of days, and one map, side by side.

    .venv/bin/python benchmarks/timeseries.py          # 3,650 days of 200 x 200; its section
    .venv/bin/python benchmarks/timeseries.py --quick  # 400 days; prints only

One dataset of 3,650 daily periods (2010-01-01..2019-12-30) on a 200 x 200 float32 grid is
written by ref_assets' own `PeriodWriter` (real records and checksums; commits of 365 periods;
the spec's default spatial chunk, the whole grid) into the per-period store, and its time-series
copy built by `update_timeseries` (`timeseries: {time_chunk: 365, y: 50, x: 50}`: stored
objects, Zarr shards, of 365 days by 50 x 50 cells, read by tiles of 10 x 10). The same
values go, by plain zarr, into a hand-chunked Zarr of (365, 50, 50) chunks beside it (same
default codec, zstd). The values are cheap to make (a seasonal cycle, a gradient, noise rounded
to 0.01 degC, from a generator seeded by the day), so building takes about a minute, not the
synthetic provider's 42 ms a period.

Then, in one process, interleaved and cache-warm (every store was just written):

  point series   ``ds.t2m[:, y, x].values`` at random cells, each in another tile: from the
                 copy through ``open_dataset(..., layout="timeseries")`` against the hand-chunked
                 Zarr through ``xarray.open_zarr`` (target: within 1.5x); the per-period layout
                 for context (one chunk per day)
  one map        ``ds.t2m[i].values`` of a random day: from the per-period layout through
                 ``open_dataset`` against the same store opened as `open_dataset` did before
                 the time-series layout existed (``xarray.open_zarr`` of its session; target:
                 within 1.5x); the copy and the hand-chunked Zarr for context
  updates        a period that lands, and a revised one, reaching the copy: `update_timeseries`
                 over the period's year, as the Dagster asset runs it (the rewrite of one time
                 chunk: 365 days of 16 shards)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from results import replace_section, synthetic_daily_spec

SECTION = "## Time-series layout: point series and maps (`benchmarks/timeseries.py`)"
SIDE = 200
TIME_CHUNK, TILE = 365, 50


def make_spec(days: int):
    from ref_assets.specs import DatasetSpec

    return DatasetSpec.model_validate(
        synthetic_daily_spec(
            "bench_timeseries",
            "Time-series benchmark",
            # 200 x 200 cells of 0.1 degree.
            {"bbox": [0.0, 0.0, SIDE / 10, SIDE / 10], "resolution": 0.1},
            start="2010-01-01",
            # One day past the built ones: the day that lands while the copy is current.
            end=str(np.datetime64("2010-01-01") + np.timedelta64(days, "D")),
            timeseries={"time_chunk": TIME_CHUNK, "y": TILE, "x": TILE},
        )
    )


def day_values(index: int, shape: tuple[int, int], offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(index)
    season = 10 * np.sin(2 * np.pi * index / 365.25)
    gradient = np.linspace(25, 5, shape[0])[:, None] + np.zeros(shape)
    noise = rng.normal(0, 2, shape)
    return np.round(gradient + season + noise + offset, 2).astype("float32")


def batch(spec, description, index: int, offset: float = 0.0):
    import xarray as xr

    from ref_assets.batch import prepare_batch
    from ref_assets.periods import Period
    from ref_assets.providers.protocol import FetchedPeriod, SourceItem

    period = Period(spec.period, spec.period.at(index, spec.start))
    values = day_values(index, description.grid.shape, offset)
    data = xr.Dataset({"t2m": (("y", "x"), values)}, coords=description.grid.coords())
    source = SourceItem.from_bytes(f"bench://{period.key}/{offset}", values.tobytes())
    return prepare_batch(
        spec,
        description,
        period,
        FetchedPeriod(data, (source,)),
        provider="synthetic",
        provider_version="bench",
        fetched_at=datetime.now(UTC),
    )


def build(workdir: Path, days: int) -> dict:
    import zarr

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
    periods_seconds = time.perf_counter() - began

    began = time.perf_counter()
    copy = update_timeseries(spec, store, run_id="bench")
    copy_seconds = time.perf_counter() - began
    assert copy.periods == days, copy

    began = time.perf_counter()
    session = store.open().readonly_session(branch="main")
    source = zarr.open_group(session.store, mode="r")
    hand = zarr.open_group(zarr.storage.LocalStore(str(workdir / "hand.zarr")), mode="w")
    for name in ("y", "x"):
        hand.create_array(name, data=source[name][:], dimension_names=[name])
        hand[name].attrs.update(source[name].attrs.asdict())
    times = hand.create_array(
        "time", shape=(days,), chunks=(TIME_CHUNK,), dtype="int64", dimension_names=["time"]
    )
    times.attrs.update(source["time"].attrs.asdict())
    times[:] = source["time"][:days]
    t2m = hand.create_array(
        "t2m",
        shape=(days, SIDE, SIDE),
        chunks=(TIME_CHUNK, TILE, TILE),
        dtype="float32",
        fill_value=np.nan,
        dimension_names=["time", "y", "x"],
    )
    for first in range(0, days, TIME_CHUNK):
        stop = min(first + TIME_CHUNK, days)
        t2m[first:stop] = np.stack([day_values(i, (SIDE, SIDE)) for i in range(first, stop)])
    hand_seconds = time.perf_counter() - began
    return {
        "spec": spec,
        "description": description,
        "store": store,
        "build": (periods_seconds, copy_seconds, hand_seconds),
    }


def interleaved(readers: dict, cases: list, repeat: int = 1) -> dict[str, list[float]]:
    """Milliseconds of each reader over every case, the readers taking turns on each case."""
    times: dict[str, list[float]] = {name: [] for name in readers}
    for turn, case in enumerate(cases):
        names = list(readers)
        for name in names[turn % len(names) :] + names[: turn % len(names)]:  # who goes first
            read = readers[name]
            best = float("inf")
            for _ in range(repeat):
                began = time.perf_counter()
                read(case)
                best = min(best, time.perf_counter() - began)
            times[name].append(best * 1000)
    return times


def measure(workdir: Path, days: int, points: int) -> dict:
    import xarray as xr

    from ref_assets.reader import open_dataset
    from ref_assets.store import reader as store_reader
    from ref_assets.store.timeseries import update_timeseries

    built = build(workdir, days)
    spec, store = built["spec"], built["store"]
    os.environ["REF_STORAGE_ROOT"] = str(store.root)
    series = open_dataset(spec.id, layout="timeseries")
    periods = open_dataset(spec.id)
    hand = xr.open_zarr(str(workdir / "hand.zarr"), consolidated=False, chunks=None)
    # As open_dataset opened the per-period store before the time-series layout existed.
    before = store_reader.open_store_dataset(store_reader.session_for(store))
    assert series.sizes["time"] == hand.sizes["time"] == days

    rng = np.random.default_rng(7)
    tiles = rng.permutation(SIDE // TILE * SIDE // TILE)[:points]
    cells = [
        (int(t // (SIDE // TILE) * TILE + rng.integers(TILE)), int(t % (SIDE // TILE) * TILE))
        for t in tiles
    ]
    for y, x in cells[:2]:  # the same values, whichever layout they are read from
        expected = hand.t2m[:, y, x].values
        for data in (series, periods):
            np.testing.assert_array_equal(data.t2m[:, y, x].values, expected)
    point = interleaved(
        {
            "copy": lambda c: series.t2m[:, c[0], c[1]].values,
            "hand": lambda c: hand.t2m[:, c[0], c[1]].values,
        },
        cells,
        repeat=3,
    )
    point_periods = interleaved({"periods": lambda c: periods.t2m[:, c[0], c[1]].values}, cells[:2])
    days_read = [int(d) for d in rng.integers(days, size=points)]
    maps = interleaved(
        {
            "periods": lambda d: periods.t2m[d].values,
            "before": lambda d: before.t2m[d].values,
        },
        days_read,
        repeat=3,
    )
    maps_context = interleaved(
        {"copy": lambda d: series.t2m[d].values, "hand": lambda d: hand.t2m[d].values},
        days_read[:3],
    )

    # A day lands after the copy was current, then a day of the same year is revised.
    from ref_assets.store.writer import write_period

    # The asset's partition holding the new day: its calendar year.
    landed_year = spec.period.at(days, spec.start).year
    year = tuple(
        spec.period.index(datetime(y, 1, 1), spec.start) for y in (landed_year, landed_year + 1)
    )
    write_period(store, batch(spec, built["description"], days), run_id="landed")
    began = time.perf_counter()
    landed = update_timeseries(spec, store, run_id="landed", indices=year)
    landed_seconds = time.perf_counter() - began
    write_period(store, batch(spec, built["description"], year[0], 0.5), run_id="revised")
    began = time.perf_counter()
    revised = update_timeseries(spec, store, run_id="revised", indices=year)
    revised_seconds = time.perf_counter() - began
    return {
        "days": days,
        "build": built["build"],
        "point": {k: statistics.median(v) for k, v in point.items()},
        "point_periods": statistics.median(point_periods["periods"]),
        "map": {k: statistics.median(v) for k, v in maps.items()},
        "map_context": {k: statistics.median(v) for k, v in maps_context.items()},
        "points": points,
        "updates": (landed, landed_seconds, revised, revised_seconds),
        "copy_bytes": _size(Path(f"{store.path}.timeseries")),
        "periods_bytes": _size(store.path),
        "hand_bytes": _size(workdir / "hand.zarr"),
    }


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def versions() -> str:
    import icechunk
    import xarray
    import zarr

    return (
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores (shared with two other "
        f"jobs while this ran), Python {platform.python_version()}; icechunk "
        f"{icechunk.__version__}, zarr {zarr.__version__}, xarray {xarray.__version__}, "
        f"numpy {np.__version__}"
    )


def render(r: dict) -> str:
    periods_s, copy_s, hand_s = r["build"]
    landed, landed_s, revised, revised_s = r["updates"]
    point, maps, context = r["point"], r["map"], r["map_context"]
    mb = 2**20
    point_ratio, map_ratio = point["copy"] / point["hand"], maps["periods"] / maps["before"]
    return "\n".join(
        [
            SECTION,
            "",
            f"Written by `.venv/bin/python benchmarks/timeseries.py` on "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. {versions()}.",
            f"{r['days']:,} daily periods of {SIDE} x {SIDE} float32; local filesystem; "
            f"medians over {r['points']} random cells (each in another 50 x 50 shard) and "
            f"{r['points']} random days, best of 3 each, the layouts taking turns; cache-warm.",
            "",
            "| read | from | ms | ratio | target |",
            "| --- | --- | --- | --- | --- |",
            f'| point series, {r["days"]:,} days | time-series copy (`layout="timeseries"`: '
            "shards of 365 x 50 x 50, tiles of 10 x 10) | "
            f"{point['copy']:.1f} | {point_ratio:.2f} | <= 1.5 |",
            f"| | hand-chunked Zarr (365, 50, 50), `xarray.open_zarr` | {point['hand']:.1f} | "
            "1.00 | |",
            f"| | per-period layout (context) | {r['point_periods']:.0f} | "
            f"{r['point_periods'] / point['hand']:.0f} | |",
            f"| one map | per-period layout, `open_dataset` | {maps['periods']:.1f} | "
            f"{map_ratio:.2f} | <= 1.5 |",
            f"| | per-period layout as opened before (`open_zarr` of the session) | "
            f"{maps['before']:.1f} | 1.00 | |",
            f"| | time-series copy (context) | {context['copy']:.0f} | "
            f"{context['copy'] / maps['before']:.0f} | |",
            f"| | hand-chunked Zarr (context) | {context['hand']:.0f} | "
            f"{context['hand'] / maps['before']:.0f} | |",
            "",
            f"Building (seconds): per-period store by `PeriodWriter` {periods_s:.1f} "
            f"({r['periods_bytes'] / mb:.0f} MiB); its time-series copy by `update_timeseries`, "
            f"from scratch, {copy_s:.1f} ({r['copy_bytes'] / mb:.0f} MiB); the hand-chunked "
            f"Zarr by plain zarr {hand_s:.1f} ({r['hand_bytes'] / mb:.0f} MiB).",
            f"Keeping it current (the Dagster asset's work for a year partition): a new day "
            f"reaching the copy {landed_s * 1000:.0f} ms (time chunks rewritten: "
            f"{landed.chunks}), a revised day of the same year {revised_s * 1000:.0f} ms "
            f"({revised.chunks}); each reads the year's records, compares them with the "
            "checksums the copy recorded and rewrites the time chunk holding the day (all 16 "
            "shards of up to 365 days) in one commit.",
            "",
            f"Target: a point series from the time-series copy within 1.5x of the hand-chunked "
            f"Zarr: {point_ratio:.2f}, {_verdict(point_ratio)}.",
            f"Target: one map from the per-period layout within 1.5x of before: {map_ratio:.2f}, "
            f"{_verdict(map_ratio)}.",
        ]
    )


def _verdict(ratio: float) -> str:
    return "met" if ratio <= 1.5 else "**missed**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="400 days; print only")
    args = parser.parse_args()
    days = 400 if args.quick else 3650
    with tempfile.TemporaryDirectory(prefix="timeseries-bench-") as workdir:
        results = measure(Path(workdir), days, points=6 if args.quick else 12)
    text = render(results)
    print(text)
    if not args.quick:
        replace_section(SECTION, text)


if __name__ == "__main__":
    main()

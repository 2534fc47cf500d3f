"""Serving benchmark: a Zarr chunk over HTTP (`ref-assets serve`) against the same chunk read from
the store directly.

    .venv/bin/python benchmarks/serving.py           # its RESULTS.md section
    .venv/bin/python benchmarks/serving.py --quick   # fewer, smaller periods; prints only

A store of daily synthetic 400 x 400 float32 periods (benchmarks/backfill.py's grid) in chunks
of 200 x 200 is written before any clock starts, and `ref-assets serve` is started on it as a
subprocess on a loopback port (its start is not timed). Then every chunk of the store is read
once each way, the two ways taking turns (which goes first alternates, so neither profits from
the other's warm page cache), each chunk a new one (xpublish caches the chunks it served):

  direct   the chunk read and decoded by zarr from an Icechunk read-only session (array opened
           once), as `open_dataset` reads
  http     the same chunk read and decoded by zarr from the server's Zarr v3 endpoint
           (`zarr.storage.FsspecStore` over HTTP, array opened once), as `xr.open_zarr(URL)`
           reads: the server opens the store's chunk, decodes it and encodes it again
           (xpublish-zarr), then sends it over loopback
  http GET the chunk's bytes only, by one plain HTTP request (`urllib`), asked right after the
           http read of the same chunk: xpublish's cache answers, so this is the transport alone

Target: a chunk over HTTP within 3x of reading it from the store directly (median per chunk).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml
from backfill import GRID
from results import machine_load, replace_section, timed

SECTION = "## Serving: a Zarr chunk over HTTP against the store (`benchmarks/serving.py`)"
DATASET = "bench_served"
CHUNK = 200
TARGET = 3.0


def spec_fields(grid: dict) -> dict:
    return {
        "id": DATASET,
        "title": "Benchmark served dataset",
        "provider": "synthetic",
        "params": grid,
        "period": "daily",
        "start": "2000-01-01",
        "variables": [
            {"name": "t2m", "units": "degC", "attributes": {"standard_name": "air_temperature"}}
        ],
        "chunks": {"y": CHUNK, "x": CHUNK},
    }


def write_store(root: str, fields: dict, days: int) -> None:
    """``days`` periods from the dataset's start, as a range run writes them."""
    from ref_assets.batch import fetch_batch
    from ref_assets.periods import Period
    from ref_assets.providers.synthetic import SyntheticProvider
    from ref_assets.specs import DatasetSpec
    from ref_assets.store.repository import DatasetStore
    from ref_assets.store.writer import CommitPolicy, PeriodWriter

    spec = DatasetSpec.model_validate(fields)
    provider = SyntheticProvider(spec)
    writer = PeriodWriter(DatasetStore(root, spec.id), run_id="bench", policy=CommitPolicy(64))
    for index in range(days):
        period = Period(spec.period, spec.period.at(index, spec.start))
        writer.add(fetch_batch(spec, provider, period))
    writer.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 periods of 100 x 100; prints only")
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    grid = {**GRID, "resolution": 1.0} if args.quick else GRID
    days = 4 if args.quick else args.days
    with tempfile.TemporaryDirectory(prefix="ref-serving-") as workdir:
        configuration = Path(workdir) / "ref"
        (configuration / "datasets").mkdir(parents=True)
        fields = spec_fields(grid)
        (configuration / "datasets" / f"{DATASET}.yaml").write_text(yaml.safe_dump(fields))
        os.environ["REF_CONFIGURATION"] = str(configuration)
        os.environ.pop("REF_STORAGE_ROOT", None)
        from ref_assets.config import load_settings

        root = load_settings().storage_root
        write_store(root, fields, days)
        results = measure(root, days, Path(workdir) / "serve.log")
    report(results, days, args)


def measure(root: str, days: int, log: Path) -> dict:
    import zarr
    from zarr.storage import FsspecStore

    from ref_assets.store import reader as store_reader
    from ref_assets.store.repository import DatasetStore
    from ref_assets_tests.serve_process import ServeProcess

    session = store_reader.session_for(DatasetStore(root, DATASET))
    direct = zarr.open_array(session.store, path="t2m", mode="r")
    ny, nx = direct.shape[1:]
    chunks = [
        (t, cy, cx)
        for t in range(days)
        for cy in range(-(-ny // CHUNK))
        for cx in range(-(-nx // CHUNK))
    ]
    with ServeProcess.started(os.environ, log, [DATASET]) as server:
        base = server.url(f"/datasets/{DATASET}/zarr")
        remote_store = FsspecStore.from_url(base, read_only=True)
        remote = zarr.open_array(remote_store, path="t2m", mode="r", zarr_format=3)
        # Warm-up on a chunk outside the measured ones' order: imports, connections, first open.
        np.testing.assert_array_equal(remote[0, :CHUNK, :CHUNK], direct[0, :CHUNK, :CHUNK])
        times: dict[str, list[float]] = {"direct": [], "http": [], "http GET": []}
        chunk_bytes = []
        for number, (t, cy, cx) in enumerate(chunks[1:]):
            region = (t, slice(cy * CHUNK, (cy + 1) * CHUNK), slice(cx * CHUNK, (cx + 1) * CHUNK))
            order = ["direct", "http"] if number % 2 else ["http", "direct"]
            values = {}
            for way in order:
                array = direct if way == "direct" else remote
                seconds, values[way] = timed(lambda array=array, region=region: array[region])
                times[way].append(seconds)
            np.testing.assert_array_equal(values["http"], values["direct"])
            # The raw GET asks a chunk already served (xpublish's cache answers it).
            url = f"{base}/t2m/c/{t}/{cy}/{cx}"
            seconds, payload = timed(lambda url=url: urllib.request.urlopen(url).read())
            times["http GET"].append(seconds)
            chunk_bytes.append(len(payload))
    return {"times": times, "chunk_bytes": chunk_bytes, "shape": (ny, nx), "chunks": len(chunks)}


def report(results: dict, days: int, args: argparse.Namespace) -> None:
    import icechunk
    import xpublish
    import zarr

    medians = {way: statistics.median(ts) for way, ts in results["times"].items()}
    ratio = medians["http"] / medians["direct"]
    ny, nx = results["shape"]
    lines = [
        SECTION,
        "",
        f"Written by `.venv/bin/python benchmarks/serving.py` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. {platform.machine()}, {machine_load()}; "
        f"Python {platform.python_version()}, icechunk {icechunk.__version__}, zarr "
        f"{zarr.__version__}, xpublish {xpublish.__version__}.",
        f"{days} daily periods of {ny} x {nx} float32 in chunks of {CHUNK} x {CHUNK} on local "
        f"disk; {results['chunks'] - 1} chunks read once each way, taking turns; a chunk is "
        f"{statistics.median(results['chunk_bytes']) / 1024:.0f} KiB compressed (median).",
        "",
        "| way | median ms per chunk | ratio to direct |",
        "| --- | --- | --- |",
        *(
            f"| {way} | {seconds * 1000:.2f} | {seconds / medians['direct']:.2f} |"
            for way, seconds in medians.items()
        ),
        "",
        f"Target: a chunk over HTTP within {TARGET:.0f}x of reading it from the store: "
        f"{ratio:.2f}x ({'met' if ratio <= TARGET else 'NOT met'}).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        replace_section(SECTION, text)


if __name__ == "__main__":
    sys.exit(main())

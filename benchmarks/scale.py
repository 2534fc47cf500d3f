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
"""

from __future__ import annotations

import argparse
import os
import platform
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1 repeat; no RESULTS.md")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
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
        ]
        results = [(name, timed(command, config, repeats)) for name, command, config in rows]
    report = render(results, repeats)
    print(report)
    if not args.quick:
        replace_section(HEADING, report)


def render(results: list[tuple[str, dict]], repeats: int) -> str:
    base_status, base_load = results[0][1]["wall"], results[4][1]["wall"]
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
        lines.append(
            f"| {name} | {r['wall']:.2f} | {r['min']:.2f} | {r['cpu']:.2f} | "
            f"{r['wall'] / base:.2f} |"
        )
    lines += [
        "",
        "Before issue 12 (same machine, busy): `status` of the hourly dataset with 6 stored "
        "periods took 18.7 s wall (10.5 s CPU), 545x the 100-partition dataset. Target: under "
        "1 s for any store content.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Validate-then-publish against direct writes: the same range run, side by side in one run.

    .venv/bin/python benchmarks/validated_publish.py           # 60 daily periods, 150 x 150
    .venv/bin/python benchmarks/validated_publish.py --quick   # 8 periods, to check the script

Each scenario is one Dagster range run (`execute_in_process`, a fresh SQLite instance and a fresh
store) of the same periods, commits of 32:

  direct             what every dataset does by default: commits land on main, then each
                     commit's periods are checked on main
  validated          ``checks: {publish: validated}``: commits land on the run's branch, each
                     commit's periods are checked there, then main moves to the branch
  validated_refused  the same with one period made to fail its check (taken back, then refused)

The validated runs' own steps are timed by wrapping them (`ref_assets.publishing`): starting the
branch, checking on the branch, taking refused periods back, publishing, and listing leftovers.
Replaces its section of benchmarks/RESULTS.md (full size only).
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import yaml
from results import machine_load, replace_section

REFUSED = "2024-01-10"


def spec_fields(dataset_id: str, publish: str) -> dict:
    return {
        "id": dataset_id,
        "title": "Validate-then-publish benchmark",
        "provider": "synthetic",
        "params": {"bbox": [-20.0, -35.0, 55.0, 40.0], "resolution": 0.5, "land_only": True},
        "period": "daily",
        "start": "2024-01-01",
        "variables": [
            {"name": "t2m", "units": "degC", "attributes": {"standard_name": "air_temperature"}}
        ],
        "runs": {"commit_every": 32, "fetch_workers": 2},
        "checks": {"publish": publish},
    }


def timed(phases: dict[str, float], name: str, function):
    """``function`` adding its time to ``phases[name]``; a generator's time is the time spent
    in it, between the items it yields (what the consumer does with them is not counted)."""

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            result = function(*args, **kwargs)
        finally:
            phases[name] += time.perf_counter() - started
        if not hasattr(result, "__next__"):
            return result
        return _timed_items(phases, name, result)

    return wrapper


def _timed_items(phases: dict[str, float], name: str, items):
    while True:
        started = time.perf_counter()
        try:
            item = next(items)
        except StopIteration:
            return
        finally:
            phases[name] += time.perf_counter() - started
        yield item


def run_range(scenario: str, count: int, root: Path, suffix: str = "") -> dict:
    import ref_assets.defs.assets as assets_module
    import ref_assets.defs.io_manager as io_manager_module
    import ref_assets.publishing as publishing
    from ref_assets.definitions import build_definitions
    from ref_assets.defs.assets import range_run_tags
    from ref_assets.defs.io_manager import IcechunkIOManager
    from ref_assets.providers.synthetic import SyntheticProvider

    dataset_id = f"bench_{scenario}{suffix}"
    publish = "direct" if scenario == "direct" else "validated"
    (root / "datasets" / f"{dataset_id}.yaml").write_text(
        yaml.safe_dump(spec_fields(dataset_id, publish))
    )
    phases: dict[str, float] = defaultdict(float)
    originals = {
        (publishing, "start_work"): "branch started",
        (publishing, "check_stored_periods"): "checks on the branch",
        (publishing, "copy_periods"): "refused taken back",
        (publishing, "publish"): "published (compare-and-set)",
        (io_manager_module, "discard_leftovers"): "leftovers listed",
        (IcechunkIOManager, "write_range"): "writing to main, direct (no checks)",
        (IcechunkIOManager, "write_validated"): "writing, checking, publishing, validated",
        (
            assets_module,
            "quality_evaluations",
        ): "checks on main after each commit, direct (with its Dagster queries)",
    }
    saved = {key: getattr(*key) for key in originals}
    for (module, name), label in originals.items():
        setattr(module, name, timed(phases, label, saved[(module, name)]))
    fetch = SyntheticProvider.fetch

    def fetch_one_bad(self, period):
        fetched = fetch(self, period)
        if scenario == "validated_refused" and period.key == REFUSED:
            fetched = type(fetched)(fetched.data + 200.0, fetched.sources)
        return fetched

    SyntheticProvider.fetch = fetch_one_bad
    try:
        job = build_definitions().resolve_implicit_job_def_def_for_assets([dg.AssetKey(dataset_id)])
        last = (datetime(2024, 1, 1) + timedelta(days=count - 1)).strftime("%Y-%m-%d")
        with tempfile.TemporaryDirectory() as home:
            instance = dg.DagsterInstance.local_temp(home)
            started = time.perf_counter()
            result = job.execute_in_process(
                instance=instance,
                asset_selection=[dg.AssetKey(dataset_id)],
                tags=range_run_tags("2024-01-01", last),
                raise_on_error=False,
            )
            seconds = time.perf_counter() - started
            assert result.success == (scenario != "validated_refused")
            materialized = len(result.get_asset_materialization_events())
            checks = len(result.get_asset_check_evaluations())
    finally:
        SyntheticProvider.fetch = fetch
        for (module, name), original in saved.items():
            setattr(module, name, original)
    return {"seconds": seconds, "materialized": materialized, "checks": checks, **phases}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    count = 12 if quick else 60
    scenarios = ("direct", "validated", "validated_refused")
    with tempfile.TemporaryDirectory() as configuration:
        root = Path(configuration)
        (root / "datasets").mkdir()
        os.environ["REF_CONFIGURATION"] = str(root)
        os.environ.pop("REF_STORAGE_ROOT", None)
        run_range("direct", 4, root)  # warm-up: imports, first code-location load
        runs: dict[str, dict] = {}
        for round_ in range(2):  # interleaved; the faster of two rounds (a shared machine)
            for scenario in scenarios:
                run = run_range(scenario, count, root, suffix=str(round_))
                if scenario not in runs or run["seconds"] < runs[scenario]["seconds"]:
                    runs[scenario] = run
    base = runs["direct"]["seconds"]
    lines = [
        "## Validate, then publish (benchmarks/validated_publish.py)",
        "",
        f"Written on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {platform.machine()}, "
        f"{os.cpu_count()} cores ({machine_load()}), Python "
        f"{sys.version.split()[0]}, dagster {dg.__version__}, SQLite instance. {count} daily "
        "periods of 150 x 150 float32, one range run each (`execute_in_process`), commits of 32.",
        "",
        "| scenario | materialized | check events | seconds | ratio to direct |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in scenarios:
        run = runs[name]
        lines.append(
            f"| {name} | {run['materialized']} | {run['checks']} | {run['seconds']:.1f} | "
            f"{run['seconds'] / base:.2f} |"
        )
    phase_names = sorted(
        {k for run in runs.values() for k in run} - {"seconds", "materialized", "checks"}
    )
    lines += [
        "",
        "Where the time goes (seconds; the rest of each run is Dagster's: storing events, "
        "starting and ending the run):",
        "",
        f"| step | {' | '.join(scenarios)} |",
        f"| --- |{' --- |' * len(scenarios)}",
    ]
    for phase in phase_names:
        cells = " | ".join(f"{runs[name].get(phase, 0.0):.3f}" for name in scenarios)
        lines.append(f"| {phase} | {cells} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not quick:
        replace_section(lines[0], text)


if __name__ == "__main__":
    main()

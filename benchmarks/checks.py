"""Cost of the partitioned checks in a range run, side by side in one run.

    .venv/bin/python benchmarks/checks.py           # 91 daily periods of the demo's 150 x 150 grid
    .venv/bin/python benchmarks/checks.py --quick   # 10 periods, to check the script works

Each scenario is one Dagster range run (`execute_in_process`, a fresh SQLite instance and a fresh
store) of the same periods:

  no_checks     materializations only (the range path with the check evaluations left out)
  one_check     what ships: one `period_quality` evaluation per period, after each commit
  four_events   each evaluation emitted four times: the event cost of one check per kind

and, outside Dagster, `check_stored_periods` over the stored periods (reading them back and
checking them: the part of the overhead that is not Dagster's). Appends its section to
benchmarks/RESULTS.md.
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import yaml
from results import replace_section


def spec_fields(dataset_id: str) -> dict:
    return {
        "id": dataset_id,
        "title": "Checks benchmark",
        "provider": "synthetic",
        "params": {"bbox": [-20.0, -35.0, 55.0, 40.0], "resolution": 0.5, "land_only": True},
        "period": "daily",
        "start": "2024-01-01",
        "variables": [
            {"name": "t2m", "units": "degC", "attributes": {"standard_name": "air_temperature"}}
        ],
        "runs": {"commit_every": 32, "fetch_workers": 2},
    }


def run_range(scenario: str, count: int, root: Path) -> dict:
    import ref_assets.defs.assets as assets_module
    from ref_assets.definitions import build_definitions
    from ref_assets.defs.assets import range_run_tags

    dataset_id = f"bench_{scenario}"
    (root / "datasets" / f"{dataset_id}.yaml").write_text(yaml.safe_dump(spec_fields(dataset_id)))
    shipped = assets_module.quality_evaluations

    def evaluations(*args, **kwargs):
        if scenario == "no_checks":
            return
        for evaluation in shipped(*args, **kwargs):
            for _ in range(4 if scenario == "four_events" else 1):
                yield evaluation

    assets_module.quality_evaluations = evaluations
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
            )
            seconds = time.perf_counter() - started
            assert result.success
            checks = len(result.get_asset_check_evaluations())
    finally:
        assets_module.quality_evaluations = shipped
    return {"seconds": seconds, "check_events": checks, "dataset": dataset_id}


def check_compute(dataset_id: str, count: int) -> float:
    from ref_assets.catalog import load_catalog
    from ref_assets.config import load_settings
    from ref_assets.quality import check_stored_periods
    from ref_assets.store import reader as store_reader
    from ref_assets.store.repository import DatasetStore
    from ref_assets.vocabulary import load_vocabulary

    settings = load_settings()
    spec = load_catalog(settings).get(dataset_id)
    vocabulary = load_vocabulary(settings.variables_cv, settings.resolve_path)
    session = store_reader.session_for(DatasetStore(settings.storage_root, dataset_id))
    keys = [spec.period.key(spec.period.at(i, spec.start)) for i in range(count)]
    started = time.perf_counter()
    qualities = list(check_stored_periods(spec, vocabulary, session, keys))
    seconds = time.perf_counter() - started
    assert all(q.passed for q in qualities)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    count = 10 if parser.parse_args().quick else 91
    with tempfile.TemporaryDirectory() as configuration:
        root = Path(configuration)
        (root / "datasets").mkdir()
        os.environ["REF_CONFIGURATION"] = str(root)
        os.environ.pop("REF_STORAGE_ROOT", None)
        runs = {s: run_range(s, count, root) for s in ("no_checks", "one_check", "four_events")}
        compute = check_compute(runs["one_check"]["dataset"], count)
    base = runs["no_checks"]["seconds"]
    one, four = runs["one_check"]["seconds"], runs["four_events"]["seconds"]
    per_event = (four - one) / (3 * count)
    lines = [
        "",
        "## Partitioned checks in a range run (benchmarks/checks.py)",
        "",
        f"Written on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, dagster {dg.__version__}, "
        f"SQLite instance. {count} daily periods of 150 x 150 float32 (the demo's grid), one "
        "range run each (`execute_in_process`), commits of 32.",
        "",
        "| scenario | check events | seconds | ms per period | ratio to no checks |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, label in (
        ("no_checks", "materializations only"),
        ("one_check", "one combined check per period (shipped)"),
        ("four_events", "four check events per period"),
    ):
        run = runs[name]
        lines.append(
            f"| {label} | {run['check_events']} | {run['seconds']:.1f} | "
            f"{1000 * run['seconds'] / count:.0f} | {run['seconds'] / base:.2f} |"
        )
    lines += [
        "",
        f"Reading back and checking the {count} stored periods outside Dagster "
        f"(`check_stored_periods`): {compute:.2f} s, {1000 * compute / count:.1f} ms a period. "
        f"A check event costs about {1000 * per_event:.0f} ms "
        f"({1 / per_event if per_event > 0 else float('inf'):.0f} events/s, from the four-event "
        f"run's extra {3 * count} events); the shipped check adds "
        f"{1000 * (one - base) / count:.0f} ms a period to the range run "
        f"({(one - base) / base:.0%}).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if count == 91:
        replace_section(lines[1], text.lstrip("\n"))


if __name__ == "__main__":
    main()

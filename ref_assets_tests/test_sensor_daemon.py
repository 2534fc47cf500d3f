"""End to end: the real ``dagster-daemon run`` on a fresh DAGSTER_HOME, with a dataset's sensor
on from its spec; a period the source newly publishes lands in the store, in the instance and
in the dataset's time-series copy with no other action. (Loopback only: the daemon talks to its
own code server.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ref_assets.defs.instance_init import init_instance
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import DatasetStore
from ref_assets.store.timeseries import timeseries_store
from ref_assets.verification import verify_timeseries
from ref_assets_tests.processes import stop_process_group

REPOSITORY = Path(__file__).resolve().parents[1]
DEADLINE_SECONDS = 150.0


@pytest.fixture
def daemon(settings, write_spec, register_providers, tmp_path, monkeypatch):
    """The daemon running over a movable dataset that publishes nothing yet; yields the file
    that says what it publishes and the daemon's log."""
    register_providers("ref_assets_tests.example_providers:MovableProvider")
    availability = tmp_path / "availability.json"
    availability.write_text(json.dumps({"latest": None}))
    write_spec(
        "moving",
        provider="movable",
        params={
            "bbox": [0.0, 40.0, 6.0, 44.0],
            "resolution": 1.0,
            "availability": str(availability),
        },
        end="2024-12-31",
        updates={"default_status": "running", "min_interval": 1},
        # 4 x 6 cells; the copy's own automation sensor is on from the start.
        timeseries={"time_chunk": 8, "y": 4, "x": 6, "tile": 2},
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    # ref_assets' instance config, but runs launched as the sensor requests them: the run
    # queue's daemon would add up to its polling interval (20 s measured) to the wait.
    config = yaml.safe_load((REPOSITORY / "dagster.yaml").read_text())
    config["run_coordinator"] = {
        "module": "dagster.core.run_coordinator",
        "class": "DefaultRunCoordinator",
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    init_instance(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    log = tmp_path / "daemon.log"
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    workspace = tmp_path / "workspace.yaml"
    # ref_assets' code location with the copies' automation sensor every 5 s, not 30.
    location = {
        "module_name": "ref_assets_tests.quick_automation_definitions",
        "attribute": "defs",
        "location_name": "ref_assets",
    }
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": location}]}))
    with log.open("w") as output:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "dagster-daemon"),
                "run",
                "-w",
                str(workspace),
            ],
            cwd=home,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with its code server
        )
    try:
        yield availability, log
    finally:
        stop_process_group(process, grace=30)


def wait_for(condition, what: str, log: Path) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            tail = "\n".join(log.read_text().splitlines()[-40:])
            pytest.fail(
                f"{what} did not happen within {DEADLINE_SECONDS:.0f} s; daemon log:\n{tail}"
            )
        time.sleep(0.25)


def test_a_newly_published_period_lands_in_the_store_and_the_instance(daemon, settings):
    availability, log = daemon
    # The sensor has evaluated on the daemon (and found nothing published) before the source
    # publishes its first period.
    wait_for(lambda: "Sensor moving_updates skipped" in log.read_text(), "a first tick", log)
    availability.write_text(json.dumps({"latest": "2024-01-01"}))

    store = DatasetStore(settings.storage_root, "moving")

    def stored() -> list[int]:
        if not store.exists():
            return []
        return store_reader.written_index_array(store_reader.session_for(store)).tolist()

    wait_for(lambda: stored() == [0], "the period's commit (2024-01-01, index 0)", log)
    instance = dg.DagsterInstance.get()
    wait_for(
        lambda: instance.get_materialized_partitions(dg.AssetKey("moving")) == {"2024-01-01"},
        "the instance's materialization",
        log,
    )
    [run] = instance.get_runs(filters=dg.RunsFilter(tags={"ref_assets/dataset": "moving"}))
    assert run.tags["dagster/partition"] == "2024-01-01"
    assert run.tags["dagster/sensor_name"] == "moving_updates"

    # And on to the time-series copy, by its automation condition: no other action either.
    copy = timeseries_store(store)
    wait_for(
        lambda: copy.exists() and verify_timeseries("moving", settings=settings) != [],
        "the time-series copy's update",
        log,
    )
    [chunk] = verify_timeseries("moving", settings=settings)
    assert chunk.ok and (chunk.chunk, chunk.periods) == (0, 1)
    # The copy's commit lands before its run reports the materialization to the instance.
    copy_key = dg.AssetKey(["timeseries", "moving"])
    wait_for(
        lambda: instance.get_materialized_partitions(copy_key) != set(),
        "the instance's materialization of the copy",
        log,
    )
    assert instance.get_materialized_partitions(copy_key) == {"2024"}

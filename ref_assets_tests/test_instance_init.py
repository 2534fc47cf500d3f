"""``ref-assets instance init``: a fresh DAGSTER_HOME made ready for runs that start at once."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np

from ref_assets.cli import main
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import DatasetStore

# The tables each SQLite database must hold (a sample of each storage's schema).
EXPECTED_TABLES = {
    "history/runs.db": {"runs", "run_tags", "alembic_version", "instance_info", "kvs"},
    "history/runs/index.db": {"event_logs", "asset_keys", "alembic_version"},
    "schedules/schedules.db": {"instigators", "jobs", "job_ticks", "alembic_version"},
}


def environment(settings, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "REF_CONFIGURATION": str(settings.configuration_dir),
    }


def test_concurrent_inits_create_every_storage_once(settings, tmp_path, monkeypatch, capsys):
    home = tmp_path / "dagster_home"  # not even created: init makes it
    init = [sys.executable, "-m", "ref_assets.cli", "instance", "init"]
    env = environment(settings, home)
    processes = [
        subprocess.Popen(init, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=240)[0] for process in processes]
    assert [p.returncode for p in processes] == [0] * 4, outputs
    # One process wrote the packaged config; the others found it (they waited on the lock).
    assert sum("dagster.yaml: written" in output for output in outputs) == 1
    assert sum("dagster.yaml: kept" in output for output in outputs) == 3
    assert "max_concurrent_runs: 4" in (home / "dagster.yaml").read_text()
    for database, tables in EXPECTED_TABLES.items():
        with sqlite3.connect(home / database) as connection:
            names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
            assert tables <= names, database
            # A racing creation stamps the schema twice ("more than one head"): every later
            # run then fails. Once means created once.
            assert connection.execute("SELECT COUNT(*) FROM alembic_version").fetchone() == (1,)
    with sqlite3.connect(home / "history/runs.db") as connection:
        assert connection.execute("SELECT COUNT(*) FROM instance_info").fetchone() == (1,)

    # Idempotent, and an operator's own config is never replaced.
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert main(["instance", "init"]) == 0
    assert f"{home / 'dagster.yaml'}: kept" in capsys.readouterr().out
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"


def test_init_of_a_database_damaged_by_a_race_says_how_to_recover(tmp_path, monkeypatch, capsys):
    home = tmp_path / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert main(["instance", "init"]) == 0
    # What 8 runs racing on a fresh instance left here: the schema stamped twice, every later
    # run failing with "'alembic_version' has more than one head present".
    with sqlite3.connect(home / "history/runs.db") as connection:
        connection.execute("INSERT INTO alembic_version VALUES ('0123456789ab')")
    capsys.readouterr()
    assert main(["instance", "init"]) == 2
    error = capsys.readouterr().err
    assert f"the Dagster instance's database in {home} is damaged (" in error
    assert "more than one head" in error
    assert f"Move {home / 'history'} and {home / 'schedules'} aside" in error
    assert error.rstrip().endswith("then run `ref-assets instance init`")


def test_init_without_dagster_home_says_what_to_set(settings, monkeypatch, capsys):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["instance", "init"]) == 2
    assert "DAGSTER_HOME is not set: set it to the directory" in capsys.readouterr().err


def test_eight_dagster_runs_started_at_once_on_a_fresh_instance_all_land(
    settings, write_spec, tmp_path
):
    # Without `instance init` first, all 8 of these runs failed here (Dagster's SQLite storage
    # created by every process at once: "table runs already exists" and the like).
    spec = DatasetSpec.model_validate(
        write_spec(params={"bbox": [0.0, 40.0, 2.0, 42.0], "resolution": 1.0, "seed": 3})
    )
    home = tmp_path / "dagster_home"
    env = environment(settings, home)
    init = [sys.executable, "-m", "ref_assets.cli", "instance", "init"]
    assert subprocess.run(init, env=env, capture_output=True, timeout=120).returncode == 0
    keys = [str(day) for day in np.datetime64("2024-01-01") + np.arange(8)]
    materialize = [sys.executable, "-m", "dagster", "asset", "materialize"]
    materialize += ["-m", "ref_assets.definitions", "--select", spec.id]
    # In-process steps: the same instance creation per process, half the interpreters to start.
    materialize += ["--config-json", '{"execution": {"config": {"in_process": {}}}}']
    processes = [
        subprocess.Popen(
            [*materialize, "--partition", key],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for key in keys
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    failed = [out[-2000:] for p, out in zip(processes, outputs, strict=True) if p.returncode]
    assert not failed, failed

    session = store_reader.session_for(DatasetStore(settings.storage_root, spec.id))
    assert store_reader.written_indices(session) == list(range(8))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_materialized_partitions(dg.AssetKey(spec.id)) == set(keys)
        records = instance.fetch_materializations(dg.AssetKey(spec.id), limit=100).records
        assert len(records) == 8

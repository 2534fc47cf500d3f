"""The command line: ``ref-assets`` and the ``dagster asset materialize`` path from the README."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ref_assets
from ref_assets.cli import main

REPOSITORY = Path(__file__).resolve().parents[1]


def test_status_lists_present_and_missing_periods(settings, write_spec, materialize, capsys):
    write_spec()
    for key in ("2024-01-02", "2024-01-03", "2024-01-06"):
        materialize("test_t2m", key)
    assert main(["status", "test_t2m", "--start", "2024-01-01", "--end", "2024-01-07"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("test_t2m: 3 of 7 periods present from 2024-01-01 to 2024-01-07")
    assert lines[1:] == [
        "present: 2024-01-02..2024-01-03, 2024-01-06",
        "missing: 2024-01-01, 2024-01-04..2024-01-05, 2024-01-07",
    ]
    assert main(["status", "test_t2m", "--end", "2024-01-04", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["present"] == ["2024-01-02", "2024-01-03"]
    assert report["missing"] == ["2024-01-01", "2024-01-04"]


def test_errors_are_one_line_without_traceback(settings, write_spec, capsys):
    write_spec()
    assert main(["status", "test_t2m"]) == 2
    assert "test_t2m: no store at" in capsys.readouterr().err
    assert main(["materialize", "nope", "--start", "2024-01-01"]) == 2
    assert "no dataset 'nope'" in capsys.readouterr().err
    assert main(["materialize", "test_t2m", "--start", "2023-12-31"]) == 2
    assert "before the dataset's first period 2024-01-01" in capsys.readouterr().err


def test_datasets_lists_specs_and_reports_broken_ones(settings, write_spec, capsys):
    write_spec()
    write_spec("broken", variables=[])
    assert main(["datasets"]) == 1
    captured = capsys.readouterr()
    assert "test_t2m\tsynthetic\tdaily\t2024-01-01..ongoing" in captured.out
    assert "demo_air_temperature" in captured.out
    assert "broken.yaml: variables" in captured.err


def test_ref_assets_materialize_records_runs_in_the_instance(settings, write_spec, tmp_path):
    write_spec()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    Path(env["DAGSTER_HOME"]).mkdir()
    command = [sys.executable, "-m", "ref_assets.cli", "materialize", "test_t2m"]
    done = subprocess.run(
        [*command, "--start", "2024-01-01", "--end", "2024-01-03"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "test_t2m 2024-01-01..2024-01-03 (3 periods): ok" in done.stdout
    assert "INFO" not in done.stderr  # the console shows warnings and the progress line only
    status = ref_assets.dataset_status("test_t2m", settings=settings)
    assert [p.key for p in status.present] == ["2024-01-01", "2024-01-02", "2024-01-03"]
    import dagster as dg

    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        materialized = instance.get_materialized_partitions(dg.AssetKey("test_t2m"))
        logged = [
            entry.message for run in instance.get_runs() for entry in instance.all_logs(run.run_id)
        ]
    assert materialized == {"2024-01-01", "2024-01-02", "2024-01-03"}
    # The instance `instance init` wrote keeps the run's progress lines (its python_log_level).
    assert any("3/3 periods committed" in message for message in logged)


@pytest.mark.parametrize(
    "command",
    [
        ["dagster", "asset", "materialize", "-m", "ref_assets.definitions", "--select"],
        ["dg", "launch", "--assets"],  # the dg project of pyproject.toml's [tool.dg]
    ],
    ids=["dagster", "dg"],
)
def test_materialize_with_dagster_tools_from_the_repository_root(settings, tmp_path, command):
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "VIRTUAL_ENV": str(bin_dir.parent),  # as an activated environment: dg checks it
    }
    Path(env["DAGSTER_HOME"]).mkdir()
    for selection in (
        ["--partition", "2024-01-01"],
        ["--partition-range", "2024-01-03...2024-01-05"],
    ):
        done = subprocess.run(
            [str(bin_dir / command[0]), *command[1:], "demo_air_temperature", *selection],
            cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    assert "3/3 periods committed" in done.stderr  # the range ran as one run
    status = ref_assets.dataset_status("demo_air_temperature", settings=settings)
    assert [p.key for p in status.present] == [
        "2024-01-01",
        "2024-01-03",
        "2024-01-04",
        "2024-01-05",
    ]


def test_status_refuses_ranges_it_cannot_honour(settings, write_spec, materialize, capsys):
    write_spec()
    materialize("test_t2m", "2024-01-02")
    assert main(["status", "test_t2m", "--start", "2024-01-05", "--end", "2024-01-01"]) == 2
    assert "ends (2024-01-01) before it starts (2024-01-05)" in capsys.readouterr().err
    (settings.user_spec_dir / "test_t2m.yaml").unlink()  # the store outlives its spec
    assert main(["status", "test_t2m", "--start", "2024-01-01"]) == 2
    assert "no spec is loaded for this dataset" in capsys.readouterr().err
    assert main(["status", "test_t2m", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["present"] == ["2024-01-02"]

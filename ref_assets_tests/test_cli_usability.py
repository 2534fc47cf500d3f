"""The command line as people meet it: ``--version``, help with a description and an example on
every subcommand, ``--json`` documents, progress lines with rate and ETA, and periods typed in ISO
form as well as Dagster's."""

import argparse
import importlib
import io
import json
import re
import subprocess
import sys
from datetime import datetime
from importlib.metadata import version

import pytest

import ref_assets
from ref_assets.cli import main
from ref_assets.cli.main import USER_ERRORS, VERSIONED_PACKAGES, _parser
from ref_assets.cli.progress import Progress
from ref_assets.periods import Period, PeriodError, PeriodType
from ref_assets.store.writer import CommitPolicy, PeriodWriter, observing_commits, write_period

PROGRESS_LINE = re.compile(
    r"^(?P<label>\S+): (?P<done>\d+)/(?P<total>\d+) periods \(\d+%\), [\d.,]+ periods/s, "
    r"ETA (\d+ s|\d+ min \d\d s|\d+ h \d\d min)$"
)
FINAL_LINE = re.compile(r"^(?P<label>\S+): (?P<done>\d+)/(?P<total>\d+) periods in .+ periods/s\)$")


def _subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every subcommand parser under ``parser``, groups (``config``) and leaves alike."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.append(((*path, name), child))
                found += _subcommands(child, (*path, name))
    return found


def _is_group(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def test_version_names_ref_assets_and_the_packages_it_builds_on(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"ref-assets {ref_assets.__version__}"
    assert lines[1:-1] == [f"{name} {version(name)}" for name in VERSIONED_PACKAGES]
    assert set(VERSIONED_PACKAGES) == {"dagster", "icechunk", "xarray", "zarr"}
    assert lines[-1].startswith("Python 3.")


def test_help_and_version_import_no_heavy_library():
    """What made ``ref-assets --help`` take seconds: importing xarray, zarr, icechunk, dagster."""
    probe = (
        "import sys\n"
        "from ref_assets.cli import main\n"
        "for argv in (['--version'], ['--help'], ['materialize', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('xarray', 'zarr', 'icechunk', 'dagster', 'pandas', 'numpy')\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.splitlines()[-1] == "[]"
    # The package's public names still resolve, on first use.
    assert ref_assets.open_dataset.__module__ == "ref_assets.reader"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = ref_assets.nope


def test_the_errors_shown_without_traceback_exist():
    for module, name in USER_ERRORS:
        assert issubclass(getattr(importlib.import_module(module), name), Exception)


def test_every_subcommand_has_a_description_and_an_example():
    commands = _subcommands(_parser())
    names = {" ".join(path) for path, _ in commands}
    # The walk reaches the groups and what is inside them.
    assert {"config", "config set", "providers prune", "instance init", "provenance"} <= names
    assert len(commands) >= 17
    for path, parser in commands:
        name = " ".join(path)
        assert parser.description and len(parser.description) > 20, name
        text = parser.format_help()
        assert " ".join(parser.description.split()[:4]) in " ".join(text.split()), name
        examples = re.search(r"^Examples?:\n((  .*\n?)+)", text, re.MULTILINE)
        assert examples, name
        assert all(f"ref-assets {name}" in line for line in examples[1].splitlines()), name


def test_every_command_that_runs_takes_json():
    for path, parser in _subcommands(_parser()):
        options = {o for action in parser._actions for o in action.option_strings}
        if _is_group(parser):
            assert "--json" not in options, path
        else:
            assert "--json" in options, path


def _json(capsys) -> dict | list:
    """stdout holds exactly one JSON document (json.loads refuses anything around it)."""
    return json.loads(capsys.readouterr().out)


UNKNOWN_ID_COMMANDS = [
    ["annotate", "nope"],
    ["annotate", "nope", "--label", "x"],
    ["annotate", "nope", "--from-spec"],
    ["annotate", "nope", "--stash", "save"],
    ["tag", "nope", "v1"],
    ["tag", "nope", "--list"],
    ["status", "nope"],
    ["materialize", "nope", "--start", "2024-01-01"],
    ["maintain", "nope", "--keep-last", "1"],
    ["verify", "nope"],
    ["provenance", "nope", "2024-01-01"],
    ["provenance", "export", "nope", "out.jsonl"],
    ["reproduce", "nope", "2024-01-01"],
    ["rebuild", "nope"],
    ["rechunk", "nope"],
    ["timeseries", "nope"],
]


@pytest.mark.parametrize("command", UNKNOWN_ID_COMMANDS, ids=" ".join)
def test_every_command_answers_an_unknown_dataset_alike(settings, write_spec, capsys, command):
    write_spec()
    assert main(command) == 2
    known = "(known: demo_air_temperature, test_t2m)"
    assert capsys.readouterr().err == f"ref-assets: error: no dataset 'nope' {known}\n"


def test_a_store_that_outlived_its_spec_is_still_read(settings, write_spec, capsys):
    from ref_assets.batch import fetch_batch
    from ref_assets.catalog import load_catalog
    from ref_assets.providers.synthetic import SyntheticProvider
    from ref_assets.store.repository import DatasetStore

    write_spec()
    spec = load_catalog(settings).get("test_t2m")
    batch = fetch_batch(spec, SyntheticProvider(spec), spec.period_for_key("2024-01-01"))
    write_period(DatasetStore(settings.storage_root, spec.id), batch, run_id="w")
    (settings.user_spec_dir / "test_t2m.yaml").unlink()
    for command in (["tag", "test_t2m", "v1"], ["verify", "test_t2m", "-q"], ["annotate", spec.id]):
        assert main(command) == 0, command
    assert main(["maintain", "test_t2m", "--keep-last", "1"]) == 2  # its retention is the spec's
    assert "no dataset 'test_t2m'" in capsys.readouterr().err


def test_json_documents_of_every_data_printing_command(
    settings, write_spec, tmp_path, monkeypatch, capsys
):
    write_spec(runs={"commit_every": 1})
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()

    command = ["materialize", "test_t2m", "--start", "2024-01-01", "--end", "2024-01-02", "--json"]
    assert main(command) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["dataset"] == "test_t2m"
    assert report["periods"] == 2
    assert report["success"] is True
    [run] = report["runs"]
    assert (run["first"], run["last"], run["periods"], run["success"]) == (
        "2024-01-01",
        "2024-01-02",
        2,
        True,
    )
    assert run["run_id"]
    assert "periods/s" not in captured.err  # --json: no progress line

    assert main(["datasets", "--json"]) == 0
    datasets = {row["id"]: row for row in _json(capsys)["datasets"]}
    assert datasets["test_t2m"] == {
        "id": "test_t2m",
        "provider": "synthetic",
        "period": "daily",
        "start": "2024-01-01",
        "end": None,
        "spec_file": str(settings.user_spec_dir / "test_t2m.yaml"),
    }

    assert main(["template", "--json"]) == 0
    assert "chirps3" in _json(capsys)["templates"]
    assert main(["template", "chirps3", "--json"]) == 0
    template = _json(capsys)
    assert template["template"] == "chirps3"
    assert "provider: chirps3" in template["spec"]

    assert main(["status", "test_t2m", "--end", "2024-01-03", "--json"]) == 0
    assert _json(capsys) == {
        "dataset": "test_t2m",
        "store": f"{settings.storage_root}/test_t2m",
        "first": "2024-01-01",
        "last": "2024-01-03",
        "present": ["2024-01-01", "2024-01-02"],
        "missing": ["2024-01-03"],
        "structure_changed": [],
    }

    assert main(["verify", "test_t2m", "--json"]) == 0
    verified = _json(capsys)
    assert (verified["checked"], verified["verified"], verified["mismatches"]) == (2, 2, [])

    assert main(["provenance", "test_t2m", "2024-01-02", "--json"]) == 0
    record = _json(capsys)
    assert (record["dataset"], record["period"]) == ("test_t2m", "2024-01-02")
    assert record["checksum"].startswith("sha256:")
    destination = tmp_path / "records"
    assert main(["provenance", "export", "test_t2m", str(destination), "--json"]) == 0
    assert _json(capsys) == {"dataset": "test_t2m", "destination": str(destination), "records": 2}

    assert main(["reproduce", "test_t2m", "2024-01-01", "--json"]) == 0
    reproduced = _json(capsys)
    assert reproduced["reproduced"] is True
    assert reproduced["rebuilt_checksum"] == reproduced["recorded_checksum"]

    assert main(["instance", "init", "--json"]) == 0
    instance = _json(capsys)
    assert instance["home"] == str(tmp_path / "dagster_home")
    assert instance["config_written"] is False  # materialize created it
    assert any(storage.startswith("runs: ") for storage in instance["storages"])

    assert main(["sync-instance", "test_t2m", "--json"]) == 0
    assert _json(capsys) == {"test_t2m": {"store_exists": True, "present": 2, "reported": 0}}

    assert main(["config", "show", "--json"]) == 0
    assert _json(capsys)["settings"]["storage.root"]["value"]
    assert main(["config", "validate", "--json"]) == 0
    validation = _json(capsys)
    assert validation["errors"] == []
    assert any("dataset test_t2m" in ok for ok in validation["ok"])
    assert main(["config", "set", "storage.root", str(tmp_path / "stores"), "--json"]) == 0
    assert _json(capsys)["key"] == "storage.root"

    assert main(["providers", "list", "--json"]) == 0
    assert "synthetic" in {row["name"] for row in _json(capsys)}
    assert main(["providers", "prune", "--dry-run", "--json"]) == 0
    assert _json(capsys)["removed"] == []


def test_materialize_and_verify_report_progress_with_rate_and_eta(settings, write_spec, capsys):
    write_spec(runs={"commit_every": 1})  # a commit, so a progress update, per period
    assert main(["materialize", "test_t2m", "--start", "2024-01-01", "--end", "2024-01-03"]) == 0
    captured = capsys.readouterr()
    assert "test_t2m 2024-01-01..2024-01-03 (3 periods): ok" in captured.out
    assert "periods/s" not in captured.out  # progress goes to stderr only
    _assert_progress(captured.err, "test_t2m", total=3)
    # Dagster's console log shows warnings and errors only (at INFO, the run's own lines, "2024-
    # ... - dagster - INFO - __ASSET_JOB - ...", would be here): the progress line stays readable.
    assert not re.search(r" - dagster - (INFO|DEBUG) - ", captured.err)

    assert main(["verify", "test_t2m"]) == 0
    captured = capsys.readouterr()
    assert "test_t2m: 3 of 3 periods verified" in captured.out
    _assert_progress(captured.err, "test_t2m", total=3)

    assert main(["verify", "test_t2m", "--quiet"]) == 0
    assert "periods/s" not in capsys.readouterr().err


def _assert_progress(stderr: str, label: str, *, total: int) -> None:
    lines = stderr.splitlines()
    updates = [m for m in map(PROGRESS_LINE.match, lines) if m]
    assert updates, stderr
    assert all(m["label"] == label and int(m["total"]) == total for m in updates)
    assert all(0 < int(m["done"]) < total for m in updates)
    finals = [m for m in map(FINAL_LINE.match, lines) if m]
    assert [(m["label"], int(m["done"]), int(m["total"])) for m in finals] == [
        (label, total, total)
    ]


def test_commit_observers_hear_every_commit_of_their_block(synthetic_dataset):
    _, store, batch_for = synthetic_dataset
    heard: list[list[str]] = []
    writer = PeriodWriter(store, run_id="observed", policy=CommitPolicy(every=2))
    with observing_commits(lambda receipts: heard.append([r.period_key for r in receipts])):
        for key in ("2024-01-01", "2024-01-02", "2024-01-03"):
            writer.add(batch_for(key))
        writer.flush()
    write_period(store, batch_for("2024-01-04"), run_id="unobserved")
    assert heard == [["2024-01-01", "2024-01-02"], ["2024-01-03"]]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_rate_eta_and_throttling_in_a_log():
    clock, stream = _Clock(), io.StringIO()
    progress = Progress("ds", 100, stream=stream, clock=clock)
    progress.update(0)  # nothing to measure: no line
    clock.now = 10.0
    progress.update(10)  # the first update is shown: 1 period/s, 90 left
    clock.now = 15.0
    progress.update(20)  # within 10 s of the last line: not shown in a log
    clock.now = 20.0
    progress.update(30)  # since the first update: 20 periods in 10 s
    clock.now = 40.0
    progress.update(100)
    progress.finish()
    assert stream.getvalue().splitlines() == [
        "ds: 10/100 periods (10%), 1.0 periods/s, ETA 1 min 30 s",
        "ds: 30/100 periods (30%), 2.0 periods/s, ETA 35 s",
        "ds: 100/100 periods in 40 s (2.5 periods/s)",
    ]


def test_progress_rewrites_one_line_on_a_terminal_and_is_silent_when_disabled():
    clock, terminal = _Clock(), _Terminal()
    with Progress("ds", 4, stream=terminal, clock=clock) as progress:
        for done in range(1, 5):
            clock.now = float(done)
            progress.update(done)
    assert terminal.getvalue() == (
        "\rds: 1/4 periods (25%), 1.0 periods/s, ETA 3 s\x1b[K"
        "\rds: 2/4 periods (50%), 1.0 periods/s, ETA 2 s\x1b[K"
        "\rds: 3/4 periods (75%), 1.0 periods/s, ETA 1 s\x1b[K"
        "\rds: 4/4 periods in 4 s (1.0 periods/s)\x1b[K\n"
    )
    silent = io.StringIO()
    with Progress("ds", 4, stream=silent, enabled=False) as progress:
        progress.advance(4)
    assert silent.getvalue() == ""


@pytest.mark.parametrize(
    ("period_type", "text", "key"),
    [
        (PeriodType.HOURLY, "2020-01-01T05:00", "2020-01-01-05:00"),
        (PeriodType.HOURLY, "2020-01-01T05:00:00Z", "2020-01-01-05:00"),
        (PeriodType.HOURLY, "2020-01-01T07:00+02:00", "2020-01-01-05:00"),
        (PeriodType.HOURLY, "2020-01-01-05:00", "2020-01-01-05:00"),
        (PeriodType.DAILY, "2020-01-01", "2020-01-01"),
        (PeriodType.DAILY, "2020-01-01T00:00", "2020-01-01"),
        (PeriodType.MONTHLY, "2020-01", "2020-01"),
        (PeriodType.MONTHLY, "2020-01-01", "2020-01"),
        (PeriodType.YEARLY, "2020", "2020"),
        (PeriodType.YEARLY, "2020-01-01T00:00:00Z", "2020"),
    ],
)
def test_periods_typed_in_iso_form_or_as_dagster_keys(period_type, text, key):
    assert Period.from_text(period_type, text).key == key


@pytest.mark.parametrize(
    ("period_type", "text", "message"),
    [
        (
            PeriodType.HOURLY,
            "2020-01-01",
            "era5: '2020-01-01' names a whole day, not one hourly period: expected "
            "'2024-01-01T13:00' or '2024-01-01-13:00'",
        ),
        (
            PeriodType.HOURLY,
            "2020-01-01T05:30",
            "era5: '2020-01-01T05:30' is not the start of an hourly period: expected "
            "'2024-01-01T13:00' or '2024-01-01-13:00' (the period holding it is "
            "2020-01-01-05:00)",
        ),
        (
            PeriodType.DAILY,
            "2020-01",
            "era5: '2020-01' names a whole month, not one daily period: expected '2024-01-01'",
        ),
        (
            PeriodType.MONTHLY,
            "2020-13",
            "era5: '2020-13' names no period: expected a monthly period as '2024-01'",
        ),
        (
            PeriodType.DAILY,
            "yesterday",
            "era5: 'yesterday' names no period: expected a daily period as '2024-01-01'",
        ),
    ],
)
def test_wrong_period_texts_name_the_dataset_and_the_expected_form(period_type, text, message):
    with pytest.raises(PeriodError) as error:
        Period.from_text(period_type, text, dataset="era5")
    assert str(error.value) == message


def test_period_messages_use_the_right_article():
    with pytest.raises(PeriodError, match="is not the start of an hourly period"):
        PeriodType.HOURLY.check_boundary(datetime(2024, 1, 1, 5, 30))
    with pytest.raises(PeriodError, match="is not a daily period key"):
        PeriodType.DAILY.parse("2024-01")


def test_the_command_line_takes_iso_periods_everywhere(settings, write_spec, materialize, capsys):
    write_spec()
    materialize("test_t2m", "2024-01-02")
    iso = "2024-01-02T00:00:00Z"
    assert main(["status", "test_t2m", "--start", iso, "--end", "2024-01-03T00:00", "--json"]) == 0
    assert _json(capsys)["present"] == ["2024-01-02"]
    assert main(["provenance", "test_t2m", iso]) == 0
    assert capsys.readouterr().out.startswith("test_t2m 2024-01-02 (time index 1)")
    assert main(["verify", "test_t2m", "--period", iso, "--json"]) == 0
    assert _json(capsys)["verified"] == 1
    assert main(["reproduce", "test_t2m", iso]) == 0
    assert "reproduced" in capsys.readouterr().out

    assert main(["materialize", "test_t2m", "--start", "2024-01"]) == 2
    assert capsys.readouterr().err.strip() == (
        "ref-assets: error: test_t2m: '2024-01' names a whole month, not one daily period: "
        "expected '2024-01-01'"
    )
    assert main(["provenance", "test_t2m", "2024-01-02T12:00"]) == 2
    assert "test_t2m: '2024-01-02T12:00' is not the start of a daily period" in (
        capsys.readouterr().err
    )

"""Decades of hourly periods: `status` works from the store's written indices as ranges, so its
cost follows the periods written, not the 674,000 partitions of an hourly dataset since 1950."""

import json
from datetime import datetime

import numpy as np
import pytest

import ref_assets
from ref_assets.batch import fetch_batch
from ref_assets.cli import main
from ref_assets.periods import IndexRanges, Period, PeriodRanges, PeriodType
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.specs import DatasetSpec
from ref_assets.store.repository import DatasetStore
from ref_assets.store.writer import write_period

# Scattered over the first days: the store stays small, the dataset runs from 1950 to now.
WRITTEN = ["1950-01-01-00:00", "1950-01-01-01:00", "1950-01-01-05:00", "1950-01-03-00:00"]


@pytest.fixture
def hourly_since_1950(settings, write_spec):
    """An hourly dataset from 1950 (over 670,000 partitions) whose store holds `WRITTEN`."""
    fields = write_spec("hourly_t2m", period="hourly", start="1950-01-01T00:00")
    spec = DatasetSpec.model_validate(fields)
    provider = SyntheticProvider(spec)
    store = DatasetStore(settings.storage_root, spec.id)
    for key in WRITTEN:
        write_period(store, fetch_batch(spec, provider, spec.period_for_key(key)), run_id="test")
    return spec


@pytest.fixture
def periods_made(monkeypatch) -> list[Period]:
    """Every `Period` constructed from now on (each one passes through ``__post_init__``)."""
    made: list[Period] = []
    check = Period.__post_init__

    def counting(self: Period) -> None:
        made.append(self)
        check(self)

    monkeypatch.setattr(Period, "__post_init__", counting)
    return made


def test_status_of_decades_of_hours_makes_a_period_per_run_not_per_partition(
    hourly_since_1950, settings, periods_made
):
    end = datetime(2024, 12, 31, 23)
    status = ref_assets.dataset_status("hourly_t2m", end=end, settings=settings)
    total = PeriodType.HOURLY.index(end, datetime(1950, 1, 1)) + 1
    assert (len(status.present), len(status.missing)) == (4, total - 4)
    assert [(a.key, b.key) for a, b in status.present.runs()] == [
        ("1950-01-01-00:00", "1950-01-01-01:00"),
        ("1950-01-01-05:00", "1950-01-01-05:00"),
        ("1950-01-03-00:00", "1950-01-03-00:00"),
    ]
    assert [(a.key, b.key) for a, b in status.missing.runs()][1:] == [
        ("1950-01-01-06:00", "1950-01-02-23:00"),
        ("1950-01-03-01:00", "2024-12-31-23:00"),
    ]
    # Reading the status and its runs made a few periods, not one per partition.
    assert 0 < len(periods_made) < 20


def test_status_json_lists_every_key_without_a_period_object_each(
    hourly_since_1950, periods_made, capsys
):
    assert main(["status", "hourly_t2m", "--end", "2024-12-31T23:00", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {
        "dataset",
        "store",
        "first",
        "last",
        "present",
        "missing",
        "structure_changed",
    }
    assert report["structure_changed"] == []  # the spec fits the store
    assert report["present"] == WRITTEN
    assert (report["first"], report["last"]) == ("1950-01-01-00:00", "2024-12-31-23:00")
    missing = report["missing"]
    assert len(missing) + len(WRITTEN) == len(set(missing) | set(WRITTEN)) > 654_000
    assert missing[:3] == ["1950-01-01-02:00", "1950-01-01-03:00", "1950-01-01-04:00"]
    assert missing[-1] == "2024-12-31-23:00"
    assert len(periods_made) < 20


@pytest.mark.parametrize("period_type", list(PeriodType))
def test_keys_computed_by_numpy_are_the_period_keys(period_type):
    origin = period_type.floor(datetime(1999, 11, 28, 22))
    indices = np.array([0, 1, 2, 3, 37, 1000, 7000])
    expected = [period_type.key(period_type.at(int(i), origin)) for i in indices]
    assert period_type.keys_at(origin, indices) == expected
    starts = period_type.starts_at(origin, indices).astype("datetime64[s]").tolist()
    assert starts == [period_type.at(int(i), origin) for i in indices]


def test_period_ranges_behave_as_a_sequence_of_periods():
    daily = PeriodType.DAILY
    origin = datetime(2024, 1, 1)
    ranges = PeriodRanges(daily, origin, IndexRanges.of([3, 4, 5, 9, 12, 13]))
    listed = [Period(daily, daily.at(i, origin)) for i in (3, 4, 5, 9, 12, 13)]
    assert list(ranges) == listed == ranges
    assert [ranges[i] for i in range(-6, 6)] == listed + listed
    assert ranges[1:4] == listed[1:4]
    assert ranges.keys() == [p.key for p in listed]
    assert ranges.run_keys() == [(a.key, b.key) for a, b in ranges.runs()]
    assert ranges.run_keys() == [
        ("2024-01-04", "2024-01-06"),
        ("2024-01-10",) * 2,
        ("2024-01-13", "2024-01-14"),
    ]
    assert PeriodRanges(daily, origin) == [] and ranges != listed[:-1]
    with pytest.raises(IndexError):
        ranges[6]


def test_verify_sync_instance_and_the_code_location_work_from_the_written_periods(
    hourly_since_1950, settings, instance, periods_made
):
    """A store written at scattered hours of a dataset of 670,000+ partitions: `verify` and
    `sync-instance` see exactly the written periods, and neither they nor the code location make
    a period object per partition."""
    import dagster as dg

    from ref_assets.definitions import build_definitions
    from ref_assets.defs.instance_sync import SyncReport, sync_instance
    from ref_assets.verification import verify_dataset

    checks = verify_dataset("hourly_t2m", settings=settings)
    assert [check.period for check in checks] == WRITTEN
    assert all(check.ok for check in checks)
    absent = "1950-01-01-02:00"
    [check] = verify_dataset("hourly_t2m", periods=[absent, WRITTEN[2]], settings=settings)[1:]
    assert check.period == WRITTEN[2] and check.ok

    assert sync_instance(instance, ["hourly_t2m"], settings=settings) == {
        "hourly_t2m": SyncReport(present=4, reported=4)
    }
    assert instance.get_materialized_partitions(dg.AssetKey("hourly_t2m")) == set(WRITTEN)
    assert sync_instance(instance, ["hourly_t2m"], settings=settings)["hourly_t2m"].reported == 0

    definitions = build_definitions()
    assert definitions.resolve_assets_def("hourly_t2m").partitions_def is not None
    # A few periods per written period (records, checks, events), none per partition.
    assert len(periods_made) < 20 * len(WRITTEN)

from datetime import datetime

import pytest

from ref_assets.defs.assets import partitions_for
from ref_assets.periods import Period, PeriodError, PeriodType
from ref_assets.specs import DatasetSpec
from ref_assets_tests.conftest import spec_dict

CASES = [
    (
        PeriodType.HOURLY,
        datetime(2023, 12, 31, 22),
        ["2023-12-31-22:00", "2023-12-31-23:00", "2024-01-01-00:00"],
    ),
    (PeriodType.DAILY, datetime(2024, 2, 28), ["2024-02-28", "2024-02-29", "2024-03-01"]),
    (PeriodType.MONTHLY, datetime(2023, 11, 1), ["2023-11", "2023-12", "2024-01"]),
    (PeriodType.YEARLY, datetime(1999, 1, 1), ["1999", "2000", "2001"]),
]


@pytest.mark.parametrize(("period_type", "origin", "keys"), CASES)
def test_keys_indices_and_starts_convert_both_ways(period_type, origin, keys):
    for index, key in enumerate(keys):
        start = period_type.parse(key)
        assert period_type.key(start) == key
        assert period_type.index(start, origin) == index
        assert period_type.at(index, origin) == start
    assert Period.from_key(period_type, keys[0]).end == period_type.parse(keys[1])


@pytest.mark.parametrize(("period_type", "origin", "keys"), CASES)
def test_dagster_partition_keys_are_period_keys(period_type, origin, keys):
    end = period_type.at(len(keys) - 1, origin)
    spec = DatasetSpec.model_validate(
        spec_dict(period=period_type.value, start=origin.isoformat(), end=end.isoformat())
    )
    assert partitions_for(spec).get_partition_keys() == keys


def test_off_boundary_starts_and_foreign_keys_are_rejected():
    with pytest.raises(PeriodError, match="non-zero day"):
        PeriodType.MONTHLY.check_boundary(datetime(2024, 1, 15))
    with pytest.raises(PeriodError, match="non-zero hour"):
        Period(PeriodType.DAILY, datetime(2024, 1, 1, 6))
    with pytest.raises(PeriodError, match="expected the form '2024-01'"):
        PeriodType.MONTHLY.parse("2024-01-01")


def test_dataset_rejects_periods_outside_its_range():
    spec = DatasetSpec.model_validate(spec_dict(end="2024-01-10"))
    assert spec.time_index(spec.period_for_key("2024-01-10")) == 9
    for key, bound in (("2023-12-31", "before the dataset's first"), ("2024-01-11", "after")):
        with pytest.raises(PeriodError, match=f"period {key} is {bound}"):
            spec.period_for_key(key)


def test_last_complete_period_converts_aware_times_to_utc():
    from datetime import UTC, timedelta, timezone

    from ref_assets.providers.protocol import last_complete_period

    east = timezone(timedelta(hours=3))
    assert last_complete_period(PeriodType.DAILY, datetime(2024, 1, 2, 1, tzinfo=east)).key == (
        "2023-12-31"
    )
    assert last_complete_period(PeriodType.HOURLY, datetime(2024, 1, 2, 1, 30, tzinfo=UTC)).key == (
        "2024-01-02-00:00"
    )
    assert (
        last_complete_period(PeriodType.MONTHLY, datetime(2024, 3, 1, tzinfo=UTC)).key == "2024-02"
    )
    assert last_complete_period(PeriodType.YEARLY, datetime(2024, 6, 1, tzinfo=UTC)).key == "2023"

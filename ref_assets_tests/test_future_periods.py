"""A spec's `end` is its last period, inclusive, even in the future: partitions, `ref-assets
materialize` and `ref-assets status` agree on it, and future periods a provider already has
(projections, generated data) are ingested."""

from datetime import UTC, datetime

import numpy as np
import pytest
from pydantic import ValidationError

from ref_assets.cli import main
from ref_assets.defs.assets import partitions_for
from ref_assets.periods import PeriodError
from ref_assets.reader import open_dataset
from ref_assets.specs import DatasetSpec
from ref_assets_tests.conftest import spec_dict

THIS_YEAR = datetime.now(UTC).year


def yearly(**overrides) -> dict:
    fields = {
        "period": "yearly",
        "start": f"{THIS_YEAR - 2}-01-01",
        "end": f"{THIS_YEAR + 5}-01-01",
        "storage": {"time_block": 4},
    }
    return spec_dict("projection", **(fields | overrides))


def test_end_is_any_instant_of_the_last_period():
    assert DatasetSpec.model_validate(yearly(end="2030-07-15")).end == datetime(2030, 1, 1)
    monthly = spec_dict(period="monthly", start="2024-01-01", end="2024-03-31T18:00:00")
    assert DatasetSpec.model_validate(monthly).end == datetime(2024, 3, 1)
    # An hourly dataset's date means that whole day: its last period is the day's last hour.
    hourly = DatasetSpec.model_validate(spec_dict(period="hourly", end="2024-01-02"))
    assert hourly.end == datetime(2024, 1, 2, 23)
    assert hourly.last_period().key == "2024-01-02-23:00"
    # A start is still a period boundary: it is where index 0 of the time axis lies.
    with pytest.raises(ValidationError, match=r"start: .* is not the start of a yearly period"):
        DatasetSpec.model_validate(yearly(start="2020-02-01"))


def test_partitions_run_to_a_future_end_and_no_further():
    spec = DatasetSpec.model_validate(yearly())
    keys = partitions_for(spec).get_partition_keys()
    assert keys == [str(year) for year in range(THIS_YEAR - 2, THIS_YEAR + 6)]
    # Counted when loaded, the offset overshoots as time passes: the end still caps it.
    later = partitions_for(spec, now=datetime(THIS_YEAR - 1, 6, 1, tzinfo=UTC))
    assert later.get_partition_keys() == keys
    # Without an end, partitions stop at the newest complete period.
    ongoing = DatasetSpec.model_validate(yearly(end=None))
    assert partitions_for(ongoing).get_partition_keys()[-1] == str(THIS_YEAR - 1)


def test_out_of_range_keys_say_which_bound_and_what_to_do():
    spec = DatasetSpec.model_validate(yearly())
    with pytest.raises(PeriodError, match=rf"after the dataset's last period {THIS_YEAR + 5} "):
        spec.period_for_key(str(THIS_YEAR + 6))
    with pytest.raises(PeriodError, match=r"before the dataset's first period .* move `start`"):
        spec.period_for_key(str(THIS_YEAR - 3))
    ongoing = DatasetSpec.model_validate(yearly(end=None))
    with pytest.raises(PeriodError, match=rf"{THIS_YEAR} has not ended yet .* set `end`"):
        ongoing.period_for_key(str(THIS_YEAR))
    assert spec.period_for_key(str(THIS_YEAR + 5)).key == str(THIS_YEAR + 5)


def test_future_periods_are_materialized_and_status_agrees(settings, write_spec, capsys):
    write_spec(**yearly())
    first, last = str(THIS_YEAR - 2), str(THIS_YEAR + 5)
    assert main(["materialize", "projection", "--start", first, "--end", last]) == 0
    assert main(["status", "projection", "--json"]) == 0
    status = capsys.readouterr().out
    assert f'"present": [\n    "{first}"' in status
    assert '"missing": []' in status
    data = open_dataset("projection")
    assert [int(str(t)[:4]) for t in data.time.values] == list(range(THIS_YEAR - 2, THIS_YEAR + 6))
    assert np.isfinite(data.t2m.isel(time=-1)).any()
    # One past the end is refused before any run starts, saying what to do.
    assert main(["materialize", "projection", "--start", str(THIS_YEAR + 6)]) == 2
    assert "move `end` forward in the spec" in capsys.readouterr().err

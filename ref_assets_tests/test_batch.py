from datetime import UTC, datetime

import numpy as np
import pytest

from ref_assets.batch import PeriodDataError, prepare_batch
from ref_assets.periods import Period, PeriodType
from ref_assets.providers.protocol import FetchedPeriod
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.specs import DatasetSpec
from ref_assets_tests.conftest import spec_dict

SPEC = DatasetSpec.model_validate(spec_dict())
PROVIDER = SyntheticProvider(SPEC)
PERIOD = Period.from_key(PeriodType.DAILY, "2024-01-05")


def prepare(fetched: FetchedPeriod):
    return prepare_batch(
        SPEC,
        PROVIDER.describe(),
        PERIOD,
        fetched,
        provider="synthetic",
        provider_version="1",
        fetched_at=datetime(2024, 1, 6, tzinfo=UTC),
    )


def fetched_with(change) -> FetchedPeriod:
    original = PROVIDER.fetch(PERIOD)
    return FetchedPeriod(change(original.data.copy(deep=True)), original.sources)


def test_prepared_batch_keeps_values_and_summarizes_them():
    fetched = PROVIDER.fetch(PERIOD)
    batch = prepare(fetched)
    values = batch.variables["t2m"]
    np.testing.assert_array_equal(values, fetched.data.t2m.values)
    stats = batch.stats["t2m"]
    assert stats.nan_fraction == pytest.approx(np.isnan(values).mean())
    assert stats.minimum == pytest.approx(np.nanmin(values))
    assert stats.maximum == pytest.approx(np.nanmax(values))
    assert batch.checksum == prepare(PROVIDER.fetch(PERIOD)).checksum


def test_a_time_step_inside_the_period_is_accepted_and_one_outside_rejected():
    inside = fetched_with(lambda d: d.expand_dims(time=[np.datetime64("2024-01-05T12:00")]))
    assert prepare(inside).checksum == prepare(PROVIDER.fetch(PERIOD)).checksum
    outside = fetched_with(lambda d: d.expand_dims(time=[np.datetime64("2024-01-06")]))
    with pytest.raises(PeriodDataError, match="outside the period"):
        prepare(outside)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.assign_coords(x=d.x + 0.25), "grid mismatch: x differs"),
        (lambda d: d.isel(y=slice(1, None)), "grid mismatch: y has 7 cells, expected 8"),
        (lambda d: d.rename(t2m="tas"), "returned no variable 't2m'"),
        (lambda d: d.assign(t2m=d.t2m.assign_attrs(units="K")), "is in 'K'"),
        (lambda d: d.assign(t2m=d.t2m.where(d.x < 3, np.inf)), "infinite values"),
        (lambda d: d.expand_dims(time=2), "expected one time step, got 2"),
        (lambda d: d.assign_coords(time=np.datetime64("1999-06-01")), "outside the period"),
        (lambda d: d.expand_dims("time"), "a time dimension without a time coordinate"),
        (lambda d: d.assign(t2m=d.t2m.astype("float64") * 1e300), "beyond the range of float32"),
    ],
)
def test_mismatches_name_dataset_period_and_sources(change, message):
    with pytest.raises(PeriodDataError, match=message) as raised:
        prepare(fetched_with(change))
    text = str(raised.value)
    assert text.startswith("test_t2m period 2024-01-05:")
    assert "synthetic://test_t2m/2024-01-05" in text

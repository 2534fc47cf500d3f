import hashlib
import json

import numpy as np
import pytest

from ref_assets.periods import Period, PeriodType
from ref_assets.providers.protocol import Provider, ProviderError
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.specs import DatasetSpec
from ref_assets_tests.conftest import spec_dict

TEMPERATURE = {"name": "t2m", "units": "degC", "attributes": {"standard_name": "air_temperature"}}
PRECIPITATION = {
    "name": "pr",
    "units": "mm/day",
    "attributes": {"standard_name": "precipitation_flux"},
}


def provider(**overrides) -> SyntheticProvider:
    return SyntheticProvider(DatasetSpec.model_validate(spec_dict(**overrides)))


def daily(key: str) -> Period:
    return Period.from_key(PeriodType.DAILY, key)


def test_satisfies_the_provider_protocol():
    assert isinstance(provider(), Provider)


def test_same_period_gives_same_values_and_other_periods_differ():
    first = provider().fetch(daily("2024-03-01"))
    again = provider().fetch(daily("2024-03-01"))
    other = provider().fetch(daily("2024-03-02"))
    np.testing.assert_array_equal(first.data.t2m.values, again.data.t2m.values)
    assert first.sources == again.sources
    assert not np.allclose(first.data.t2m.values, other.data.t2m.values, equal_nan=True)
    assert first.sources[0].sha256 != other.sources[0].sha256


def test_source_item_checksums_the_generator_inputs():
    [item] = provider().fetch(daily("2024-03-01")).sources
    payload = json.dumps(
        {
            "generator": "synthetic/1",
            "period": "2024-03-01",
            "params": {
                "bbox": [0.0, 40.0, 6.0, 44.0],
                "resolution": 0.5,
                "seed": 3,
                "land_only": True,
            },
            "fields": {"t2m": "air_temperature"},
        },
        sort_keys=True,
    ).encode()
    assert (item.uri, item.size, item.sha256) == (
        "synthetic://test_t2m/2024-03-01",
        len(payload),
        hashlib.sha256(payload).hexdigest(),
    )


def test_temperature_has_hemispheric_seasons_and_a_diurnal_cycle():
    box = {"bbox": [-10.0, -50.0, 10.0, 50.0], "resolution": 1.0}
    fields = provider(params=box)
    january = fields.fetch(daily("2024-01-15")).data.t2m
    july = fields.fetch(daily("2024-07-15")).data.t2m
    north, south = january.y > 30, january.y < -30
    assert (july - january).where(north).mean() > 10
    assert (january - july).where(south).mean() > 10
    hourly = provider(params=box, period="hourly", start="2024-07-01T00:00:00")
    afternoon = hourly.fetch(Period.from_key(PeriodType.HOURLY, "2024-07-01-15:00")).data.t2m
    night = hourly.fetch(Period.from_key(PeriodType.HOURLY, "2024-07-01-03:00")).data.t2m
    assert (afternoon - night).mean() > 5


def test_land_only_masks_a_fixed_ocean_and_precipitation_is_non_negative():
    fields = provider(params={"land_only": True}, variables=[TEMPERATURE, PRECIPITATION])
    one, two = (fields.fetch(daily(k)).data for k in ("2024-01-01", "2024-01-02"))
    mask = np.isnan(one.t2m.values)
    assert 0.2 < mask.mean() < 0.7
    np.testing.assert_array_equal(mask, np.isnan(two.pr.values))
    rain = one.pr.values[~mask]
    assert (rain >= 0).all() and (rain == 0).any() and (rain > 0).any()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"params": {"bbox": [5, 0, 1, 1]}}, "params.bbox"),
        ({"params": {"colour": "blue"}}, "params.colour"),
        ({"variables": [{"name": "v", "units": "1"}]}, "needs attributes.standard_name"),
        ({"variables": [{**TEMPERATURE, "units": "degF"}]}, "has units 'degF'"),
    ],
)
def test_bad_parameters_name_the_dataset_and_field(overrides, message):
    with pytest.raises(ProviderError, match=message) as raised:
        provider(**overrides)
    assert str(raised.value).startswith("test_t2m:")


def test_adding_a_variable_changes_no_other_variable():
    alone = provider().fetch(daily("2024-03-01")).data.t2m.values
    together = provider(variables=[PRECIPITATION, TEMPERATURE]).fetch(daily("2024-03-01"))
    np.testing.assert_array_equal(together.data.t2m.values, alone)

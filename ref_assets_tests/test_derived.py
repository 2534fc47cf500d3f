"""Derived products: aggregates computed from an input dataset's store, refused when incomplete,
recomputed when an input is revised, de-accumulated for ERA5-Land, and kept current by Dagster."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import numpy as np
import pytest
import xarray as xr

import ref_assets
from ref_assets.batch import prepare_batch
from ref_assets.definitions import build_definitions
from ref_assets.derived import IncompleteInputError, deaccumulate
from ref_assets.periods import Period, PeriodType
from ref_assets.provenance import read_provenance
from ref_assets.providers.aggregate import AggregateProvider
from ref_assets.providers.protocol import Description, FetchedPeriod, Grid, SourceItem
from ref_assets.providers.registry import ProviderRegistry
from ref_assets.specs import DatasetSpec
from ref_assets.store.repository import DatasetStore
from ref_assets.store.writer import CommitPolicy, PeriodWriter
from ref_assets.verification import reproduce_period, verify_dataset
from ref_assets_tests.conftest import spec_dict, step_failure

SYNTHETIC = {"bbox": [0.0, 40.0, 6.0, 44.0], "resolution": 0.5, "seed": 3, "land_only": True}
T2M = {"name": "t2m", "units": "degC", "attributes": {"standard_name": "air_temperature"}}
PRECIP = {
    "name": "precip",
    "units": "mm/day",
    "attributes": {"standard_name": "precipitation_flux"},
}


def daily_input(write_spec, **overrides) -> dict:
    """A daily synthetic dataset of temperature and precipitation (land only: NaN over its
    pseudo-ocean)."""
    fields = {"params": SYNTHETIC, "variables": [T2M, PRECIP], "storage": {"time_block": 64}}
    return write_spec("daily_in", **{**fields, **overrides})


def product(write_spec, dataset_id: str, input_id: str, period: str, params: dict, **overrides):
    """A derived product's spec file (provider aggregate)."""
    fields = {
        "provider": "aggregate",
        "params": {"input": input_id, **params},
        "period": period,
        "start": "2024-01-01",
        "variables": [T2M, PRECIP],
        "storage": {"time_block": 12},
        "chunks": {},
    }
    return write_spec(dataset_id, **{**fields, **overrides})


def stored(settings, dataset_id: str) -> xr.Dataset:
    return ref_assets.open_dataset(dataset_id, settings=settings)


def input_stack(settings, dataset_id: str, first: str, last: str, variable: str) -> np.ndarray:
    data = stored(settings, dataset_id)[variable].sel(time=slice(first, last))
    return data.values.astype("float64")


MONTHS = {"2024-01": ("2024-01-01", "2024-01-31"), "2024-02": ("2024-02-01", "2024-02-29")}


def test_monthly_aggregates_of_a_daily_dataset_equal_numpy(settings, write_spec, materialize):
    daily_input(write_spec)
    for statistic in ("mean", "min", "max"):
        product(write_spec, f"monthly_{statistic}", "daily_in", "monthly", {"statistic": statistic})
    monthly_precip = {**PRECIP, "units": "mm/month"}  # a sum of a daily rate: declared units
    product(
        write_spec,
        "monthly_sum",
        "daily_in",
        "monthly",
        {"statistic": "sum"},
        variables=[monthly_precip],
    )
    materialize("daily_in", "2024-01-01...2024-02-29")

    for statistic in ("mean", "min", "max", "sum"):
        materialize(f"monthly_{statistic}", "2024-01...2024-02")
        data = stored(settings, f"monthly_{statistic}")
        for name in data.data_vars:
            for month, (first, last) in MONTHS.items():
                stack = input_stack(settings, "daily_in", first, last, name)
                assert stack.shape[0] == {"2024-01": 31, "2024-02": 29}[month]
                expected = getattr(np, statistic)(stack, axis=0).astype("float32")
                np.testing.assert_array_equal(data[name].sel(time=month).values[0], expected)
        # The land-only mask: NaN where the input is NaN, as numpy's own statistics give it.
        assert np.isnan(data.precip.values).any() and np.isfinite(data.precip.values).any()
    assert stored(settings, "monthly_mean").t2m.attrs["cell_methods"] == "time: mean"
    assert stored(settings, "monthly_max").t2m.attrs["cell_methods"] == "time: maximum"
    assert all(check.ok for check in verify_dataset("monthly_sum", settings=settings))


def test_daily_aggregate_of_an_hourly_dataset_equals_numpy(settings, write_spec, materialize):
    write_spec(
        "hourly_in",
        params=SYNTHETIC,
        period="hourly",
        start="2024-01-01T00:00:00",
        storage={"time_block": 96},
    )
    product(write_spec, "daily_mean", "hourly_in", "daily", {"statistic": "mean"}, variables=[T2M])
    product(write_spec, "daily_max", "hourly_in", "daily", {"statistic": "max"}, variables=[T2M])
    materialize("hourly_in", "2024-01-01-00:00...2024-01-02-23:00")

    for statistic in ("mean", "max"):
        materialize(f"daily_{statistic}", "2024-01-01...2024-01-02")
        data = stored(settings, f"daily_{statistic}").t2m
        for day in ("2024-01-01", "2024-01-02"):
            stack = input_stack(settings, "hourly_in", f"{day}T00", f"{day}T23", "t2m")
            assert stack.shape[0] == 24
            expected = getattr(np, statistic)(stack, axis=0).astype("float32")
            np.testing.assert_array_equal(data.sel(time=slice(day, day)).values[0], expected)
    record = read_provenance("daily_mean", "2024-01-02", settings=settings)
    assert [s.uri for s in record.sources] == [
        f"ref-assets:hourly_in/2024-01-02-{hour:02d}:00" for hour in range(24)
    ]


def test_an_incomplete_month_is_refused_with_a_reason_and_nothing_is_written(
    settings, write_spec, materialize
):
    daily_input(write_spec)
    product(write_spec, "monthly_mean", "daily_in", "monthly", {"statistic": "mean"})
    materialize("daily_in", "2024-01-01...2024-01-12")
    materialize("daily_in", "2024-01-15...2024-01-30")

    result = materialize("monthly_mean", "2024-01", raise_on_error=False)

    reason = step_failure(result).step_failure_data.error.message
    assert "monthly_mean period 2024-01: 28 of the 31 daily periods of daily_in" in reason
    assert "missing: 2024-01-13..2024-01-14, 2024-01-31" in reason
    assert not DatasetStore(settings.storage_root, "monthly_mean").exists()


def test_min_coverage_accepts_a_month_with_gaps_and_records_them(settings, write_spec, materialize):
    daily_input(write_spec)
    spec = product(
        write_spec,
        "monthly_mean",
        "daily_in",
        "monthly",
        {"statistic": "mean", "min_coverage": 0.9},
    )
    materialize("daily_in", "2024-01-01...2024-01-29")  # 29 of 31 days: 0.94

    materialize("monthly_mean", "2024-01")

    stack = input_stack(settings, "daily_in", "2024-01-01", "2024-01-29", "t2m")
    np.testing.assert_array_equal(
        stored(settings, "monthly_mean").t2m.values[0], np.mean(stack, axis=0).astype("float32")
    )
    record = read_provenance("monthly_mean", "2024-01", settings=settings)
    assert record.flags["coverage"] == "29/31"
    assert record.flags["missing_inputs"] == "2024-01-30..2024-01-31"
    assert len(record.sources) == 29
    provider = AggregateProvider(DatasetSpec.model_validate(spec))
    january, february = (Period.from_key(PeriodType.MONTHLY, k) for k in ("2024-01", "2024-02"))
    assert provider.available_periods(january, february) == [january]
    assert provider.latest_available() == january


def test_the_refusal_is_per_cell_too_when_an_input_is_nan_there():
    from ref_assets.derived import aggregate

    stack = np.ones((10, 1, 3))
    stack[:1, 0, 1] = np.nan  # one of ten NaN: 0.9 covered
    stack[:2, 0, 2] = np.nan  # two of ten: 0.8
    np.testing.assert_array_equal(aggregate(stack, "sum", 0.9)[0], [10.0, 9.0, np.nan])
    np.testing.assert_array_equal(aggregate(stack, "mean", 1.0)[0], [1.0, np.nan, np.nan])


def test_a_revised_input_recomputes_the_aggregate_with_updated_provenance(
    settings, write_spec, materialize, instance
):
    """The automation condition requests a month only once its last day lands, and again when
    a day is revised; the recomputed month's record names the revised input's checksum."""
    daily_input(write_spec)
    spec = product(write_spec, "monthly_mean", "daily_in", "monthly", {"statistic": "mean"})
    key = dg.AssetKey("monthly_mean")

    def requested(cursor):
        result = dg.evaluate_automation_conditions(
            defs=build_definitions(),
            instance=instance,
            cursor=cursor,
            asset_selection=dg.AssetSelection.assets(key),
            evaluation_time=datetime(2024, 3, 5),
        )
        return result.get_requested_partitions(key), result.cursor

    partitions, cursor = requested(None)
    assert partitions == set()
    materialize("daily_in", "2024-01-01...2024-01-30")
    partitions, cursor = requested(cursor)
    assert partitions == set()  # January is incomplete: not requested early

    materialize("daily_in", "2024-01-31")  # the last input lands
    partitions, cursor = requested(cursor)
    assert partitions == {"2024-01"}
    materialize("monthly_mean", "2024-01")
    partitions, cursor = requested(cursor)
    assert partitions == set()
    before = read_provenance("monthly_mean", "2024-01", settings=settings)
    day_before = read_provenance("daily_in", "2024-01-05", settings=settings)

    daily_input(write_spec, params={**SYNTHETIC, "seed": 4})  # the source revises its values
    materialize("daily_in", "2024-01-05")
    reproduction = reproduce_period(
        DatasetSpec.model_validate(spec), ProviderRegistry.discover(), "2024-01", settings=settings
    )
    assert reproduction.changed_inputs == [
        f"ref-assets:daily_in/2024-01-05: sha256 {day_before.checksum[7:19]}... now "
        f"{read_provenance('daily_in', '2024-01-05', settings=settings).checksum[7:19]}..."
    ]
    assert reproduction.verdict == "the source changed, and so did the output"
    partitions, cursor = requested(cursor)
    assert partitions == {"2024-01"}
    materialize("monthly_mean", "2024-01")

    after = read_provenance("monthly_mean", "2024-01", settings=settings)
    revised = read_provenance("daily_in", "2024-01-05", settings=settings)
    assert revised.checksum != day_before.checksum
    sources = {s.uri: s.sha256 for s in after.sources}
    assert sources["ref-assets:daily_in/2024-01-05"] == revised.checksum.removeprefix("sha256:")
    assert {s.uri: s.sha256 for s in before.sources}["ref-assets:daily_in/2024-01-05"] == (
        day_before.checksum.removeprefix("sha256:")
    )
    assert after.flags["input_snapshot"] != before.flags["input_snapshot"]
    assert after.checksum != before.checksum and after.previous.checksum == before.checksum
    stack = input_stack(settings, "daily_in", "2024-01-01", "2024-01-31", "t2m")
    np.testing.assert_array_equal(
        stored(settings, "monthly_mean").t2m.values[0], np.mean(stack, axis=0).astype("float32")
    )


# ERA5-Land-like accumulations since 00 UTC: the step at 00 UTC holds the previous day's total.


def synthetic_accumulations(amounts: np.ndarray, first_hour: np.datetime64) -> np.ndarray:
    """Accumulations since 00 UTC of hourly ``amounts`` (each stamped at the end of its hour),
    starting at ``first_hour`` (01 UTC)."""
    hours = first_hour + np.arange(amounts.shape[0]).astype("timedelta64[h]")
    # The hour ending at h belongs to the day of h - 1 hour; its accumulation restarts daily.
    day = (hours - np.timedelta64(1, "h")).astype("datetime64[D]")
    accumulations = np.empty_like(amounts)
    for one in np.unique(day):
        inside = day == one
        accumulations[inside] = np.cumsum(amounts[inside], axis=0)
    return accumulations


def test_deaccumulation_recovers_hourly_amounts_from_accumulations_since_00_utc():
    rng = np.random.default_rng(1)
    amounts = rng.gamma(0.5, 2.0, size=(72, 2, 3))  # three days, hours ending 01..00
    first = np.datetime64("2024-01-01T01", "h")
    accumulations = synthetic_accumulations(amounts, first)
    hours = first + np.arange(72).astype("timedelta64[h]")
    # 00 UTC holds the whole previous day; 01 UTC restarts.
    np.testing.assert_allclose(accumulations[23], amounts[:24].sum(axis=0))
    np.testing.assert_array_equal(accumulations[24], amounts[24])

    recovered = deaccumulate(accumulations, hours)

    np.testing.assert_allclose(recovered, amounts, rtol=1e-12, atol=1e-12)
    # A window starting at another hour cannot know its first amount.
    assert np.isnan(deaccumulate(accumulations[5:], hours[5:])[0]).all()
    with pytest.raises(ValueError, match="consecutive"):
        deaccumulate(accumulations[[0, 2]], hours[[0, 2]])


def write_hourly_accumulations(settings, spec: DatasetSpec, accumulations, hours) -> None:
    """An hourly store holding ``accumulations`` (in mm), written as any dataset's periods."""
    grid = Grid.regular(west=0, south=0, east=3, north=2, resolution=1.0)
    description = Description.from_spec(spec, grid)
    writer = PeriodWriter(
        DatasetStore(settings.storage_root, spec.id), run_id="test", policy=CommitPolicy(64)
    )
    for values, hour in zip(accumulations, hours, strict=True):
        period = Period(PeriodType.HOURLY, hour.astype(datetime))
        data = xr.Dataset({"tp": (("y", "x"), values, {"units": "mm"})}, coords=grid.coords())
        item = SourceItem.from_bytes(f"test://{period.key}", values.tobytes())
        batch = prepare_batch(
            spec,
            description,
            period,
            FetchedPeriod(data, (item,)),
            provider="test",
            provider_version="1",
            fetched_at=datetime.now(UTC),
        )
        writer.add(batch)
    writer.flush()


@pytest.mark.parametrize("read_bytes", [None, 1], ids=["one block", "a block per hour"])
def test_daily_totals_of_era5_land_accumulations_are_the_sums_of_deaccumulated_hours(
    settings, monkeypatch, read_bytes
):
    if read_bytes is not None:  # blocks of one period: each carries its accumulation on
        monkeypatch.setattr("ref_assets.derived.READ_BYTES", read_bytes)
    tp = {"name": "tp", "units": "mm", "attributes": {"standard_name": "precipitation_amount"}}
    hourly = DatasetSpec.model_validate(
        spec_dict(
            "era5_like",
            period="hourly",
            start="2024-01-01T00:00:00",
            variables=[tp],
            storage={"time_block": 96},
        )
    )
    rng = np.random.default_rng(7)
    amounts = rng.gamma(0.5, 0.4, size=(49, 2, 3))  # hours ending 2024-01-01T01..01-03T01
    first = np.datetime64("2024-01-01T01", "h")
    hours = first + np.arange(49).astype("timedelta64[h]")
    accumulations = synthetic_accumulations(amounts, first).astype("float32")
    write_hourly_accumulations(settings, hourly, accumulations, hours)
    daily = DatasetSpec.model_validate(
        spec_dict(
            "era5_like_daily",
            provider="aggregate",
            period="daily",
            variables=[tp],
            params={
                "input": "era5_like",
                "statistic": "sum",
                "variables": {"tp": {"deaccumulate": True}},
            },
        )
    )
    provider = AggregateProvider(daily)

    for day, stop in (("2024-01-01", 24), ("2024-01-02", 48)):
        fetched = provider.fetch(Period.from_key(PeriodType.DAILY, day))
        total = fetched.data.tp.values
        hours_used = accumulations[stop - 24 : stop].astype("float64")
        expected = deaccumulate(hours_used, hours[stop - 24 : stop]).sum(axis=0)
        np.testing.assert_allclose(total, expected, rtol=1e-12)
        # ... which telescopes to the next day's 00 UTC value, the day's total.
        np.testing.assert_allclose(total, accumulations[stop - 1], rtol=1e-5)
        np.testing.assert_allclose(total, amounts[stop - 24 : stop].sum(axis=0), rtol=1e-5)
        keys = [s.uri.rsplit("/", 1)[1] for s in fetched.sources]
        assert keys[0] == f"{day}-01:00" and len(keys) == 24  # 01 UTC .. 00 UTC of the next day

    with pytest.raises(IncompleteInputError, match=r"2024-01-04-00:00"):
        # The 3rd's last hour (00 UTC of the 4th) is not stored: no total for the 3rd.
        provider.fetch(Period.from_key(PeriodType.DAILY, "2024-01-03"))


def test_a_product_declared_over_a_stored_history_fills_it_on_its_first_evaluation(
    settings, write_spec, materialize, instance
):
    daily_input(write_spec)
    materialize("daily_in", "2024-01-01...2024-02-10")  # January whole, February not
    code_version = build_definitions().resolve_assets_def("daily_in").code_versions_by_key
    product(write_spec, "monthly_mean", "daily_in", "monthly", {"statistic": "mean"})
    key = dg.AssetKey("monthly_mean")
    # Declaring a product changes nothing of its input: same code version, and its store
    # (whose structure the input's spec alone decides) keeps taking periods.
    assert build_definitions().resolve_assets_def("daily_in").code_versions_by_key == code_version
    materialize("daily_in", "2024-02-11")

    def evaluate(cursor, minute):
        return dg.evaluate_automation_conditions(
            defs=build_definitions(),
            instance=instance,
            cursor=cursor,
            asset_selection=dg.AssetSelection.assets(key),
            evaluation_time=datetime(2024, 3, 5, 0, minute),
        )

    first = evaluate(None, 0)
    assert first.get_requested_partitions(key) == {"2024-01"}
    assert evaluate(first.cursor, 1).get_requested_partitions(key) == set()  # requested once


def test_a_product_starting_before_its_input_or_without_one_is_skipped(settings, write_spec):
    daily_input(write_spec, start="2024-01-15")
    product(write_spec, "early", "daily_in", "monthly", {"statistic": "mean"})
    product(write_spec, "orphan", "no_such_input", "monthly", {"statistic": "mean"})
    product(write_spec, "chained", "late", "yearly", {"statistic": "mean"}, start="2025-01-01")
    product(write_spec, "late", "daily_in", "monthly", {"statistic": "mean"}, start="2024-02-01")

    keys = {
        key.to_user_string()
        for key in build_definitions().resolve_asset_graph().get_all_asset_keys()
    }

    assert {"daily_in", "late", "chained"} <= keys
    assert not {"early", "orphan"} & keys


def test_a_month_whose_inputs_failed_their_check_is_not_requested(
    settings, write_spec, materialize, instance
):
    daily_input(write_spec, checks={"max_nan_fraction": 0.0})  # land only: every day fails
    product(write_spec, "monthly_mean", "daily_in", "monthly", {"statistic": "mean"})
    materialize("daily_in", "2024-01-01...2024-01-31", raise_on_error=False)

    result = dg.evaluate_automation_conditions(
        defs=build_definitions(),
        instance=instance,
        asset_selection=dg.AssetSelection.assets("monthly_mean"),
        evaluation_time=datetime(2024, 3, 5),
    )

    assert result.get_requested_partitions(dg.AssetKey("monthly_mean")) == set()


def test_daily_totals_of_accumulations_in_dagster_wait_for_the_next_days_00_utc(
    settings, write_spec, materialize, instance, register_providers
):
    """End to end in Dagster: an hourly input holding accumulations since 00 UTC, a daily
    product of their de-accumulated sum; the day is requested only once its inputs through the
    next day are in (the partition mapping's whole-period shift), and equals the known total."""
    from ref_assets_tests.example_providers import AccumulatingProvider

    register_providers("ref_assets_tests.example_providers:AccumulatingProvider")
    tp = {"name": "tp", "units": "mm", "attributes": {"standard_name": "precipitation_amount"}}
    write_spec(
        "hourly_tp",
        provider="accumulating",
        params={},
        period="hourly",
        start="2024-01-01T00:00:00",
        variables=[tp],
        storage={"time_block": 96},
    )
    product(
        write_spec,
        "daily_tp",
        "hourly_tp",
        "daily",
        {"statistic": "sum", "variables": {"tp": {"deaccumulate": True}}},
        variables=[tp],
    )
    key = dg.AssetKey("daily_tp")

    def requested(cursor):
        result = dg.evaluate_automation_conditions(
            defs=build_definitions(),
            instance=instance,
            cursor=cursor,
            asset_selection=dg.AssetSelection.assets(key),
            evaluation_time=datetime(2024, 1, 5),
        )
        return result.get_requested_partitions(key), result.cursor

    materialize("hourly_tp", "2024-01-01-00:00...2024-01-02-00:00")  # the 1st and its 00 UTC
    partitions, cursor = requested(None)
    assert partitions == set()  # Dagster's window for the 1st is the 1st and the 2nd
    materialize("hourly_tp", "2024-01-02-01:00...2024-01-02-23:00")
    partitions, cursor = requested(cursor)
    assert partitions == {"2024-01-01"}

    materialize("daily_tp", "2024-01-01")

    ends = np.datetime64("2024-01-01T01", "h") + np.arange(24)  # hours ending 01 .. 00 UTC
    expected = sum(AccumulatingProvider.hourly_amount(end) for end in ends)
    total = stored(settings, "daily_tp").tp.values[0]
    np.testing.assert_allclose(total, expected.astype("float32"), rtol=1e-6)
    record = read_provenance("daily_tp", "2024-01-01", settings=settings)
    assert (record.sources[0].uri, record.sources[-1].uri, len(record.sources)) == (
        "ref-assets:hourly_tp/2024-01-01-01:00",
        "ref-assets:hourly_tp/2024-01-02-00:00",
        24,
    )


def test_a_product_that_does_not_fit_its_input_is_refused_naming_the_field(
    settings, synthetic_dataset
):
    from ref_assets.providers.protocol import ProviderError, ProviderParamsError
    from ref_assets.store.writer import write_period

    _, store, batch_for = synthetic_dataset  # test_t2m: daily, t2m in degC

    def provider(period="monthly", spec_variables=(T2M,), **params):
        fields = spec_dict(
            "prod",
            provider="aggregate",
            period=period,
            variables=list(spec_variables),
            params={"input": "test_t2m", "statistic": "mean", **params},
        )
        return AggregateProvider(DatasetSpec.model_validate(fields))

    with pytest.raises(IncompleteInputError, match="prod: its input dataset test_t2m holds no"):
        provider().describe()
    write_period(store, batch_for("2024-01-01"), run_id="test")

    refusals = {
        "prod: variable 't2m': the mean of test_t2m's 't2m' is in 'degC', but the spec declares "
        "'K'": lambda: provider(spec_variables=[{**T2M, "units": "K"}]).describe(),
        "prod: a daily product cannot aggregate test_t2m, whose periods are daily": lambda: (
            provider(period="daily").describe()
        ),
        "prod: variable 'precip': test_t2m has no variable 'precip'": lambda: provider(
            spec_variables=[PRECIP]
        ).describe(),
        "prod: variable 't2m': deaccumulate needs hourly input": lambda: provider(
            variables={"t2m": {"deaccumulate": True}}
        ).describe(),
        "prod: params.variables: ['tp'] are not variables of this dataset": lambda: provider(
            variables={"tp": {}}
        ),
        "prod: period: an aggregate is daily, monthly or yearly": lambda: provider(period="hourly"),
    }
    for message, build in refusals.items():
        with pytest.raises(ProviderError) as refused:
            build()
        assert message in str(refused.value)
    with pytest.raises(ProviderParamsError, match=r"params\.statistic"):
        provider(statistic="median")


def test_a_product_whose_input_product_was_skipped_or_that_reads_itself_says_so(
    settings, write_spec, caplog
):
    daily_input(write_spec, start="2024-01-15")
    product(write_spec, "early", "daily_in", "monthly", {"statistic": "mean"})  # skipped
    product(write_spec, "of_early", "early", "yearly", {"statistic": "mean"}, start="2025-01-01")
    product(write_spec, "ping", "pong", "yearly", {"statistic": "mean"})
    product(write_spec, "pong", "ping", "yearly", {"statistic": "mean"})

    with caplog.at_level("WARNING", logger="ref_assets.defs.derived"):
        build_definitions()

    skipped = {record.args[0]: record.getMessage() for record in caplog.records}
    assert "derived product 'early', which was skipped" in skipped["of_early"]
    assert "derived product 'pong'" in skipped["ping"] and "a cycle" in skipped["ping"]
    assert "not a loaded dataset" not in skipped["ping"]

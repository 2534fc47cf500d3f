"""Partitioned asset checks: each stored period checked against the spec, the vocabulary and its
record, per partition in Dagster's terms, blocking what is downstream."""

import dataclasses

import dagster as dg
import numpy as np
import pytest
import zarr

from ref_assets.definitions import build_definitions
from ref_assets.defs.assets import range_run_tags
from ref_assets.defs.checks import CHECK_NAME, check_job_name
from ref_assets.quality import (
    check_period,
    grid_matches_spec,
    nan_fraction_within_bound,
    values_within_valid_range,
)
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import DatasetStore
from ref_assets.store.writer import write_period
from ref_assets.vocabulary import load_vocabulary
from ref_assets_tests.conftest import spec_dict

DATASET = "test_t2m"
KEY = dg.AssetKey(DATASET)
CHECK = dg.AssetCheckKey(KEY, CHECK_NAME)


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    found = {}
    for evaluation in result.get_asset_check_evaluations():
        assert evaluation.asset_check_key == CHECK
        assert evaluation.partition not in found, f"{evaluation.partition} evaluated twice"
        found[evaluation.partition] = evaluation
    return found


def edit_behind_our_back(settings, index: int) -> None:
    """Change one stored value of period ``index`` directly in the Icechunk store."""
    session = DatasetStore(settings.storage_root, DATASET).open().writable_session("main")
    t2m = zarr.open_group(session.store, mode="r+")["t2m"]
    values = t2m[index]
    values[np.isfinite(values)] += 0.5
    t2m[index] = values
    session.commit("an edit that bypasses ref_assets")


def test_an_edited_period_fails_its_checksum_check_and_blocks_downstream(
    settings, write_spec, materialize, instance
):
    write_spec()
    result = materialize(DATASET, "2024-01-02")
    assert result.success
    [(partition, evaluation)] = evaluations(result).items()
    assert partition == "2024-01-02" and evaluation.passed, evaluation.description
    assert evaluation.metadata["checksum_matches_record"].value is True
    [materialization] = instance.fetch_materializations(KEY, limit=1).records
    assert evaluation.target_materialization_data.storage_id == materialization.storage_id

    edit_behind_our_back(settings, index=1)

    downstream_ran = []

    @dg.asset(partitions_def=build_definitions().get_assets_def(KEY).partitions_def, deps=[KEY])
    def downstream_of_t2m() -> None:
        downstream_ran.append(True)

    # A run of the check and the downstream asset (not of test_t2m: that would rewrite it).
    job = dg.define_asset_job(
        "recheck_then_downstream",
        selection=dg.AssetSelection.checks(CHECK) | dg.AssetSelection.assets(downstream_of_t2m),
    )
    defs = dg.Definitions.merge(
        build_definitions(), dg.Definitions(assets=[downstream_of_t2m], jobs=[job])
    )
    result = defs.resolve_job_def("recheck_then_downstream").execute_in_process(
        instance=instance, partition_key="2024-01-02", raise_on_error=False
    )
    assert not result.success
    evaluation = evaluations(result)["2024-01-02"]
    assert not evaluation.passed and evaluation.blocking
    assert evaluation.metadata["checksum_matches_record"].value is False
    assert evaluation.metadata["grid_matches_spec"].value is True
    assert "stored values differ from the values the record describes" in evaluation.description
    assert downstream_ran == []
    assert not instance.get_materialized_partitions(dg.AssetKey("downstream_of_t2m"))
    [info] = instance.event_log_storage.get_asset_check_partition_info(
        [CHECK], partition_keys=["2024-01-02"]
    )
    assert info.latest_execution_status.value == "FAILED"


def test_the_check_job_rechecks_every_stored_period(settings, write_spec, materialize, instance):
    write_spec()
    assert materialize(DATASET, "2024-01-01...2024-01-04").success
    edit_behind_our_back(settings, index=2)
    job = build_definitions().resolve_job_def(check_job_name(DatasetSpec(**spec_dict())))
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success  # a blocking check failed
    verdicts = {key: e.passed for key, e in evaluations(result).items()}
    summary = evaluations(result)[None].description
    assert summary == "test_t2m: 1 of 4 stored periods failed (2024-01-03)"
    assert verdicts == {
        None: False,  # the run's summary: it had no partition
        "2024-01-01": True,
        "2024-01-02": True,
        "2024-01-03": False,
        "2024-01-04": True,
    }
    # Only the stored periods the config names; a range run of the job checks its range.
    config = {"ops": {f"{DATASET}_{CHECK_NAME}": {"config": {"first": "2024-01-04"}}}}
    result = job.execute_in_process(instance=instance, run_config=config)
    assert list(evaluations(result)) == ["2024-01-04", None]
    result = job.execute_in_process(
        instance=instance, tags=range_run_tags("2024-01-01", "2024-01-02")
    )
    assert list(evaluations(result)) == ["2024-01-01", "2024-01-02"]
    statuses = {
        info.partition_key: info.latest_execution_status.value
        for info in instance.event_log_storage.get_asset_check_partition_info([CHECK])
    }
    assert statuses == {
        None: "SUCCEEDED",
        "2024-01-01": "SUCCEEDED",
        "2024-01-02": "SUCCEEDED",
        "2024-01-03": "FAILED",
        "2024-01-04": "SUCCEEDED",
    }


def test_a_range_run_evaluates_the_check_per_partition_after_each_commit(
    settings, write_spec, materialize, instance
):
    write_spec(runs={"commit_every": 2})
    result = materialize(DATASET, "2024-01-01...2024-01-05")
    assert result.success
    found = evaluations(result)
    keys = [f"2024-01-0{day}" for day in range(1, 6)]
    assert sorted(found) == keys
    assert all(e.passed for e in found.values()), [e.description for e in found.values()]
    # Each evaluation follows its partition's materialization and points at it.
    events = [
        (e.event_type_value, e.partition or e.asset_check_evaluation_data.partition)
        for e in result.all_events
        if e.event_type_value in ("ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION")
    ]
    for key in keys:
        assert events.index(("ASSET_MATERIALIZATION", key)) < events.index(
            ("ASSET_CHECK_EVALUATION", key)
        )
    for key in keys:
        [record] = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=KEY, asset_partitions=[key]), limit=1
        ).records
        assert found[key].target_materialization_data.storage_id == record.storage_id
    infos = instance.event_log_storage.get_asset_check_partition_info([CHECK])
    assert {i.partition_key: i.latest_execution_status.value for i in infos} == dict.fromkeys(
        keys, "SUCCEEDED"
    )


def test_in_a_range_run_a_failing_check_fails_the_run_but_keeps_the_periods(
    settings, write_spec, materialize, instance
):
    # The synthetic land-only field is partly NaN: no NaN allowed fails every period's check.
    write_spec(checks={"max_nan_fraction": 0.0})
    result = materialize(DATASET, "2024-01-01...2024-01-03", raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "blocking asset check" in failure.step_failure_data.error.message
    found = evaluations(result)
    assert sorted(found) == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert not any(e.passed for e in found.values())
    assert all(e.metadata["nan_fraction_within_bound"].value is False for e in found.values())
    assert all("t2m is" in e.description and "NaN, above" in e.description for e in found.values())
    # Written and recorded all the same: the store is the truth, the check says what is wrong.
    assert instance.get_materialized_partitions(KEY) == set(found)


# --- the checks themselves, on crafted data -------------------------------------------------


@pytest.fixture
def stored(synthetic_dataset, settings):
    """The spec, vocabulary and one really stored period (2024-01-02) to craft variants of."""
    spec, store, batch_for = synthetic_dataset
    write_period(store, batch_for("2024-01-01"), run_id="test")
    write_period(store, batch_for("2024-01-02"), run_id="test")
    reader = store_reader.PeriodReader(store_reader.session_for(store))
    vocabulary = load_vocabulary(settings.variables_cv, settings.resolve_path)
    return spec, vocabulary, reader.read(1)


def test_an_intact_period_passes_every_check(stored):
    spec, vocabulary, period = stored
    quality = check_period(spec, vocabulary, "2024-01-02", period)
    assert quality.passed, quality.description
    assert quality.description == "all 4 checks passed"


def test_the_grid_check_fails_on_other_coordinates_shape_time_or_structure(stored):
    spec, _, period = stored
    assert grid_matches_spec(spec, "2024-01-02", period).passed
    uneven = period.x.copy()
    uneven[3] += 0.1
    outcome = grid_matches_spec(spec, "2024-01-02", dataclasses.replace(period, x=uneven))
    assert not outcome.passed and "x is not evenly spaced" in outcome.description
    shifted = dataclasses.replace(period, y=period.y + 1.0)
    outcome = grid_matches_spec(spec, "2024-01-02", shifted)
    assert not outcome.passed and "y runs" in outcome.description
    cut = dataclasses.replace(period, variables={"t2m": period.variables["t2m"][:, :-1]})
    outcome = grid_matches_spec(spec, "2024-01-02", cut)
    assert not outcome.passed and "t2m has shape (8, 11), not (8, 12)" in outcome.description
    outcome = grid_matches_spec(spec, "2024-01-03", period)  # the time stored is 2024-01-02
    assert not outcome.passed and "stored time is 2024-01-02 00:00" in outcome.description
    kelvin = DatasetSpec(**spec_dict(variables=[{"name": "t2m", "units": "K"}]))
    outcome = grid_matches_spec(kelvin, "2024-01-02", period)
    assert not outcome.passed and "laid out with other variables" in outcome.description


def test_the_nan_check_takes_the_spec_bound_and_per_variable_overrides(stored):
    spec, _, period = stored
    fraction = float(np.isnan(period.variables["t2m"]).mean())
    assert 0 < fraction < 1  # land-only: some sea
    strict = spec.model_copy(update={"checks": spec.checks.model_validate({"max_nan_fraction": 0})})
    outcome = nan_fraction_within_bound(strict, period)
    assert not outcome.passed
    assert outcome.numbers["t2m nan_fraction"] == pytest.approx(fraction, abs=1e-6)
    assert f"t2m is {fraction:.1%} NaN, above the bound of 0.0%" == outcome.description
    relaxed = DatasetSpec(
        **spec_dict(
            checks={"max_nan_fraction": 0.0, "variables": {"t2m": {"max_nan_fraction": 0.9}}}
        )
    )
    assert nan_fraction_within_bound(relaxed, period).passed
    with pytest.raises(ValueError, match=r"checks.variables: \['tp'\] are not variables"):
        DatasetSpec(**spec_dict(checks={"variables": {"tp": {"max_nan_fraction": 0.5}}}))


def test_the_range_check_counts_values_outside_the_vocabulary_valid_range(stored):
    spec, vocabulary, period = stored
    assert vocabulary.variables["t2m"].valid_range["degC"] == (-95.0, 65.0)
    hot = period.variables["t2m"].copy()
    land = np.flatnonzero(np.isfinite(hot))[:3]
    hot.flat[land] = 80.0
    hot_period = dataclasses.replace(period, variables={"t2m": hot})
    outcome = values_within_valid_range(spec, vocabulary, hot_period)
    assert not outcome.passed
    assert outcome.numbers["t2m values_outside_valid_range"] == 3
    assert "t2m: 3 values outside the valid range [-95, 65] degC" in outcome.description
    assert "max 80" in outcome.description
    quality = check_period(spec, vocabulary, "2024-01-02", hot_period)
    failed = [o.name for o in quality.outcomes if not o.passed]
    assert failed == ["values_within_valid_range", "checksum_matches_record"]

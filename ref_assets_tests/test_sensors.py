"""The availability sensors, evaluated with Dagster's sensor test context against a provider
whose published periods the tests move (`example_providers.MovableProvider`), and the runs they
request executed for real into the store."""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
import zarr

import ref_assets
from ref_assets.catalog import load_catalog
from ref_assets.definitions import build_definitions
from ref_assets.provenance import read_provenance
from ref_assets.store.repository import DatasetStore
from ref_assets.store.writer import write_period
from ref_assets.updates import IndexRanges
from ref_assets_tests.http_server import FileServer

MOVABLE = "ref_assets_tests.example_providers:MovableProvider"


@pytest.fixture
def movable(settings, write_spec, register_providers, tmp_path):
    """Write a dataset published by the movable provider; returns a function that changes what
    it publishes (``publish("d", latest=..., versions=..., error=...)``)."""
    register_providers(MOVABLE)

    def dataset(dataset_id: str = "moving", *, latest: str | None = None, gaps=(), **spec) -> Path:
        availability = tmp_path / f"{dataset_id}.availability.json"
        availability.write_text(json.dumps({"latest": latest, "gaps": list(gaps)}))
        params = {"bbox": [0.0, 40.0, 6.0, 44.0], "resolution": 1.0, "seed": 3}
        params["availability"] = str(availability)
        write_spec(dataset_id, provider="movable", params=params, end="2024-12-31", **spec)
        return availability

    return dataset


def publish(availability: Path, **changes) -> None:
    state = json.loads(availability.read_text())
    state.update(changes)
    availability.write_text(json.dumps(state))


def tick(instance: dg.DagsterInstance, dataset_id: str, cursor: str | None = None):
    defs = build_definitions()
    sensor = defs.resolve_sensor_def(f"{dataset_id}_updates")
    # Direct invocation takes the resources it is given, not the definitions' own.
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
    ) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def requested(result: dg.SensorResult) -> list[tuple[str, str]]:
    """The periods of each run request, as (first, last) keys."""
    spans = []
    for request in result.run_requests or []:
        if request.partition_key:
            spans.append((request.partition_key, request.partition_key))
        else:
            spans.append(
                (
                    request.tags["dagster/asset_partition_range_start"],
                    request.tags["dagster/asset_partition_range_end"],
                )
            )
    return spans


def run_all(materialize, dataset_id: str, result: dg.SensorResult) -> None:
    """Execute every requested run, as the daemon would launch it."""
    for first, last in requested(result):
        materialize(dataset_id, first if first == last else f"{first}...{last}")


def start_runs(instance: dg.DagsterInstance, dataset_id: str, result: dg.SensorResult) -> None:
    """Record every requested run as started (not finished): its periods are in flight."""
    for request in result.run_requests:
        tags = dict(request.tags)
        if request.partition_key:
            tags["dagster/partition"] = request.partition_key
        instance.add_run(
            dg.DagsterRun(
                job_name="__ASSET_JOB",
                run_id=str(uuid.uuid4()),
                status=dg.DagsterRunStatus.STARTED,
                tags=tags,
                asset_selection=frozenset({dg.AssetKey(dataset_id)}),
            )
        )


def test_new_periods_give_runs_for_exactly_those_then_none(movable, instance, materialize):
    availability = movable(latest="2024-01-05")
    materialize("moving", "2024-01-02")  # already in the store: never requested

    first = tick(instance, "moving")
    assert requested(first) == [("2024-01-01", "2024-01-01"), ("2024-01-03", "2024-01-05")]
    assert all(r.tags["ref_assets/dataset"] == "moving" for r in first.run_requests)
    assert all(r.asset_selection == [dg.AssetKey("moving")] for r in first.run_requests)
    run_all(materialize, "moving", first)

    second = tick(instance, "moving", first.cursor)
    assert requested(second) == []
    assert "no missing or revised periods" in second.skip_reason.skip_message
    assert "5 periods stored" in second.skip_reason.skip_message

    publish(availability, latest="2024-01-07")
    third = tick(instance, "moving", second.cursor)
    assert requested(third) == [("2024-01-06", "2024-01-07")]
    run_all(materialize, "moving", third)
    # The instance saw every period the store holds, from the sensor's runs alone.
    materialized = instance.get_materialized_partitions(dg.AssetKey("moving"))
    assert materialized == {f"2024-01-0{day}" for day in range(1, 8)}


def test_a_late_period_is_requested_once_published(movable, instance):
    """A period published after later ones (a late file) is asked about again until it is."""
    availability = movable(latest="2024-01-05", gaps=["2024-01-03"])
    first = tick(instance, "moving")
    assert requested(first) == [("2024-01-01", "2024-01-02"), ("2024-01-04", "2024-01-05")]
    publish(availability, gaps=[])
    second = tick(instance, "moving", first.cursor)
    assert requested(second) == [("2024-01-01", "2024-01-05")]


def test_the_store_is_the_truth_not_the_cursor(movable, instance, materialize):
    """Periods written by someone else between ticks are not requested again, and a cursor
    whose snapshot the store no longer descends from is replaced by a full listing."""
    availability = movable(latest="2024-01-03")
    first = tick(instance, "moving")
    assert requested(first) == [("2024-01-01", "2024-01-03")]
    materialize("moving", "2024-01-02")  # written outside the sensor's runs
    publish(availability, latest="2024-01-04")
    second = tick(instance, "moving", first.cursor)
    assert requested(second) == [("2024-01-01", "2024-01-01"), ("2024-01-03", "2024-01-04")]

    stale = json.loads(second.cursor)
    stale["state"]["snapshot"] = "0" * 20  # no such snapshot: the store is listed again
    stale["state"]["written"] = []
    third = tick(instance, "moving", json.dumps(stale))
    assert requested(third) == requested(second)


def test_a_store_being_created_is_a_store_without_periods(movable, instance, settings):
    """A first run has created the repository but not committed its layout yet."""
    movable(latest="2024-01-02")
    DatasetStore(settings.storage_root, "moving").open_or_create(8)
    assert requested(tick(instance, "moving")) == [("2024-01-01", "2024-01-02")]


def test_run_keys_are_stable_and_in_flight_periods_are_left_out(movable, instance):
    movable(
        latest="2024-01-08", runs={"max_partitions_per_run": 3}, updates={"max_periods_per_tick": 5}
    )
    first = tick(instance, "moving")
    # Ranges of at most max_partitions_per_run, at most max_periods_per_tick in all.
    assert requested(first) == [("2024-01-01", "2024-01-03"), ("2024-01-04", "2024-01-05")]
    again = tick(instance, "moving", first.cursor)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]
    assert len({r.run_key for r in first.run_requests}) == 2

    start_runs(instance, "moving", first)  # launched by the daemon, not finished yet
    third = tick(instance, "moving", again.cursor)
    assert requested(third) == [("2024-01-06", "2024-01-08")]


def test_a_failing_provider_is_a_skip_with_its_reason_and_others_still_run(movable, instance):
    broken = movable("broken", latest="2024-01-03")
    movable("healthy", latest="2024-01-02")
    publish(broken, error="cannot reach https://user:hunter2@source.example/data (HTTP 503)")

    failed = tick(instance, "broken")
    assert not failed.run_requests
    reason = failed.skip_reason.skip_message
    assert reason.startswith("broken: skipped, ProviderError: ")
    assert "HTTP 503" in reason and "hunter2" not in reason
    assert requested(tick(instance, "healthy")) == [("2024-01-01", "2024-01-02")]

    # Backing off: not asked again before retry_after, then with the delay doubled.
    waiting = tick(instance, "broken", failed.cursor)
    assert "backing off" in waiting.skip_reason.skip_message
    cursor = json.loads(waiting.cursor)
    assert cursor["backoff"]["delay"] == 600
    cursor["backoff"]["until"] = 0
    again = tick(instance, "broken", json.dumps(cursor))
    assert json.loads(again.cursor)["backoff"]["delay"] == 1200

    cursor = json.loads(again.cursor)
    cursor["backoff"]["until"] = 0
    publish(broken, error=None)
    recovered = tick(instance, "broken", json.dumps(cursor))
    assert requested(recovered) == [("2024-01-01", "2024-01-03")]
    assert "backoff" not in json.loads(recovered.cursor)


def test_a_changed_fingerprint_gives_exactly_one_revision_run(
    movable, instance, materialize, settings
):
    availability = movable(latest="2024-01-04", updates={"revision_window": 2})
    run_all(materialize, "moving", tick(instance, "moving"))
    before = read_provenance("moving", "2024-01-03")
    assert before.fingerprint == {"etag": '"2024-01-03-v1"', "size": 1001}
    assert before.previous is None

    # Republished: 01-03 inside the window (the two newest stored), 01-01 outside it.
    publish(availability, versions={"2024-01-03": 2, "2024-01-01": 2})
    result = tick(instance, "moving")
    [request] = result.run_requests
    assert requested(result) == [("2024-01-03", "2024-01-03")]
    assert request.tags["ref_assets/revision"] == "true"
    assert tick(instance, "moving", result.cursor).run_requests[0].run_key == request.run_key

    run_all(materialize, "moving", result)
    after = read_provenance("moving", "2024-01-03")
    assert after.fingerprint == {"etag": '"2024-01-03-v2"', "size": 1002}
    assert after.previous.fingerprint == before.fingerprint
    assert after.previous.checksum == before.checksum != after.checksum
    assert requested(tick(instance, "moving", result.cursor)) == []


def test_index_ranges_match_python_sets():
    rng = np.random.default_rng(7)
    for _ in range(200):
        a = set(rng.integers(0, 60, rng.integers(0, 40)).tolist())
        b = set(rng.integers(0, 60, rng.integers(0, 40)).tolist())
        ra, rb = IndexRanges.of(a), IndexRanges.of(b)
        assert set((ra | rb).indices()) == a | b
        assert set((ra - rb).indices()) == a - b
        assert len(ra) == len(a)
        assert ra.last(5).tolist() == sorted(a)[-5:]
        assert ra.first(7).indices().tolist() == sorted(a)[:7]
        probe = np.arange(-2, 62)
        assert ra.contains(probe).tolist() == [int(i) in a for i in probe]
        assert [i for f, last in ra.chunks(4) for i in range(f, last + 1)] == sorted(a)
        assert all(last - f < 4 for f, last in ra.chunks(4))


def test_chirps_prelim_days_are_replaced_when_their_final_file_is_published(
    settings, register_providers, instance, materialize, tmp_path
):
    from ref_assets_tests.test_provider_chirps3 import (
        chirps_spec_dict,
        final_path,
        local_window,
        prelim_path,
        write_cog,
    )

    register_providers("ref_assets.providers.chirps3:Chirps3Provider")
    root = tmp_path / "chc"
    for seed, day in enumerate((1, 2, 3)):
        write_cog(root / prelim_path(datetime(2024, 1, day)).lstrip("/"), 10 + seed)
    write_cog(root / final_path(datetime(2024, 1, 1)).lstrip("/"), 0)
    with FileServer(root) as server:
        spec = chirps_spec_dict(server.url("/"), "chirps_auto", stage="auto")
        spec.update(end="2024-01-03", updates={"revision_window": 10})
        (settings.user_spec_dir / "chirps_auto.yaml").write_text(yaml.safe_dump(spec))

        first = tick(instance, "chirps_auto")
        assert requested(first) == [("2024-01-01", "2024-01-03")]
        run_all(materialize, "chirps_auto", first)
        stored = read_provenance("chirps_auto", "2024-01-02")
        assert stored.fingerprint["stage"] == "prelim" and stored.fingerprint["preliminary"]
        assert requested(tick(instance, "chirps_auto", first.cursor)) == []

        final = root / final_path(datetime(2024, 1, 2)).lstrip("/")
        write_cog(final, 99)  # CHC publishes the final day
        revision = tick(instance, "chirps_auto", first.cursor)
        assert requested(revision) == [("2024-01-02", "2024-01-02")]
        assert revision.run_requests[0].tags["ref_assets/revision"] == "true"
        run_all(materialize, "chirps_auto", revision)

        replaced = read_provenance("chirps_auto", "2024-01-02")
        assert (
            replaced.fingerprint["stage"] == "final" and "preliminary" not in replaced.fingerprint
        )
        assert replaced.previous.fingerprint == stored.fingerprint
        assert replaced.previous.checksum == stored.checksum != replaced.checksum
        values = ref_assets.open_dataset("chirps_auto")["precip"].sel(time="2024-01-02").values
        np.testing.assert_array_equal(values, local_window(final))
        assert requested(tick(instance, "chirps_auto", revision.cursor)) == []


def test_an_era5t_step_is_replaced_when_its_file_is_republished_final(
    settings, write_spec, register_providers, instance, materialize, tmp_path
):
    from ref_assets_tests.test_local_files_grib import T2M, grib_message, make_spec, write_grib

    archive = tmp_path / "era5"
    for d, expver in ((1, "0001"), (2, "0005")):
        write_grib(
            archive / f"t2m_2024010{d}.grib",
            grib_message(T2M, f"2024-01-0{d}", seed=d, expver=expver),
        )
    register_providers("ref_assets.providers.local_files:LocalFilesProvider")
    spec = make_spec(archive, "t2m_{year}{month}{day}.grib", {"t2m": "t2m"})
    write_spec(
        "local_grib",
        **spec.model_dump(include={"provider", "params", "variables"}),
        end="2024-01-31",
        updates={"revision_window": 31},
    )
    first = tick(instance, "local_grib")
    assert requested(first) == [("2024-01-01", "2024-01-02")]
    run_all(materialize, "local_grib", first)
    era5t = read_provenance("local_grib", "2024-01-02")
    assert era5t.flags == {"expver": "0005"} and era5t.fingerprint["preliminary"] is True
    assert requested(tick(instance, "local_grib", first.cursor)) == []

    final = write_grib(
        archive / "t2m_20240102.grib", grib_message(T2M, "2024-01-02", seed=7, expver="0001")
    )
    os.utime(final, (final.stat().st_atime, final.stat().st_mtime + 60))  # a later file
    revision = tick(instance, "local_grib", first.cursor)
    assert requested(revision) == [("2024-01-02", "2024-01-02")]
    assert revision.run_requests[0].tags["ref_assets/revision"] == "true"
    run_all(materialize, "local_grib", revision)
    replaced = read_provenance("local_grib", "2024-01-02")
    assert replaced.flags == {"expver": "0001"} and "preliminary" not in replaced.fingerprint
    assert replaced.previous.fingerprint == era5t.fingerprint
    assert replaced.previous.checksum == era5t.checksum != replaced.checksum


@pytest.mark.parametrize(
    ("updates", "field", "message"),
    [
        ({"min_interval": 0}, "updates.min_interval", "greater than or equal to 1"),
        ({"default_status": "on"}, "updates.default_status", "'running' or 'stopped'"),
        ({"revision_window": -1}, "updates.revision_window", "greater than or equal to 0"),
        ({"retry_afer": 60}, "updates.retry_afer", "Extra inputs are not permitted"),
    ],
)
def test_bad_updates_settings_name_the_field(settings, write_spec, updates, field, message):
    write_spec("moving", updates=updates)
    [error] = load_catalog(settings).errors
    assert error.field == field and message in error.message


def test_every_dataset_has_a_sensor_set_up_by_its_spec(settings, write_spec):
    write_spec("quiet")
    write_spec("eager", updates={"default_status": "running", "min_interval": 30})
    defs = build_definitions()
    quiet, eager = (
        defs.resolve_sensor_def("quiet_updates"),
        defs.resolve_sensor_def("eager_updates"),
    )
    assert quiet.default_status == dg.DefaultSensorStatus.STOPPED
    assert quiet.minimum_interval_seconds == 3600
    assert eager.default_status == dg.DefaultSensorStatus.RUNNING
    assert eager.minimum_interval_seconds == 30


def test_rewriting_a_period_keeps_the_replaced_version_even_past_a_damaged_record(
    synthetic_dataset,
):
    spec, store, batch_for = synthetic_dataset
    first = write_period(store, batch_for("2024-01-02"), run_id="first").record
    second = write_period(store, batch_for("2024-01-02"), run_id="second").record
    assert second.previous.checksum == first.checksum
    assert (second.previous.run_id, second.previous.written_at) == ("first", first.written_at)

    session = store.open().writable_session("main")
    records = zarr.open_array(session.store, path="ref/records", mode="r+")
    records[spec.time_index(spec.period_for_key("2024-01-02"))] = '{"format": "damaged"}'
    session.commit("damage the record")
    repaired = write_period(store, batch_for("2024-01-02"), run_id="repair").record
    assert repaired.previous is None and repaired.checksum == first.checksum

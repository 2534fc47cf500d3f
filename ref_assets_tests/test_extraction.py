"""Extraction to a staging area: each format read back against `open_dataset`, a bbox across the
antimeridian, requests past the store's extent or too large (refused, nothing staged), expiry
and clean-up, reuse, a release read while main moves on, staging on S3, the command line and
the Dagster jobs."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from ref_assets.batch import fetch_batch
from ref_assets.cli.main import main
from ref_assets.extract import ExtractionError, clean_staging, extract, make_request
from ref_assets.extract.staging import StagingArea, output_sha256
from ref_assets.extract.writers import WRITERS
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.reader import open_dataset
from ref_assets.rebuild import rebuild_dataset, rechunk_dataset
from ref_assets.specs import DatasetSpec
from ref_assets.store import timeseries
from ref_assets.store.releases import tag
from ref_assets.store.repository import DatasetStore, StoreError
from ref_assets.store.writer import CommitPolicy, PeriodWriter
from ref_assets_tests.conftest import spec_dict
from ref_assets_tests.test_extra_dimensions import levels_spec, write_levels_file

DAYS = [str(day) for day in np.datetime64("2024-01-01") + np.arange(12)]
TIMESERIES = {"time_chunk": 4, "y": 4, "x": 6, "tile": 2}


def write(spec: DatasetSpec, store: DatasetStore, keys, *, seed: int | None = None) -> None:
    batch_spec = spec
    if seed is not None:  # another version of the source: other values for the same periods
        batch_spec = DatasetSpec.model_validate(
            {
                **spec.model_dump(mode="json", exclude_none=True),
                "params": {**spec.params, "seed": seed},
            }
        )
    provider = SyntheticProvider(batch_spec)
    writer = PeriodWriter(store, run_id="test", policy=CommitPolicy(every=6))
    for key in keys:
        writer.add(fetch_batch(batch_spec, provider, batch_spec.period_for_key(key)))
    writer.flush()


@pytest.fixture
def dataset(settings):
    """12 days of an 8 x 12 grid (0..6 E, 40..44 N) with a time-series copy."""
    spec = DatasetSpec.model_validate(spec_dict(timeseries=TIMESERIES))
    store = DatasetStore(settings.storage_root, spec.id)
    write(spec, store, DAYS)
    timeseries.update_timeseries(spec, store, run_id="test")
    return spec, store


def read_output(result) -> xr.Dataset:
    if result.record["format"] == "zarr":
        return xr.open_zarr(result.url, consolidated=False).load()
    return xr.open_dataset(result.url).load()


@pytest.mark.parametrize("fmt", ["netcdf", "zarr"])
def test_a_bbox_in_each_gridded_format_equals_open_dataset(settings, dataset, fmt):
    spec, _ = dataset
    request = make_request(
        dataset=spec.id, bbox=(1, 41, 4, 43), start="2024-01-03", end="2024-01-10", format=fmt
    )
    result = extract(request, settings=settings)
    expected = open_dataset(spec.id, settings=settings).sel(
        time=slice("2024-01-03", "2024-01-10"), y=slice(43, 41), x=slice(1, 4)
    )
    got = read_output(result)
    assert got.t2m.dims == ("time", "y", "x") and got.t2m.shape == expected.t2m.shape
    np.testing.assert_array_equal(got.t2m.values, expected.t2m.values)
    np.testing.assert_array_equal(got.time.values, expected.time.values)
    np.testing.assert_array_equal(got.x.values, expected.x.values)
    assert got.t2m.attrs["units"] == "degC" and got.t2m.attrs["grid_mapping"] == "spatial_ref"
    assert "WGS 84" in got.spatial_ref.attrs["crs_wkt"]
    record = json.loads(Path(result.record_url).read_text())
    assert record["sha256"] == output_sha256(Path(result.url))
    assert record["snapshot"] == DatasetStore(settings.storage_root, spec.id).open().lookup_branch(
        "main"
    )
    assert sorted(record["records"]) == DAYS[2:10]  # every period drawn on, with its checksum
    assert all(value.startswith("sha256:") for value in record["records"].values())
    assert record["read_from"] == {"timeseries": 0, "periods": 8}
    assert got.attrs["ref_assets_snapshot"] == record["snapshot"]
    assert record["request"]["bbox"] == [1.0, 41.0, 4.0, 43.0]


@pytest.mark.parametrize("fmt", ["netcdf", "zarr", "csv"])
def test_blocks_of_a_few_periods_stream_into_the_same_output(settings, dataset, fmt, monkeypatch):
    """Memory holds a block: with blocks of 5 periods the output is written in 3 pieces (the
    first creates it, the others append) and holds the same values."""
    spec, _ = dataset
    request = make_request(dataset=spec.id, bbox=(1, 41, 4, 43), format=fmt)
    whole = extract(request, settings=settings, staging=str(settings.configuration_dir / "a"))
    share = WRITERS[fmt].block_share  # CSV asks for smaller blocks
    # Zarr chunks of 2 periods: appends of 5 fill chunks that an earlier block began.
    monkeypatch.setattr(WRITERS["zarr"], "CHUNK_BYTES", 2 * 4 * 6 * 4)
    monkeypatch.setattr(
        "ref_assets.extract.plan.BLOCK_BYTES", 5 * 4 * 6 * 4 * share
    )  # 5 x 24 cells
    blocks = []
    pieces = extract(
        request,
        settings=settings,
        staging=str(settings.configuration_dir / "b"),
        on_block=lambda block, done, total: blocks.append((block.first, block.stop)),
    )
    assert blocks == [(0, 5), (5, 10), (10, 12)]
    if fmt == "csv":
        pd.testing.assert_frame_equal(pd.read_csv(pieces.url), pd.read_csv(whole.url))
        assert len(pd.read_csv(pieces.url)) == 12 * 4 * 6
    else:
        xr.testing.assert_identical(read_output(pieces), read_output(whole))
        assert read_output(pieces).sizes == {"time": 12, "y": 4, "x": 6}
        if fmt == "zarr":
            assert xr.open_zarr(pieces.url).t2m.encoding["chunks"] == (2, 4, 6)


def test_points_as_csv_read_the_copy_and_equal_open_dataset(settings, dataset):
    spec, _ = dataset
    points = ((0.3, 43.8), (5.6, 40.1), (2.2, 42.4))
    request = make_request(dataset=spec.id, points=points, format="csv", variables=("t2m",))
    result = extract(request, settings=settings)
    rows = pd.read_csv(result.url)
    assert list(rows.columns) == ["time", "point", "lon", "lat", "x", "y", "t2m"]
    data = open_dataset(spec.id, settings=settings)
    for number, (lon, lat) in enumerate(points):
        series = data.t2m.sel(x=lon, y=lat, method="nearest")
        got = rows[rows.point == number]
        np.testing.assert_allclose(got.t2m.values, series.values.astype("float64"), rtol=1e-6)
        assert (got.x.iloc[0], got.y.iloc[0]) == (float(series.x), float(series.y))
    assert rows.time.iloc[0] == "2024-01-01T00:00:00Z" and len(rows) == 12 * 3
    assert result.record["read_from"] == {"timeseries": 12, "periods": 0}


def test_points_as_netcdf(settings, dataset):
    spec, _ = dataset
    result = extract(
        make_request(dataset=spec.id, points=((1.1, 42.6), (4.9, 40.3)), start="2024-01-05"),
        settings=settings,
    )
    got = read_output(result)
    expected = open_dataset(spec.id, settings=settings).t2m.sel(time=slice("2024-01-05", None))
    assert got.t2m.dims == ("time", "point")
    for number, (lon, lat) in enumerate(((1.1, 42.6), (4.9, 40.3))):
        np.testing.assert_array_equal(
            got.t2m.isel(point=number).values, expected.sel(x=lon, y=lat, method="nearest").values
        )


def test_a_bbox_across_the_antimeridian(settings):
    spec = DatasetSpec.model_validate(
        spec_dict(params={"bbox": [-180.0, -10.0, 180.0, 10.0], "resolution": 5.0, "seed": 1})
    )
    store = DatasetStore(settings.storage_root, spec.id)
    write(spec, store, DAYS[:2])
    request = make_request(dataset=spec.id, bbox=(170, -10, -170, 10), format="zarr")
    got = read_output(extract(request, settings=settings))
    np.testing.assert_array_equal(got.x.values, [172.5, 177.5, 182.5, 187.5])  # ascending
    data = open_dataset(spec.id, settings=settings)
    expected = xr.concat(
        [data.t2m.sel(x=slice(170, 180)), data.t2m.sel(x=slice(-180, -170))], dim="x"
    )
    np.testing.assert_array_equal(got.t2m.values, expected.values)
    # The same with longitudes written 0..360.
    again = make_request(dataset=spec.id, bbox=(170, -10, 190, 10), format="zarr")
    assert again.bbox == request.bbox


def test_past_the_extent_and_unknown_variables_are_clear_errors(settings, dataset):
    spec, _ = dataset
    staging = Path(settings.extraction_settings.staging)
    with pytest.raises(ExtractionError) as err:
        extract(
            make_request(dataset=spec.id, start="2023-12-30", end="2024-01-05"), settings=settings
        )
    message = str(err.value)
    assert spec.id in message and "2023-12-30..2024-01-05" in message
    assert "2024-01-01..2024-01-12" in message  # what is there
    with pytest.raises(ExtractionError, match=r"2024-01-10\.\.2024-02-01 reaches past"):
        extract(
            make_request(dataset=spec.id, start="2024-01-10", end="2024-02-01"), settings=settings
        )
    with pytest.raises(ExtractionError, match=r"no variable 'tp'.*variables: t2m"):
        extract(make_request(dataset=spec.id, variables=("tp",)), settings=settings)
    with pytest.raises(ExtractionError, match="off the grid"):
        extract(make_request(dataset=spec.id, points=((30.0, 10.0),)), settings=settings)
    with pytest.raises(ExtractionError, match="bbox or points, not both"):
        make_request(dataset=spec.id, points=((1.0, 41.0),), bbox=(0, 40, 2, 42))
    with pytest.raises(StoreError) as err:  # expired by maintenance, say
        extract(make_request(dataset=spec.id, snapshot="ABCDEFGHJKMNPQRSTVWX"), settings=settings)
    message = str(err.value)
    assert message.startswith(f"{spec.id}: cannot open snapshot 'ABCDEFGHJKMNPQRSTVWX' of ")
    assert "\n" not in message and f"tag --list {spec.id}" in message  # no Rust call stack
    assert not staging.exists() or not any(staging.rglob("*.json"))


def test_a_request_above_the_limit_is_refused_naming_size_limit_and_how_to_narrow(
    settings, dataset, monkeypatch
):
    spec, _ = dataset
    monkeypatch.setenv("REF_EXTRACTION_MAX_MIB", "0.001")  # 1,048 bytes: 12 days x 96 cells > it
    from ref_assets.config import load_settings

    small = load_settings()
    with pytest.raises(ExtractionError) as err:
        extract(make_request(dataset=spec.id), settings=small)
    message = str(err.value)
    assert "0.0044 MiB" in message or "MiB of values" in message
    assert "above the limit of 0.001 MiB" in message and "REF_EXTRACTION_MAX_MIB" in message
    assert "smaller bbox" in message and "points" in message
    # Narrowed, it passes.
    assert extract(make_request(dataset=spec.id, points=((1.0, 41.0),)), settings=small).url


def test_identical_requests_reuse_the_output_until_it_expires_and_clean_up_removes_it(
    settings, dataset
):
    spec, store = dataset
    request = make_request(dataset=spec.id, bbox=(0, 40, 3, 42), format="netcdf")
    first = extract(request, settings=settings)
    same = make_request(
        dataset=spec.id, bbox=(0, 40, 3, 42), start=DAYS[0], end=DAYS[-1], format="netcdf"
    )
    second = extract(same, settings=settings)  # the same once resolved: reused
    assert second.reused and not first.reused and second.url == first.url
    assert second.record["sha256"] == first.record["sha256"] and second.record["reused"] == 1
    as_csv = extract(
        make_request(dataset=spec.id, bbox=(0, 40, 3, 42), format="csv"), settings=settings
    )
    assert not as_csv.reused and as_csv.url.endswith(".csv")
    # A new period on main: another snapshot, so another extraction.
    write(spec, store, ["2024-01-13"])
    third = extract(request, settings=settings)
    assert not third.reused and third.url != first.url

    ttl = timedelta(hours=settings.extraction_settings.ttl_hours)
    assert clean_staging(settings).removed == []  # nothing expired yet
    report = clean_staging(settings, now=datetime.now(UTC) + ttl + timedelta(minutes=1))
    assert sorted(item.url for item in report.removed) == sorted([first.url, third.url, as_csv.url])
    assert all(item.reason == "expired" and item.bytes > 0 for item in report.removed)
    assert report.bytes_freed == sum(item.bytes for item in report.removed)
    assert not Path(first.url).exists() and not Path(first.record_url).exists()
    # An expired output is extracted anew, not reused.
    assert not extract(request, settings=settings).reused


def test_an_output_a_clean_up_may_be_removing_is_extracted_anew_not_reused(
    settings, dataset, monkeypatch
):
    """Reuse and clean-up race at an output's expiry: one about to expire is not reused, and
    one the clean-up removed while its life was being extended is extracted anew."""
    spec, _ = dataset
    request = make_request(dataset=spec.id, bbox=(0, 40, 3, 42))
    first = extract(request, settings=settings)
    record = json.loads(Path(first.record_url).read_text())
    record["expires"] = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    Path(first.record_url).write_text(json.dumps(record))
    second = extract(request, settings=settings)
    assert not second.reused and second.url != first.url

    write_record = StagingArea.write_record

    def cleaned_meanwhile(area, path, record):
        # As a clean-up that read the old record does, while the reuse extends its life.
        monkeypatch.setattr(StagingArea, "write_record", write_record)
        Path(record["output_path"]).unlink()
        write_record(area, path, record)

    monkeypatch.setattr(StagingArea, "write_record", cleaned_meanwhile)
    third = extract(request, settings=settings)
    assert not third.reused and third.url != second.url and Path(third.url).exists()
    assert json.loads(Path(third.record_url).read_text())["output"] == third.url


def test_a_clean_up_keeps_the_record_an_identical_request_staged_meanwhile(
    settings, dataset, monkeypatch
):
    """The clean-up read an expired record; before it removes it, the same request (finding
    it expired) stages a new output and record: that record stays, naming its output."""
    spec, _ = dataset
    request = make_request(dataset=spec.id, bbox=(0, 40, 3, 42))
    old = extract(request, settings=settings)
    remove = StagingArea.remove
    new = []

    def extracted_meanwhile(area, path):
        remove(area, path)
        if path == old.record["output_path"]:  # the old output went; the new one comes
            monkeypatch.setattr(StagingArea, "remove", remove)
            new.append(extract(request, settings=settings))

    monkeypatch.setattr(StagingArea, "remove", extracted_meanwhile)
    ttl = timedelta(hours=settings.extraction_settings.ttl_hours)
    expired_for_both = datetime.now(UTC) + ttl + timedelta(minutes=1)
    monkeypatch.setattr(
        "ref_assets.extract.expired", lambda record, now: record["output"] == old.url
    )
    report = clean_staging(settings, now=expired_for_both)
    [fresh] = new
    assert [item.url for item in report.removed] == [old.url] and not fresh.reused
    assert json.loads(Path(fresh.record_url).read_text())["output"] == fresh.url
    assert extract(request, settings=settings).url == fresh.url  # reused


def test_a_release_of_mains_tip_is_its_own_extraction_naming_the_release(settings, dataset):
    spec, store = dataset
    request = {"dataset": spec.id, "bbox": (0, 40, 3, 42)}
    main_tip = extract(make_request(**request), settings=settings)
    tag(store, "v1")  # the same snapshot
    release = extract(make_request(**request, tag="v1"), settings=settings)
    assert not release.reused and release.record["snapshot"] == main_tip.record["snapshot"]
    assert (
        release.record["tag"] == "v1" and read_output(release).attrs["ref_assets_release"] == "v1"
    )
    assert extract(make_request(**request), settings=settings).url == main_tip.url


def test_a_dead_extraction_is_removed_once_older_than_the_ttl(settings, dataset, monkeypatch):
    spec, _ = dataset
    staging = Path(settings.extraction_settings.staging) / spec.id

    def die(*args):
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr("ref_assets.extract.staging.StagingArea.publish", die)
    with pytest.raises(RuntimeError):
        extract(make_request(dataset=spec.id), settings=settings)
    assert list(staging.iterdir()) == []  # its scratch directory went with it
    leftover = staging / ".partial-0123-abcd"  # as a SIGKILL would leave it
    leftover.mkdir()
    (leftover / "x.nc").write_bytes(b"x" * 10)
    assert clean_staging(settings).removed == []  # younger than the TTL: may be running
    ttl = timedelta(hours=settings.extraction_settings.ttl_hours)
    old = time.time() - ttl.total_seconds() - 60
    os.utime(leftover / "x.nc", (old, old))
    [removed] = clean_staging(settings).removed
    assert removed.reason == "unfinished" and removed.bytes == 10 and not leftover.exists()


def test_two_identical_extractions_at_once_leave_a_record_true_to_its_output(settings, dataset):
    """The second starts while the first runs, so neither reuses the other: each writes its
    own output, the record written last names its own, the other is removed once old."""
    spec, _ = dataset
    request = make_request(dataset=spec.id, bbox=(0, 40, 3, 42), format="zarr")
    inner = []
    outer = extract(
        request,
        settings=settings,
        on_block=lambda *_: inner.append(extract(request, settings=settings)),
    )
    [second] = inner
    assert not outer.reused and not second.reused and outer.url != second.url
    record = json.loads(Path(outer.record_url).read_text())
    assert record["output"] == outer.url  # the record written last, naming its own output
    assert record["sha256"] == output_sha256(Path(outer.url))
    assert extract(request, settings=settings).url == outer.url  # reused from now on
    assert clean_staging(settings).removed == []  # the other output may still be wanted
    old = time.time() - settings.extraction_settings.ttl_hours * 3600 - 60
    for file in Path(second.url).rglob("*"):
        os.utime(file, (old, old))
    [removed] = clean_staging(settings).removed
    assert (removed.url, removed.reason) == (second.url, "unfinished")
    assert Path(outer.url).exists()


def test_an_extraction_of_a_release_sees_the_release_only_while_main_moves_on(settings, dataset):
    spec, store = dataset
    release = tag(store, "v1")
    expected = open_dataset(spec.id, tag="v1", settings=settings).t2m
    points = ((0.3, 43.8), (5.6, 40.1))

    def land_on_main(block, done, total):
        if done == 1:  # while the extraction runs: a revision and a new period land on main
            write(spec, store, [*DAYS[9:], "2024-01-13"], seed=11)
            timeseries.update_timeseries(spec, store, run_id="moved")

    result = extract(
        make_request(dataset=spec.id, points=points, tag="v1", format="netcdf"),
        settings=settings,
        on_block=land_on_main,
    )
    got = read_output(result)
    assert result.record["tag"] == "v1" and result.record["snapshot"] == release.snapshot
    assert (got.attrs["ref_assets_release"], got.attrs["ref_assets_snapshot"]) == (
        "v1",
        release.snapshot,
    )
    assert got.sizes["time"] == 12
    for number, (lon, lat) in enumerate(points):
        np.testing.assert_array_equal(
            got.t2m.isel(point=number).values, expected.sel(x=lon, y=lat, method="nearest").values
        )
    assert not np.array_equal(  # main did change: the revision is on main, not in the output
        open_dataset(spec.id, settings=settings).t2m.isel(time=11).values,
        expected.isel(time=11).values,
        equal_nan=True,
    )
    # Again, now that main moved: the copy serves the chunks main left alone, the release's
    # own snapshot the chunk main revised (days 9-12).
    again = extract(
        make_request(dataset=spec.id, points=points, tag="v1", format="csv"), settings=settings
    )
    assert again.record["read_from"] == {"timeseries": 8, "periods": 4}
    rows = pd.read_csv(again.url)
    np.testing.assert_allclose(
        rows[rows.point == 1].t2m.values,
        expected.sel(x=5.6, y=40.1, method="nearest").values.astype("float64"),
        rtol=1e-6,
    )


def test_staging_on_s3(s3_settings, s3_server, monkeypatch):
    spec = DatasetSpec.model_validate(spec_dict())
    store = DatasetStore(s3_settings.storage_root, spec.id)
    write(spec, store, DAYS[:4])
    staging = s3_server.root("staging/test_staging_on_s3")
    request = make_request(dataset=spec.id, bbox=(0, 40, 3, 42), format="zarr")
    result = extract(request, settings=s3_settings, staging=staging)
    assert result.url.startswith(staging + "/test_t2m/") and result.url.endswith(".zarr")
    import s3fs  # noqa: F401

    from ref_assets.store.s3 import S3Connection

    fs = S3Connection.from_environment().filesystem()
    got = xr.open_zarr(fs.get_mapper(result.url), consolidated=False).load()
    expected = open_dataset(spec.id, settings=s3_settings).t2m.sel(y=slice(42, 40), x=slice(0, 3))
    np.testing.assert_array_equal(got.t2m.values, expected.values)
    stored = s3_server.list_keys("staging/test_staging_on_s3/")
    assert stored and not [key for key in stored if ".partial-" in key]  # the upload's is gone
    record = json.loads(fs.cat(result.record_url))
    assert record["output"] == result.url
    assert extract(request, settings=s3_settings, staging=staging).reused
    ttl = timedelta(hours=s3_settings.extraction_settings.ttl_hours)
    report = clean_staging(s3_settings, staging=staging, now=datetime.now(UTC) + ttl)
    assert [item.url for item in report.removed] == [result.url]
    assert s3_server.list_keys("staging/test_staging_on_s3/") == []


def test_the_command_line_extracts_and_cleans(settings, dataset, capsys, tmp_path):
    spec, _ = dataset
    destination = tmp_path / "out"
    argv = [
        "extract",
        spec.id,
        "--points",
        "0.3,43.8",
        "5.6,40.1",
        "--start",
        "2024-01-02",
        "--end",
        "2024-01-05",
        "--format",
        "csv",
        "--to",
        str(destination),
        "--json",
    ]
    assert main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["reused"] is False and document["output"].startswith(str(destination))
    assert len(pd.read_csv(document["output"])) == 8
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["reused"] is True
    assert main(["extract", spec.id, "--start", "2023-01-01", "--to", str(destination)]) == 2
    assert "reaches past" in capsys.readouterr().err
    assert main(["extract", "--clean", "--to", str(destination), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == []


def test_the_dagster_jobs_extract_and_clean(settings, dataset, instance, monkeypatch):
    from ref_assets.definitions import build_definitions

    spec, _ = dataset
    monkeypatch.setenv("REF_EXTRACTION_TTL_HOURS", "0.0002")  # 0.72 s
    defs = build_definitions()
    dg.Definitions.validate_loadable(defs)  # as the code location loads it: names unique
    config = {
        "dataset": spec.id,
        "points": [[0.3, 43.8]],
        "start": "2024-01-02",
        "end": "2024-01-04",
        "format": "csv",
    }
    result = defs.resolve_job_def("extract").execute_in_process(
        run_config={"ops": {"extract_subset": {"config": config}}}, instance=instance
    )
    output = result.output_for_node("extract_subset")
    assert Path(output).exists() and len(pd.read_csv(output)) == 3
    metadata = _output_metadata(result, "extract_subset")
    assert metadata["sha256"].value == output_sha256(Path(output))
    assert metadata["reused"].value is False and metadata["periods"].value == 3

    refused = defs.resolve_job_def("extract").execute_in_process(
        run_config={"ops": {"extract_subset": {"config": {**config, "end": "2025-01-01"}}}},
        instance=instance,
        raise_on_error=False,
    )
    assert not refused.success
    [failure] = [e for e in refused.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "reaches past" in failure.step_failure_data.user_failure_data.description

    time.sleep(1.0)  # the output expires
    clean = defs.resolve_job_def("clean_staging").execute_in_process(instance=instance)
    metadata = _output_metadata(clean, "delete_expired")
    assert metadata["removed"].value == 1 and metadata["bytes_freed"].value > 0
    assert metadata["removed_outputs"].value[0]["url"] == output and not Path(output).exists()
    assert defs.resolve_schedule_def("clean_staging_schedule").job_name == "clean_staging"


def _output_metadata(result: dg.ExecuteInProcessResult, node: str) -> dict:
    [event] = [
        e for e in result.all_events if e.event_type_value == "STEP_OUTPUT" and e.step_key == node
    ]
    return event.step_output_data.metadata


def test_variables_with_an_extra_dimension(
    settings, write_spec, register_providers, materialize, tmp_path
):
    register_providers("ref_assets.providers.local_files:LocalFilesProvider")
    for day in (1, 2, 3):
        write_levels_file(tmp_path / "archive" / f"t_2024010{day}.nc", day)
    write_spec("upper_air", **levels_spec(tmp_path / "archive"))
    assert materialize("upper_air", "2024-01-01...2024-01-03").success
    stored = open_dataset("upper_air", settings=settings)
    points = ((10.2, 2.8), (14.0, -2.6))
    got = read_output(extract(make_request(dataset="upper_air", points=points), settings=settings))
    assert got["t"].dims == ("time", "level", "point") and got["t2m"].dims == ("time", "point")
    assert got["level"].values.tolist() == [850, 500, 1000]
    for number, (lon, lat) in enumerate(points):
        for name in ("t", "t2m"):
            np.testing.assert_array_equal(
                got[name].isel(point=number).values,
                stored[name].sel(x=lon, y=lat, method="nearest").values,
            )
    rows = pd.read_csv(
        extract(
            make_request(
                dataset="upper_air", bbox=(11, -2, 15, 2), format="csv", start="2024-01-02"
            ),
            settings=settings,
        ).url
    )
    assert list(rows.columns) == ["time", "y", "x", "level", "t", "t2m"]
    assert len(rows) == 2 * 2 * 2 * 3  # days x rows x columns x levels
    row = rows[(rows.time == "2024-01-03T00:00:00Z") & (rows.level == 500)].iloc[0]
    expected = stored.sel(time="2024-01-03", level=500, y=row.y, x=row.x)
    assert row.t == pytest.approx(float(expected.t)) and row.t2m == pytest.approx(
        float(expected.t2m)
    )


@pytest.mark.parametrize("diff", ["diff", "no diff"])
def test_the_copy_serves_exactly_the_time_chunks_that_hold_the_snapshots_periods(
    settings, dataset, diff, monkeypatch
):
    """Main revises a day of the third time chunk after the release: the copy (rebuilt since)
    serves the release's first two chunks and not the third, whether Icechunk's diff tells
    (the usual way) or the checksums are compared (a snapshot expired, say)."""
    spec, store = dataset
    tag(store, "v1")
    write(spec, store, ["2024-01-11"], seed=11)
    timeseries.update_timeseries(spec, store, run_id="moved")
    if diff == "no diff":
        monkeypatch.setattr("ref_assets.store.reader.written_between", lambda *args: None)
    points = ((0.3, 43.8),)
    release = extract(make_request(dataset=spec.id, points=points, tag="v1"), settings=settings)
    assert release.record["read_from"] == {"timeseries": 8, "periods": 4}
    expected = open_dataset(spec.id, tag="v1", settings=settings).t2m.sel(
        x=0.3, y=43.8, method="nearest"
    )
    np.testing.assert_array_equal(read_output(release).t2m.isel(point=0).values, expected.values)
    main = extract(make_request(dataset=spec.id, points=points), settings=settings)
    assert main.record["read_from"] == {"timeseries": 12, "periods": 0}


def test_after_a_rechunk_the_copy_serves_and_after_a_rebuild_it_never_does(settings, dataset):
    """A rechunk rewrites every record with its checksum unchanged: the copy still holds the
    snapshot's periods. A rebuild fetches them again (here other values, as float64): the
    copy, built from the old ones, must not be read."""
    spec, store = dataset
    points = ((0.3, 43.8),)

    def series(result):
        expected = open_dataset(spec.id, settings=settings).t2m.sel(x=0.3, y=43.8, method="nearest")
        np.testing.assert_array_equal(read_output(result).t2m.isel(point=0).values, expected)
        return result.record["read_from"]

    rechunk_dataset(spec, store, chunks={"y": 2, "x": 3}, settings=settings, run_id="rechunk")
    rechunked = extract(make_request(dataset=spec.id, points=points), settings=settings)
    assert series(rechunked) == {"timeseries": 12, "periods": 0}
    fields = spec_dict(timeseries=TIMESERIES)
    fields["params"] = {**fields["params"], "seed": 99}
    fields["variables"] = [{**fields["variables"][0], "dtype": "float64"}]
    rebuilt_spec = DatasetSpec.model_validate(fields)
    rebuild_dataset(
        rebuilt_spec, SyntheticProvider(rebuilt_spec), store, settings=settings, run_id="rebuild"
    )
    rebuilt = extract(make_request(dataset=spec.id, points=points), settings=settings)
    assert series(rebuilt) == {"timeseries": 0, "periods": 12}


def test_config_validate_names_an_unusable_staging_area(settings, monkeypatch, capsys):
    monkeypatch.setenv("REF_EXTRACTION_STAGING", "ftp://host/staging")
    assert main(["config", "validate", "--json"]) == 1
    [error] = json.loads(capsys.readouterr().out)["errors"]
    assert error.startswith("extraction.staging (from REF_EXTRACTION_STAGING): staging area ftp://")

"""Stores on S3, against a real S3-compatible server started by the tests (SeaweedFS `weed mini`
on loopback, `ref_assets_tests.s3_server`): the normal write path, concurrent spawned writers,
a server that dies mid-range, a writer killed mid-commit, and credentials kept out of sight."""

from __future__ import annotations

import json
import multiprocessing
import signal
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

import ref_assets
from ref_assets.cli.main import main
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import DatasetStore
from ref_assets_tests.conftest import stored_checksum
from ref_assets_tests.test_concurrency import checksum_of, days, run_at_once
from ref_assets_tests.test_crash import check_whole_or_absent, start_writer
from ref_assets_tests.workers import write_periods


def provider_values(spec: DatasetSpec, keys: list[str]) -> dict[str, np.ndarray]:
    provider = SyntheticProvider(spec)
    return {
        key: provider.fetch(spec.period_for_key(key)).data.t2m.values.astype("float32")
        for key in keys
    }


def test_periods_materialized_on_s3_read_back_exactly(
    s3_settings, s3_server, write_spec, materialize
):
    spec_fields = write_spec()
    spec = DatasetSpec.model_validate(spec_fields)
    keys = days(4)

    result = materialize(spec.id, f"{keys[0]}...{keys[-1]}")

    assert result.success
    store = DatasetStore(s3_settings.storage_root, spec.id)
    assert store.on_s3 and store.exists()
    objects = s3_server.list_keys(f"stores/{store.s3.prefix.split('/', 1)[1]}")
    assert any("/snapshots/" in key for key in objects)
    assert not (s3_settings.configuration_dir / "stores").exists()  # nothing went to disk
    data = ref_assets.open_dataset(spec.id, settings=s3_settings)
    for key, values in provider_values(spec, keys).items():
        index = spec.time_index(spec.period_for_key(key))
        np.testing.assert_array_equal(data.t2m.isel(time=index).values, values)
    assert check_whole_or_absent(s3_settings, spec, provider_values(spec, keys)) == set(keys)


def test_eight_spawned_writers_of_distinct_periods_lose_nothing(s3_settings, write_spec):
    # A small time block: the writers also race to grow the axis.
    spec_fields = write_spec(storage={"time_block": 4})
    spec = DatasetSpec.model_validate(spec_fields)
    keys = days(24)

    run_at_once(
        write_periods, [keys[i::8] for i in range(8)], s3_settings.storage_root, spec_fields
    )

    assert check_whole_or_absent(s3_settings, spec, provider_values(spec, keys)) == set(keys)


def test_two_writers_of_the_same_periods_leave_one_whole_version(s3_settings, write_spec):
    spec_fields = write_spec(storage={"time_block": 8})
    variants = [{**spec_fields, "params": {**spec_fields["params"], "seed": s}} for s in (1, 2)]
    keys = days(6)

    context = multiprocessing.get_context("spawn")  # icechunk does not survive fork
    with context.Manager() as manager, ProcessPoolExecutor(2, mp_context=context) as pool:
        barrier = manager.Barrier(2)
        futures = [
            pool.submit(write_periods, s3_settings.storage_root, fields, keys, barrier)
            for fields in variants
        ]
        for future in futures:
            future.result(timeout=120)

    spec = DatasetSpec.model_validate(spec_fields)
    session = store_reader.session_for(DatasetStore(s3_settings.storage_root, spec.id))
    axis = store_reader.store_axis(session)
    records = store_reader.read_records(session, store_reader.written_indices(session))
    versions = [DatasetSpec.model_validate(v) for v in variants]
    for key in keys:
        index = spec.time_index(spec.period_for_key(key))
        stored = stored_checksum(session, axis, index)
        assert records[index]["checksum"] == stored, f"{key}: data and record disagree"
        assert stored in {checksum_of(version, key) for version in versions}, f"{key}: a mix"

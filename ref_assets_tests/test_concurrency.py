"""Several processes writing one dataset's repository at the same time."""

import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor

import numpy as np

import ref_assets
from ref_assets.checksum import period_checksum
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import DatasetStore
from ref_assets_tests.conftest import stored_checksum
from ref_assets_tests.workers import materialize_range, write_periods


def run_at_once(function, shares: list[list[str]], *args) -> list:
    """Run ``function(*args, share, barrier)`` in one spawned process per share, released
    together by a barrier; return their results."""
    context = multiprocessing.get_context("spawn")  # icechunk does not survive fork
    with (
        context.Manager() as manager,
        ProcessPoolExecutor(len(shares), mp_context=context) as pool,
    ):
        barrier = manager.Barrier(len(shares))
        futures = [pool.submit(function, *args, share, barrier) for share in shares]
        return [future.result(timeout=240) for future in futures]


def days(count: int) -> list[str]:
    return [str(day) for day in np.datetime64("2024-01-01") + np.arange(count)]


def test_four_dagster_runs_in_separate_processes_all_land_exactly_once(settings, write_spec):
    # Each process runs 3 consecutive partitions as one run, committing 2 at a time; the
    # small time block makes them grow the axis concurrently too. (Four, not more: each process
    # imports Dagster and loads the definitions, seconds of CPU on a 2-core machine, for
    # commits that race the same way.)
    spec = DatasetSpec.model_validate(
        write_spec(storage={"time_block": 4}, runs={"commit_every": 2, "fetch_workers": 1})
    )
    keys = days(12)
    shares = [keys[i : i + 3] for i in range(0, 12, 3)]
    succeeded = run_at_once(materialize_range, shares, str(settings.configuration_dir), spec.id)
    assert succeeded == [True] * 4
    assert_all_landed(settings, spec, keys)
    repo = DatasetStore(settings.storage_root, spec.id).open()
    counts = [periods_committed(s.message) for s in repo.ancestry(branch="main")]
    assert sum(counts) == len(keys)  # all present, and committed once each
    # Each run commits 2, then 1; a writer waiting for the commit turn rides along with the
    # holder's commit (`store.commits.commit_in_turn`), so there may be fewer commits.
    assert len([count for count in counts if count]) <= 8


def test_commits_racing_from_many_processes_all_land(settings, write_spec):
    # Tight commit loops: without the inter-process lock on local storage this loses periods
    # silently (measured: 7 of 64 lost with 4 writers).
    spec_fields = write_spec(storage={"time_block": 8})
    spec = DatasetSpec.model_validate(spec_fields)
    keys = days(48)
    run_at_once(write_periods, [keys[i::4] for i in range(4)], settings.storage_root, spec_fields)
    assert_all_landed(settings, spec, keys)


def periods_committed(message: str) -> int:
    """The number of periods a commit message says it holds (0: a layout commit)."""
    message, _, grouped = message.partition(" + ")
    carried = (
        int(re.fullmatch(r"(\d+) periods of \d+ other writes \(grouped\)", grouped)[1])
        if grouped
        else 0
    )
    if match := re.fullmatch(r"\S+ \S+\.\.\S+ \((\d+) periods, run \S+\)", message):
        return int(match[1]) + carried
    return 1 + carried if re.fullmatch(r"\S+ \S+ \(run \S+\)", message) else 0


def assert_all_landed(settings, spec: DatasetSpec, keys: list[str]) -> None:
    session = store_reader.session_for(DatasetStore(settings.storage_root, spec.id))
    indices = store_reader.written_indices(session)
    assert indices == [spec.time_index(spec.period_for_key(key)) for key in keys]
    records = store_reader.read_records(session, indices)
    assert [records[i]["period"] for i in indices] == keys
    data = ref_assets.open_dataset(spec.id, settings=settings)
    provider = SyntheticProvider(spec)
    for key in keys:
        expected = provider.fetch(spec.period_for_key(key)).data.t2m.values
        np.testing.assert_array_equal(data.t2m.sel(time=key).values, expected)


def test_processes_rewriting_the_same_periods_leave_one_whole_version_of_each(settings, write_spec):
    # Each period spans 4 chunks, so a mix of both versions would show as values matching
    # neither checksum.
    two_writers_of_the_same_periods(
        settings.storage_root, write_spec(storage={"time_block": 16}), 12
    )


def two_writers_of_the_same_periods(storage_root: str, spec_fields: dict, count: int) -> None:
    """Two spawned writers with different seeds race over the same ``count`` periods; each
    stored period must be one whole version, its record matching its values."""
    variants = [{**spec_fields, "params": {**spec_fields["params"], "seed": s}} for s in (1, 2)]
    keys = days(count)
    context = multiprocessing.get_context("spawn")  # icechunk does not survive fork
    with (
        context.Manager() as manager,
        ProcessPoolExecutor(2, mp_context=context) as pool,
    ):
        barrier = manager.Barrier(2)
        futures = [
            pool.submit(write_periods, storage_root, fields, keys, barrier) for fields in variants
        ]
        for future in futures:
            future.result(timeout=240)

    spec = DatasetSpec.model_validate(spec_fields)
    session = store_reader.session_for(DatasetStore(storage_root, spec.id))
    axis = store_reader.store_axis(session)
    records = store_reader.read_records(session, store_reader.written_indices(session))
    versions = [DatasetSpec.model_validate(v) for v in variants]
    for key in keys:
        index = spec.time_index(spec.period_for_key(key))
        stored = stored_checksum(session, axis, index)
        assert records[index]["checksum"] == stored, f"{key}: data and record disagree"
        whole_versions = {checksum_of(version, key) for version in versions}
        assert len(whole_versions) == 2
        assert stored in whole_versions, f"{key}: a mix of both writers' chunks"


def checksum_of(spec: DatasetSpec, key: str) -> str:
    """The checksum of a period exactly as ``spec``'s provider produces it."""
    provider = SyntheticProvider(spec)
    period = spec.period_for_key(key)
    values = provider.fetch(period).data.t2m.values
    return period_checksum(period.start, provider.grid.y, provider.grid.x, {"t2m": values})

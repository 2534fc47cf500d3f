"""Writers killed with SIGKILL at arbitrary instants leave a store of whole periods."""

import json
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import ref_assets
from ref_assets.batch import fetch_batch
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import DatasetStore, StoreError
from ref_assets.store.writer import write_period
from ref_assets_tests.conftest import stored_checksum

# Each trial waits for a commit of its writer before killing it, so every kill lands in real
# writing (chunk writes, commits, axis growth), not in the writer's start-up.
TRIALS = 8


def start_writer(settings, spec_fields: dict, keys: list[str]) -> subprocess.Popen:
    code = (
        "import sys; from ref_assets_tests.workers import write_until_killed; "
        "write_until_killed(*sys.argv[1:3], sys.argv[3:])"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, settings.storage_root, json.dumps(spec_fields), *keys],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "ready"
    return process


def check_whole_or_absent(settings, spec: DatasetSpec, expected: dict[str, np.ndarray]) -> set:
    """Every period in the store has its record, its checksum and its exact values; every other
    period reads as NaN. Returns the keys present."""
    store = DatasetStore(settings.storage_root, spec.id)
    if not store.exists():
        return set()
    session = store_reader.session_for(store)
    axis = store_reader.store_axis(session)
    if axis is None:
        return set()
    written = store_reader.written_indices(session)
    records = store_reader.read_records(session, written)
    data = ref_assets.open_dataset(spec.id, settings=settings)
    present = set()
    for key, values in expected.items():
        index = spec.time_index(spec.period_for_key(key))
        if index in records:
            assert records[index]["period"] == key
            stored = stored_checksum(session, axis, index)
            assert stored == records[index]["checksum"], key
            np.testing.assert_array_equal(data.t2m.isel(time=index).values, values)
            present.add(key)
        elif index < data.sizes["time"]:
            assert bool(data.t2m.isel(time=index).isnull().all()), f"{key} half-written"
    return present


def main_tip(store: DatasetStore) -> str | None:
    """The snapshot ``main`` points at, None before the store exists."""
    return store.open().lookup_branch("main") if store.exists() else None


def wait_for_a_commit(
    store: DatasetStore, writer: subprocess.Popen, since: str | None, timeout: float = 60.0
) -> None:
    """Until ``main`` moves past ``since`` (a commit of ``writer`` landed, however loaded the
    machine), or the writer has exited."""
    deadline = time.monotonic() + timeout
    while main_tip(store) == since and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def test_writers_killed_at_any_instant_leave_whole_periods_and_a_rerun_completes(
    settings, write_spec
):
    # A small time block: kills also land while the axis is being grown.
    spec_fields = write_spec(storage={"time_block": 3})
    spec = DatasetSpec.model_validate(spec_fields)
    keys = [str(day) for day in np.datetime64("2024-01-01") + np.arange(30)]
    provider = SyntheticProvider(spec)
    expected = {
        key: provider.fetch(spec.period_for_key(key)).data.t2m.values.astype("float32")
        for key in keys
    }
    store = DatasetStore(settings.storage_root, spec.id)
    rng = random.Random(11)
    killed_with_progress = 0
    for trial in range(TRIALS):
        already = check_whole_or_absent(settings, spec, expected)
        remaining = [k for k in keys if k not in already]
        order = rng.sample(remaining, len(remaining)) if remaining else keys
        before = len(keys) - len(remaining)
        tip = main_tip(store)
        process = start_writer(settings, spec_fields, order)
        wait_for_a_commit(store, process, since=tip)
        time.sleep(rng.uniform(0.0, 0.15))  # varied points after it: chunk writes, commit, growth
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        present = check_whole_or_absent(settings, spec, expected)
        killed_with_progress += len(present) > before
        assert len(present) >= before, f"trial {trial}: committed periods disappeared"

    assert killed_with_progress >= 3  # the kills did interrupt real writing
    for key in keys:  # the rerun: nothing left behind (locks, partial chunks) gets in its way
        write_period(store, fetch_batch(spec, provider, spec.period_for_key(key)), run_id="rerun")
    assert check_whole_or_absent(settings, spec, expected) == set(keys)


def test_a_store_creation_killed_halfway_does_not_block_the_next(tmp_path):
    """Icechunk creates a repository only in an empty prefix: a writer killed after it wrote
    the first snapshot but before the repository object left a folder that refused every later
    creation ("repositories can only be created in clean prefixes")."""
    store = DatasetStore(str(tmp_path), "test_t2m")
    (store.path / "snapshots").mkdir(parents=True)
    (store.path / "snapshots" / "1CECHNKREP0F1RSTCMT0").write_bytes(b"partial")
    (store.path / "transactions").mkdir()
    (store.path / "transactions" / "leftover").write_bytes(b"partial")
    assert not store.exists()
    repo = store.open_or_create(8)
    assert store.exists()
    assert repo.lookup_branch("main")
    assert not (store.path / "transactions" / "leftover").exists()


def test_a_folder_with_other_files_is_never_cleared_for_a_store(tmp_path):
    store = DatasetStore(str(tmp_path), "test_t2m")
    store.path.mkdir(parents=True)
    (store.path / "notes.txt").write_text("someone's own file")
    with pytest.raises(StoreError, match=r"test_t2m: .* holds no Icechunk repository.*notes\.txt"):
        store.open_or_create(8)
    assert (store.path / "notes.txt").read_text() == "someone's own file"

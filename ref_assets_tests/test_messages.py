"""Failures that used to be safe but unhelpful (raw tracebacks, silent waits, "0 of 0"): each now
names the dataset, period, file or field, and says what to do next."""

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import icechunk as ic
import pytest
import yaml

import ref_assets
from ref_assets.batch import fetch_batch
from ref_assets.cli import main
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.specs import DatasetSpec, SpecFileError, load_spec_file
from ref_assets.store import reader as store_reader
from ref_assets.store import repository
from ref_assets.store.layout import StoreLayoutError
from ref_assets.store.repository import DatasetStore, StorageFailure, StoreError
from ref_assets.store.writer import CommitPolicy, PeriodWriter, write_period
from ref_assets_tests.conftest import spec_dict


@pytest.fixture
def dataset(synthetic_dataset):
    """The test spec, its store and a batch maker."""
    return synthetic_dataset


def stored_keys(store: DatasetStore, spec: DatasetSpec) -> list[str]:
    session = store_reader.session_for(store)
    axis = store_reader.store_axis(session)
    return [axis.period_at(i).key for i in store_reader.written_indices(session)]


def test_a_full_disk_names_the_uncommitted_periods_and_says_free_space(dataset, monkeypatch):
    spec, store, batch_for = dataset
    real_commit = ic.Session.commit
    commits = []

    def commit(self, message, *args, **kwargs):
        commits.append(message)
        if len(commits) == 2:  # the second commit finds the disk full, as icechunk reports it
            raise ic.StorageError(
                "object store error Generic LocalFileSystem error: Unable to copy data to file: "
                "No space left on device (os error 28)"
            )
        return real_commit(self, message, *args, **kwargs)

    writer = PeriodWriter(store, run_id="r", policy=CommitPolicy(every=2))
    writer.add(batch_for("2024-01-01"))  # the layout's own commit, then pending
    monkeypatch.setattr(ic.Session, "commit", commit)
    writer.add(batch_for("2024-01-02"))  # commit 1: 01..02
    writer.add(batch_for("2024-01-03"))
    with pytest.raises(StorageFailure) as failure:
        writer.add(batch_for("2024-01-04"))  # commit 2: 03..04, disk full
    message = str(failure.value)
    assert message.startswith(
        "test_t2m: committing periods 2024-01-03..2024-01-04 (2, uncommitted) failed: no space "
        f"left for the store at {store.location}"
    )
    assert "Free space on that file system" in message
    assert "run it again: periods committed before are kept" in message
    monkeypatch.undo()
    assert stored_keys(store, spec) == ["2024-01-01", "2024-01-02"]
    # The writer dropped the failed periods: nothing half-written is committed by a later flush.
    assert writer.flush() == []


def test_a_full_disk_while_writing_chunks_names_the_periods(dataset, monkeypatch):
    spec, store, batch_for = dataset
    real_set = ic.IcechunkStore.set

    async def set_chunk(self, key, value):
        if key.startswith("t2m/c/"):  # the values' chunks, written beside the records
            raise ic.StorageError(
                "object store error Generic LocalFileSystem error: Unable to copy data to file: "
                "No space left on device (os error 28)"
            )
        return await real_set(self, key, value)

    writer = PeriodWriter(store, run_id="r", policy=CommitPolicy(every=2))
    writer.add(batch_for("2024-01-01"))  # the layout's own commit, then pending
    monkeypatch.setattr(ic.IcechunkStore, "set", set_chunk)
    with pytest.raises(StorageFailure, match="no space left") as failure:
        writer.add(batch_for("2024-01-02"))
    assert "periods 2024-01-01..2024-01-02 (2, uncommitted)" in str(failure.value)
    monkeypatch.undo()
    assert stored_keys(store, spec) == []
    assert writer.flush() == []


def test_a_corrupt_repository_file_is_named_with_restore_or_rebuild(dataset, capsys):
    spec, store, batch_for = dataset
    for key in ("2024-01-01", "2024-01-02"):
        write_period(store, batch_for(key), run_id="r")
    for manifest in (store.path / "manifests").iterdir():
        manifest.write_bytes(b"not a manifest")
    with pytest.raises(StorageFailure) as failure:
        write_period(store, batch_for("2024-01-03"), run_id="r")
    message = str(failure.value)
    assert message.startswith("test_t2m: committing period 2024-01-03 failed: the repository file")
    named = Path(message.split("the repository file ")[1].split(" is corrupt")[0])
    assert named.parent == store.path / "manifests" and named.exists()
    assert f"Restore the store from a backup, or move {store.location} aside" in message

    (store.path / "repo").write_bytes(b"garbage")
    assert main(["status", spec.id]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(
        "ref-assets: error: test_t2m: opening the store failed: the repository file "
        f"{store.path / 'repo'} is corrupt ("
    )
    assert error.endswith(
        f"Restore the store from a backup, or move {store.location} aside and materialize the "
        "dataset again to rebuild it."
    )


def test_a_lock_path_that_is_a_directory_says_remove_it(dataset):
    _, store, batch_for = dataset
    store.lock_path.mkdir(parents=True)
    with pytest.raises(StorageFailure) as failure:
        write_period(store, batch_for("2024-01-01"), run_id="r")
    assert str(failure.value) == (
        f"test_t2m: cannot take the commit lock {store.lock_path}: that path is a directory. "
        "Remove the directory (ref_assets creates the lock file itself), then run again."
    )


def test_open_dataset_on_a_store_without_periods_says_materialize(dataset, settings):
    spec, store, _ = dataset
    store.open_or_create(spec.manifest_split)  # what a first run that failed leaves
    with pytest.raises(StoreError) as failure:
        ref_assets.open_dataset(spec.id, settings=settings)
    assert str(failure.value) == (
        f"test_t2m: the store at {store.location} holds no periods yet; materialize some first "
        "(`ref-assets materialize test_t2m --start PERIOD --end PERIOD`, or from the Dagster UI)"
    )


def test_verify_of_a_store_without_periods_says_so_and_succeeds(dataset, capsys):
    spec, store, _ = dataset
    store.open_or_create(spec.manifest_split)
    assert main(["verify", spec.id]) == 0
    assert capsys.readouterr().out == f"{store.no_periods_yet()}\n"
    assert "holds no periods yet" in store.no_periods_yet()


def write_yaml(directory: Path, **overrides) -> Path:
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict(**overrides)))
    return path


def test_a_huge_time_block_is_refused_naming_the_field_and_limit(tmp_path):
    path = write_yaml(tmp_path, storage={"time_block": 10**30})
    with pytest.raises(SpecFileError) as failure:
        load_spec_file(path)
    [error] = failure.value.errors
    assert error.field == "storage.time_block"
    assert "is more than the 100000 allowed" in error.message
    assert "choose 100000 or fewer" in error.message


@pytest.mark.parametrize(("field", "value"), [("start", "9990-01-01"), ("end", "2300-01-01")])
def test_dates_beyond_the_decodable_time_axis_are_refused_naming_the_field(tmp_path, field, value):
    path = write_yaml(tmp_path, **{field: value})
    with pytest.raises(SpecFileError) as failure:
        load_spec_file(path)
    [error] = failure.value.errors
    assert error.field == field
    assert f"{value} is outside 1678-01-01..2262-01-01 (excluded)" in error.message
    assert "choose a date within it" in error.message


def test_a_time_block_reaching_past_the_axis_limit_is_refused_before_writing(settings):
    spec = DatasetSpec.model_validate(
        spec_dict(period="monthly", start="2000-01-01", storage={"time_block": 4000})
    )
    store = DatasetStore(settings.storage_root, spec.id)
    batch = fetch_batch(spec, SyntheticProvider(spec), spec.period_for_key("2000-01"))
    with pytest.raises(StoreLayoutError) as failure:
        write_period(store, batch, run_id="r")
    assert str(failure.value).startswith(
        "test_t2m period 2000-01: the time axis grows in blocks of storage.time_block = 4000 "
        "periods, and the block holding this period would end at 2333-04-01, past 2262-01-01"
    )
    assert "Choose a smaller storage.time_block" in str(failure.value)
    assert store_reader.store_axis(store_reader.session_for(store)) is None  # nothing laid out


def test_a_grid_too_big_for_memory_is_refused_before_fetching(settings):
    # 0.001 degree global: 180,000 x 360,000 cells, 241 GiB per period as float32.
    params = {"bbox": [-180.0, -90.0, 180.0, 90.0], "resolution": 0.001, "seed": 3}
    spec = DatasetSpec.model_validate(spec_dict(params=params))
    with pytest.raises(StoreLayoutError) as failure:
        fetch_batch(spec, SyntheticProvider(spec), spec.period_for_key("2024-01-01"))
    message = str(failure.value)
    assert message.startswith(
        "test_t2m: one period on the provider's 180000 x 360000 grid is 241.4 GiB "
        "(1 variable(s) as float32); a period is held in memory whole, at least twice"
    )
    assert "Make the grid smaller in params (a coarser resolution or a smaller bbox)" in message


HOLDER = textwrap.dedent(
    """
    import sys
    from ref_assets.store.repository import DatasetStore

    with DatasetStore(sys.argv[1], "test_t2m").lock(run_id="holder-run"):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes stdin
    """
)


def test_a_run_waiting_for_a_held_lock_says_who_holds_it(settings, monkeypatch, caplog):
    store = DatasetStore(settings.storage_root, "test_t2m")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, settings.storage_root],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        monkeypatch.setattr(repository, "LOCK_NOTICE_SECONDS", 0.2)
        monkeypatch.setattr(repository, "LOCK_NOTICE_EVERY_SECONDS", 0.5)
        monkeypatch.setattr(repository, "LOCK_TIMEOUT_SECONDS", 1.0)
        caplog.set_level(logging.WARNING, logger="ref_assets")
        with pytest.raises(StoreError) as failure, store.lock(run_id="waiting-run"):
            pass
        held_by = f"held by pid {holder.pid} on "
        notices = [r.getMessage() for r in caplog.records if r.name == repository.__name__]
        assert len(notices) == 2  # after 0.2 s, then 0.5 s later; the timeout came at 1 s
        assert notices[0].startswith(f"test_t2m: the commit lock at {store.lock_path} is held")
        assert held_by in notices[0] and ", run holder-run since " in notices[0]
        assert notices[0].endswith("; waiting (0 s so far, at most 1 s)")
        message = str(failure.value)
        assert message.startswith(f"test_t2m: waited 1 s for the commit lock at {store.lock_path}")
        assert held_by in message and ", run holder-run since " in message
        assert message.endswith(
            "If that process is stuck, stop it (the lock is freed when its holder exits), then "
            "run the partitions again."
        )
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # The holder gone, the lock is free at once and records its new holder.
    with store.lock(run_id="next-run"):
        assert '"run_id": "next-run"' in store.lock_path.with_name("test_t2m.holder").read_text()

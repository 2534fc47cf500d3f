"""Rebuild and rechunk through a work branch (issue 13, item 2): killed at any stage, main, its
data and its annotations are untouched and the stash stays; the retry completes, restores the
annotations and clears the stash; an update landing on main meanwhile is replayed; a rechunk keeps
every record and checksum."""

import dataclasses
import json
import shutil
import signal
import subprocess
import sys

import pytest
import zarr

from ref_assets.annotations import annotate, read_annotations
from ref_assets.annotations_stash import read_stash, stash, stash_path
from ref_assets.batch import fetch_batch
from ref_assets.catalog import load_catalog
from ref_assets.cli import main
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.rebuild import (
    STAGES,
    RebuildError,
    parse_chunks,
    rebuild_dataset,
    rechunk_dataset,
)
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.store import writer as store_writer
from ref_assets.store.branches import leftover_work
from ref_assets.store.layout import StoreLayoutError
from ref_assets.store.repository import DatasetStore, StoreError
from ref_assets.store.timeseries import timeseries_store, update_timeseries
from ref_assets.store.writer import CommitPolicy, PeriodWriter, write_period
from ref_assets.verification import verify_dataset, verify_timeseries
from ref_assets_tests.conftest import spec_dict

DAYS = [f"2024-01-{day:02d}" for day in range(1, 7)]


def new_spec(**overrides) -> DatasetSpec:
    """The test spec on a coarser grid, as float64: a change only a rebuild can make."""
    fields = spec_dict(runs={"commit_every": 2})
    fields["params"] = {**fields["params"], "resolution": 1.0}
    fields["variables"] = [{**fields["variables"][0], "dtype": "float64"}]
    return DatasetSpec.model_validate({**fields, **overrides})


@pytest.fixture
def stored(synthetic_dataset, settings):
    """Six days in the store, annotated by an operator."""
    spec, store, batch_for = synthetic_dataset
    writer = PeriodWriter(store, run_id="first", policy=CommitPolicy(every=3))
    for key in DAYS:
        writer.add(batch_for(key))
    writer.flush()
    annotate(spec.id, "t2m", label="Air temperature at 2 m", attributes={"method": "m1"}, by="ann")
    annotate(spec.id, description="Test data, not for use", by="bob")
    return spec, store, batch_for


def main_state(store: DatasetStore) -> dict:
    """Everything a failed rewrite must leave as it was: main's snapshot, each period's record
    and checksum recomputed from its values, the annotations and their log."""
    session = store_reader.session_for(store)
    axis = store_reader.store_axis(session)
    indices = store_reader.written_indices(session)
    stored = read_annotations(store.dataset_id)
    return {
        "snapshot": session.snapshot_id,
        "records": store_reader.read_records(session, indices),
        "checksums": dict(store_reader.stored_checksums(session, axis, indices)),
        "annotations": stored.annotations,
        "history": stored.history,
    }


def variable_array(store: DatasetStore, name: str = "t2m") -> zarr.Array:
    session = store_reader.session_for(store)
    return zarr.open_group(session.store, mode="r")[name]


def written_keys(store: DatasetStore) -> list[str]:
    session = store_reader.session_for(store)
    axis = store_reader.store_axis(session)
    return [axis.period_at(i).key for i in store_reader.written_indices(session)]


def test_a_rebuild_lays_the_store_out_for_the_new_spec_and_keeps_the_annotations(stored, settings):
    spec, store, _ = stored
    before = read_annotations(spec.id)
    spec2 = new_spec()
    stages = []
    result = rebuild_dataset(
        spec2,
        SyntheticProvider(spec2),
        store,
        settings=settings,
        run_id="rebuild-1",
        on_stage=stages.append,
    )
    assert stages == list(STAGES)
    assert (result.periods, result.replayed, result.dropped) == (6, 0, [])
    assert store.open().lookup_branch("main") == result.published
    t2m = variable_array(store)
    assert t2m.dtype == "float64" and t2m.shape[1:] == (4, 6)  # 1-degree cells of the bbox
    assert written_keys(store) == DAYS
    assert all(check.ok for check in verify_dataset(spec.id, settings=settings))
    session = store_reader.session_for(store)
    records = store_reader.read_records(session, store_reader.written_indices(session))
    assert {record["run_id"] for record in records.values()} == {"rebuild-1"}  # fetched again
    after = read_annotations(spec.id)
    assert after.annotations == before.annotations and result.annotations == 3
    assert after.history[: len(before.history)] == before.history
    assert t2m.attrs["long_name"] == "Air temperature at 2 m" and t2m.attrs["method"] == "m1"
    assert read_stash(spec.id, settings=settings) is None
    assert leftover_work(store, "rebuild") == []
    # The store fits the spec now: a second rebuild does nothing.
    again = rebuild_dataset(spec2, SyntheticProvider(spec2), store, settings=settings, run_id="2")
    assert again.published is None and "fits the spec already" in again.note
    assert store.open().lookup_branch("main") == result.published
    # A writer with the old spec is refused, naming the way forward.
    with pytest.raises(StoreLayoutError, match="ref-assets rebuild test_t2m"):
        write_period(
            store,
            fetch_batch(spec, SyntheticProvider(spec), spec.period_for_key("2024-01-07")),
            run_id="late",
        )


def test_a_rechunk_keeps_every_record_and_checksum_and_changes_the_chunks(stored, settings):
    spec, store, batch_for = stored
    before = main_state(store)
    assert variable_array(store).chunks == (1, 4, 6)
    result = rechunk_dataset(spec, store, chunks={"y": 2, "x": 3}, settings=settings, run_id="rc")
    after = main_state(store)
    assert variable_array(store).chunks == (1, 2, 3) and result.chunks == (2, 3)
    assert after["snapshot"] == result.published != before["snapshot"]
    assert after["records"] == before["records"]  # provenance as written, run ids included
    assert after["checksums"] == before["checksums"]
    assert after["annotations"] == before["annotations"]
    assert after["history"] == before["history"]  # nothing to restore: nothing logged
    assert all(check.ok for check in verify_dataset(spec.id, settings=settings))
    assert read_stash(spec.id, settings=settings) is None
    # The spec still names 4 x 6 chunks: its writes go into the store's 2 x 3 ones.
    receipt = write_period(store, batch_for("2024-01-07"), run_id="after")
    assert verify_dataset(spec.id, periods=["2024-01-07"], settings=settings)[0].ok
    assert receipt.bytes_written > 0
    # Back to the spec's chunks by default; asking for what the store has does nothing.
    rechunk_dataset(spec, store, settings=settings, run_id="back")
    assert variable_array(store).chunks == (1, 4, 6)
    same = rechunk_dataset(spec, store, settings=settings, run_id="same")
    assert same.published is None and "has chunks y=4, x=6 already" in same.note


def test_time_chunks_and_incompatible_specs_are_refused_by_a_rechunk(stored, settings):
    spec, store, _ = stored
    tip = store.open().lookup_branch("main")
    for refused in (
        lambda: parse_chunks(spec.id, "time=30,y=2"),
        lambda: rechunk_dataset(spec, store, chunks={"time": 30}, settings=settings, run_id="t"),
    ):
        with pytest.raises(RebuildError, match="along time a chunk is always one period"):
            refused()
    with pytest.raises(RebuildError, match="write y=N,x=N"):
        parse_chunks(spec.id, "y=two")
    assert parse_chunks(spec.id, "y=2, x=3") == {"y": 2, "x": 3}
    with pytest.raises(RebuildError, match=r"more than its chunks \(variables changed.*rebuild"):
        rechunk_dataset(new_spec(), store, settings=settings, run_id="t")
    assert store.open().lookup_branch("main") == tip
    assert not stash_path(spec.id, settings).exists()


def test_nothing_is_stashed_for_a_store_without_a_layout(synthetic_dataset, settings):
    spec, store, _ = synthetic_dataset
    with pytest.raises(StoreError, match="no store"):
        rebuild_dataset(spec, SyntheticProvider(spec), store, settings=settings, run_id="r")
    store.open_or_create(spec.manifest_split)  # a repository whose first period never landed
    with pytest.raises(RebuildError, match="nothing to rebuild"):
        rebuild_dataset(spec, SyntheticProvider(spec), store, settings=settings, run_id="r")
    with pytest.raises(StoreError, match="no layout yet, so no annotations to stash"):
        stash(spec.id, settings=settings)
    assert not (settings.configuration_dir / "stash").exists()
    # An earlier stash (of a store moved aside) is never replaced by an empty one.
    path = stash_path(spec.id, settings)
    path.parent.mkdir(parents=True)
    path.write_text("kept")
    with pytest.raises(StoreError, match=f"the stash {path} is kept as it is"):
        stash(spec.id, settings=settings)
    assert path.read_text() == "kept"


def kill_at(settings, purpose: str, spec: DatasetSpec, stage: str) -> None:
    """Run the rewrite in a child process that SIGKILLs itself at ``stage``."""
    code = (
        "import sys; from ref_assets_tests.workers import rewrite_killed_at; "
        "rewrite_killed_at(*sys.argv[1:])"
    )
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(settings.configuration_dir),
            purpose,
            spec.model_dump_json(),
            stage,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]


@pytest.mark.parametrize(
    ("purpose", "stages"),
    [
        ("rebuild", ["layout", "fill:2", "verify", "publish"]),
        ("rechunk", ["branch", "fill", "restore", "publish"]),
    ],
)
def test_a_rewrite_killed_at_any_stage_leaves_main_whole_and_the_retry_completes(
    stored, settings, purpose, stages
):
    spec, store, _ = stored
    target = new_spec() if purpose == "rebuild" else spec
    before = main_state(store)
    for stage in stages:
        kill_at(settings, purpose, target, stage)
        assert main_state(store) == before, f"main changed by a {purpose} killed at {stage}"
        saved = read_stash(spec.id, settings=settings)
        assert saved is not None and saved.annotations == before["annotations"]
        assert saved.source_snapshot == before["snapshot"]  # the first try's, kept
    assert len(leftover_work(store, purpose)) == 1  # the last try's branch, discarded next
    # An operator annotation between the tries is kept as well as the stashed ones.
    annotate(spec.id, "t2m", attributes={"checked": "yes"}, by="carol")
    wanted = read_annotations(spec.id).annotations
    if purpose == "rebuild":
        result = rebuild_dataset(
            target, SyntheticProvider(target), store, settings=settings, run_id="retry"
        )
    else:
        result = rechunk_dataset(
            target, store, chunks={"y": 2, "x": 3}, settings=settings, run_id="retry"
        )
    assert store.open().lookup_branch("main") == result.published
    assert read_annotations(spec.id).annotations == wanted
    assert wanted.variables["t2m"] == {
        "long_name": "Air temperature at 2 m",
        "method": "m1",
        "checked": "yes",
    }
    assert written_keys(store) == DAYS
    assert all(check.ok for check in verify_dataset(spec.id, settings=settings))
    assert read_stash(spec.id, settings=settings) is None
    assert leftover_work(store, purpose) == []


def test_a_rebuild_killed_after_publishing_is_finished_by_the_retry(stored, settings):
    spec, store, _ = stored
    before = read_annotations(spec.id)
    spec2 = new_spec()
    kill_at(settings, "rebuild", spec2, "clear")
    assert variable_array(store).dtype == "float64"  # published
    assert read_annotations(spec.id).annotations == before.annotations
    assert read_stash(spec.id, settings=settings) is not None
    result = rebuild_dataset(spec2, SyntheticProvider(spec2), store, settings=settings, run_id="r")
    assert result.published is None and result.stash_cleared
    assert "cleared the annotation stash" in result.note
    assert read_stash(spec.id, settings=settings) is None


def test_an_update_landing_on_main_during_a_rebuild_is_in_what_it_publishes(stored, settings):
    spec, store, batch_for = stored
    spec2 = new_spec()
    late = spec.period_for_key("2024-01-07")

    def sensor_update(stage: str) -> None:
        if stage == "restore":  # the branch is filled; main moves on under the old spec
            write_period(store, batch_for(late.key), run_id="sensor")
            annotate(spec.id, "t2m", attributes={"late": "note"}, by="dave")
            annotate(spec.id, "t2m", remove=["method"], by="dave")

    result = rebuild_dataset(
        spec2,
        SyntheticProvider(spec2),
        store,
        settings=settings,
        run_id="rebuild",
        on_stage=sensor_update,
    )
    assert result.replayed == 1
    assert written_keys(store) == [*DAYS, late.key]
    assert variable_array(store).dtype == "float64"
    checks = verify_dataset(spec.id, settings=settings)
    assert [c.period for c in checks] == [*DAYS, late.key] and all(c.ok for c in checks)
    session = store_reader.session_for(store)
    index = store_reader.store_axis(session).index_of(late)
    [record] = store_reader.read_records(session, [index]).values()
    assert record["run_id"] == "rebuild"  # fetched again, for the new layout
    expected = fetch_batch(spec2, SyntheticProvider(spec2), spec2.period_for_key(late.key))
    assert record["checksum"] == expected.checksum
    t2m = read_annotations(spec.id).annotations.variables["t2m"]
    assert t2m == {"long_name": "Air temperature at 2 m", "late": "note"}  # "method" taken back


def test_an_update_landing_on_main_during_a_rechunk_is_copied(stored, settings):
    spec, store, batch_for = stored

    def sensor_update(stage: str) -> None:
        if stage == "verify":
            write_period(store, batch_for("2024-01-07"), run_id="sensor")

    result = rechunk_dataset(
        spec, store, chunks={"x": 2}, settings=settings, run_id="rc", on_stage=sensor_update
    )
    assert result.replayed == 1 and variable_array(store).chunks == (1, 4, 2)
    assert written_keys(store) == [*DAYS, "2024-01-07"]
    assert all(check.ok for check in verify_dataset(spec.id, settings=settings))


def test_the_command_line_rebuilds_and_rechunks(settings, write_spec, capsys):
    fields = write_spec()
    spec = DatasetSpec.model_validate(fields)
    store = DatasetStore(settings.storage_root, spec.id)
    provider = SyntheticProvider(spec)
    for key in DAYS[:3]:
        write_period(store, fetch_batch(spec, provider, spec.period_for_key(key)), run_id="w")
    assert main(["rechunk", spec.id, "--chunks", "time=5"]) == 2
    assert "along time a chunk is always one period" in capsys.readouterr().err
    assert main(["rechunk", spec.id, "--chunks", "y=2,x=3"]) == 0
    captured = capsys.readouterr()
    assert "test_t2m: rechunked to chunks y=2, x=3: 3 periods copied" in captured.out
    assert "test_t2m: [1/9] stashing the annotations" in captured.err  # a line per stage
    assert "test_t2m: [8/9] publishing" in captured.err
    assert main(["status", spec.id]) == 0
    assert (
        "chunks: the store's are y=2, x=3, the spec's y=4, x=6; `ref-assets rechunk test_t2m` "
        "gives the store the spec's"
    ) in capsys.readouterr().out
    assert main(["rebuild", spec.id]) == 0
    assert "fits the spec already" in capsys.readouterr().out
    write_spec(params={**fields["params"], "resolution": 1.0})
    assert main(["rebuild", spec.id, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["dataset"], document["periods"], document["replayed"]) == (spec.id, 3, 0)
    assert document["snapshot"] == store.open().lookup_branch("main")
    assert document["chunks"] == [4, 6]


def test_a_rechunk_refuses_a_grid_changed_in_params(settings, write_spec, capsys):
    """The grid comes from the provider, not the spec's own fields: the command line asks it."""
    fields = write_spec()
    spec = DatasetSpec.model_validate(fields)
    store = DatasetStore(settings.storage_root, spec.id)
    write_period(
        store, fetch_batch(spec, SyntheticProvider(spec), spec.period_for_key(DAYS[0])), run_id="w"
    )
    tip = store.open().lookup_branch("main")
    write_spec(params={**fields["params"], "resolution": 1.0})
    assert main(["rechunk", spec.id, "--chunks", "y=2,x=3"]) == 2
    err = capsys.readouterr().err
    assert "more than its chunks (grid_first_last, grid_shape changed" in err
    assert f"`ref-assets rebuild {spec.id}` rebuilds the store" in err
    assert store.open().lookup_branch("main") == tip


def test_status_says_when_the_spec_no_longer_fits_the_store(settings, write_spec, capsys):
    fields = write_spec()
    spec = DatasetSpec.model_validate(fields)
    store = DatasetStore(settings.storage_root, spec.id)
    write_period(
        store, fetch_batch(spec, SyntheticProvider(spec), spec.period_for_key(DAYS[0])), run_id="w"
    )
    assert main(["status", spec.id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["structure_changed"] == []
    write_spec(variables=[{**fields["variables"][0], "dtype": "float64"}], start="2023-12-01")
    assert main(["status", spec.id]) == 0
    assert (
        "structure: the spec no longer fits the store (start, variables changed): writes are "
        "refused; `ref-assets rebuild test_t2m` rebuilds the store for it"
    ) in capsys.readouterr().out
    assert main(["status", spec.id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["structure_changed"] == ["start", "variables"]


def test_chunks_larger_than_the_grid_are_capped_saying_so(stored, settings, write_spec, capsys):
    spec, store, _ = stored
    rechunk_dataset(spec, store, chunks={"y": 2, "x": 3}, settings=settings, run_id="small")
    result = rechunk_dataset(
        spec, store, chunks={"y": 100, "x": 100}, settings=settings, run_id="big"
    )
    assert variable_array(store).chunks == (1, 8, 12) and result.chunks == (8, 12)
    assert result.note == "test_t2m: chunks y=100, x=100 capped to the grid: 8 x 12"
    write_spec()  # the command line reads the spec from the catalogue
    assert main(["rechunk", spec.id, "--chunks", "y=50,x=12", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "has chunks y=8, x=12 already (chunks y=50, x=12 capped to the grid: 8 x 12)" in out


@pytest.mark.parametrize("purpose", ["rechunk", "rebuild"])
def test_a_writer_whose_session_began_before_the_publish_writes_the_new_layout_or_nothing(
    stored, settings, monkeypatch, purpose
):
    """A period write whose session was opened on main before a rewrite published: its commit
    cannot be rebased onto arrays that were replaced, so the writer starts again from the new
    tip, which takes it into the new chunks (rechunk) or refuses it for its spec (rebuild)."""
    spec, store, batch_for = stored
    write_session = store_writer._write_periods
    rewritten = []

    def rewrite_then_write(session, batches, run_id):
        if run_id == "late" and not rewritten:  # its session is open on main as it was
            if purpose == "rechunk":
                result = rechunk_dataset(
                    spec, store, chunks={"y": 2}, settings=settings, run_id="r"
                )
            else:
                spec2 = new_spec()
                provider = SyntheticProvider(spec2)
                result = rebuild_dataset(spec2, provider, store, settings=settings, run_id="r")
            rewritten.append(result)
        return write_session(session, batches, run_id)

    monkeypatch.setattr(store_writer, "_write_periods", rewrite_then_write)
    if purpose == "rechunk":
        receipt = write_period(store, batch_for("2024-01-07"), run_id="late")
        assert receipt.attempts == 2 and variable_array(store).chunks == (1, 2, 6)
        assert written_keys(store) == [*DAYS, "2024-01-07"]
        assert all(check.ok for check in verify_dataset(spec.id, settings=settings))
    else:
        with pytest.raises(StoreLayoutError, match="ref-assets rebuild test_t2m"):
            write_period(store, batch_for("2024-01-07"), run_id="late")
        assert written_keys(store) == DAYS
        assert store.open().lookup_branch("main") == rewritten[0].published


def test_the_fill_reports_its_start_and_quiet_silences_the_stages(settings, write_spec, capsys):
    fields = write_spec(runs={"commit_every": 8})
    spec = DatasetSpec.model_validate(fields)
    store = DatasetStore(settings.storage_root, spec.id)
    provider = SyntheticProvider(spec)
    for key in DAYS[:3]:
        write_period(store, fetch_batch(spec, provider, spec.period_for_key(key)), run_id="w")
    assert main(["rechunk", spec.id, "--chunks", "y=2,x=2", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "rechunked to chunks y=2, x=2" in captured.out and "[1/9]" not in captured.err
    spec2 = new_spec(runs={"commit_every": 8})
    calls = []
    rebuild_dataset(
        spec2,
        SyntheticProvider(spec2),
        store,
        settings=settings,
        run_id="r",
        on_progress=lambda done, total: calls.append((done, total)),
    )
    # The start first: the CLI measures its rate from there, not from the one commit.
    assert calls == [(0, 3), (3, 3)]


class FailingProvider(SyntheticProvider):
    """The synthetic source with one day that no longer answers."""

    def fetch(self, period):
        if period.key == "2024-01-04":
            raise ConnectionError("the source is down")
        return super().fetch(period)


def test_a_failed_fetch_or_a_period_that_does_not_verify_publishes_nothing(stored, settings):
    spec, store, _ = stored
    before = main_state(store)
    spec2 = new_spec()
    with pytest.raises(
        RebuildError, match=r"1 of 6 periods could not be fetched again \(2024-01-04"
    ):
        rebuild_dataset(spec2, FailingProvider(spec2), store, settings=settings, run_id="down")
    assert main_state(store) == before and read_stash(spec.id, settings=settings) is not None

    def damage_the_branch(stage: str) -> None:  # a value changed behind the records' back
        if stage == "verify":
            [branch] = leftover_work(store, "rebuild")
            session = store.open().writable_session(branch)
            zarr.open_group(session.store, mode="r+")["t2m"][2, 0, 0] = 99.0
            session.commit("damage")

    with pytest.raises(RebuildError, match=r"1 periods on branch rebuild\.bad do not verify"):
        rebuild_dataset(
            spec2,
            SyntheticProvider(spec2),
            store,
            settings=settings,
            run_id="bad",
            on_stage=damage_the_branch,
        )
    assert main_state(store) == before and read_stash(spec.id, settings=settings) is not None
    rebuild_dataset(spec2, SyntheticProvider(spec2), store, settings=settings, run_id="good")
    assert read_stash(spec.id, settings=settings) is None
    assert read_annotations(spec.id).annotations == before["annotations"]


def test_a_rebuild_says_what_to_do_with_the_time_series_copy(settings, write_spec, capsys):
    fields = write_spec(timeseries={"time_chunk": 8, "y": 8, "x": 12, "tile": 4})
    spec = DatasetSpec.model_validate(fields)
    store = DatasetStore(settings.storage_root, spec.id)
    for key in DAYS[:2]:
        batch = fetch_batch(spec, SyntheticProvider(spec), spec.period_for_key(key))
        write_period(store, batch, run_id="w")
    update_timeseries(spec, store, run_id="copy")
    write_spec(params={**fields["params"], "resolution": 1.0}, timeseries=fields["timeseries"])
    assert main(["rebuild", spec.id, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "the time-series copy" in out and "move it aside" in out
    copy = timeseries_store(store)
    with pytest.raises(StoreLayoutError, match="built for another structure"):  # as it says
        update_timeseries(load_catalog(settings).get(spec.id), store, run_id="stale")
    shutil.rmtree(copy.path)
    update_timeseries(load_catalog(settings).get(spec.id), store, run_id="again")
    assert all(check.ok for check in verify_timeseries(spec.id))


class HotProvider(SyntheticProvider):
    """The synthetic source with one day 300 degrees too hot: outside t2m's valid range."""

    def fetch(self, period):
        fetched = super().fetch(period)
        if period.key == "2024-01-04":
            return dataclasses.replace(fetched, data=fetched.data + 300)
        return fetched


def test_a_rebuild_of_a_validated_dataset_publishes_no_period_failing_its_checks(stored, settings):
    spec, store, _ = stored
    before = main_state(store)
    spec2 = new_spec(checks={"publish": "validated"})
    with pytest.raises(RebuildError, match=r"1 of 6 periods fetched again fail their checks") as e:
        rebuild_dataset(spec2, HotProvider(spec2), store, settings=settings, run_id="hot")
    assert "2024-01-04: values_within_valid_range failed" in str(e.value)
    assert main_state(store) == before and read_stash(spec.id, settings=settings) is not None
    # A dataset publishing directly rebuilds as its runs write: checked after the fact.
    rebuild_dataset(new_spec(), HotProvider(new_spec()), store, settings=settings, run_id="d")
    assert written_keys(store) == DAYS


def test_a_second_rewrite_of_a_store_while_one_runs_is_refused(stored, settings):
    spec, store, _ = stored
    refusals = []

    def start_another(stage: str) -> None:
        if stage == "fill":
            with pytest.raises(RebuildError, match="another rebuild or rechunk of this store"):
                rechunk_dataset(spec, store, chunks={"y": 1}, settings=settings, run_id="second")
            refusals.append(leftover_work(store, "rechunk"))

    result = rechunk_dataset(
        spec, store, chunks={"y": 2}, settings=settings, run_id="first", on_stage=start_another
    )
    assert refusals == [["rechunk.first"]]  # the running one's branch was left alone
    assert variable_array(store).chunks == (1, 2, 6) and result.published is not None

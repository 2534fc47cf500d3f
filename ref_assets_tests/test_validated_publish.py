"""Validate, then publish (``checks: {publish: validated}``): a run writes on its own branch, its
periods are checked there, and only those that pass reach ``main``; ``main`` never exposes a
period that failed its checks, and whatever landed on ``main`` meanwhile is kept."""

import json
import signal
import subprocess
import sys

import dagster as dg
import pytest
import zarr
from dagster._core.definitions.data_version import extract_data_version_from_entry

from ref_assets import publishing
from ref_assets.annotations import annotate, read_annotations
from ref_assets.batch import fetch_batch
from ref_assets.cli.main import main as cli
from ref_assets.defs.checks import CHECK_NAME
from ref_assets.publishing import ValidatedWriter, discard_leftovers
from ref_assets.rebuild import rebuild_dataset, rechunk_dataset
from ref_assets.specs import DatasetSpec
from ref_assets.store import branches, commits
from ref_assets.store import reader as store_reader
from ref_assets.store.branches import PublishError, leftover_work
from ref_assets.store.repository import DatasetStore
from ref_assets.store.writer import CommitPolicy, observing_commits, write_period
from ref_assets.verification import verify_dataset
from ref_assets.vocabulary import load_vocabulary
from ref_assets_tests.conftest import spec_dict, step_failure
from ref_assets_tests.example_providers import MovableProvider

DATASET = "moving"
KEY = dg.AssetKey(DATASET)
CHECK = dg.AssetCheckKey(KEY, CHECK_NAME)
BAD = 200  # a source version that adds 199 degC: outside t2m's valid range, so refused


@pytest.fixture
def source(tmp_path):
    """The movable provider's availability file; ``source(versions={...})`` republishes."""
    availability = tmp_path / "availability.json"
    availability.write_text(json.dumps({"latest": "2024-01-31", "gaps": []}))

    def publish(**changes):
        state = json.loads(availability.read_text())
        state.update(changes)
        availability.write_text(json.dumps(state))

    publish.path = availability
    return publish


def spec_fields(source, publish: str | None = "validated", **overrides) -> dict:
    params = {"bbox": [0.0, 40.0, 6.0, 44.0], "resolution": 1.0, "seed": 3}
    params["availability"] = str(source.path)
    checks = {"publish": publish} if publish else {}
    fields = spec_dict(DATASET, provider="movable", params=params, checks=checks)
    fields.update(overrides)
    return fields


@pytest.fixture
def dataset(settings, write_spec, register_providers, source):
    """A validated dataset of the movable provider, for Dagster runs; returns its store."""
    register_providers("ref_assets_tests.example_providers:MovableProvider")
    fields = spec_fields(source, runs={"commit_every": 2, "fetch_workers": 1})
    write_spec(DATASET, **{k: v for k, v in fields.items() if k != "id"})
    return DatasetStore(settings.storage_root, DATASET)


@pytest.fixture
def core(settings, source):
    """The spec, store, vocabulary and a batch maker for tests without Dagster."""
    spec = DatasetSpec.model_validate(spec_fields(source))
    provider = MovableProvider(spec)
    vocabulary = load_vocabulary(settings.variables_cv, settings.resolve_path)

    def batch_for(key: str):
        return fetch_batch(spec, provider, spec.period_for_key(key))

    return spec, DatasetStore(settings.storage_root, DATASET), vocabulary, batch_for


def held(store, snapshot=None) -> dict[str, str]:
    """Partition key -> checksum of every period ``main`` (or ``snapshot``) holds."""
    session = store_reader.session_for(store, snapshot)
    axis = store_reader.store_axis(session)
    if axis is None:
        return {}
    indices = store_reader.written_indices(session)
    return {
        axis.period_at(index).key: record["checksum"]
        for index, record in store_reader.read_records(session, indices).items()
    }


class MainStates(list):
    """Every state of ``main`` of ``store`` (as {key: checksum}), seen after each commit of
    period data anyone makes: period writes, take-backs and replays all commit through
    `commit_rebasing` (store.commits, store.branches), and ``main`` moves only by such commits or
    by a publish."""

    store: DatasetStore | None = None

    def watch(self, store: DatasetStore) -> None:
        self.store = store


@pytest.fixture
def main_states(monkeypatch) -> MainStates:
    states = MainStates()
    commit = commits.commit_rebasing

    def watching(session, message):
        snapshot = commit(session, message)
        if states.store is not None and states.store.exists():
            states.append(held(states.store))
        return snapshot

    for module in (commits, branches):
        monkeypatch.setattr(module, "commit_rebasing", watching)
    return states


def test_main_never_exposes_a_refused_period_and_the_others_publish(core, source, main_states):
    spec, store, vocabulary, batch_for = core
    main_states.watch(store)
    source(versions={"2024-01-03": BAD})
    keys = [f"2024-01-0{day}" for day in range(1, 7)]
    run = ValidatedWriter(store, spec, vocabulary, run_id="r1", policy=CommitPolicy(every=2))
    for key in keys:
        run.add(batch_for(key))
    assert held(store) == {}  # nothing on main before publishing
    outcome = run.publish()

    assert [c.key for c in outcome.refused] == ["2024-01-03"]
    refused = outcome.refused[0].quality
    assert "values_within_valid_range failed" in refused.description
    assert [c.key for c in outcome.published] == [k for k in keys if k != "2024-01-03"]
    assert outcome.kept == frozenset()  # main held no earlier version of it
    main = held(store)
    assert store.open().lookup_branch("main") == outcome.snapshot
    assert main == {c.key: c.receipt.record.checksum for c in outcome.published}
    assert len(main_states) >= 4 and all("2024-01-03" not in state for state in main_states)
    assert leftover_work(store, "publish") == []
    # What was checked is what main holds: the same values, re-checked there.
    session = store_reader.session_for(store)
    for key in main:
        [(_, checksum)] = store_reader.stored_checksums(
            session, store_reader.store_axis(session), [spec.time_index(spec.period_for_key(key))]
        )
        assert checksum == main[key]


def test_periods_landing_on_main_meanwhile_are_kept(core, source, settings):
    spec, store, vocabulary, batch_for = core
    write_period(store, batch_for("2024-01-01"), run_id="before")
    source(versions={"2024-01-03": BAD})
    run = ValidatedWriter(store, spec, vocabulary, run_id="r1", policy=CommitPolicy(every=2))
    for key in ("2024-01-02", "2024-01-03", "2024-01-04"):
        run.add(batch_for(key))
    run.flush()
    ours = batch_for("2024-01-02").checksum
    # A sensor lands three periods on main while the run is unpublished: a new one, a revision
    # of one the run wrote and passed, one of which the run's version is refused; and an
    # operator annotates a variable.
    source(versions={"2024-01-02": 2, "2024-01-03": 3})
    sensor = {key: batch_for(key) for key in ("2024-01-06", "2024-01-02", "2024-01-03")}
    for batch in sensor.values():
        write_period(store, batch, run_id="sensor")
    annotate(DATASET, "t2m", label="Air temperature at 2 m", settings=settings)

    outcome = run.publish()
    assert [c.key for c in outcome.refused] == ["2024-01-03"]
    assert outcome.kept == {"2024-01-03"}  # main holds the sensor's version of it
    assert [sorted(moved.periods.tolist()) for moved in outcome.replayed] == [[1, 2, 5]]
    main = held(store)
    assert main == {
        "2024-01-01": batch_for("2024-01-01").checksum,
        # The run's publish is the later write to main: its checked version wins.
        "2024-01-02": ours,
        "2024-01-03": sensor["2024-01-03"].checksum,  # replayed, not the refused one
        "2024-01-04": batch_for("2024-01-04").checksum,
        "2024-01-06": sensor["2024-01-06"].checksum,  # replayed
    }
    assert ours != sensor["2024-01-02"].checksum
    annotations = read_annotations(DATASET, settings=settings)
    assert annotations.annotations.of("t2m") == {"long_name": "Air temperature at 2 m"}
    assert len(annotations.history) == 1
    data = store_reader.open_store_dataset(store_reader.session_for(store))
    assert data.t2m.attrs["long_name"] == "Air temperature at 2 m"


def test_overlapping_runs_all_publish_and_main_keeps_every_tip_it_had(core):
    spec, store, vocabulary, batch_for = core
    write_period(store, batch_for("2024-01-01"), run_id="first")
    runs = {}
    for name, key in (("a", "2024-01-02"), ("b", "2024-01-03")):
        runs[name] = ValidatedWriter(store, spec, vocabulary, run_id=name)
        runs[name].add(batch_for(key))
        runs[name].flush()
    tips = [runs["a"].publish().snapshot]
    runs["c"] = ValidatedWriter(store, spec, vocabulary, run_id="c")  # begins from a's publish
    runs["c"].add(batch_for("2024-01-04"))
    runs["c"].flush()
    tips.append(runs["b"].publish().snapshot)  # main moved: b goes on top of a's
    tips.append(runs["c"].publish().snapshot)  # its base, a's publish, is still main's history
    history = [s.id for s in store.open().ancestry(branch="main")]
    assert all(tip in history for tip in tips)
    assert sorted(held(store)) == ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]
    assert all(check.ok for check in verify_dataset(spec.id))


def test_a_run_that_dies_before_publishing_leaves_main_untouched(core, source):
    spec, store, vocabulary, batch_for = core
    write_period(store, batch_for("2024-01-01"), run_id="before")
    before = store.open().lookup_branch("main")
    run = ValidatedWriter(store, spec, vocabulary, run_id="dies", policy=CommitPolicy(every=1))
    run.add(batch_for("2024-01-02"))
    run.add(batch_for("2024-01-03"))
    del run  # killed: nothing after its commits on the branch runs
    assert store.open().lookup_branch("main") == before
    assert list(held(store)) == ["2024-01-01"]
    assert leftover_work(store, "publish") == ["publish.dies"]
    # Kept while its run goes on; discarded once it is over.
    assert discard_leftovers(store, lambda run_id: False) == []
    assert discard_leftovers(store, lambda run_id: run_id == "dies") == ["publish.dies"]
    assert leftover_work(store, "publish") == []


def test_a_failed_publish_discards_the_branch_and_leaves_main(core, monkeypatch):
    spec, store, vocabulary, batch_for = core
    write_period(store, batch_for("2024-01-01"), run_id="before")
    before = store.open().lookup_branch("main")
    run = ValidatedWriter(store, spec, vocabulary, run_id="r1")
    run.add(batch_for("2024-01-02"))

    def main_was_reset(work, replay, **options):
        raise PublishError("main no longer descends from the run's base")

    monkeypatch.setattr(publishing, "publish", main_was_reset)
    with pytest.raises(PublishError):
        run.publish()
    assert store.open().lookup_branch("main") == before
    assert leftover_work(store, "publish") == []


def test_a_run_that_began_before_a_rechunk_or_rebuild_does_not_undo_it(core, settings):
    spec, store, vocabulary, batch_for = core

    def run_on_branch(run_id: str, key: str) -> ValidatedWriter:
        run = ValidatedWriter(store, spec, vocabulary, run_id=run_id)
        run.add(batch_for(key))
        run.flush()  # on its branch, in main's layout of now
        return run

    write_period(store, batch_for("2024-01-01"), run_id="first")
    run = run_on_branch("r1", "2024-01-02")
    rechunk_dataset(spec, store, chunks={"y": 2, "x": 2}, settings=settings, run_id="rc")
    # Its periods are copied onto main's tip, into the new chunks: the rechunk stays.
    assert run.publish().snapshot == store.open().lookup_branch("main")
    session = store_reader.session_for(store)
    assert zarr.open_group(session.store, mode="r")["t2m"].chunks == (1, 2, 2)
    assert sorted(held(store)) == ["2024-01-01", "2024-01-02"]
    assert all(check.ok for check in verify_dataset(spec.id))

    run = run_on_branch("r2", "2024-01-03")
    rebuilt = spec.model_copy(update={"params": {**spec.params, "resolution": 0.5}})
    rebuild_dataset(rebuilt, MovableProvider(rebuilt), store, settings=settings, run_id="rb")
    tip = store.open().lookup_branch("main")
    # Another grid: publishing the run's old layout would undo the rebuild.
    with pytest.raises(PublishError, match=r"moving \(publish\): main was rebuilt or rechunked"):
        run.publish()
    assert store.open().lookup_branch("main") == tip
    assert leftover_work(store, "publish") == []


def test_refused_periods_get_main_s_earlier_state_back(core, source):
    spec, store, vocabulary, batch_for = core
    earlier = write_period(store, batch_for("2024-01-01"), run_id="before").record.checksum
    source(versions={"2024-01-01": BAD, "2024-01-09": BAD})  # a revision; beyond main's axis
    run = ValidatedWriter(store, spec, vocabulary, run_id="r1")
    for key in ("2024-01-01", "2024-01-02", "2024-01-09"):  # 01-09 grows the axis (8 periods)
        run.add(batch_for(key))
    outcome = run.publish()
    assert [c.key for c in outcome.refused] == ["2024-01-01", "2024-01-09"]
    assert outcome.kept == {"2024-01-01"}
    assert held(store) == {"2024-01-01": earlier, "2024-01-02": batch_for("2024-01-02").checksum}


def test_nothing_passing_leaves_main_where_it_was(core, source):
    spec, store, vocabulary, batch_for = core
    write_period(store, batch_for("2024-01-01"), run_id="before")
    before = store.open().lookup_branch("main")
    source(versions={"2024-01-01": BAD, "2024-01-09": BAD})  # a revision; beyond the axis
    run = ValidatedWriter(store, spec, vocabulary, run_id="r1")
    run.add(batch_for("2024-01-01"))
    run.add(batch_for("2024-01-09"))  # grows the axis (8 periods) on the branch
    outcome = run.publish()
    assert outcome.snapshot is None and outcome.kept == {"2024-01-01"}
    assert store.open().lookup_branch("main") == before
    assert leftover_work(store, "publish") == []


# --- through Dagster ---------------------------------------------------------------------------


def events(result: dg.ExecuteInProcessResult):
    materialized = {
        e.partition: e.event_specific_data.materialization
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    }
    checks = {}
    for evaluation in result.get_asset_check_evaluations():
        assert evaluation.asset_check_key == CHECK and evaluation.partition not in checks
        checks[evaluation.partition] = evaluation
    return materialized, checks


def test_a_validated_range_run_in_dagster(
    dataset, source, materialize, instance, main_states, core
):
    *_, batch_for = core
    main_states.watch(dataset)
    source(versions={"2024-01-03": BAD})
    update = batch_for("2024-01-20")

    def sensor_lands(receipts):  # at the run's first commit on its branch, once
        if not sensor_lands.done:
            sensor_lands.done = True
            write_period(dataset, update, run_id="sensor")

    sensor_lands.done = False
    with observing_commits(sensor_lands):
        result = materialize(DATASET, "2024-01-01...2024-01-05", raise_on_error=False)

    assert len(main_states) >= 5  # three commits on the branch, the sensor's, a take-back, ...
    assert all("2024-01-03" not in state for state in main_states)
    main = held(dataset)
    assert main.pop("2024-01-20") == update.checksum  # landed meanwhile, replayed, kept
    assert sorted(main) == ["2024-01-01", "2024-01-02", "2024-01-04", "2024-01-05"]
    materialized, checks = events(result)
    assert sorted(materialized) == sorted(main)  # only the periods this run published
    tip = dataset.open().lookup_branch("main")
    for key, event in materialized.items():
        assert event.metadata["snapshot_id"].value == tip
        assert event.tags["dagster/data_version"] == main[key]
        assert checks[key].passed and checks[key].metadata["main_snapshot"].value == tip
        [record] = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=KEY, asset_partitions=[key]), limit=1
        ).records
        assert checks[key].target_materialization_data.storage_id == record.storage_id
        assert extract_data_version_from_entry(record.event_log_entry).value == main[key]
    bad = checks["2024-01-03"]
    assert not bad.passed and bad.blocking and bad.target_materialization_data is None
    assert bad.metadata["values_within_valid_range"].value is False
    assert bad.description.endswith("Not published: main keeps no version of it")
    failure = step_failure(result).step_failure_data
    assert "1 refused by their checks (2024-01-03)" in failure.error.message
    refused = failure.user_failure_data.metadata["refused_periods"].value
    assert list(refused) == ["2024-01-03"] and "outside the valid range" in refused["2024-01-03"]
    assert leftover_work(dataset, "publish") == []
    assert instance.get_materialized_partitions(KEY) == set(main)  # the sensor ran no run here
    statuses = {
        info.partition_key: info.latest_execution_status.value
        for info in instance.event_log_storage.get_asset_check_partition_info([CHECK])
    }
    assert statuses == {**dict.fromkeys(main, "SUCCEEDED"), "2024-01-03": "FAILED"}

    # The source is fixed; running the partition again publishes it.
    source(versions={})
    result = materialize(DATASET, "2024-01-03")
    materialized, checks = events(result)
    assert list(materialized) == ["2024-01-03"] and checks["2024-01-03"].passed
    assert "2024-01-03" in held(dataset)


def test_the_command_line_says_what_a_validated_range_published(
    dataset, source, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    source(versions={"2024-01-02": BAD})
    assert cli(["materialize", DATASET, "--start", "2024-01-01", "--end", "2024-01-03"]) == 1
    err = capsys.readouterr().err
    assert "only periods that passed their checks can have reached main" in err
    assert "committed before a failure are kept" not in err  # direct mode's words
    assert sorted(held(dataset)) == ["2024-01-01", "2024-01-03"]


def test_a_refused_revision_leaves_main_s_earlier_version(dataset, source, materialize, instance):
    assert materialize(DATASET, "2024-01-02").success  # single partition: a branch too
    earlier = held(dataset)
    [first] = instance.fetch_materializations(KEY, limit=1).records
    source(versions={"2024-01-02": BAD})
    result = materialize(DATASET, "2024-01-02", raise_on_error=False)
    assert held(dataset) == earlier
    materialized, checks = events(result)
    assert materialized == {} and not checks["2024-01-02"].passed
    assert checks["2024-01-02"].description.endswith("main keeps its earlier version")
    [latest] = instance.fetch_materializations(KEY, limit=1).records
    assert latest.storage_id == first.storage_id  # Dagster still shows main's version
    assert "refused by their checks" in step_failure(result).step_failure_data.error.message
    assert leftover_work(dataset, "publish") == []


def test_a_leftover_branch_of_an_ended_run_goes_with_the_next_run(
    dataset, source, materialize, core
):
    spec, store, vocabulary, batch_for = core
    run = ValidatedWriter(store, spec, vocabulary, run_id="not-a-dagster-run")
    run.add(batch_for("2024-01-01"))  # then killed
    assert leftover_work(store, "publish") == ["publish.not-a-dagster-run"]
    assert materialize(DATASET, "2024-01-02").success
    assert leftover_work(store, "publish") == []
    assert list(held(store)) == ["2024-01-02"]


@pytest.mark.parametrize("at", ["commit", "publish"])
def test_a_run_killed_before_publishing_leaves_main_untouched(
    dataset, source, materialize, settings, at
):
    assert materialize(DATASET, "2024-01-01").success
    before, held_before = dataset.open().lookup_branch("main"), held(dataset)
    source(versions={"2024-01-03": BAD})
    code = (
        "import sys; from ref_assets_tests.workers import validated_run_stopping; "
        "validated_run_stopping(*sys.argv[1:])"
    )
    arguments = [str(settings.config_file.parent), DATASET, "2024-01-02", "2024-01-06", at]
    child = subprocess.Popen([sys.executable, "-c", code, *arguments], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"stopped"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert dataset.open().lookup_branch("main") == before and held(dataset) == held_before
    [leftover] = leftover_work(dataset, "publish")
    on_branch = held(dataset, dataset.open().lookup_branch(leftover))
    assert "2024-01-02" in on_branch  # the run's work was there, on its branch only
    # The next run: the killed run is unknown to this instance, so its branch goes.
    source(versions={})
    assert materialize(DATASET, "2024-01-07").success
    assert leftover_work(dataset, "publish") == []
    assert sorted(held(dataset)) == ["2024-01-01", "2024-01-07"]


def test_direct_publishing_writes_on_main_without_a_branch(
    settings, write_spec, register_providers, source, materialize
):
    register_providers("ref_assets_tests.example_providers:MovableProvider")
    fields = spec_fields(source, publish=None, runs={"commit_every": 2})
    write_spec(DATASET, **{k: v for k, v in fields.items() if k != "id"})
    store = DatasetStore(settings.storage_root, DATASET)
    source(versions={"2024-01-02": BAD})
    tips = []
    with observing_commits(lambda receipts: tips.append((receipts, held(store)))):
        result = materialize(DATASET, "2024-01-01...2024-01-03", raise_on_error=False)
    # Each commit is main's tip as it lands, the failing period included: checked afterwards.
    assert [[r.period_key for r in receipts] for receipts, _ in tips] == [
        ["2024-01-01", "2024-01-02"],
        ["2024-01-03"],
    ]
    assert "2024-01-02" in tips[0][1]
    assert sorted(held(store)) == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert store.open().list_branches() == {"main"}
    assert "blocking asset check" in step_failure(result).step_failure_data.error.message
    assert DatasetSpec.model_validate(fields).public_dump()["checks"] == {
        "max_nan_fraction": 1.0,
        "variables": {},
    }  # the default leaves the spec's fingerprint as it was

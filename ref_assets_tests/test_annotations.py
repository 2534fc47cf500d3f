"""Annotations: operator edits of the dataset's and its variables' attributes, committed with a
log of every change, never touched by period writes; and the stash that keeps them on disk while
a store is rewritten."""

import asyncio
import getpass
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import zarr

import ref_assets
from ref_assets import annotations_stash
from ref_assets.annotations import (
    ANNOTATIONS_PATH,
    AnnotationError,
    annotate,
    read_annotations,
)
from ref_assets.annotations_stash import clear, read_stash, restore, stash, stash_path
from ref_assets.batch import fetch_batch
from ref_assets.cli import main
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.specs import DatasetSpec
from ref_assets.store import writer as store_writer
from ref_assets.store.layout import axis_length
from ref_assets.store.repository import DatasetStore, StoreError
from ref_assets.store.timeseries import update_timeseries
from ref_assets.store.writer import CommitPolicy, PeriodWriter, write_period
from ref_assets_tests.conftest import spec_dict


@pytest.fixture
def annotated(synthetic_dataset):
    """A store holding 2024-01-01 whose dataset and t2m carry annotations by two people."""
    spec, store, batch_for = synthetic_dataset
    write_period(store, batch_for("2024-01-01"), run_id="first")
    annotate(spec.id, "t2m", label="Air temperature at 2 m", attributes={"method": "m1"}, by="ann")
    annotate(spec.id, description="Test data, not for use", by="bob")
    return spec, store, batch_for


def _attributes(store, path=""):
    session = store.open().readonly_session(branch="main")
    group = zarr.open_group(session.store, mode="r")
    return (group if not path else group[path]).attrs.asdict()


def test_annotations_are_attributes_committed_with_a_log_of_who_when_what(annotated):
    spec, store, _ = annotated
    assert ref_assets.annotate is annotate and ref_assets.read_annotations is read_annotations
    ds = ref_assets.open_dataset(spec.id)
    assert ds.attrs["summary"] == "Test data, not for use"
    assert ds.attrs["title"] == "Test dataset test_t2m"  # the spec's, untouched
    assert ds.t2m.attrs["long_name"] == "Air temperature at 2 m"
    assert ds.t2m.attrs["method"] == "m1"
    assert ds.t2m.attrs["standard_name"] == "air_temperature"  # the spec's
    stored = read_annotations(spec.id)
    assert stored.annotations.dataset == {"summary": "Test data, not for use"}
    assert stored.annotations.variables == {
        "t2m": {"long_name": "Air temperature at 2 m", "method": "m1"}
    }
    first, second = stored.history
    assert (first.by, first.target, first.set, first.action) == (
        "ann",
        "t2m",
        {"method": "m1", "long_name": "Air temperature at 2 m"},
        "edit",
    )
    assert first.previous == {"method": None, "long_name": None}
    assert (second.by, second.target, second.set) == (
        "bob",
        None,
        {"summary": "Test data, not for use"},
    )
    assert second.previous == {"summary": ""}  # the spec's empty description
    assert first.at <= second.at and first.host
    assert first.tool == f"ref-assets {ref_assets.__version__}"
    # Each change is its own commit on main, with a message and no commit metadata (which
    # Icechunk would re-encode on every later commit); the log holds the rest.
    messages = [s.message for s in store.open().ancestry(branch="main")]
    assert messages[0] == "test_t2m: annotate dataset (by bob)"
    assert messages[1] == "test_t2m: annotate t2m (by ann)"
    tip = next(iter(store.open().ancestry(branch="main")))
    assert not tip.metadata
    # The log is no variable of the dataset.
    assert "annotations" not in ds.variables and ANNOTATIONS_PATH.startswith("ref/")


def test_an_override_of_a_spec_attribute_removed_brings_the_spec_value_back(annotated):
    spec, store, _ = annotated
    annotate(spec.id, "t2m", attributes={"standard_name": "surface_temperature"}, by="ann")
    assert _attributes(store, "t2m")["standard_name"] == "surface_temperature"
    annotate(spec.id, "t2m", remove=["standard_name", "method"], by="bob")
    attributes = _attributes(store, "t2m")
    assert attributes["standard_name"] == "air_temperature"
    assert "method" not in attributes
    stored = read_annotations(spec.id)
    assert stored.annotations.variables == {"t2m": {"long_name": "Air temperature at 2 m"}}
    last = stored.history[-1]
    assert last.removed == ["standard_name", "method"]
    assert last.previous == {"standard_name": "surface_temperature", "method": "m1"}
    # An attribute from the spec is no annotation to remove.
    with pytest.raises(
        AnnotationError, match="test_t2m variable t2m: standard_name is no operator annotation"
    ):
        annotate(spec.id, "t2m", remove=["standard_name"])


@pytest.mark.parametrize(
    ("variable", "kwargs", "message"),
    [
        ("t2m", {"attributes": {"units": "K"}}, "units belongs to the store's layout"),
        (None, {"attributes": {"ref_assets": "x"}}, "ref_assets belongs to the store's layout"),
        ("tp", {"label": "x"}, "test_t2m variable tp: the store has no such variable"),
        ("t2m", {}, "nothing to annotate"),
        ("t2m", {"attributes": {"a": 1}, "remove": ["a"]}, "a both set and removed"),
        ("t2m", {"attributes": {"": 1}}, "an attribute needs a name"),
        (None, {"attributes": {"when": object()}}, "must be JSON values"),
        (None, {"attributes": {"x": None}}, "x set to None; to take an annotation back"),
    ],
)
def test_annotations_that_cannot_be_made_are_refused_and_nothing_is_committed(
    annotated, variable, kwargs, message
):
    spec, store, _ = annotated
    tip = store.open().lookup_branch("main")
    with pytest.raises(AnnotationError, match=message):
        annotate(spec.id, variable, **kwargs)
    assert store.open().lookup_branch("main") == tip


def test_secrets_in_annotations_are_masked_as_the_specs_are(annotated):
    spec, store, _ = annotated
    annotate(spec.id, "t2m", attributes={"source": "https://user:pw@host/x", "api_token": "abc"})
    attributes = _attributes(store, "t2m")
    assert (attributes["source"], attributes["api_token"]) == ("https://***@host/x", "***")
    assert read_annotations(spec.id).history[-1].set == {
        "source": "https://***@host/x",
        "api_token": "***",
    }


def test_a_store_not_laid_out_yet_cannot_be_annotated(synthetic_dataset):
    spec, store, _ = synthetic_dataset
    with pytest.raises(StoreError, match="no store"):
        annotate(spec.id, label="x")
    store.open_or_create(spec.manifest_split)
    with pytest.raises(StoreError, match=r"holds no periods yet.*annotated once its first period"):
        annotate(spec.id, label="x")
    assert read_annotations(spec.id).history == []


def test_period_writes_and_axis_growth_keep_every_annotation(annotated):
    spec, store, batch_for = annotated
    before = read_annotations(spec.id)
    dataset_attributes, t2m_attributes = _attributes(store), _attributes(store, "t2m")
    length = axis_length(zarr.open_group(store.open().readonly_session("main").store, mode="r"))
    writer = PeriodWriter(store, run_id="later", policy=CommitPolicy(every=3))
    # A rewrite of the annotated period, new periods, and one beyond the axis (growing it).
    for key in ("2024-01-01", "2024-01-02", "2024-01-05", "2024-02-20"):
        writer.add(batch_for(key))
    writer.flush()
    session = store.open().readonly_session("main")
    assert axis_length(zarr.open_group(session.store, mode="r")) > length
    after = read_annotations(spec.id)
    assert after.annotations == before.annotations
    assert after.history == before.history
    assert _attributes(store) == dataset_attributes
    assert _attributes(store, "t2m") == t2m_attributes
    ds = ref_assets.open_dataset(spec.id)
    assert ds.t2m.attrs["long_name"] == "Air temperature at 2 m"
    assert not bool(ds.t2m.sel(time="2024-02-20").isnull().all())


def test_an_annotation_landing_during_a_period_write_is_kept_and_the_write_lands(
    annotated, monkeypatch
):
    """The writer's session began before the annotation of its variable: Icechunk refuses the
    rebase (chunks updated in an updated array), so the writer rewrites from the new tip."""
    spec, store, batch_for = annotated
    real_write = store_writer._write_periods
    annotations_made = []

    async def write_after_an_annotation(session, batches, run_id):
        if not annotations_made:
            # From another thread, as another process would: this one runs zarr's event loop.
            made = await asyncio.to_thread(
                annotate, spec.id, "t2m", attributes={"qc": "v2"}, by="cy"
            )
            annotations_made.append(made)
        return await real_write(session, batches, run_id)

    monkeypatch.setattr(store_writer, "_write_periods", write_after_an_annotation)
    receipt = write_period(store, batch_for("2024-01-03"), run_id="during")
    assert len(annotations_made) == 1
    assert receipt.attempts == 2
    assert _attributes(store, "t2m")["qc"] == "v2"
    assert read_annotations(spec.id).annotations.variables["t2m"]["qc"] == "v2"
    ds = ref_assets.open_dataset(spec.id)
    assert not bool(ds.t2m.sel(time="2024-01-03").isnull().all())


def test_annotations_made_at_once_are_all_kept_and_logged(annotated):
    """Each annotation commits under the dataset's commit lock: none is lost to another."""
    spec, _, _ = annotated

    def one(number: int) -> None:
        annotate(spec.id, "t2m" if number % 2 else None, attributes={f"k{number}": number})

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(one, range(12)))
    stored = read_annotations(spec.id)
    assert {k for k in stored.annotations.dataset if k.startswith("k")} == {
        f"k{n}" for n in range(0, 12, 2)
    }
    assert {k for k in stored.annotations.variables["t2m"] if k.startswith("k")} == {
        f"k{n}" for n in range(1, 12, 2)
    }
    assert len(stored.history) == 2 + 12


ANNOTATING_UNTIL_KILLED = """
from ref_assets.annotations import annotate
for number in range(10**6):
    target = None if number % 4 < 2 else "t2m"
    if number % 2 == 0:
        annotate("test_t2m", target, attributes={"n": number}, by="child")
    else:
        annotate("test_t2m", target, remove=["n"], by="child")
    if number == 0:
        print("ready", flush=True)
"""


def test_annotating_killed_at_any_instant_leaves_attributes_and_log_in_agreement(annotated):
    """SIGKILL while annotations are being committed: the store's attributes, the operator's
    state and the log agree after every kill (a change is whole or absent), and the next
    annotation is not blocked (the kernel freed the lock)."""
    spec, store, _ = annotated
    rng = random.Random(5)
    counts = []
    for _ in range(4):
        child = subprocess.Popen(
            [sys.executable, "-c", ANNOTATING_UNTIL_KILLED], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        stored = read_annotations(spec.id)
        replayed: dict = {}
        for change in stored.history:
            values = replayed.setdefault(change.target, {})
            values.update(change.set)
            for key in change.removed:
                del values[key]
        assert replayed.pop(None) == stored.annotations.dataset
        assert {k: v for k, v in replayed.items() if v} == stored.annotations.variables
        dataset, t2m = _attributes(store), _attributes(store, "t2m")
        assert dataset.get("n") == stored.annotations.dataset.get("n")
        assert t2m.get("n") == stored.annotations.variables["t2m"].get("n")
        counts.append(len(stored.history))
    assert counts == sorted(counts) and counts[-1] > counts[0]  # the kills cut real work
    annotate(spec.id, label="After the kills", by="ann")
    assert read_annotations(spec.id).history[-1].set == {"title": "After the kills"}


def test_the_time_series_copy_shows_the_annotations_as_they_are_now(settings):
    """The copy takes the store's attributes when it is laid out; annotations made or taken
    back later show through open_dataset all the same."""
    spec = DatasetSpec.model_validate(
        spec_dict(timeseries={"time_chunk": 4, "y": 6, "x": 6, "tile": 2})
    )
    store = DatasetStore(settings.storage_root, spec.id)
    provider = SyntheticProvider(spec)
    for key in ("2024-01-01", "2024-01-02"):
        write_period(store, fetch_batch(spec, provider, spec.period_for_key(key)), run_id="t")
    annotate(spec.id, "t2m", attributes={"early": "yes", "qc": "v1"}, by="ann")
    update_timeseries(spec, store, run_id="copy")
    annotate(spec.id, "t2m", attributes={"qc": "v2"}, remove=["early"], by="ann")
    annotate(spec.id, attributes={"institution": "Met service"}, by="ann")
    annotate(spec.id, "t2m", attributes={"standard_name": "x"}, by="ann")
    annotate(spec.id, "t2m", remove=["standard_name"], by="ann")
    series = ref_assets.open_dataset(spec.id, layout="timeseries")
    periods = ref_assets.open_dataset(spec.id)
    assert series.t2m.attrs == periods.t2m.attrs
    assert series.t2m.attrs["qc"] == "v2" and "early" not in series.t2m.attrs
    assert series.t2m.attrs["standard_name"] == "air_temperature"
    assert series.attrs["institution"] == "Met service"


def test_the_spec_s_attributes_now_reach_the_store_under_the_operator_s(
    annotated, write_spec, capsys
):
    spec, store, _ = annotated
    annotate(spec.id, "t2m", attributes={"comment": "operator's"}, by="ann")
    fields = spec_dict(title="New title", attributes={"institution": "Met service"})
    fields["variables"][0]["attributes"] = {
        "standard_name": "air_temperature",
        "comment": "spec's",
        "source": "https://user:pw@host/x",
    }
    write_spec(**{k: v for k, v in fields.items() if k != "id"})
    assert main(["annotate", spec.id, "--from-spec", "--by", "ops"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [
        "test_t2m dataset: from the spec: title, institution",
        "test_t2m variable t2m: from the spec: source, comment",
    ]
    ds = ref_assets.open_dataset(spec.id)
    assert (ds.attrs["title"], ds.attrs["institution"]) == ("New title", "Met service")
    assert ds.t2m.attrs["source"] == "https://***@host/x"
    assert ds.t2m.attrs["comment"] == "operator's"  # the operator's annotation stays
    [*_, dataset_change, t2m_change] = read_annotations(spec.id).history
    assert (dataset_change.action, dataset_change.by) == ("spec", "ops")
    assert dataset_change.previous == {"title": "Test dataset test_t2m", "institution": None}
    assert t2m_change.previous == {"source": None, "comment": None}
    annotate(spec.id, "t2m", remove=["comment"])
    assert _attributes(store, "t2m")["comment"] == "spec's"  # what returns is the spec's now
    tip = store.open().lookup_branch("main")
    assert main(["annotate", spec.id, "--from-spec", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["changes"] == []
    assert store.open().lookup_branch("main") == tip  # nothing to do: no commit


def test_the_command_line_annotates_shows_and_lists_the_history(annotated, capsys):
    spec, store, _ = annotated
    command = ["annotate", spec.id, "t2m", "--label", "T2m", "--attr", "source=ERA5"]
    assert main([*command, "--attr", "note=a=b", "--by", "dee"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("test_t2m variable t2m: set source, note, long_name (commit ")
    assert _attributes(store, "t2m")["note"] == "a=b"
    assert main(["annotate", spec.id, "t2m", "--remove", "note", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["change"]["removed"] == ["note"]
    assert document["change"]["previous"] == {"note": "a=b"}
    assert document["snapshot"] == store.open().lookup_branch("main")

    assert main(["annotate", spec.id]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "test_t2m dataset: summary='Test data, not for use'",
        "test_t2m variable t2m: long_name='T2m', method='m1', source='ERA5'",  # sorted
    ]
    assert main(["annotate", spec.id, "t2m", "--history", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["variables"] == {"t2m": {"long_name": "T2m", "method": "m1", "source": "ERA5"}}
    assert [c["by"] for c in document["history"]] == ["ann", "dee", getpass.getuser()]
    assert main(["annotate", spec.id, "--history"]) == 0
    history = capsys.readouterr().out.splitlines()
    assert len(history) == 4 and " bob@" in history[1]
    # The words of the list above: "dataset" as "variable t2m" (not "the dataset").
    assert history[1].split(" ", 2)[2] == "dataset: summary='Test data, not for use'"

    assert main(["annotate", spec.id, "t2m", "--attr", "novalue"]) == 2
    assert "--attr 'novalue': write KEY=VALUE" in capsys.readouterr().err
    assert main(["annotate", spec.id, "t2m", "--attr", "units=K"]) == 2
    assert "units belongs to the store's layout" in capsys.readouterr().err


# The stash


def test_stash_then_restore_onto_a_rebuilt_store_then_clear(annotated, settings):
    spec, store, batch_for = annotated
    before = read_annotations(spec.id)
    path = stash(spec.id)
    assert path == settings.configuration_dir / "stash" / "annotations" / "test_t2m.json"
    saved = read_stash(spec.id)
    assert saved.annotations == before.annotations and saved.history == before.history
    assert saved.source_snapshot == before.snapshot_id
    # The store is rebuilt from scratch: its annotations are gone, the stash holds them.
    shutil.rmtree(store.path)
    write_period(store, batch_for("2024-01-01"), run_id="rebuild")
    assert read_annotations(spec.id).history == []
    receipt = restore(spec.id, by="ops")
    after = read_annotations(spec.id)
    assert after.annotations == before.annotations
    assert after.history[:2] == before.history  # the old log, as it was
    assert [(c.action, c.by, c.target) for c in after.history[2:]] == [
        ("restore", "ops", None),
        ("restore", "ops", "t2m"),
    ]
    assert receipt.snapshot_id == after.snapshot_id
    ds = ref_assets.open_dataset(spec.id)
    assert ds.t2m.attrs["long_name"] == "Air temperature at 2 m"
    assert ds.attrs["summary"] == "Test data, not for use"
    # Restoring again changes nothing, and commits nothing.
    assert restore(spec.id).changes == []
    assert store.open().lookup_branch("main") == after.snapshot_id
    assert path.exists()  # kept until the caller clears it
    assert clear(spec.id) is True
    assert not path.exists() and read_stash(spec.id) is None
    assert clear(spec.id) is False
    assert restore(spec.id) is None


def test_the_command_line_saves_restores_and_clears_the_stash(annotated, settings, capsys):
    spec, store, batch_for = annotated
    before = read_annotations(spec.id)
    assert main(["annotate", spec.id, "--stash", "save"]) == 0
    path = stash_path(spec.id)
    assert capsys.readouterr().out == f"test_t2m: annotations and their log saved in {path}\n"
    shutil.rmtree(store.path)  # moved aside, and the dataset materialized again
    write_period(store, batch_for("2024-01-01"), run_id="again")
    assert main(["annotate", spec.id, "--stash", "restore", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["action"], document["changes"], document["stash"]) == (
        "restore",
        4,  # the two entries of the old log, and one restore change for each target
        str(path),
    )
    assert read_annotations(spec.id).annotations == before.annotations
    assert main(["annotate", spec.id, "--stash", "clear"]) == 0
    assert capsys.readouterr().out == f"test_t2m: {path} removed\n"
    assert main(["annotate", spec.id, "--stash", "restore"]) == 2
    assert f"no readable annotation stash at {path}" in capsys.readouterr().err
    assert main(["annotate", "../x", "--stash", "save"]) == 2
    assert "invalid dataset id '../x'" in capsys.readouterr().err
    assert main(["annotate", spec.id, "t2m", "--stash", "save"]) == 2
    assert "--stash takes the dataset alone" in capsys.readouterr().err


def test_restore_onto_a_branch_leaves_main_alone(annotated):
    spec, store, _ = annotated
    stash(spec.id)
    repo = store.open()
    first_snapshot = list(repo.ancestry(branch="main"))[-3].id  # before any annotation
    repo.create_branch("rebuild", snapshot_id=first_snapshot)
    annotate(spec.id, "t2m", attributes={"after": "stash"}, by="ann")  # main moves on
    main_tip = repo.lookup_branch("main")
    restore(spec.id, branch="rebuild")
    assert repo.lookup_branch("main") == main_tip
    branch = zarr.open_group(repo.readonly_session(branch="rebuild").store, mode="r")
    assert branch["t2m"].attrs["method"] == "m1"
    assert "after" not in branch["t2m"].attrs


def test_a_variable_the_store_no_longer_has_is_not_restored_but_stays_in_the_log(annotated, caplog):
    spec, _, _ = annotated
    path = stash(spec.id)
    document = json.loads(path.read_text())
    document["annotations"]["variables"]["old_var"] = {"long_name": "gone"}
    path.write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING, logger="ref_assets.annotations_stash"):
        receipt = restore(spec.id)
    assert receipt.changes == []
    assert "has no variable old_var any more" in caplog.text


def test_a_stash_write_whose_rename_fails_leaves_no_temporary_file(annotated, monkeypatch):
    spec, _, _ = annotated
    path = stash(spec.id)
    kept = path.read_bytes()
    annotate(spec.id, label="Newer", by="ann")

    def failing_replace(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        stash(spec.id)
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.iterdir()) == ["test_t2m.json"]
    assert path.read_bytes() == kept  # the earlier stash, whole


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: "\x00\xff garbage",
        lambda text: text.replace("annotation-stash-v1", "annotation-stash-v9"),
        lambda text: text.replace('"test_t2m"', '"other"'),
        lambda text: json.dumps({**json.loads(text), "history": [{"id": "x"}]}),
        lambda text: "[]",
    ],
    ids=["truncated", "garbage", "format", "dataset", "entry", "not-an-object"],
)
def test_a_corrupt_stash_is_treated_as_absent_with_a_warning(annotated, caplog, damage):
    spec, store, _ = annotated
    path = stash(spec.id)
    path.write_text(damage(path.read_text()))
    tip = store.open().lookup_branch("main")
    with caplog.at_level(logging.WARNING, logger="ref_assets.annotations_stash"):
        assert read_stash(spec.id) is None
        assert restore(spec.id) is None
    assert f"annotation stash {path}" in caplog.text
    assert "corrupt and treated as absent" in caplog.text or "unreadable" in caplog.text
    assert store.open().lookup_branch("main") == tip
    stash(spec.id)  # a new stash replaces the damaged one
    assert read_stash(spec.id) is not None


@pytest.mark.parametrize("dataset_id", ["../ref", "a/b", "..", "", "/etc/passwd", "Test", "x\0"])
def test_a_dataset_id_cannot_name_a_file_outside_the_stash(settings, dataset_id):
    for call in (stash_path, stash, read_stash, clear, restore):
        with pytest.raises(ValueError, match="invalid dataset id"):
            call(dataset_id) if call is stash_path else call(dataset_id, settings=settings)
    assert not (settings.configuration_dir / "stash").exists()


def test_a_symlinked_stash_file_pointing_elsewhere_is_refused(settings, tmp_path):
    directory = annotations_stash.stash_dir(settings)
    directory.mkdir(parents=True)
    (directory / "test_t2m.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ValueError, match="lies outside"):
        stash_path("test_t2m", settings)


def test_reading_or_clearing_a_stash_creates_no_directory(settings):
    assert read_stash("test_t2m", settings=settings) is None
    assert clear("test_t2m", settings=settings) is False
    assert restore("test_t2m", settings=settings) is None
    assert not (settings.configuration_dir / "stash").exists()


def test_a_failed_restore_keeps_the_stash_for_the_next_try(annotated, caplog):
    spec, store, batch_for = annotated
    path = stash(spec.id)
    shutil.rmtree(store.path)  # a rebuild that died before laying out its store
    with caplog.at_level(logging.WARNING), pytest.raises(StoreError, match="no store"):
        restore(spec.id)
    assert path.exists() and "kept for the next try" in caplog.text
    write_period(store, batch_for("2024-01-01"), run_id="retry")
    assert restore(spec.id).changes
    assert read_annotations(spec.id).annotations == read_stash(spec.id).annotations

"""Defects D1 to D8 of issue 10, one test each (D8 is covered by test_config_validate.py).

Each docstring says what used to happen; every test failed on the code before its fix."""

import json
import time
from typing import ClassVar

import dagster as dg
import numpy as np
import pytest
import zarr

from ref_assets.catalog import load_catalog
from ref_assets.cli import main
from ref_assets.definitions import build_definitions
from ref_assets.provenance import read_provenance
from ref_assets.providers.protocol import ProviderError
from ref_assets.providers.registry import installed_providers
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.specs import DatasetSpec
from ref_assets.store import commits as store_commits
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import DatasetStore, StoreError
from ref_assets_tests.conftest import step_failure

SECRET = "d3f3cts-s3cr3t"


class LeakyConstructorProvider(SyntheticProvider):
    """A provider whose constructor fails with its endpoint (credentials included) in the text,
    as a third-party client library's error would."""

    name: ClassVar[str] = "leaky_constructor"

    def __init__(self, spec: DatasetSpec) -> None:
        raise ValueError(f"cannot use endpoint {spec.params['endpoint']}")


def _instance_text(instance: dg.DagsterInstance, run_id: str) -> str:
    """Every event the instance stored for the run, serialized as stored."""
    return "\n".join(dg.serialize_value(entry) for entry in instance.all_logs(run_id))


def test_d1_an_all_nan_period_is_read_by_verify_provenance_export_and_sync(
    settings, register_providers, write_spec, materialize, tmp_path, monkeypatch, capsys
):
    """D1: an all-NaN period was committed with a record lacking minimum/mean/maximum (None is
    left out of the stored JSON), and the record model required them: `verify`, `provenance`,
    `provenance export` and `sync-instance` crashed with a pydantic ValidationError for the
    whole dataset."""
    directory = tmp_path / "archive"
    directory.mkdir()
    np.save(directory / "2024-01-01.npy", np.full((4, 6), np.nan, dtype="float32"))
    np.save(directory / "2024-01-02.npy", np.arange(24, dtype="float32").reshape(4, 6))
    register_providers("ref_assets_tests.example_providers:NpyArchiveProvider")
    write_spec(
        "ocean_t2m",
        provider="npy_archive",
        params={"directory": str(directory)},
        variables=[{"name": "t2m", "units": "degC"}],
    )
    assert materialize("ocean_t2m", "2024-01-01...2024-01-02").success
    capsys.readouterr()

    assert main(["verify", "ocean_t2m"]) == 0
    assert "ocean_t2m: 2 of 2 periods verified" in capsys.readouterr().out

    assert main(["provenance", "ocean_t2m", "2024-01-01"]) == 0
    assert "t2m [degC] float32 4x6  no finite values  NaN fraction 1.000" in (
        capsys.readouterr().out
    )
    assert main(["provenance", "ocean_t2m", "2024-01-02"]) == 0
    assert "min 0.0 mean 11.5 max 23.0  NaN fraction 0.000" in capsys.readouterr().out
    nan_stats = read_provenance("ocean_t2m", "2024-01-01").variables["t2m"]
    assert (nan_stats.minimum, nan_stats.mean, nan_stats.maximum) == (None, None, None)

    exported = tmp_path / "records"
    assert main(["provenance", "export", "ocean_t2m", str(exported)]) == 0
    assert "ocean_t2m: 2 records written" in capsys.readouterr().out
    stored = json.loads((exported / "2024-01-01.record.json").read_text())
    assert stored["variables"]["t2m"]["nan_fraction"] == 1.0
    assert "minimum" not in stored["variables"]["t2m"]

    home = tmp_path / "wiped_dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert main(["sync-instance", "ocean_t2m"]) == 0
    assert "ocean_t2m: 2 periods in the store, 2 materializations reported" in (
        capsys.readouterr().out
    )
    with dg.DagsterInstance.get() as wiped:
        assert wiped.get_materialized_partitions(dg.AssetKey("ocean_t2m")) == {
            "2024-01-01",
            "2024-01-02",
        }


def test_d2_a_storage_root_with_credentials_is_reported_and_never_shown(
    settings, write_spec, tmp_path, monkeypatch, capfd
):
    """D2: a storage root with credentials passed `config validate`, then every run failed with
    the unmasked URL in the console, the Dagster run database and the compute logs."""
    root = f"https://user:{SECRET}@storage.example/bucket"
    settings.config_file.write_text(f'[storage]\nroot = "{root}"\n')
    write_spec()

    assert main(["config", "validate"]) == 1
    out = capfd.readouterr().out
    assert SECRET not in out
    [line] = [line for line in out.splitlines() if line.startswith("error: storage.root")]
    assert "(from ref.toml): storage root https://***@storage.example/bucket holds" in line
    assert "credentials, which never belong in ref.toml" in line
    assert "AWS credential chain" in line
    assert "storage roots are local directories or s3://bucket/prefix" in line

    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert main(["materialize", "test_t2m", "--start", "2024-01-01"]) == 1
    console = capfd.readouterr()
    assert SECRET not in console.out + console.err
    assert "https://***@storage.example/bucket" in console.err  # the run failed, masked
    stored = [path for path in home.rglob("*") if path.is_file()]
    assert any(path.suffix == ".db" for path in stored)  # the run database is in there
    assert not [path for path in stored if SECRET.encode() in path.read_bytes()]

    with pytest.raises(StoreError) as raised:
        DatasetStore(root, "test_t2m")
    assert SECRET not in str(raised.value)
    assert "test_t2m: storage root https://***@storage.example/bucket" in str(raised.value)


def test_d3_a_provider_module_that_exits_on_import_is_skipped(
    settings, write_spec, register_providers, materialize, tmp_path, monkeypatch, capsys
):
    """D3: a provider module calling sys.exit() on import raised SystemExit (not an Exception)
    through the registry: `providers list`, `config validate`, unrelated materializations and
    the code location all exited silently with status 3."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "exiting_provider.py").write_text("import sys\n\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(plugins))
    register_providers("exiting_provider:ExitingProvider")
    write_spec()

    assert main(["providers", "list"]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if "exiting" in line]
    assert line.startswith("exiting_provider:ExitingProvider\tskipped\t")
    assert line.endswith("called sys.exit(3) on import")

    assert main(["config", "validate"]) == 1
    out = capsys.readouterr().out
    assert (
        "error: provider exiting_provider:ExitingProvider (ref.toml [[providers]] #1): "
        "called sys.exit(3) on import"
    ) in out
    assert "ok: dataset test_t2m" in out

    assert materialize("test_t2m", "2024-01-01").success  # the code location loads, runs run


def test_d4_periods_committed_before_a_write_failure_are_recorded_in_dagster(
    settings, write_spec, materialize, instance, monkeypatch
):
    """D4: when the writer raised (disk full, a lock timeout), Dagster recorded 0
    materializations although the periods committed before the failure were in the store:
    committed periods were reported only when a fetch had failed."""
    write_spec(runs={"commit_every": 1})
    commit, commits = store_commits.commit_rebasing, []

    def disk_full_on_the_third_commit(session, message):
        commits.append(message)
        if len(commits) == 3:
            raise OSError(28, "No space left on device")
        return commit(session, message)

    monkeypatch.setattr(store_commits, "commit_rebasing", disk_full_on_the_third_commit)
    result = materialize("test_t2m", "2024-01-01...2024-01-05", raise_on_error=False)

    failure = step_failure(result).step_failure_data
    description = failure.user_failure_data.description
    assert description.startswith(
        "test_t2m: writing stopped after 2 of 5 periods were committed (3 not written): "
        "StorageFailure: test_t2m: committing period 2024-01-03 failed: no space left"
    )
    assert description.endswith(
        "The committed periods are kept and recorded; once the cause is fixed, run the range "
        "again to write the others."
    )
    session = store_reader.session_for(DatasetStore(settings.storage_root, "test_t2m"))
    axis = store_reader.store_axis(session)
    in_store = {axis.period_at(i).key for i in store_reader.written_indices(session)}
    assert in_store == {"2024-01-01", "2024-01-02"}
    assert instance.get_materialized_partitions(dg.AssetKey("test_t2m")) == in_store


def test_d5_errors_of_a_provider_constructor_are_masked(
    settings, write_spec, register_providers, materialize, instance, capsys
):
    """D5: what a provider's constructor raised reached the step failure, the run's events and
    the console unmasked (the same error raised while fetching was masked)."""
    register_providers("ref_assets_tests.test_defects:LeakyConstructorProvider")
    write_spec(
        "leaky",
        provider="leaky_constructor",
        params={"endpoint": f"https://user:{SECRET}@api.example/v1"},
    )
    spec = load_catalog(settings).get("leaky")
    with pytest.raises(ProviderError) as raised:
        installed_providers().create(spec)
    assert str(raised.value) == (
        "leaky: provider 'leaky_constructor' could not be built from the spec: ValueError: "
        "cannot use endpoint https://***@api.example/v1"
    )
    assert raised.value.__cause__ is None and raised.value.__suppress_context__

    result = materialize("leaky", "2024-01-01", raise_on_error=False)
    assert "cannot use endpoint https://***@api.example/v1" in (
        step_failure(result).step_failure_data.error.to_string()
    )
    assert SECRET not in _instance_text(instance, result.run_id)

    assert main(["config", "validate"]) == 1
    out = capsys.readouterr().out
    assert SECRET not in out
    assert "cannot use endpoint https://***@api.example/v1" in out


def test_d6_secret_looking_spec_attributes_are_masked_in_the_store_and_the_asset(
    settings, write_spec, materialize, instance
):
    """D6: spec `attributes` such as `api_token` or a URL with credentials were written unmasked
    into the store's attributes and the asset's description and metadata (the record masked
    them)."""
    url = f"https://user:{SECRET}@data.example/t2m"
    write_spec(
        description=f"Copied from {url}",
        attributes={"api_token": SECRET, "source": url},
        variables=[
            {
                "name": "t2m",
                "units": "degC",
                "attributes": {"standard_name": "air_temperature", "comment": f"see {url}"},
            }
        ],
    )
    result = materialize("test_t2m", "2024-01-01")

    group = zarr.open_group(
        store_reader.session_for(DatasetStore(settings.storage_root, "test_t2m")).store, mode="r"
    )
    shown = json.dumps([dict(group.attrs), dict(group["t2m"].attrs)])
    assert SECRET not in shown
    assert group.attrs["api_token"] == "***"
    assert group.attrs["source"] == "https://***@data.example/t2m"
    assert group.attrs["summary"] == "Copied from https://***@data.example/t2m"
    assert group["t2m"].attrs["comment"] == "see https://***@data.example/t2m"

    asset = build_definitions().resolve_assets_def("test_t2m")
    key = dg.AssetKey("test_t2m")
    assert SECRET not in asset.descriptions_by_key[key]
    assert "https://***@data.example/t2m" in asset.descriptions_by_key[key]
    assert SECRET not in json.dumps(asset.metadata_by_key[key]["dataset/variables"].value)
    run = instance.get_run_by_id(result.run_id)
    assert SECRET not in dg.serialize_value(instance.get_job_snapshot(run.job_snapshot_id))


BILLION_LAUGHS = """\
id: bomb
title: Bomb
provider: synthetic
period: daily
start: 2024-01-01
variables: [{name: t2m, units: degC, attributes: {standard_name: air_temperature}}]
params:
  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_d7_a_yaml_alias_bomb_is_refused_quickly_and_the_other_specs_load(settings, write_spec):
    """D7: a 664-byte spec with nested YAML aliases under `params` loaded as a valid spec, and
    the code location then walked its 9**9 expanded values (masking, fingerprints) and hung."""
    write_spec()
    bomb = settings.user_spec_dir / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)
    oversized = settings.user_spec_dir / "oversized.yaml"
    oversized.write_text("id: oversized\ndescription: " + "x" * (2 << 20) + "\n")

    started = time.monotonic()
    catalog = load_catalog(settings)
    errors = {error.path.name: str(error) for error in catalog.errors}
    assert errors["bomb.yaml"] == (
        f"{bomb}: line 9, column 10: YAML aliases/anchors are not allowed in specs (*a); write "
        "the repeated values out in full"
    )
    assert errors["oversized.yaml"].startswith(f"{oversized}: the file is 2,097,180 bytes; a ")
    assert sorted(catalog.specs) == ["demo_air_temperature", "test_t2m"]
    loaded = {asset.key.to_user_string() for asset in build_definitions().assets}
    # the code location loads the others, each with its source
    assert loaded == {
        "demo_air_temperature",
        "test_t2m",
        "source/demo_air_temperature",
        "source/test_t2m",
        "stac/catalog",
    }
    assert time.monotonic() - started < 10

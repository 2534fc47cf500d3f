"""Shared fixtures: a temporary configuration directory with its own stores, spec files written
the way operators write them, and real in-process Dagster materializations."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ref_assets.config import Settings, load_settings
from ref_assets.definitions import build_definitions
from ref_assets.defs.assets import range_run_tags
from ref_assets.providers.registry import discover_providers
from ref_assets.store import reader as store_reader
from ref_assets_tests.s3_server import S3Server


def spec_dict(dataset_id: str = "test_t2m", **overrides) -> dict:
    """A valid synthetic spec (small grid), with fields replaced by ``overrides``."""
    spec = {
        "id": dataset_id,
        "title": f"Test dataset {dataset_id}",
        "provider": "synthetic",
        "params": {"bbox": [0.0, 40.0, 6.0, 44.0], "resolution": 0.5, "seed": 3, "land_only": True},
        "period": "daily",
        "start": "2024-01-01",
        "variables": [
            {"name": "t2m", "units": "degC", "attributes": {"standard_name": "air_temperature"}}
        ],
        "storage": {"time_block": 8},
        "chunks": {"y": 4, "x": 6},
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A fresh REF_CONFIGURATION (with a datasets/ folder) whose stores live inside it."""
    configuration = tmp_path / "ref"
    (configuration / "datasets").mkdir(parents=True)
    monkeypatch.setenv("REF_CONFIGURATION", str(configuration))
    monkeypatch.delenv("REF_STORAGE_ROOT", raising=False)
    return load_settings()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterable[S3Server]:
    """A real S3-compatible server (SeaweedFS `weed mini`) on loopback, for the session."""
    with S3Server.started(tmp_path_factory.mktemp("s3-server")) as server:
        yield server


@pytest.fixture
def s3_settings(
    settings: Settings, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, request
) -> Settings:
    """`settings` with the stores on the S3 server (a prefix of its own per test), reached
    through the AWS variables, as a deployment would."""
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)
    monkeypatch.setenv("REF_STORAGE_ROOT", s3_server.root(f"stores/{prefix}"))
    return load_settings()


@pytest.fixture
def write_spec(settings: Settings) -> Callable[..., dict]:
    """Write a user spec file into $REF_CONFIGURATION/datasets and return its fields."""

    def write(dataset_id: str = "test_t2m", **overrides) -> dict:
        spec = spec_dict(dataset_id, **overrides)
        path = settings.user_spec_dir / f"{dataset_id}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return spec

    return write


@pytest.fixture
def instance() -> Iterable[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def materialize(
    settings: Settings, instance: dg.DagsterInstance
) -> Callable[..., dg.ExecuteInProcessResult]:
    """Materialize a partition, or a range of them, of a dataset asset as one real Dagster run."""

    def run(dataset_id: str, partition: str, *, raise_on_error: bool = True):
        """``partition`` is a key, or ``FIRST...LAST`` for a range in one run."""
        defs = build_definitions()  # the configuration as it is now (tests may edit ref.toml)
        job = defs.resolve_implicit_job_def_def_for_assets([dg.AssetKey(dataset_id)])
        first, _, last = partition.partition("...")
        selection = {"partition_key": first} if not last else {"tags": range_run_tags(first, last)}
        return job.execute_in_process(
            asset_selection=[dg.AssetKey(dataset_id)],
            instance=instance,
            raise_on_error=raise_on_error,
            **selection,
        )

    return run


@pytest.fixture
def synthetic_dataset(settings: Settings):
    """The default test spec, its store (not created yet) and a maker of its prepared periods
    (``batch_for("2024-01-02")``), for tests that drive the store without Dagster."""
    from ref_assets.batch import fetch_batch
    from ref_assets.providers.synthetic import SyntheticProvider
    from ref_assets.specs import DatasetSpec
    from ref_assets.store.repository import DatasetStore

    spec = DatasetSpec.model_validate(spec_dict())
    provider = SyntheticProvider(spec)

    def batch_for(key: str):
        return fetch_batch(spec, provider, spec.period_for_key(key))

    return spec, DatasetStore(settings.storage_root, spec.id), batch_for


def stored_checksum(session, axis, index: int) -> str:
    """The output checksum of one stored period, recomputed from the store."""
    [(_, checksum)] = store_reader.stored_checksums(session, axis, [index])
    return checksum


@pytest.fixture
def register_providers(settings: Settings, request: pytest.FixtureRequest) -> Callable[..., None]:
    """List providers in ref.toml as ``[[providers]]`` tables (``package.module:Class``) and
    start the per-process provider registry afresh, as a new code location would."""

    def register(*references: str) -> None:
        settings.config_file.write_text(
            "".join(f'[[providers]]\nprovider = "{reference}"\n' for reference in references)
        )
        discover_providers.cache_clear()

    request.addfinalizer(discover_providers.cache_clear)
    return register


def step_failure(result: dg.ExecuteInProcessResult) -> dg.DagsterEvent:
    """The one step failure of a failed run (``.step_failure_data`` holds error and metadata)."""
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return failure

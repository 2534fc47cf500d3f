"""Deployment modes end to end: the instance `ref-assets instance init --mode` writes, the real
``dagster-daemon run`` on it, and a backfill queued with `ref-assets backfill` whose runs (the
default run launcher's subprocesses) write one S3 store at once.

The production instance runs on a real PostgreSQL server (`postgres_server`), the store on the
test S3 server (`s3_server`). The dataset's provider (`RendezvousProvider`) declares a pool limit
of 2 and makes each fetch wait until another one is in progress: two runs fetch, then write,
side by side, whatever their start-up takes, and the runs' events show no more than 2 fetch steps
at once, and no more than 2 runs of the dataset in progress at once (the ``ref_assets/dataset``
tag limit). The cluster config loads with its Docker run launcher; the Kubernetes values
(deploy/kubernetes/values.yaml) carry the production config's limits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.storage.tags import BACKFILL_ID_TAG

from ref_assets.cli import main
from ref_assets.config import load_settings, storage_root_problem
from ref_assets.definitions import build_definitions
from ref_assets.defs.instance_init import config_mode, init_instance, instance_config
from ref_assets.pools import PoolLimit, configured_pools, pool_limits
from ref_assets.providers.chirps3 import Chirps3Provider
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import DatasetStore
from ref_assets.verification import verify_dataset
from ref_assets_tests.conftest import spec_dict
from ref_assets_tests.example_providers import RendezvousProvider
from ref_assets_tests.postgres_server import PostgresServer, postgres_server
from ref_assets_tests.processes import stop_process_group
from ref_assets_tests.test_crash import check_whole_or_absent

REPOSITORY = Path(__file__).resolve().parents[1]
DEADLINE_SECONDS = 240.0
DATASET = "east"
POOL = "rendezvous"  # the provider's name
POOL_LIMIT = 2  # the provider's
KEYS = [f"2024-01-0{day}" for day in range(1, 5)]  # 4 daily partitions, one per run


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def pooled_dataset(write_spec, register_providers, tmp_path) -> tuple[dict, Path]:
    """The dataset's spec fields and the rendezvous directory its fetches meet in."""
    register_providers("ref_assets_tests.example_providers:RendezvousProvider")
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    fields = write_spec(
        DATASET,
        provider="rendezvous",
        end="2024-01-31",
        params={
            "bbox": [0.0, 40.0, 2.0, 42.0],
            "resolution": 0.5,
            "seed": 3,
            "rendezvous": str(rendezvous),
            "parties": POOL_LIMIT,
            "wait_seconds": 20,  # a guard: every fetch has a partner
        },
        runs={"max_partitions_per_run": 1},
    )
    return fields, rendezvous


def run_daemon(home: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as output:
        return subprocess.Popen(
            [
                str(Path(sys.executable).parent / "dagster-daemon"),
                *("run", "-w", str(REPOSITORY / "workspace.yaml")),
            ],
            cwd=home,
            env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with its code server
        )


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` intervals that overlap at one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = peak = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        current += step
        peak = max(peak, current)
    return peak


def event_intervals(instance, run_ids, start, ends, step=None) -> list[tuple[float, float]]:
    """Each run's span from its ``start`` event to one of its ``ends`` (of ``step`` only)."""
    intervals = []
    for run_id in run_ids:
        records = [
            record
            for record in instance.all_logs(run_id, of_type={start, *ends})
            if step is None or record.step_key == step
        ]
        starts = [r.timestamp for r in records if r.dagster_event_type == start]
        stops = [r.timestamp for r in records if r.dagster_event_type in ends]
        assert len(starts) == len(stops) == 1, (run_id, starts, stops)
        intervals.append((starts[0], stops[0]))
    return intervals


def backfill_through_the_daemon(home: Path, tmp_path: Path) -> dict:
    """Queue the dataset's backfill, let the daemon run it; what the runs recorded.

    Done when every run of the backfill has ended and either one failed or every partition is
    materialized (the backfill's own status follows on the daemon's next backfill tick, up to
    30 s later, and says nothing more)."""
    log = tmp_path / "daemon.log"
    began = time.monotonic()
    daemon = run_daemon(home, log)
    try:
        assert main(["backfill", DATASET, "--json", "--start", KEYS[0], "--end", KEYS[-1]]) == 0
        with dg.DagsterInstance.get() as instance:
            [backfill] = instance.get_backfills()
            deadline = time.monotonic() + DEADLINE_SECONDS
            while True:
                runs = instance.get_runs(
                    filters=dg.RunsFilter(tags={BACKFILL_ID_TAG: backfill.backfill_id})
                )
                materialized = instance.get_materialized_partitions(dg.AssetKey(DATASET))
                failed = [run.run_id for run in runs if run.status != dg.DagsterRunStatus.SUCCESS]
                ended = runs and all(run.is_finished for run in runs)
                if ended and (failed or materialized == set(KEYS)):
                    break
                if time.monotonic() > deadline:
                    tail = "\n".join(log.read_text().splitlines()[-40:])
                    pytest.fail(f"backfill unfinished after {DEADLINE_SECONDS:.0f} s:\n{tail}")
                time.sleep(0.5)
            elapsed = time.monotonic() - began
            run_ids = [run.run_id for run in runs]
            # The pooled steps: the dataset's fetch-and-write.
            fetches = event_intervals(
                instance,
                run_ids,
                dg.DagsterEventType.STEP_START,
                {dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE},
                step=DATASET,
            )
            run_spans = event_intervals(
                instance,
                run_ids,
                dg.DagsterEventType.RUN_START,
                {dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE},
            )
            of_dataset = instance.get_runs(
                filters=dg.RunsFilter(tags={"ref_assets/dataset": DATASET})
            )
            events = [repr(record) for run_id in run_ids for record in instance.all_logs(run_id)]
            pool = instance.event_log_storage.get_concurrency_info(POOL)
    finally:
        stop_process_group(daemon, grace=30)
        # Its code servers wait for their runs to end; a failed test leaves none behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGKILL)
    return {
        "runs": run_ids,
        "runs_of_dataset": sorted(run.run_id for run in of_dataset),
        "failed": failed,
        "materialized": materialized,
        "steps_at_once": most_at_once(fetches),
        "runs_at_once": most_at_once(run_spans),
        "pool_limit": pool.slot_count,
        "pool_claimed": pool.active_slot_count,
        "seconds": elapsed,
        # From queuing the backfill to its last run's end: what the instance costs, without
        # the daemon's start.
        "runs_seconds": max(end for _, end in run_spans) - backfill.backfill_timestamp,
        "events": events,
        "daemon_log": log.read_text(),
    }


def test_a_backfill_through_the_daemon_writes_one_s3_store_from_runs_side_by_side(
    postgres, s3_server, s3_settings, pooled_dataset, tmp_path, monkeypatch, capsys
):
    """Issue 14's deployment: the production instance on PostgreSQL, a multi-run backfill
    through the real daemon, two run workers writing one S3 store at once, within the
    dataset's run limit and its pool's limit, and no credential in what the runs logged."""
    fields, rendezvous = pooled_dataset
    for name, value in postgres.environment().items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert main(["instance", "init", "--mode", "production"]) == 0
    printed = capsys.readouterr().out
    assert "dagster.yaml: written (production mode)" in printed
    assert f"pool {POOL}: {POOL_LIMIT} at once (provider {POOL}); {DATASET}" in printed
    assert postgres.password not in (home / "dagster.yaml").read_text()
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"

    outcome = backfill_through_the_daemon(home, tmp_path)
    events, daemon_log = outcome.pop("events"), outcome.pop("daemon_log")
    met = sorted(path.stem for path in rendezvous.glob("*.met"))
    print(
        f"4 runs of 1 period on PostgreSQL and S3 in {outcome['runs_seconds']:.1f} s from "
        f"queuing to the last run's end ({outcome['seconds']:.1f} s with the daemon's start); "
        f"{outcome}"
    )

    assert outcome["failed"] == [], daemon_log[-3000:]
    assert outcome["materialized"] == set(KEYS)
    assert len(outcome["runs"]) == 4  # max_partitions_per_run: 1
    assert sorted(outcome["runs"]) == outcome["runs_of_dataset"]  # tagged for the run limits
    # Every period whole in the S3 store: its record, its checksum, its exact values.
    store = DatasetStore(s3_settings.storage_root, DATASET)
    assert store.on_s3
    session = store_reader.session_for(store)
    spec = DatasetSpec.model_validate(fields)
    assert store_reader.written_indices(session) == [
        spec.time_index(spec.period_for_key(key)) for key in KEYS
    ]
    # The values as the provider makes them, with no partner to wait for (parties: 1).
    alone = tmp_path / "alone"
    alone.mkdir()
    params = {**fields["params"], "rendezvous": str(alone), "parties": 1}
    provider = RendezvousProvider(DatasetSpec.model_validate({**fields, "params": params}))
    expected = {
        key: provider.fetch(spec.period_for_key(key)).data.t2m.values.astype("float32")
        for key in KEYS
    }
    assert check_whole_or_absent(s3_settings, spec, expected) == set(KEYS)
    assert all(check.ok for check in verify_dataset(DATASET, settings=s3_settings))
    # The pool's limit, set by `instance init` from the specs, held; fetches met (each waited
    # for another in progress), so two runs wrote at once; every slot given back.
    assert outcome["pool_limit"] == POOL_LIMIT
    assert met, outcome
    assert outcome["steps_at_once"] == POOL_LIMIT, outcome
    assert outcome["pool_claimed"] == 0
    # The production config's `ref_assets/dataset` tag limit: 2 runs of the dataset at once.
    assert 1 <= outcome["runs_at_once"] <= 2, outcome
    # No credential in what the runs and the daemon logged: events, compute logs, the daemon's.
    written = b"".join(path.read_bytes() for path in home.rglob("*") if path.is_file())
    for secret in (s3_server.access_key, s3_server.secret_key, postgres.password):
        assert secret not in "\n".join([*events, daemon_log])
        assert secret.encode() not in written


def test_init_refuses_to_replace_a_config_of_another_mode(settings, tmp_path):
    home = tmp_path / "dagster_home"
    assert init_instance(home, "local").mode == "local"
    with pytest.raises(Exception, match=r"is the local config, not the production one.*mv "):
        init_instance(home, "production")
    assert config_mode((home / "dagster.yaml").read_text()) == "local"
    # Edited by the operator: custom, still kept and used.
    (home / "dagster.yaml").write_text(instance_config("local") + "\n# tuned\n")
    assert init_instance(home).mode == "custom"


def test_init_sets_the_pools_limits_and_keeps_the_operators_others(tmp_path):
    home = tmp_path / "dagster_home"
    fetched = PoolLimit("chc", 1, "provider chirps3", ("rain",))
    archive = PoolLimit("local_files", None, "none", ("archive",))
    assert init_instance(home, "local", [fetched, archive]).pools_changed == ("chc",)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("chc", 4)  # as in the UI
        storage.set_concurrency_slots("local_files", 3)
    assert init_instance(home, None, [fetched, archive]).pools_changed == ("chc",)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        assert storage.get_concurrency_info("chc").slot_count == 1
        assert storage.get_concurrency_info("local_files").slot_count == 3
    assert init_instance(home, None, [fetched, archive]).pools_changed == ()


def test_the_cluster_config_loads_with_its_docker_run_launcher(postgres, tmp_path, monkeypatch):
    from dagster_docker import DockerRunLauncher

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_config("cluster"))
    environment = {
        **postgres.environment(),
        "DAGSTER_RUN_IMAGE": "ref-assets:latest",
        "DAGSTER_RUN_NETWORK": "ref-assets",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert config["run_launcher"]["class"] == "DockerRunLauncher"
    assert config["storage"]["postgres"]["postgres_db"]["password"] == {
        "env": "DAGSTER_PG_PASSWORD"
    }
    instance = dg.DagsterInstance.from_config(str(home))
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    launcher = instance.run_launcher
    assert isinstance(launcher, DockerRunLauncher)
    assert launcher.image == "ref-assets:latest" and launcher.networks == ["ref-assets"]
    assert "DAGSTER_PG_PASSWORD" in launcher.env_vars  # passed by name, from the daemon's env
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 8


def test_pool_limits_come_from_specs_then_providers():
    chirps = dict(spec_dict("rain"), provider="chirps3")
    from ref_assets.specs import DatasetSpec

    rain = DatasetSpec.model_validate(chirps)
    classes = {"chirps3": Chirps3Provider}
    [pool] = pool_limits([rain], classes)
    assert (pool.pool, pool.limit, pool.origin) == ("chirps3", 1, "provider chirps3")
    relaxed = rain.model_copy(update={"runs": rain.runs.model_copy(update={"pool_limit": 3})})
    assert pool_limits([relaxed], classes)[0].limit == 3
    # Two specs sharing a pool: the smaller limit wins.
    other = DatasetSpec.model_validate(dict(spec_dict("other"), runs={"pool": "chirps3"}))
    [shared] = pool_limits([rain, other], classes)
    assert (shared.limit, shared.datasets) == (1, ("other", "rain"))
    [unlimited] = pool_limits([other.model_copy(update={"provider": "synthetic"})], {})
    assert unlimited.limit is None


def test_each_dataset_asset_is_in_its_pool(settings, write_spec):
    write_spec("rain", provider="chirps3", runs={"pool": "chc"})
    write_spec("plain")
    defs = build_definitions()
    # What the UI shows on each asset (and counts under Deployment > Concurrency).
    assert defs.get_assets_def("rain").op.pool == "chc"
    assert defs.get_assets_def("plain").op.pool == "synthetic"
    pools = {pool.pool: pool for pool in configured_pools(load_settings())}
    assert (pools["chc"].limit, pools["chc"].origin) == (1, "provider chirps3")
    assert pools["synthetic"].limit is None  # the demo's and plain's: nothing upstream to spare


def env_variables(config) -> set[str]:
    """Every variable a Dagster config reads (``{env: NAME}``), and the run launcher passes on."""
    if isinstance(config, dict):
        if set(config) == {"env"}:
            return {config["env"]}
        found = set().union(*(env_variables(value) for value in config.values()))
        return found | set(config.get("env_vars", []))
    if isinstance(config, list):
        return set().union(*(env_variables(value) for value in config))
    return set()


def test_the_compose_example_gives_every_process_what_the_cluster_config_reads():
    compose = yaml.safe_load((REPOSITORY / "deploy" / "docker-compose.yaml").read_text())
    needed = env_variables(yaml.safe_load(instance_config("cluster")))
    assert {"DAGSTER_PG_PASSWORD", "DAGSTER_RUN_IMAGE", "REF_STORAGE_ROOT"} <= needed
    for name in ("code", "webserver", "daemon"):
        service = compose["services"][name]
        assert needed <= set(service["environment"]), name
        assert service["image"] == service["environment"]["DAGSTER_RUN_IMAGE"]
    # The runs' containers mount the volume the cluster config names, which compose creates.
    launcher = yaml.safe_load(instance_config("cluster"))["run_launcher"]["config"]
    [volume] = launcher["container_kwargs"]["volumes"]
    assert compose["volumes"][volume.split(":")[0]]["name"] == volume.split(":")[0]
    dockerfile = (REPOSITORY / "deploy" / "Dockerfile").read_text()
    assert "instance config --mode cluster" in dockerfile


def test_no_postgresql_skips_under_pytest_and_fails_under_dev_test(tmp_path, monkeypatch):
    from ref_assets_tests import postgres_server as server_module

    monkeypatch.setattr(server_module, "BINARIES", tmp_path)  # no postgres installed there
    monkeypatch.delenv("REF_POSTGRES_TEST", raising=False)
    skipped = pytest.raises(pytest.skip.Exception, match="apt-get install -y postgresql")
    with skipped, postgres_server():
        pass
    monkeypatch.setenv("REF_POSTGRES_TEST", "required")  # as ./dev test sets it
    with pytest.raises(pytest.fail.Exception, match="cannot start"), postgres_server():
        pass


# The chart's value names for the instance's `concurrency` settings (its _concurrency.tpl
# renders them under these dagster.yaml names).
HELM_CONCURRENCY_NAMES = {
    "maxConcurrentRuns": "max_concurrent_runs",
    "tagConcurrencyLimits": "tag_concurrency_limits",
    "defaultLimit": "default_limit",
    "granularity": "granularity",
    "opGranularityRunBuffer": "op_granularity_run_buffer",
}


def keys_of(tree) -> set[str]:
    """Every mapping key anywhere in a parsed YAML document."""
    if isinstance(tree, dict):
        return set(tree).union(*(keys_of(value) for value in tree.values()))
    if isinstance(tree, list):
        return set().union(*(keys_of(value) for value in tree))
    return set()


def test_the_kubernetes_values_hold_the_production_settings_and_no_credential():
    values = yaml.safe_load((REPOSITORY / "deploy" / "kubernetes" / "values.yaml").read_text())
    production = yaml.safe_load(instance_config("production"))

    # The run queue and the pools, as the chart renders them into dagster.yaml.
    assert values["concurrency"]["enabled"] is True
    rendered = {
        part: {HELM_CONCURRENCY_NAMES[name]: value for name, value in settings.items()}
        for part, settings in values["concurrency"].items()
        if part != "enabled"
    }
    assert rendered == production["concurrency"]
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == production["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert "config" not in coordinator  # the chart refuses limits in both places
    assert values["pythonLogs"] == {
        "managedPythonLoggers": production["python_logs"]["managed_python_loggers"],
        "pythonLogLevel": production["python_logs"]["python_log_level"],
    }
    assert values["telemetry"] == production["telemetry"]
    assert values["additionalInstanceConfig"] == {
        "auto_materialize": production["auto_materialize"]
    }
    assert values["runLauncher"]["type"] == "K8sRunLauncher"

    # PostgreSQL: the production driver; the password from a Secret, never from the values.
    postgres = values["postgresql"]
    assert (
        postgres["postgresqlScheme"] == production["storage"]["postgres"]["postgres_db"]["scheme"]
    )
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"]
    [code] = values["dagster-user-deployments"]["deployments"]
    env = code["env"]
    # `ref-assets instance init` in the code location's pod reaches the same database.
    assert (env["DAGSTER_PG_HOST"], env["DAGSTER_PG_USER"], env["DAGSTER_PG_DB"]) == (
        postgres["postgresqlHost"],
        postgres["postgresqlUsername"],
        postgres["postgresqlDatabase"],
    )
    assert int(env["DAGSTER_PG_PORT"]) == postgres["service"]["port"]

    # The stores on S3, the keys from a Secret; no credential anywhere in the file.
    assert env["REF_STORAGE_ROOT"].startswith("s3://")
    assert storage_root_problem(env["REF_STORAGE_ROOT"]) is None
    assert {"REF_CONFIGURATION", "REF_STORAGE_ROOT"} <= set(env)
    assert code["envSecrets"] and code["includeConfigInLaunchedRuns"] == {"enabled": True}
    credentials = {"postgresqlPassword", "DAGSTER_PG_PASSWORD", "AWS_ACCESS_KEY_ID"}
    assert not (credentials | {"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}) & keys_of(values)

    # The code server the image starts (deploy/Dockerfile's command) is the one the chart starts.
    dockerfile = (REPOSITORY / "deploy" / "Dockerfile").read_text()
    command = json.loads(dockerfile.split("\nCMD ", 1)[1].splitlines()[0])
    assert command[command.index("-m") :] == code["codeServerArgs"]
    assert str(code["port"]) == command[command.index("-p") + 1]

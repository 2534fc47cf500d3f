"""Code run in spawned child processes by the tests (it must be importable by module name)."""

from __future__ import annotations

import os


def materialize_range(configuration_dir: str, dataset_id: str, keys: list[str], barrier) -> bool:
    """Materialize ``keys`` (consecutive partitions) as one Dagster run, once every worker has
    reached the barrier; return whether the run succeeded."""
    os.environ["REF_CONFIGURATION"] = configuration_dir
    import dagster as dg

    from ref_assets.definitions import build_definitions
    from ref_assets.defs.assets import range_run_tags

    key = dg.AssetKey(dataset_id)
    job = build_definitions().resolve_implicit_job_def_def_for_assets([key])
    barrier.wait()
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            asset_selection=[key],
            instance=instance,
            raise_on_error=False,
            tags=range_run_tags(keys[0], keys[-1]),
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
        )
    return result.success


def write_periods(storage_root: str, spec_fields: dict, keys: list[str], barrier) -> None:
    """Write periods through the store API as fast as possible (maximal commit contention)."""
    from ref_assets.batch import fetch_batch
    from ref_assets.providers.synthetic import SyntheticProvider
    from ref_assets.specs import DatasetSpec
    from ref_assets.store.repository import DatasetStore
    from ref_assets.store.writer import write_period

    spec = DatasetSpec.model_validate(spec_fields)
    provider = SyntheticProvider(spec)
    batches = [fetch_batch(spec, provider, period) for period in map(spec.period_for_key, keys)]
    store = DatasetStore(storage_root, spec.id)
    barrier.wait()
    for batch in batches:
        write_period(store, batch, run_id=f"worker-{os.getpid()}")


def write_periods_on_machine(
    storage_root: str, spec_fields: dict, share: tuple[str, list[str]], barrier
) -> None:
    """`write_periods` as if on the machine whose temporary directory is ``share[0]``: writers
    on one machine take turns to commit (`DatasetStore.commit_turn`, a lock there), writers on
    others race by compare-and-set."""
    import tempfile

    tempfile.tempdir = share[0]
    write_periods(storage_root, spec_fields, share[1], barrier)


def write_until_killed(storage_root: str, spec_json: str, keys: list[str]) -> None:
    """Entry point of ``python -c``: announce readiness on stdout, then write periods in a loop
    until the parent kills this process."""
    import json
    import sys

    from ref_assets.batch import fetch_batch
    from ref_assets.providers.synthetic import SyntheticProvider
    from ref_assets.specs import DatasetSpec
    from ref_assets.store.repository import DatasetStore
    from ref_assets.store.writer import write_period

    spec = DatasetSpec.model_validate(json.loads(spec_json))
    provider = SyntheticProvider(spec)
    store = DatasetStore(storage_root, spec.id)
    print("ready", flush=True)
    sys.stdout.close()
    for period in map(spec.period_for_key, keys):
        write_period(store, fetch_batch(spec, provider, period), run_id=f"killable-{os.getpid()}")


def rewrite_killed_at(configuration_dir: str, purpose: str, spec_json: str, kill_at: str) -> None:
    """Entry point of ``python -c``: run a rebuild (or a rechunk to 2 x 3 chunks) of the spec,
    SIGKILLing this process when it reaches stage ``kill_at`` (`ref_assets.rebuild.STAGES`), or
    with ``fill:N`` once N periods of the fill are committed."""
    import json
    import signal

    os.environ["REF_CONFIGURATION"] = configuration_dir
    from ref_assets.config import load_settings
    from ref_assets.providers.synthetic import SyntheticProvider
    from ref_assets.rebuild import rebuild_dataset, rechunk_dataset
    from ref_assets.specs import DatasetSpec
    from ref_assets.store.repository import DatasetStore

    spec = DatasetSpec.model_validate(json.loads(spec_json))
    settings = load_settings()
    store = DatasetStore(settings.storage_root, spec.id)

    def on_stage(stage: str) -> None:
        if stage == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_progress(done: int, total: int) -> None:
        if kill_at.startswith("fill:") and done >= int(kill_at.removeprefix("fill:")):
            os.kill(os.getpid(), signal.SIGKILL)

    run_id = f"killed-at-{kill_at}"
    if purpose == "rebuild":
        provider = SyntheticProvider(spec)
        rebuild_dataset(
            spec,
            provider,
            store,
            settings=settings,
            run_id=run_id,
            on_stage=on_stage,
            on_progress=on_progress,
        )
    else:
        chunks = {"y": 2, "x": 3}
        rechunk_dataset(
            spec, store, chunks=chunks, settings=settings, run_id=run_id, on_stage=on_stage
        )
    raise SystemExit(f"the {purpose} ended without reaching stage {kill_at}")


def validated_run_stopping(configuration_dir: str, dataset_id: str, first: str, last: str, at: str):
    """Entry point of ``python -c``: a Dagster range run of a ``checks.publish: validated``
    dataset that stops ``at`` "commit" (its first commit on the run's branch) or "publish"
    (everything written, checked and taken back; ``main`` not yet moved), prints "stopped" and
    waits for the parent to kill it."""
    os.environ["REF_CONFIGURATION"] = configuration_dir
    import time

    import dagster as dg

    from ref_assets import publishing
    from ref_assets.definitions import build_definitions
    from ref_assets.defs.assets import range_run_tags
    from ref_assets.store.writer import observing_commits

    def stop(*args, **kwargs) -> None:
        print("stopped", flush=True)
        time.sleep(600)

    if at == "publish":
        publishing.publish = stop
    key = dg.AssetKey(dataset_id)
    job = build_definitions().resolve_implicit_job_def_def_for_assets([key])
    with (
        observing_commits(stop if at == "commit" else lambda receipts: None),
        dg.DagsterInstance.ephemeral() as instance,
    ):
        job.execute_in_process(
            asset_selection=[key], instance=instance, tags=range_run_tags(first, last)
        )

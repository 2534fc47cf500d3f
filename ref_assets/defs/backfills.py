"""Backfills queued for the daemon, tagged so that the instance's run limits apply to them.

A backfill launched from the UI carries only the tags typed into its dialog; one submitted here
carries ``ref_assets/dataset`` and ``ref_assets/provider``, which the production instance's
``tag_concurrency_limits`` count (at most 2 runs of a dataset, 4 of a provider at once). Its runs
are cut by the dataset's `runs.max_partitions_per_run` (the asset's backfill policy), queued, and
launched by the daemon's run launcher (subprocesses, or containers in the cluster mode).
"""

from __future__ import annotations

import time

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.execution.backfill import PartitionBackfill
from dagster._core.utils import make_new_backfill_id

from ref_assets.defs.assets import build_dataset_asset
from ref_assets.defs.sensors import DATASET_TAG, PROVIDER_TAG
from ref_assets.providers.registry import ProviderRegistry
from ref_assets.specs import DatasetSpec

# A run's steps (the fetch-and-write step, a single period's check) in the run worker itself:
# the default executor spawns a process per step, which imports Dagster and ref_assets again
# (measured: 20 s a step on a loaded 2-core machine), for steps that run one after the other.
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}


def submit_backfill(
    instance: dg.DagsterInstance, spec: DatasetSpec, first: str, last: str
) -> PartitionBackfill:
    """Queue a backfill of ``spec``'s partitions ``first``..``last`` (period keys) in
    ``instance``, for its daemon to run."""
    asset = build_dataset_asset(spec, ProviderRegistry())
    keys = asset.partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(first, last))
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=AssetGraph.from_assets([asset]),  # the partitions are all it needs
        partition_names=keys,
        asset_selection=[asset.key],
        backfill_timestamp=time.time(),
        tags={DATASET_TAG: spec.id, PROVIDER_TAG: spec.provider},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=f"{spec.id} {first}..{last}",
        description=None,
        run_config=IN_PROCESS,
    )
    instance.add_backfill(backfill)
    return backfill

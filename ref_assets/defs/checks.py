"""Partitioned asset checks: every stored period of every dataset checked (`ref_assets.quality`).

One blocking check per dataset, ``period_quality``, evaluated per partition: grid and
coordinates as the spec gives, NaN fraction within ``checks.max_nan_fraction``, values within the
vocabulary's ``valid_range``, stored values matching the record's checksum. Its metadata lists each
sub-check (``grid_matches_spec`` ... as booleans, with their numbers). One evaluation per
partition, not one per sub-check: each is an event Dagster stores, and a range run's cost grows
with them (see README, Checks).

Where it is evaluated:
- a single-partition run: the check's own step, after the asset's step (blocking: downstream
  assets of the run do not start if it fails);
- a range run: inside the asset's step, right after each commit (`quality_evaluations`, the same
  code), since a range run yields no output and Dagster would skip the check's step;
- the job ``check_<dataset>``: the check's step alone, re-reading stored periods (the run's
  partition or range; with neither, every stored period or the config's ``first``..``last``).
"""

import warnings
from collections.abc import Iterator, Sequence

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,  # no public name in dagster 1.13
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from ref_assets.defs.io_manager import IcechunkIOManager
from ref_assets.defs.resources import PackagedFilesResource
from ref_assets.quality import PeriodQuality, check_stored_periods
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.vocabulary import VariableVocabulary

CHECK_NAME = "period_quality"
CHECK_DESCRIPTION = (
    "Per period: grid and coordinates match the spec; NaN fraction within checks.max_nan_fraction; "
    "values within the vocabulary's valid_range; stored values match the record's checksum."
)


def check_key(spec: DatasetSpec) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(dg.AssetKey(spec.id), CHECK_NAME)


def check_job_name(spec: DatasetSpec) -> str:
    return f"check_{spec.id}"


def quality_metadata(quality: PeriodQuality) -> dict[str, dg.MetadataValue]:
    """Each sub-check as a boolean, then its numbers (NaN fractions, values outside range)."""
    metadata: dict[str, dg.MetadataValue] = {}
    for outcome in quality.outcomes:
        metadata[outcome.name] = dg.MetadataValue.bool(outcome.passed)
    for outcome in quality.outcomes:
        for label, number in outcome.numbers.items():
            metadata[label] = (
                dg.MetadataValue.int(number)
                if isinstance(number, int)
                else dg.MetadataValue.float(number)
            )
    return metadata


def quality_evaluations(
    instance: dg.DagsterInstance,
    spec: DatasetSpec,
    io_manager: IcechunkIOManager,
    vocabulary: VariableVocabulary,
    keys: Sequence[str],
) -> Iterator[dg.AssetCheckEvaluation]:
    """The check's evaluation of each period ``keys`` names, read from the store's tip, each
    pointing at the partition's latest materialization (so the UI shows it as current)."""
    targets = latest_materializations(instance, dg.AssetKey(spec.id), keys)
    session = store_reader.session_for(io_manager.storage.store(spec.id))
    for quality in check_stored_periods(spec, vocabulary, session, keys):
        yield check_evaluation(spec, quality, targets.get(quality.period))


def check_evaluation(
    spec: DatasetSpec,
    quality: PeriodQuality,
    target: AssetCheckEvaluationTargetMaterializationData | None,
    *,
    note: str = "",
    metadata: dict[str, dg.MetadataValue] | None = None,
) -> dg.AssetCheckEvaluation:
    """The check's evaluation of one period's ``quality``, about the materialization
    ``target`` (None: a version never materialized), ``note`` ending its description."""
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(spec.id),
        check_name=CHECK_NAME,
        passed=quality.passed,
        partition=quality.period,
        description=f"{spec.id} {quality.period}: {quality.description}{note}",
        metadata={**quality_metadata(quality), **(metadata or {})},
        target_materialization_data=target,
        severity=dg.AssetCheckSeverity.ERROR,
        blocking=True,
    )


def latest_materializations(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, keys: Sequence[str]
) -> dict[str, AssetCheckEvaluationTargetMaterializationData]:
    """The latest materialization of each partition, in two queries for all of ``keys``."""
    storage_ids = instance.event_log_storage.get_latest_storage_id_by_partition(
        asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION, set(keys)
    )
    if not storage_ids:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=list(storage_ids.values())),
        limit=len(storage_ids),
    ).records
    return {
        record.partition_key: AssetCheckEvaluationTargetMaterializationData(
            run_id=record.run_id, storage_id=record.storage_id, timestamp=record.timestamp
        )
        for record in records
        if record.partition_key is not None
    }


class RecheckConfig(dg.Config):
    """Which stored periods the ``check_<dataset>`` job re-checks when its run has no partition:
    ``first``..``last`` (partition keys, inclusive; either may be left out), else all."""

    first: str | None = None
    last: str | None = None


def _periods_to_check(
    context: dg.AssetCheckExecutionContext,
    spec: DatasetSpec,
    io_manager: IcechunkIOManager,
    config: RecheckConfig,
) -> list[str]:
    op_context = context.op_execution_context
    if op_context.has_partition_key or op_context.has_partition_key_range:
        return list(op_context.partition_keys)
    session = store_reader.session_for(io_manager.storage.store(spec.id))
    axis = store_reader.store_axis(session)
    if axis is None:
        return []
    keys = [axis.period_at(index).key for index in store_reader.written_indices(session)]
    first = spec.period_for_key(config.first).start if config.first else None
    last = spec.period_for_key(config.last).start if config.last else None
    return [
        key
        for key in keys
        if (first is None or spec.period_for_key(key).start >= first)
        and (last is None or spec.period_for_key(key).start <= last)
    ]


def build_quality_check(
    spec: DatasetSpec, partitions_def: dg.PartitionsDefinition
) -> dg.AssetChecksDefinition:
    def period_quality(
        context: dg.AssetCheckExecutionContext,
        config: RecheckConfig,
        icechunk_io_manager: dg.ResourceParam[IcechunkIOManager],
        packaged_files: PackagedFilesResource,
    ):
        keys = _periods_to_check(context, spec, icechunk_io_manager, config)
        context.log.info(f"{spec.id}: checking {len(keys)} stored periods")
        failed = []
        for evaluation in quality_evaluations(
            context.instance, spec, icechunk_io_manager, packaged_files.variables_cv(), keys
        ):
            if not evaluation.passed:
                failed.append(evaluation.partition)
            yield evaluation
        op_context = context.op_execution_context
        if not (op_context.has_partition_key or op_context.has_partition_key_range):
            # A run without partitions (check_<dataset> over the store) plans the check without
            # one, as Dagster does; this evaluation closes it with the run's summary.
            named = f" ({', '.join(failed[:10])}{'...' if len(failed) > 10 else ''})"
            yield dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey(spec.id),
                check_name=CHECK_NAME,
                passed=not failed,
                description=f"{spec.id}: {len(failed)} of {len(keys)} stored periods failed"
                + (named if failed else ""),
                metadata={"periods_checked": len(keys), "periods_failed": len(failed)},
                blocking=True,
            )
        # The step's own output (downstream steps wait on it); the evaluations above carry the
        # results, one per partition. A failed one fails this step, as blocking checks do.
        yield dg.Output(None)

    # Partitioned checks are a preview feature of Dagster 1.13, and exactly what we want.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.asset_check(
            asset=dg.AssetKey(spec.id),
            name=CHECK_NAME,
            description=CHECK_DESCRIPTION,
            blocking=True,
            partitions_def=partitions_def,
        )(period_quality)


def build_check_job(spec: DatasetSpec) -> UnresolvedAssetJobDefinition:
    """``check_<dataset>``: re-check stored periods (an edit behind ref_assets' back, damaged
    storage, a bound tightened in the spec) without writing anything."""
    return dg.define_asset_job(
        check_job_name(spec),
        selection=dg.AssetSelection.checks(check_key(spec)),
        description=f"Re-check the stored periods of {spec.id} ({CHECK_NAME}); nothing is written.",
    )

"""One time-partitioned asset per dataset spec: fetch a period, check it, hand it to the store."""

import dataclasses
import warnings
from collections.abc import Iterator
from datetime import datetime

import dagster as dg

from ref_assets.batch import PeriodStream, fetch_batch
from ref_assets.defs.checks import check_evaluation, latest_materializations, quality_evaluations
from ref_assets.defs.io_manager import IcechunkIOManager, materialization, not_published
from ref_assets.defs.metadata import dataset_metadata, source_asset_key
from ref_assets.defs.resources import PackagedFilesResource, ProviderRegistryResource
from ref_assets.periods import Period, last_complete_period
from ref_assets.pools import dataset_pool
from ref_assets.preview import PreviewStyle
from ref_assets.provenance import code_version
from ref_assets.providers.protocol import Provider
from ref_assets.providers.registry import ProviderRegistry
from ref_assets.secrets import redact
from ref_assets.specs import DatasetSpec
from ref_assets.vocabulary import VariableVocabulary

IO_MANAGER_KEY = "icechunk_io_manager"


def partitions_for(
    spec: DatasetSpec, now: datetime | None = None
) -> dg.TimeWindowPartitionsDefinition:
    """Time-window partitions whose keys are the dataset's period keys, from its start to its
    last period (`DatasetSpec.last_period`): its end, even in the future, or without an end the
    newest complete period, moving on as time passes.

    Dagster stops time-window partitions at the current time; ``end_offset`` lets them run on to
    a future end. It is counted at ``now`` (when the code location loads); later the count
    overshoots, and the end still caps it.
    """
    last = spec.last_period(now) if spec.end else None
    ahead = 0
    if last is not None:
        ahead = max(0, spec.period.index(last.start, last_complete_period(spec.period, now).start))
    return dg.TimeWindowPartitionsDefinition(
        start=spec.start,
        end=last.end if last else None,
        fmt=spec.period.key_format,
        cron_schedule=spec.period.cron_schedule,
        timezone="UTC",
        end_offset=ahead,
    )


def range_run_tags(first: str, last: str) -> dict[str, str]:
    """Tags that make one run materialize the partitions ``first`` to ``last`` (inclusive),
    as `dagster asset materialize --partition-range` does; for ``execute_in_process``."""
    return {
        "dagster/asset_partition_range_start": first,
        "dagster/asset_partition_range_end": last,
    }


def _masked_failure(prefix: str, err: Exception) -> dg.Failure:
    """The step failure for ``err``, secrets masked; raise it ``from None``: the original's
    text, which may hold a URL's credentials or a token, must not reach the run's events."""
    return dg.Failure(description=redact(f"{prefix}{type(err).__name__}: {err}"))


def _range_events(
    context: dg.AssetExecutionContext,
    spec: DatasetSpec,
    provider: Provider,
    periods: tuple[Period, ...],
    io_manager: IcechunkIOManager,
    packaged_files: PackagedFilesResource,
    preview_style: PreviewStyle | None,
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """A range run's events, each commit's as soon as it lands: a materialization per period
    (its checksum as data version: Dagster takes one data version per output, so a range run
    yields no output but these), then the period's quality check (Dagster skips the check's own
    step when the asset yields no output, so it is evaluated here, by the same code). Periods
    are fetched while earlier ones are written, so memory stays flat over long ranges."""
    vocabulary = packaged_files.variables_cv()
    stream = PeriodStream(spec, provider, periods, spec.runs.fetch_workers, preview_style)
    if spec.checks.publish == "validated":
        yield from _validated_events(context, spec, stream, io_manager, vocabulary)
        return
    for materializations in io_manager.write_range(context, stream):
        yield from materializations
        keys = [materialization.partition for materialization in materializations]
        yield from quality_evaluations(context.instance, spec, io_manager, vocabulary, keys)


def _validated_events(
    context: dg.AssetExecutionContext,
    spec: DatasetSpec,
    stream: PeriodStream,
    io_manager: IcechunkIOManager,
    vocabulary: VariableVocabulary,
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """The events of a run of a ``checks.publish: validated`` dataset, once it published
    (`IcechunkIOManager.write_validated`): a materialization for each period that reached
    ``main`` (``snapshot_id``: the published snapshot) and its passed check, about the values
    ``main`` now holds; a failed check for each refused period, about no materialization (its
    version never reached ``main``). Any refused or failed period then fails the step, naming
    each one, so a backfill shows those partitions failed and running it again retries them."""
    outcome, failures = io_manager.write_validated(context, stream, vocabulary)
    store = io_manager.storage.store(spec.id)
    for checked in outcome.published:
        receipt = dataclasses.replace(checked.receipt, snapshot_id=outcome.snapshot)
        yield materialization(context, store, receipt)
    targets = latest_materializations(
        context.instance, context.asset_key, [c.key for c in outcome.published]
    )
    for checked in outcome.published:
        yield check_evaluation(
            spec,
            checked.quality,
            targets.get(checked.key),
            metadata=_snapshots(outcome.snapshot, checked.receipt.snapshot_id),
        )
    for checked in outcome.refused:
        held = "its earlier version" if checked.key in outcome.kept else "no version of it"
        yield check_evaluation(
            spec,
            checked.quality,
            None,
            note=f". Not published: main keeps {held}",
            metadata=_snapshots(outcome.snapshot or outcome.base, checked.receipt.snapshot_id),
        )
    if outcome.refused or failures:
        raise not_published(spec, len(stream.periods), outcome, failures)


def _snapshots(main: str | None, checked: str) -> dict[str, dg.MetadataValue]:
    return {
        "main_snapshot": dg.MetadataValue.text(main or "none"),
        "checked_snapshot": dg.MetadataValue.text(checked),  # the run's branch
    }


def build_dataset_asset(
    spec: DatasetSpec,
    registry: ProviderRegistry,
    preview_style: PreviewStyle | None = None,
    *,
    deps: list[dg.AssetDep] | None = None,
    automation_condition: dg.AutomationCondition | None = None,
) -> dg.AssetsDefinition:
    """The dataset's partitioned asset, downstream of its source (`source_asset`) unless ``deps``
    say otherwise (a derived product: `ref_assets.defs.derived`); with ``preview_style``, every
    period written gets a map preview."""
    provider_class = registry.classes.get(spec.provider)

    def dataset_asset(
        context: dg.AssetExecutionContext,
        providers: ProviderRegistryResource,
        icechunk_io_manager: dg.ResourceParam[IcechunkIOManager],
        packaged_files: PackagedFilesResource,
    ) -> Iterator:
        periods = tuple(spec.period_for_key(key) for key in context.partition_keys)
        try:
            provider = providers.create(spec)
        except Exception as err:
            raise _masked_failure("", err) from None
        # A validated dataset's single partition goes the same way: its own branch, checked.
        if len(periods) > 1 or spec.checks.publish == "validated":
            context.log.info(f"{spec.id}: {len(periods)} periods from provider {provider.name}")
            yield from _range_events(
                context, spec, provider, periods, icechunk_io_manager, packaged_files, preview_style
            )
            return
        context.log.info(f"{spec.id} {periods[0].key}: fetching from provider {provider.name}")
        try:
            batch = fetch_batch(spec, provider, periods[0], preview_style)
        except Exception as err:
            raise _masked_failure(f"{spec.id} {periods[0].key}: ", err) from None
        with warnings.catch_warnings():  # data_version is beta, and exactly what we want
            warnings.simplefilter("ignore", dg.BetaWarning)
            yield dg.Output(batch, data_version=dg.DataVersion(batch.checksum))

    # backfill_policy is beta too; one warning per dataset per code-location load is only noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.asset(
            name=spec.id,
            description=redact(f"{spec.title}\n\n{spec.description}".strip()),
            partitions_def=partitions_for(spec),
            code_version=code_version(spec, provider_class.version if provider_class else None),
            io_manager_key=IO_MANAGER_KEY,
            # A range run writes through `IcechunkIOManager.write_range` and yields no output.
            output_required=False,
            backfill_policy=(
                dg.BackfillPolicy.multi_run(spec.runs.max_partitions_per_run)
                if spec.runs.max_partitions_per_run
                else dg.BackfillPolicy.single_run()
            ),
            group_name=spec.group,
            # One pool per upstream (`ref_assets.pools`): its limit, set in the instance by
            # `ref-assets instance init`, caps the fetches that hit the source at once.
            pool=dataset_pool(spec),
            owners=spec.owners,
            tags=spec.tags,
            kinds={"icechunk", "xarray"},
            deps=deps if deps is not None else [source_asset_key(spec)],
            automation_condition=automation_condition,
            metadata=dataset_metadata(spec),
        )(dataset_asset)

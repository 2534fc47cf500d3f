"""The time-series copy of a dataset as a Dagster asset, kept current by automation.

``timeseries/<dataset>`` (for each spec with a `timeseries` section) is downstream of the
dataset's asset and partitioned coarser: a year of a daily or monthly dataset, a month of an
hourly one, a year of a yearly one. Dagster's time-window partition mapping ties each of its
partitions to the dataset's periods inside it, and its automation condition requests a partition
on the first tick after any of those periods is materialized (new or revised), once no run is
writing them; and, once, every partition never built whose periods are stored. The run
rewrites only the time chunks whose periods changed (`update_timeseries` in
`ref_assets.store.timeseries`).

The `timeseries_automation` sensor evaluates the condition (the daemon runs it every
`AUTOMATION_INTERVAL_SECONDS`); it is on as soon as the code location loads: giving a spec a
`timeseries` section is the decision to keep the copy.
"""

import warnings
from datetime import UTC, datetime

import dagster as dg

from ref_assets.defs.resources import IcechunkStorage
from ref_assets.periods import Period, PeriodType, last_complete_period
from ref_assets.secrets import redact
from ref_assets.specs import DatasetSpec
from ref_assets.store.timeseries import timeseries_store, update_timeseries

TIMESERIES_PREFIX = "timeseries"
AUTOMATION_SENSOR = "timeseries_automation"
AUTOMATION_INTERVAL_SECONDS = 30

# A copy partition: a few hundred periods, so that one that changed rewrites few time chunks and
# a day's new period (in the current year) is one small run.
COARSER = {
    PeriodType.HOURLY: PeriodType.MONTHLY,
    PeriodType.DAILY: PeriodType.YEARLY,
    PeriodType.MONTHLY: PeriodType.YEARLY,
    PeriodType.YEARLY: PeriodType.YEARLY,
}

# Dagster's eager() without two of its parts: it considers only the latest time window (a
# revised period of an earlier year must reach the copy too), and waits while any upstream
# partition is missing (a copy holds the periods there are; the rest read as NaN). And where
# eager() builds partitions that become missing, this builds a partition never built whose
# periods are stored: a `timeseries` section added to a dataset holding years of periods
# builds its copy on the next evaluation (once: a failed run is not retried every tick).
_NEVER_BUILT_WITH_PERIODS = (
    dg.AutomationCondition.missing()
    & dg.AutomationCondition.any_deps_match(~dg.AutomationCondition.missing())
)
COPY_WHEN_UPDATED = (
    (
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        # Not since_last_handled: that resets on the condition's first evaluation, which is
        # exactly when a copy added to a dataset holding periods must be built.
        | _NEVER_BUILT_WITH_PERIODS.newly_true().since(
            dg.AutomationCondition.newly_requested() | dg.AutomationCondition.newly_updated()
        )
    )
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
    # A stored period whose quality check failed holds its partition back (a failed check
    # blocks what is downstream) until it is stored again and passes. Not Dagster's
    # all_deps_blocking_checks_passed(): a period not stored yet has no check to pass.
    & ~dg.AutomationCondition.any_deps_match(
        dg.AutomationCondition.any_checks_match(
            dg.AutomationCondition.check_failed(), blocking_only=True
        )
    )
).with_label("a period of the partition was stored, its checks passed, no run is writing it")


def timeseries_asset_key(spec: DatasetSpec) -> dg.AssetKey:
    return dg.AssetKey([TIMESERIES_PREFIX, spec.id])


def timeseries_partitions(
    spec: DatasetSpec, now: datetime | None = None
) -> dg.TimeWindowPartitionsDefinition:
    """Coarse time-window partitions (`COARSER`) from the one holding the dataset's start to the
    one holding its last period: that period's coarse partition is usually still running (this
    year), and Dagster would stop at the last complete one, so it is added by ``end_offset``."""
    coarse = COARSER[spec.period]
    last = spec.last_period(now)
    ahead = 0
    if last is not None:
        holding = coarse.floor(last.start)
        ahead = max(0, coarse.index(holding, last_complete_period(coarse, now).start))
    return dg.TimeWindowPartitionsDefinition(
        start=coarse.floor(spec.start),
        end=Period(coarse, coarse.floor(last.start)).end if spec.end and last else None,
        fmt=coarse.key_format,
        cron_schedule=coarse.cron_schedule,
        timezone="UTC",
        end_offset=ahead,
    )


def _naive_utc(instant: datetime) -> datetime:
    return instant.astimezone(UTC).replace(tzinfo=None)


def build_timeseries_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    """The asset keeping ``spec``'s time-series copy current."""

    def timeseries_asset(
        context: dg.AssetExecutionContext, icechunk_storage: IcechunkStorage
    ) -> dg.MaterializeResult:
        window = context.partition_time_window
        first = max(0, spec.period.index(max(_naive_utc(window.start), spec.start), spec.start))
        stop = max(0, spec.period.index(max(_naive_utc(window.end), spec.start), spec.start))
        store = icechunk_storage.store(spec.id)
        update = update_timeseries(spec, store, run_id=context.run.run_id, indices=(first, stop))
        if update.chunks:
            context.log.info(
                f"{spec.id}: rewrote time chunks {update.chunks} ({update.periods} periods) "
                f"from snapshot {update.upstream_snapshot} of the per-period store"
            )
        else:
            context.log.info(f"{spec.id}: the copy was current for time chunks {update.checked}")
        return dg.MaterializeResult(
            metadata={
                "chunks_rewritten": dg.MetadataValue.int(len(update.chunks)),
                "chunks": dg.MetadataValue.text(", ".join(map(str, update.chunks)) or "none"),
                "chunks_checked": dg.MetadataValue.int(len(update.checked)),
                "periods_copied": dg.MetadataValue.int(update.periods),
                "upstream_snapshot": dg.MetadataValue.text(update.upstream_snapshot),
                "snapshot": dg.MetadataValue.text(update.snapshot or "unchanged"),
                "store": dg.MetadataValue.path(timeseries_store(store).location),
            }
        )

    # backfill_policy is beta; one warning per dataset per code-location load is only noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.asset(
            key=timeseries_asset_key(spec),
            description=redact(
                f"{spec.title}: time-series copy (chunks of {spec.timeseries_time_chunk} "
                f"periods by {spec.timeseries.y} x {spec.timeseries.x} cells), for series at "
                "points; `open_dataset(..., layout='timeseries')` reads it."
            ),
            partitions_def=timeseries_partitions(spec),
            deps=[
                dg.AssetDep(
                    spec.id,
                    # The first and the current coarse partition reach past the dataset's start
                    # and its newest period: they map to the periods that exist.
                    partition_mapping=dg.TimeWindowPartitionMapping(
                        allow_nonexistent_upstream_partitions=True
                    ),
                )
            ],
            automation_condition=COPY_WHEN_UPDATED,
            backfill_policy=dg.BackfillPolicy.single_run(),
            group_name=spec.group,
            owners=spec.owners,
            tags=spec.tags,
            kinds={"icechunk", "xarray"},
        )(timeseries_asset)


def timeseries_sensor(assets: list[dg.AssetsDefinition]) -> dg.AutomationConditionSensorDefinition:
    """The sensor evaluating the copies' automation condition, on from the start."""
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=dg.AssetSelection.assets(*assets),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=AUTOMATION_INTERVAL_SECONDS,
        description="Requests a time-series copy's partition once a period inside it is stored "
        "or revised.",
    )

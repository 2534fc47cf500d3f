"""Maintenance in Dagster: a job ``maintain_<dataset>`` and its schedule for every dataset whose
spec has a ``retention`` section (`ref_assets.store.maintenance`).

The schedule runs at the section's ``schedule`` (cron, UTC; default Sundays 03:00) and is stopped
unless the section says ``default_status: running``. Each run records an observation of the
external asset ``maintenance/<dataset>`` (downstream of the dataset in the lineage graph) whose
numeric metadata (bytes deleted and freed, the store's size, snapshots expired, objects deleted)
Dagster's UI plots over time: each number is the store's and its time-series copy's together
(the per-repository reports are in ``maintenance/reports``), and the run's log has each
report's notes. An asset of its own, because the dataset's plots are drawn by
partition and from its latest hundred events, where a weekly observation would be lost among
the materializations.
"""

import dagster as dg

from ref_assets.defs.resources import IcechunkStorage
from ref_assets.specs import DatasetSpec
from ref_assets.store.maintenance import RetentionPolicy, maintain_dataset


class MaintenanceConfig(dg.Config):
    dry_run: bool = False  # report what would go, on a copy of the store; change nothing


def maintenance_job_name(spec: DatasetSpec) -> str:
    return f"maintain_{spec.id}"


def maintenance_asset_key(spec: DatasetSpec) -> dg.AssetKey:
    return dg.AssetKey(["maintenance", spec.id])


def maintenance_asset(spec: DatasetSpec) -> dg.AssetSpec:
    """The external asset the maintenance job observes: its numbers over time."""
    retention = spec.retention
    assert retention is not None, "only datasets with a retention section are maintained"
    return dg.AssetSpec(
        key=maintenance_asset_key(spec),
        deps=[spec.id],
        description=f"Retention of {spec.id}'s store: each maintenance run (job "
        f"{maintenance_job_name(spec)}) observes what it expired and deleted.",
        group_name=spec.group,
        kinds={"icechunk"},
        owners=spec.owners,
        metadata={
            "retention/keep_days": dg.MetadataValue.text(str(retention.keep_days)),
            "retention/keep_last": dg.MetadataValue.text(str(retention.keep_last)),
            "retention/schedule": dg.MetadataValue.text(retention.schedule),
        },
    )


def build_maintenance_job(spec: DatasetSpec) -> dg.JobDefinition:
    """``maintain_<dataset>``: one op applying the spec's retention policy to the store."""

    @dg.op(name=f"{spec.id}_maintenance", out={})
    def maintenance(
        context: dg.OpExecutionContext, config: MaintenanceConfig, icechunk_storage: IcechunkStorage
    ):
        store = icechunk_storage.store(spec.id)
        if not store.exists():  # a schedule that runs before the first materialization
            context.log.info(f"{spec.id}: no store at {store.location} yet; nothing to maintain")
            return
        reports = maintain_dataset(
            store,
            RetentionPolicy.for_dataset(spec),
            dry_run=config.dry_run,
        )
        for report in reports:
            context.log.info(
                f"{report.repository}: {'dry run: would expire' if report.dry_run else 'expired'} "
                f"{len(report.expired_snapshots)} snapshots, deleted {report.bytes_deleted} "
                f"bytes; {report.store_bytes_before} -> {report.store_bytes_after} bytes"
            )
            for note in report.notes:  # why less went than one might expect, and what to do
                context.log.info(f"{report.repository}: note: {note}")
        yield dg.AssetObservation(
            asset_key=maintenance_asset_key(spec),
            description="dry run of maintenance" if config.dry_run else "maintenance",
            metadata={
                # Every number is the store's and its time-series copy's (if any) together;
                # each repository's are in the reports.
                "maintenance/bytes_deleted": dg.MetadataValue.int(
                    sum(r.bytes_deleted for r in reports)
                ),
                "maintenance/freed_bytes": dg.MetadataValue.int(
                    sum(r.freed_bytes for r in reports)
                ),
                "maintenance/store_bytes": dg.MetadataValue.int(
                    sum(r.store_bytes_after for r in reports)
                ),
                "maintenance/snapshots_expired": dg.MetadataValue.int(
                    sum(len(r.expired_snapshots) for r in reports)
                ),
                "maintenance/chunks_deleted": dg.MetadataValue.int(
                    sum(r.chunks_deleted for r in reports)
                ),
                "maintenance/seconds": dg.MetadataValue.float(sum(r.seconds for r in reports)),
                "maintenance/dry_run": dg.MetadataValue.bool(config.dry_run),
                "maintenance/reports": dg.MetadataValue.json([r.as_json() for r in reports]),
            },
        )

    @dg.job(
        name=maintenance_job_name(spec),
        description=f"Expire old snapshots of {spec.id} and delete what nothing uses, per its "
        "spec's retention section (tagged releases are kept).",
    )
    def job():
        maintenance()

    return job


def build_maintenance_schedule(spec: DatasetSpec, job: dg.JobDefinition) -> dg.ScheduleDefinition:
    retention = spec.retention
    assert retention is not None, "only datasets with a retention section are maintained"
    return dg.ScheduleDefinition(
        name=f"{maintenance_job_name(spec)}_schedule",
        job=job,
        cron_schedule=retention.schedule,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus(retention.default_status.upper()),
    )

"""Extraction in Dagster: the job ``extract``, launched from the UI's launchpad with a typed
config (`ExtractionConfig`), and the job ``clean_staging`` with its hourly schedule.

Both are thin adapters over `ref_assets.extract`: the extraction's output (its URL) carries the
record's facts as metadata (sha256, bytes, snapshot, tag, expiry, whether it was reused), and
the clean-up's what it removed (each output, its size and why) and how many it kept.
"""

# No `from __future__ import annotations`: Dagster reads the config annotations at run time.
from typing import Literal

import dagster as dg

from ref_assets.extract import ExtractionError, clean_staging, extract, make_request
from ref_assets.store.repository import StoreError

EXTRACT_JOB = "extract"
CLEAN_JOB = "clean_staging"
# Expired outputs wait at most an hour for the clean-up.
CLEAN_SCHEDULE_CRON = "17 * * * *"


class ExtractionConfig(dg.Config):
    """What to extract (`ref_assets.extract.ExtractionRequest`); unset fields take their
    defaults: every cell, period and variable, main's tip, the configured staging area."""

    dataset: str
    bbox: list[float] | None = None  # [west, south, east, north]; west > east crosses 180
    points: list[list[float]] | None = None  # [[lon, lat], ...]
    start: str | None = None  # period keys, both included
    end: str | None = None
    variables: list[str] | None = None
    format: Literal["netcdf", "zarr", "csv"] = "netcdf"
    tag: str | None = None  # a release, or
    snapshot: str | None = None
    to: str | None = None  # the staging area (default: [extraction] staging in ref.toml)


@dg.op(name="extract_subset", out=dg.Out(str, description="the staged output's URL"))
def extract_op(context: dg.OpExecutionContext, config: ExtractionConfig) -> dg.Output[str]:
    try:
        # The request's own model checks and converts the fields (lists become tuples).
        request = make_request(**config.model_dump(exclude={"to"}))

        def progress(block, done: int, total: int) -> None:
            context.log.info(f"{config.dataset}: block {done}/{total} written ({block.layout})")

        result = extract(request, staging=config.to, on_block=progress)
    except (ExtractionError, StoreError) as err:  # the message says what to ask for instead
        raise dg.Failure(description=str(err), allow_retries=False) from None
    record = result.record
    link = (
        dg.MetadataValue.path(result.url)
        if "://" not in result.url
        else dg.MetadataValue.url(result.url)
    )
    return dg.Output(
        result.url,
        metadata={
            "output": link,
            "record": dg.MetadataValue.text(result.record_url),
            "sha256": dg.MetadataValue.text(record["sha256"]),
            "bytes": dg.MetadataValue.int(record["bytes"]),
            "reused": dg.MetadataValue.bool(result.reused),
            "snapshot": dg.MetadataValue.text(record["snapshot"]),
            "tag": dg.MetadataValue.text(record["tag"] or ""),
            "periods": dg.MetadataValue.int(record["periods"]),
            "expires": dg.MetadataValue.text(record["expires"]),
            "read_from": dg.MetadataValue.json(record["read_from"]),
        },
    )


# One op each: run in the run's own process, not a step subprocess (seconds on a busy machine).
@dg.job(
    name=EXTRACT_JOB,
    executor_def=dg.in_process_executor,
    description="Extract a subset of a dataset (bbox or points, periods, variables; a release "
    "or snapshot) as NetCDF, Zarr or CSV into the staging area, with a record beside it. "
    "Launch it from the launchpad with the op's config.",
)
def extract_job():
    extract_op()


@dg.op(name="delete_expired", out=dg.Out(int, description="outputs removed"))
def clean_op(context: dg.OpExecutionContext) -> dg.Output[int]:
    report = clean_staging()
    for item in report.removed:
        context.log.info(f"removed {item.url} ({item.bytes} bytes, {item.reason})")
    return dg.Output(
        len(report.removed),
        metadata={
            "staging": dg.MetadataValue.text(report.staging),
            "removed": dg.MetadataValue.int(len(report.removed)),
            "bytes_freed": dg.MetadataValue.int(report.bytes_freed),
            "kept": dg.MetadataValue.int(report.kept),
            "removed_outputs": dg.MetadataValue.json([item.as_json() for item in report.removed]),
        },
    )


@dg.job(
    name=CLEAN_JOB,
    executor_def=dg.in_process_executor,
    description="Delete the staged extractions that have expired ([extraction] ttl_hours), and "
    "what extractions that died left; report each one removed.",
)
def clean_job():
    clean_op()


clean_schedule = dg.ScheduleDefinition(
    name=f"{CLEAN_JOB}_schedule",
    job=clean_job,
    cron_schedule=CLEAN_SCHEDULE_CRON,
    execution_timezone="UTC",
    # On from the start: staged outputs must not outlive their TTL by more than an hour.
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

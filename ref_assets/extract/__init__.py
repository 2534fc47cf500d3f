"""Extraction: a subset of a dataset's store written to a staging area, for people who do not
open Icechunk.

A request (`ExtractionRequest`: a bbox or points, a period range, variables, a format, a
snapshot or release tag) is resolved against one pinned snapshot of the store, checked (its
range within what the snapshot holds, its variables known, its size within
``[extraction] max_mib``), then read and written a block of periods at a time into a staging
area (`ref_assets.extract.staging`), with a record beside the output: the request, the
snapshot, the checksum of every period record it drew on, the output's sha256, when it was
made and when it expires. The same request on the same snapshot reuses the staged output while
it lives (and extends its life); `clean_staging` deletes expired outputs.

>>> result = extract(ExtractionRequest(dataset="demo_air_temperature", points=((36.8, -1.3),),
...                                    start="2024-01-01", end="2024-03-31", format="csv"))
... # doctest: +SKIP
>>> result.url, result.reused  # doctest: +SKIP
('/home/me/.config/ref_assets/staging/demo_air_temperature/5c0f....csv', False)
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from ref_assets.config import ExtractionSettings, Settings, load_settings
from ref_assets.extract.plan import (
    Block,
    ExtractionPlan,
    missing_periods,
    records_drawn_on,
    resolve,
)
from ref_assets.extract.request import FORMATS, ExtractionError, ExtractionRequest
from ref_assets.extract.staging import CleanupReport, StagingArea, clean, expired, output_sha256
from ref_assets.extract.writers import WRITERS, block_dataset
from ref_assets.store.repository import DatasetStore

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "CleanupReport",
    "Extraction",
    "ExtractionError",
    "ExtractionRequest",
    "clean_staging",
    "extract",
    "make_request",
]

MIB = 2**20
# A staged output with less than this left to live (or half the TTL, if shorter) is extracted
# anew rather than reused.
REUSE_MARGIN = timedelta(minutes=5)


def make_request(**fields) -> ExtractionRequest:
    """An `ExtractionRequest` from its fields; what is wrong with them as an ExtractionError
    naming the dataset."""
    try:
        return ExtractionRequest(**fields)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        )
        raise ExtractionError(f"{fields.get('dataset', '?')}: {problems}") from None


@dataclass(frozen=True)
class Extraction:
    """A staged output: where it is, its record, and whether this call reused it."""

    url: str
    record_url: str
    record: dict
    reused: bool


def extract(
    request: ExtractionRequest,
    *,
    settings: Settings | None = None,
    staging: str | None = None,
    on_block: Callable[[Block, int, int], None] | None = None,
) -> Extraction:
    """Extract ``request`` into the staging area (default ``[extraction] staging``), or reuse
    the output an identical request on the same snapshot staged. ``on_block(block, done,
    total)`` hears of each block of periods as it is written (for progress)."""
    settings = settings or load_settings()
    config = settings.extraction_settings
    area = StagingArea(staging or config.staging)
    store = DatasetStore(settings.storage_root, request.dataset)
    snapshot, tag = _snapshot(store, request)
    plan = resolve(request, store, snapshot, tag=tag)
    _check_size(plan, config)
    key = plan.key
    record_path = area.record(request.dataset, key)
    now = datetime.now(UTC)
    previous = area.read_record(record_path)
    # An output about to expire is not reused: a clean-up running now may be deleting it.
    margin = min(REUSE_MARGIN, timedelta(hours=config.ttl_hours) / 2)
    if previous is not None and not expired(previous, now + margin) and area.holds(previous):
        # Reused: it lives a full TTL from now.
        previous["expires"] = max(previous["expires"], _expiry(now, config))
        previous["reused"] = previous.get("reused", 0) + 1
        area.write_record(record_path, previous)
        # Still there once its life is extended (a clean-up that read the old record may have
        # removed it meanwhile): then it is extracted anew below.
        if area.holds(previous):
            logger.info("%s: reusing the staged %s", request.dataset, previous["output"])
            return Extraction(previous["output"], area.url_of(record_path), previous, True)

    # A name of its own: of two identical requests at once, each record names its own output
    # (the last one written wins; the clean-up removes the other once older than the TTL).
    output = area.output(request.dataset, f"{key}-{uuid.uuid4().hex[:8]}", request.suffix)
    writer_class = WRITERS[request.format]
    blocks = list(plan.blocks(writer_class.block_share))
    layouts = {"timeseries": 0, "periods": 0}
    with area.scratch(request.dataset, key) as scratch:
        written = scratch / f"{key}{request.suffix}"
        writer = writer_class(written, plan)
        for done, block in enumerate(blocks, 1):
            writer.write(block_dataset(plan, block, plan.read(block)))
            layouts[block.layout] += block.stop - block.first
            if on_block:
                on_block(block, done, len(blocks))
        sha256 = output_sha256(written)
        size = _output_bytes(written)
        area.publish(written, output)
    record = {
        "key": key,
        "dataset": request.dataset,
        "request": request.model_dump(mode="json"),
        "resolved": plan.key_fields(),
        "snapshot": snapshot,
        "tag": tag,
        "format": request.format,
        "output": area.url_of(output),
        "output_path": output,
        "bytes": size,
        "sha256": sha256,
        "estimated_bytes": plan.estimated_bytes,
        "periods": plan.periods,
        "missing_periods": missing_periods(plan),
        "read_from": layouts,  # periods read from the time-series copy, and from the store
        "records": records_drawn_on(plan),  # period -> the checksum of its record
        "created": now.isoformat(timespec="seconds"),
        "expires": _expiry(now, config),
    }
    area.write_record(record_path, record)
    logger.info("%s: extracted %s (%d bytes)", request.dataset, area.url_of(output), size)
    return Extraction(area.url_of(output), area.url_of(record_path), record, False)


def clean_staging(
    settings: Settings | None = None, *, staging: str | None = None, now: datetime | None = None
) -> CleanupReport:
    """Delete the expired outputs of the staging area (default ``[extraction] staging``) and
    what extractions that died left behind; report each one removed."""
    config = (settings or load_settings()).extraction_settings
    return clean(StagingArea(staging or config.staging), ttl_hours=config.ttl_hours, now=now)


def _output_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _expiry(now: datetime, config: ExtractionSettings) -> str:
    return (now + timedelta(hours=config.ttl_hours)).isoformat(timespec="seconds")


def _snapshot(store: DatasetStore, request: ExtractionRequest) -> tuple[str, str | None]:
    """The snapshot to read (pinned now: main moving meanwhile changes nothing) and the tag."""
    if request.tag is not None:
        from ref_assets.store.releases import ReleaseError
        from ref_assets.store.releases import resolve as resolve_tag

        try:
            return resolve_tag(store, request.tag), request.tag
        except ReleaseError as err:
            raise ExtractionError(str(err)) from None
    if request.snapshot is not None:
        return request.snapshot, None
    repo = store.open()
    with store.reporting("reading main's tip"):
        return repo.lookup_branch("main"), None


def _check_size(plan: ExtractionPlan, config: ExtractionSettings) -> None:
    limit = config.max_mib * MIB
    size = plan.estimated_bytes
    if size <= limit:
        return
    request = plan.request
    space = (
        f"{plan.cells} points"
        if plan.is_points
        else f"{plan.y_index.size} x {plan.x_index.size} cells"
    )
    raise ExtractionError(
        f"{request.dataset}: the request is {size / MIB:,.1f} MiB of values ({plan.periods} "
        f"periods {plan.axis.period_at(plan.first).key}..{plan.axis.period_at(plan.stop - 1).key}"
        f" x {space} x {len(plan.variables)} variable(s)), above the limit of "
        f"{config.max_mib:g} MiB ([extraction] max_mib in ref.toml, REF_EXTRACTION_MAX_MIB). "
        "Narrow it: a shorter period range (start, end), a smaller bbox, fewer variables, or "
        "series at points"
    )

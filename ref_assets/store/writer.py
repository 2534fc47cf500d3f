"""Writing one period: a region write at its own index plus its record, in one commit.

>>> receipt = write_period(DatasetStore(root, spec.id), batch, run_id="manual")  # doctest: +SKIP
>>> receipt.snapshot_id  # doctest: +SKIP
'1CECHNKREP0F1RSTCMT0'

The period's variables and its record go into the same commit, so a reader (or a crash at any
instant) sees the period whole or not at all. Re-writing a period replaces exactly its chunks.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import icechunk as ic
import zarr
from zarr.core.sync import sync

from ref_assets import __version__
from ref_assets.batch import PeriodBatch
from ref_assets.store.layout import (
    RECORDS_PATH,
    axis_length,
    capacity_for,
    check_structure,
    create_layout,
    grow_time_axis,
    has_layout,
    open_laid_out_root,
)
from ref_assets.store.repository import DatasetStore, StoreError

logger = logging.getLogger(__name__)

# A commit conflicts only when another writer grew the axis or wrote the same period after our
# session began; each retry starts from the new tip, so a few attempts suffice in practice.
MAX_COMMIT_ATTEMPTS = 8


@dataclass(frozen=True)
class WriteReceipt:
    """What a period write produced."""

    snapshot_id: str
    time_index: int
    bytes_written: int
    record: dict
    attempts: int


def write_period(store: DatasetStore, batch: PeriodBatch, *, run_id: str) -> WriteReceipt:
    """Write ``batch`` at its index of the time axis and commit it with its record."""
    spec = batch.spec
    repo = store.open_or_create(spec.manifest_split)
    ensure_capacity(store, repo, batch)
    record = period_record(batch, run_id=run_id)
    message = f"{spec.id} {batch.period.key} (run {run_id})"
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        session = repo.writable_session("main")
        group = zarr.open_group(session.store, mode="r+")
        index = batch.time_index
        for name, values in batch.variables.items():
            group[name][index] = values
        group[RECORDS_PATH][index] = json.dumps(record, sort_keys=True)
        bytes_written = _stored_bytes(session, batch)
        try:
            with store.lock():
                snapshot_id = session.commit(
                    message,
                    metadata={
                        "dataset": spec.id,
                        "period": batch.period.key,
                        "time_index": index,
                        "run_id": run_id,
                        "checksum": batch.checksum,
                    },
                    rebase_with=ic.ConflictDetector(),
                )
        except (ic.ConflictError, ic.RebaseFailedError) as err:
            logger.info("%s: commit attempt %d conflicted (%s); retrying", message, attempt, err)
            continue
        return WriteReceipt(snapshot_id, index, bytes_written, record, attempt)
    raise StoreError(
        f"{spec.id} period {batch.period.key}: gave up after {MAX_COMMIT_ATTEMPTS} conflicting "
        "commit attempts (other writers kept rewriting this period or growing the time axis). "
        "Nothing was written; run the partition again."
    )


def ensure_capacity(store: DatasetStore, repo: ic.Repository, batch: PeriodBatch) -> None:
    """Create the layout, or grow the time axis, so that the batch's index exists.

    Checked first without the lock (the common case: nothing to do); changed under the lock in
    its own commit, so the change is serialized with every other writer's.
    """
    if _has_capacity(repo.readonly_session(branch="main"), batch):
        return
    with store.lock():
        session = repo.writable_session("main")
        group = zarr.open_group(session.store, mode="a")
        needed = capacity_for(batch.spec, batch.time_index)
        if not has_layout(group):
            create_layout(group, batch.spec, batch.description, needed)
            message = f"{batch.spec.id}: create layout ({needed} periods)"
        else:
            check_structure(group, batch.spec, batch.description)
            if axis_length(group) > batch.time_index:
                return  # another writer grew it while we waited for the lock
            grow_time_axis(group, batch.spec, needed)
            message = f"{batch.spec.id}: grow time axis to {needed} periods"
        session.commit(message)
        logger.info(message)


def _has_capacity(session: ic.Session, batch: PeriodBatch) -> bool:
    group = open_laid_out_root(session.store)
    if group is None:
        return False
    check_structure(group, batch.spec, batch.description)
    return axis_length(group) > batch.time_index


def period_record(batch: PeriodBatch, *, run_id: str) -> dict:
    """The JSON-serializable record stored with the period."""
    return {
        "format": "ref-assets/record-v1",
        "dataset": batch.spec.id,
        "period": batch.period.key,
        "period_start": batch.period.start.isoformat(),
        "period_end": batch.period.end.isoformat(),
        "time_index": batch.time_index,
        "checksum": batch.checksum,
        "provider": batch.provider,
        "provider_version": batch.provider_version,
        "sources": [asdict(s) for s in batch.sources],
        "variables": {
            name: {
                "units": batch.spec.variables_by_name[name].units,
                "dtype": str(values.dtype),
                "shape": list(values.shape),
                **asdict(batch.stats[name]),
            }
            for name, values in batch.variables.items()
        },
        "spec_fingerprint": batch.spec.fingerprint(),
        "ref_assets_version": __version__,
        "run_id": run_id,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _stored_bytes(session: ic.Session, batch: PeriodBatch) -> int:
    """Bytes of the chunks this period occupies after compression (all-NaN chunks take none)."""
    keys = [key for name in batch.variables for key in _chunk_keys(session, name, batch.time_index)]

    async def sizes() -> int:
        total = 0
        for key in keys:
            try:
                total += await session.store.getsize(key)
            except FileNotFoundError:
                continue
        return total

    return sync(sizes())


def _chunk_keys(session: ic.Session, name: str, index: int) -> list[str]:
    array = zarr.open_array(session.store, path=name, mode="r")
    _, chunk_y, chunk_x = array.chunks
    _, ny, nx = array.shape
    return [
        f"{name}/c/{index}/{iy}/{ix}"
        for iy in range(-(-ny // chunk_y))
        for ix in range(-(-nx // chunk_x))
    ]

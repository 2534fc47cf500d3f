"""Re-syncing a Dagster instance from the stores (the stores are the truth).

When an instance has lost its history (``DAGSTER_HOME`` wiped, a new Postgres database), or holds
materializations that no longer match what a store contains, `sync_instance` reports a runless
materialization for each such period, carrying its stored record as metadata and its output
checksum as data version, so the UI, sensors and staleness see the stores as they are again.
Periods whose latest materialization already carries the stored checksum are left alone, so
syncing twice reports nothing the second time.

>>> with dg.DagsterInstance.get() as instance:  # doctest: +SKIP
...     sync_instance(instance, ["demo_air_temperature"])
{'demo_air_temperature': SyncReport(present=91, reported=91)}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg

from ref_assets.config import Settings, load_settings
from ref_assets.defs.metadata import data_version_tags, record_metadata
from ref_assets.provenance import iter_stored_records
from ref_assets.store.repository import DatasetStore

_FETCH_PAGE = 1000


@dataclass(frozen=True)
class SyncReport:
    present: int  # periods in the store
    reported: int  # materializations reported to the instance
    store_exists: bool = True


def sync_instance(
    instance: dg.DagsterInstance,
    dataset_ids: Iterable[str],
    *,
    settings: Settings | None = None,
) -> dict[str, SyncReport]:
    """Report every stored period the instance does not know, or knows with another checksum.
    Datasets without a store yet are reported as such and skipped."""
    root = (settings or load_settings()).storage_root
    reports = {}
    for dataset_id in dataset_ids:
        store = DatasetStore(root, dataset_id)
        if not store.exists():
            reports[dataset_id] = SyncReport(present=0, reported=0, store_exists=False)
            continue
        asset_key = dg.AssetKey(dataset_id)
        known = _latest_checksums(instance, asset_key)
        present = reported = 0
        for period, record in iter_stored_records(store):
            present += 1
            if known.get(period.key) == record.checksum:
                continue
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    asset_key,
                    partition=period.key,
                    metadata={
                        **record_metadata(record),
                        "synced_from_store": dg.MetadataValue.path(store.location),
                    },
                    tags=data_version_tags(record),
                )
            )
            reported += 1
        reports[dataset_id] = SyncReport(present=present, reported=reported)
    return reports


def _latest_checksums(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> dict[str, str]:
    """The checksum in each partition's latest materialization the instance holds (newest
    first, so the first event seen per partition is its latest)."""
    latest: dict[str, str] = {}
    seen: set[str] = set()
    cursor = None
    while True:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key), limit=_FETCH_PAGE, cursor=cursor
        )
        for event_record in result.records:
            materialization = event_record.asset_materialization
            if materialization.partition in seen:
                continue
            seen.add(materialization.partition)
            checksum = materialization.metadata.get("checksum")
            if checksum is not None:
                latest[materialization.partition] = checksum.value
        if not result.has_more:
            return latest
        cursor = result.cursor

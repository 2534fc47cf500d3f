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
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
)
from dagster._core.events import DagsterEventType

from ref_assets.config import Settings, load_settings
from ref_assets.io_manager import record_metadata
from ref_assets.provenance import stored_records
from ref_assets.store.repository import DatasetStore

_FETCH_PAGE = 500


@dataclass(frozen=True)
class SyncReport:
    present: int  # periods in the store
    reported: int  # materializations reported to the instance


def sync_instance(
    instance: dg.DagsterInstance,
    dataset_ids: Iterable[str],
    *,
    settings: Settings | None = None,
) -> dict[str, SyncReport]:
    """Report every stored period the instance does not know, or knows with another checksum."""
    root = (settings or load_settings()).storage_root
    reports = {}
    for dataset_id in dataset_ids:
        store = DatasetStore(root, dataset_id)
        records = stored_records(store)
        asset_key = dg.AssetKey(dataset_id)
        known = _known_checksums(instance, asset_key, {period.key for period, _ in records})
        reported = 0
        for period, record in records:
            if known.get(period.key) == record.checksum:
                continue
            tags = {DATA_VERSION_TAG: record.checksum, DATA_VERSION_IS_USER_PROVIDED_TAG: "true"}
            if record.code_version:
                tags[CODE_VERSION_TAG] = record.code_version
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    asset_key,
                    partition=period.key,
                    metadata={
                        **record_metadata(record),
                        "synced_from_store": dg.MetadataValue.path(store.location),
                    },
                    tags=tags,
                )
            )
            reported += 1
        reports[dataset_id] = SyncReport(present=len(records), reported=reported)
    return reports


def _known_checksums(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitions: set[str]
) -> dict[str, str | None]:
    """The checksum of each partition's latest materialization in the instance."""
    latest = instance.get_latest_storage_id_by_partition(
        asset_key, DagsterEventType.ASSET_MATERIALIZATION, partitions
    )
    storage_ids = sorted(latest.values())
    known: dict[str, str | None] = {}
    for start in range(0, len(storage_ids), _FETCH_PAGE):
        page = storage_ids[start : start + _FETCH_PAGE]
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=page), limit=len(page)
        )
        for event_record in result.records:
            materialization = event_record.asset_materialization
            checksum = materialization.metadata.get("checksum")
            known[materialization.partition] = checksum.value if checksum else None
    return known

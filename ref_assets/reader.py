"""The public read API: open a dataset, list its periods, read their records.

>>> import ref_assets
>>> ds = ref_assets.open_dataset("demo_air_temperature")  # doctest: +SKIP
>>> status = ref_assets.dataset_status("demo_air_temperature")  # doctest: +SKIP
>>> [p.key for p in status.present][:2]  # doctest: +SKIP
['2024-01-01', '2024-01-02']
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import xarray as xr

from ref_assets.config import Settings, load_settings
from ref_assets.periods import Period, PeriodError
from ref_assets.providers.protocol import last_complete_period
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import DatasetStore, StoreError


def _store(dataset_id: str, settings: Settings | None) -> DatasetStore:
    return DatasetStore((settings or load_settings()).storage_root, dataset_id)


def open_dataset(
    dataset_id: str, snapshot: str | None = None, *, settings: Settings | None = None
) -> xr.Dataset:
    """Open a dataset lazily from its store, at the tip of ``main`` or at ``snapshot``.

    Only committed periods hold values; periods never written read as NaN. A store that holds
    no period yet (created by a first run that failed) is a StoreError saying so.
    """
    # Registers ``.rio`` so the stored CRS is ``ds.rio.crs``; imported here, not at package
    # import, because rasterio is slow to load and writers never need it.
    import rioxarray  # noqa: F401

    store = _store(dataset_id, settings)
    session = store_reader.session_for(store, snapshot)
    with store.reporting("reading the store"):
        if store_reader.store_axis(session) is None:
            raise StoreError(store.no_periods_yet())
        return store_reader.open_store_dataset(session)


@dataclass(frozen=True)
class DatasetStatus:
    """Which periods of a range the store holds and which it lacks."""

    dataset_id: str
    first: Period | None
    last: Period | None
    present: list[Period]
    missing: list[Period]


def dataset_status(
    dataset_id: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    snapshot: str | None = None,
    settings: Settings | None = None,
) -> DatasetStatus:
    """Present and missing periods from ``start`` (default: the dataset's start) to ``end``
    (default: the newest complete period, or the newest written one if later), read from the store.
    """
    store = _store(dataset_id, settings)
    session = store_reader.session_for(store, snapshot)
    with store.reporting("reading the store"):
        axis = store_reader.store_axis(session)
        if axis is None:
            return DatasetStatus(dataset_id, None, None, [], [])
        written = set(store_reader.written_indices(session))
    first = axis.index_of(Period(axis.period, start)) if start else 0
    if end is not None:
        last = axis.index_of(Period(axis.period, end))
    else:
        last = max(axis.index_of(last_complete_period(axis.period)), max(written, default=0))
    if last < first:
        raise PeriodError(
            f"{dataset_id}: the range ends ({axis.period_at(last).key}) before it starts "
            f"({axis.period_at(first).key})"
        )
    periods = [(i, axis.period_at(i)) for i in range(max(first, 0), last + 1)]
    return DatasetStatus(
        dataset_id,
        first=periods[0][1] if periods else None,
        last=periods[-1][1] if periods else None,
        present=[p for i, p in periods if i in written],
        missing=[p for i, p in periods if i not in written],
    )

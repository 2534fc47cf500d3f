"""The public read API: open a dataset, list its periods, read their records.

>>> import ref_assets
>>> ds = ref_assets.open_dataset("demo_air_temperature")  # doctest: +SKIP
>>> status = ref_assets.dataset_status("demo_air_temperature")  # doctest: +SKIP
>>> [p.key for p in status.present][:2]  # doctest: +SKIP
['2024-01-01', '2024-01-02']
>>> [(a.key, b.key) for a, b in status.missing.runs()]  # doctest: +SKIP
[('2024-01-03', '2024-03-31')]
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from ref_assets.config import Settings, load_settings
from ref_assets.periods import (
    IndexRanges,
    Period,
    PeriodError,
    PeriodRanges,
    PeriodType,
    last_complete_period,
)
from ref_assets.store import reader as store_reader
from ref_assets.store.repository import DatasetStore, StoreError

if TYPE_CHECKING:  # xarray is imported by the functions that open data, not by `status`
    import xarray as xr


def _store(dataset_id: str, settings: Settings | None) -> DatasetStore:
    return DatasetStore((settings or load_settings()).storage_root, dataset_id)


def open_dataset(
    dataset_id: str,
    snapshot: str | None = None,
    *,
    layout: Literal["periods", "timeseries"] = "periods",
    tag: str | None = None,
    settings: Settings | None = None,
) -> xr.Dataset:
    """Open a dataset lazily from its store, at the tip of ``main``, at ``snapshot`` or at the
    release ``tag`` (`ref_assets.store.releases`: an unknown one is an error listing them).

    ``layout="periods"`` (the default) reads the per-period store: one chunk per period, best
    for maps. ``layout="timeseries"`` reads the dataset's time-series copy (kept when its spec has
    a `timeseries` section): the same values chunked along time, best for series at points;
    ``snapshot`` is then one of the copy's snapshots. Releases tag the per-period store only
    (the copy is derived data, rebuilt from it): ``tag`` with the copy is refused.

    Only committed periods hold values; periods never written read as NaN. A store that holds
    no period yet (created by a first run that failed), or no copy, is a StoreError saying so.
    """
    # Registers ``.rio`` so the stored CRS is ``ds.rio.crs``; imported here, not at package
    # import, because rasterio is slow to load and writers never need it.
    import rioxarray  # noqa: F401

    if layout not in ("periods", "timeseries"):
        raise ValueError(f"{dataset_id}: layout must be 'periods' or 'timeseries', not {layout!r}")
    periods_store = store = _store(dataset_id, settings)
    if tag is not None:
        if snapshot is not None:
            raise ValueError(
                f"{dataset_id}: tag={tag!r} names a snapshot already; give a tag or a snapshot"
            )
        if layout == "timeseries":
            raise ValueError(
                f"{dataset_id}: tag={tag!r} names a snapshot of the per-period store, and the "
                "time-series copy follows main only: open the release with layout='periods'"
            )
        from ref_assets.store.releases import resolve

        snapshot = resolve(store, tag)
    if layout == "timeseries":
        from ref_assets.store import timeseries

        store = timeseries.timeseries_store(store)
        if not store.exists():
            raise StoreError(store.no_periods_yet())
    session = store_reader.session_for(store, snapshot)
    with store.reporting("reading the store"):
        if store_reader.store_axis(session) is None:
            raise StoreError(store.no_periods_yet())
        if layout == "timeseries":
            copy = timeseries.open_timeseries(session)
            return _with_current_annotations(copy, periods_store)
        return store_reader.open_store_dataset(session)


def _with_current_annotations(data: xr.Dataset, store: DatasetStore) -> xr.Dataset:
    """``data`` (the time-series copy, whose attributes are the store's when the copy was laid
    out) with the annotations of the store's ``main`` as they are now."""
    from ref_assets.annotations import annotated_attributes

    with store.reporting("reading the annotations"):
        current = annotated_attributes(store_reader.session_for(store))
    for target, values in current.items():
        if target is not None and target not in data.variables:
            continue
        attributes = data.attrs if target is None else data[target].attrs
        for key, value in values.items():
            if value is None:
                attributes.pop(key, None)
            else:
                attributes[key] = value
    return data


@dataclass(frozen=True)
class DatasetStatus:
    """Which periods of a range the store holds and which it lacks. ``present`` and ``missing``
    are sequences of `Period` held as index ranges (`PeriodRanges`): their ``runs()`` are the
    gaps and stretches, and a status of decades of hourly periods costs what one of a week does.
    """

    dataset_id: str
    first: Period | None
    last: Period | None
    present: PeriodRanges
    missing: PeriodRanges


def dataset_status(
    dataset_id: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    snapshot: str | None = None,
    settings: Settings | None = None,
) -> DatasetStatus:
    """Present and missing periods from ``start`` (default: the dataset's start) to ``end``
    (default: the newest complete period, or the newest written one if later), read from the store
    as arrays of written indices: the cost grows with the periods written, not with the range.
    """
    store = _store(dataset_id, settings)
    session = store_reader.session_for(store, snapshot)
    with store.reporting("reading the store"):
        axis = store_reader.store_axis(session)
        if axis is None:
            return DatasetStatus(dataset_id, None, None, _NO_PERIODS, _NO_PERIODS)
        written = IndexRanges.of(store_reader.written_index_array(session))
    first = axis.index_of(Period(axis.period, start)) if start else 0
    if end is not None:
        last = axis.index_of(Period(axis.period, end))
    else:
        newest_written = int(written.stops[-1]) - 1 if written else 0
        last = max(axis.index_of(last_complete_period(axis.period)), newest_written)
    if last < first:
        raise PeriodError(
            f"{dataset_id}: the range ends ({axis.period_at(last).key}) before it starts "
            f"({axis.period_at(first).key})"
        )
    first = max(first, 0)  # periods before the dataset's start are none of its periods
    if last < first:
        return DatasetStatus(dataset_id, None, None, axis.periods(), axis.periods())
    asked = IndexRanges.span(first, last + 1)
    return DatasetStatus(
        dataset_id,
        first=axis.period_at(first),
        last=axis.period_at(last),
        present=axis.periods(asked & written),
        missing=axis.periods(asked - written),
    )


# The status of a store with no layout: no axis to count on, so any will do.
_NO_PERIODS = PeriodRanges(PeriodType.DAILY, datetime(1970, 1, 1))

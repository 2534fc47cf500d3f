"""A STAC catalogue of the datasets: one Collection per dataset store, under one root Catalog.

Each collection describes what its store holds now (not what its spec asks for): the temporal
extent runs from the first written period's start to the last one's end, the spatial extent is
the grid's cells (bounds, in WGS 84), and the datacube extension lists the dimensions (time, y,
x and any extra ones, with their extents and steps) and variables (units, dimensions). Its asset
``icechunk`` points at the Icechunk repository, with the snapshot it describes and the branch or
release tag that snapshot is the tip of, so that a reader opens exactly what the catalogue says;
``icechunk-timeseries``, when the dataset has one, at its time-series copy.

>>> built = build_catalog("/srv/stores", {"demo_air_temperature": spec})  # doctest: +SKIP
>>> write_catalog(built.catalog, "/srv/stac")  # doctest: +SKIP
['/srv/stac/catalog.json', '/srv/stac/demo_air_temperature/collection.json']

The dataset's title, description (``summary``), ``license`` and ``source`` come from the store's
global attributes: the spec's ``attributes`` as annotated since (`ref_assets.annotations`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pystac
import zarr
from pystac.extensions.datacube import (
    DatacubeExtension,
    Dimension,
    DimensionType,
    HorizontalSpatialDimensionAxis,
    Variable,
    VariableType,
)

from ref_assets.periods import PeriodType
from ref_assets.specs import DatasetSpec
from ref_assets.store import reader as store_reader
from ref_assets.store.layout import open_laid_out_root
from ref_assets.store.repository import DatasetStore, StoreError

ROOT_ID = "ref_assets"
ICECHUNK_ASSET = "icechunk"
TIMESERIES_ASSET = "icechunk-timeseries"
# No media type is registered for an Icechunk repository; this is the one the STAC community
# uses for them (xpystac opens assets of this type with Icechunk).
ICECHUNK_MEDIA_TYPE = "application/vnd.zarr+icechunk"

# ISO 8601 durations of each period type: the datacube time dimension's step.
_STEPS = {
    PeriodType.HOURLY: "PT1H",
    PeriodType.DAILY: "P1D",
    PeriodType.MONTHLY: "P1M",
    PeriodType.YEARLY: "P1Y",
}
# STAC's license field: an SPDX identifier (or "other"), without spaces.
_SPDX_LIKE = re.compile(r"[\w\-.+]+")


class CatalogError(StoreError):
    """A store that cannot be described; the message names the dataset and what to do."""


@dataclass(frozen=True)
class CollectionSource:
    """The snapshot a collection describes: ``ref`` names it (``main`` or a release tag)."""

    dataset_id: str
    snapshot: str
    ref: str
    ref_kind: str  # "branch" or "tag"


def dataset_collection(
    store: DatasetStore, spec: DatasetSpec | None = None, *, tag: str | None = None
) -> pystac.Collection:
    """The collection of ``store`` at the tip of ``main`` (or at release ``tag``), read from the
    store; a `CatalogError` when it holds no period yet. Title, description, licence and
    producer are the store's global attributes, replaced by ``spec``'s where it has them (it may
    have changed since the store was laid out) and by the annotations made since."""
    repo = store.open()
    with store.reporting("describing the store"):
        if tag is not None:
            from ref_assets.store.releases import resolve

            snapshot = resolve(store, tag)
            source = CollectionSource(store.dataset_id, snapshot, tag, "tag")
        else:
            source = CollectionSource(
                store.dataset_id, repo.lookup_branch("main"), "main", "branch"
            )
        session = repo.readonly_session(snapshot_id=source.snapshot)
        group = open_laid_out_root(session.store)
        indices = store_reader.written_index_array(session)
        if group is None or not indices.size:
            raise CatalogError(f"{store.no_periods_yet()}; it has no collection until then")
        axis = store_reader.store_axis(session)
        assert axis is not None  # a laid-out store has an axis
        attributes = _described_attributes(session, group, spec)
        return _collection(store, source, group, attributes, axis, indices)


def _collection(
    store: DatasetStore,
    source: CollectionSource,
    group: zarr.Group,
    attributes: dict,
    axis: store_reader.StoreAxis,
    indices: np.ndarray,
) -> pystac.Collection:
    structure = group.attrs["ref_assets"]["structure"]
    first, last = axis.period_at(int(indices[0])), axis.period_at(int(indices[-1]))
    y, x = group["y"][:], group["x"][:]
    crs = _crs(group)
    bbox = _wgs84_bounds(crs, _cell_bounds(x), _cell_bounds(y))
    license_text = str(attributes.get("license", "")).strip()
    collection = pystac.Collection(
        id=source.dataset_id,
        title=str(attributes.get("title") or source.dataset_id),
        description=str(attributes.get("summary") or attributes.get("title") or source.dataset_id),
        extent=pystac.Extent(
            pystac.SpatialExtent([bbox]),
            pystac.TemporalExtent([[_utc(first.start), _utc(last.end)]]),
        ),
        license=license_text if _SPDX_LIKE.fullmatch(license_text) else "other",
        providers=_providers(attributes),
    )
    if license_text and collection.license == "other":
        # A licence named in words ("CC BY 4.0") is kept as written beside STAC's "other".
        collection.extra_fields["ref_assets:license"] = license_text
    cube = DatacubeExtension.ext(collection, add_if_missing=True)
    reference_system = crs.to_epsg() or crs.to_wkt()
    dimensions = {
        "time": Dimension.from_dict(
            {
                "type": DimensionType.TEMPORAL,
                "extent": [_iso(first.start), _iso(last.start)],
                "step": _STEPS[axis.period],
            }
        ),
        "y": _spatial(HorizontalSpatialDimensionAxis.Y, y, reference_system),
        "x": _spatial(HorizontalSpatialDimensionAxis.X, x, reference_system),
    }
    for name in structure.get("dimensions", {}):
        coordinate = group[name]
        dimensions[name] = Dimension.from_dict(
            {
                "type": "other",
                "values": coordinate[:].tolist(),
                **({"unit": coordinate.attrs["units"]} if "units" in coordinate.attrs else {}),
            }
        )
    cube.dimensions = dimensions
    cube.variables = {name: _variable(group[name]) for name in structure["variables"]}
    collection.add_asset(ICECHUNK_ASSET, _icechunk_asset(store, source))
    if source.ref_kind == "branch" and (copy := _timeseries_asset(store)) is not None:
        collection.add_asset(TIMESERIES_ASSET, copy)
    return collection


def _described_attributes(session, group: zarr.Group, spec: DatasetSpec | None) -> dict:
    """The store's global attributes < the spec's < the annotations' current values."""
    from ref_assets.annotations import annotated_attributes

    attributes = group.attrs.asdict()
    if spec is not None:
        attributes |= {"title": spec.title, "summary": spec.description, **spec.attributes}
    for key, value in annotated_attributes(session).get(None, {}).items():
        if value is None:
            attributes.pop(key, None)
        else:
            attributes[key] = value
    return attributes


def _spatial(axis: HorizontalSpatialDimensionAxis, values: np.ndarray, crs: int | str):
    step = float(values[1] - values[0]) if values.size > 1 else None
    return Dimension.from_dict(
        {
            "type": DimensionType.SPATIAL,
            "axis": axis,
            "extent": [float(values.min()), float(values.max())],
            "step": step,
            "reference_system": crs,
        }
    )


def _variable(array: zarr.Array) -> Variable:
    fields = {
        "type": VariableType.DATA,
        "dimensions": list(array.metadata.dimension_names or ()),
        "unit": array.attrs.get("units"),
    }
    if description := array.attrs.get("long_name") or array.attrs.get("standard_name"):
        fields["description"] = str(description)
    return Variable({k: v for k, v in fields.items() if v is not None})


def _icechunk_asset(store: DatasetStore, source: CollectionSource) -> pystac.Asset:
    return pystac.Asset(
        href=store.location,
        media_type=ICECHUNK_MEDIA_TYPE,
        roles=["data"],
        title=f"Icechunk repository of {source.dataset_id}",
        description=f"Open {source.ref_kind} {source.ref!r} (snapshot {source.snapshot}) with "
        f"Icechunk, or `ref_assets.open_dataset({source.dataset_id!r}"
        + (f", tag={source.ref!r})`" if source.ref_kind == "tag" else ")`"),
        extra_fields={
            "icechunk:snapshot_id": source.snapshot,
            f"icechunk:{source.ref_kind}": source.ref,
        },
    )


def _timeseries_asset(store: DatasetStore) -> pystac.Asset | None:
    """The dataset's time-series copy, when it has one: the same values chunked along time, for
    series at points (it follows main only, so a release's collection leaves it out)."""
    from ref_assets.store.timeseries import timeseries_store

    copy = timeseries_store(store)
    if not copy.exists():
        return None
    snapshot = copy.open().lookup_branch("main")
    return pystac.Asset(
        href=copy.location,
        media_type=ICECHUNK_MEDIA_TYPE,
        roles=["data"],
        title=f"Time-series copy of {store.dataset_id}",
        description="The same values chunked along time, for series at points: "
        f"`ref_assets.open_dataset({store.dataset_id!r}, layout='timeseries')`",
        extra_fields={"icechunk:snapshot_id": snapshot, "icechunk:branch": "main"},
    )


def _providers(attributes: dict) -> list[pystac.Provider] | None:
    """The data's producer, as the store's ``source`` attribute names it (with the
    ``references`` URL when it is one)."""
    source = str(attributes.get("source", "")).strip()
    if not source:
        return None
    url = str(attributes.get("references", "")).strip()
    return [
        pystac.Provider(
            name=source,
            roles=[pystac.ProviderRole.PRODUCER],
            url=url if url.startswith(("https://", "http://")) else None,
        )
    ]


def _crs(group: zarr.Group):
    from pyproj import CRS

    return CRS.from_wkt(group["spatial_ref"].attrs["crs_wkt"])


def _cell_bounds(centres: np.ndarray) -> tuple[float, float]:
    """The outer edges of evenly spaced cells with these centres."""
    half = abs(float(centres[1] - centres[0])) / 2 if centres.size > 1 else 0.0
    return float(centres.min()) - half, float(centres.max()) + half


def _wgs84_bounds(crs, x: tuple[float, float], y: tuple[float, float]) -> list[float]:
    """``[west, south, east, north]`` in WGS 84, as STAC's spatial extent wants."""
    if crs.to_epsg() == 4326:
        return [x[0], y[0], x[1], y[1]]
    from pyproj import Transformer

    to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return list(to_wgs84.transform_bounds(x[0], y[0], x[1], y[1]))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)


def _iso(value: datetime) -> str:
    return _utc(value).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class CatalogBuild:
    """A catalogue and the datasets left out of it, each with why."""

    catalog: pystac.Catalog
    skipped: dict[str, str]


def build_catalog(
    storage_root: str, datasets: Mapping[str, DatasetSpec | None], *, tag: str | None = None
) -> CatalogBuild:
    """The root catalogue with a collection for each of ``datasets`` (id -> spec, None for a
    store that outlived its spec) whose store under ``storage_root`` holds periods (at release
    ``tag``, if given); the others are in ``skipped`` with the reason."""
    catalog = pystac.Catalog(
        id=ROOT_ID,
        title="ref_assets datasets",
        description="Analysis-ready climate datasets kept in Icechunk repositories by ref_assets.",
    )
    skipped = {}
    for dataset_id in sorted(datasets):
        store = DatasetStore(storage_root, dataset_id)
        try:
            catalog.add_child(dataset_collection(store, datasets[dataset_id], tag=tag))
        except StoreError as err:  # no store, no period, an unknown tag: said, not fatal
            skipped[dataset_id] = str(err)
    return CatalogBuild(catalog, skipped)


def write_catalog(catalog: pystac.Catalog, destination: str) -> list[str]:
    """Write ``catalog`` (self-contained: relative links) under ``destination``, a directory or
    an ``s3://bucket/prefix`` (reached as the stores are, `ref_assets.store.s3`); returns the
    files written. Each file is replaced whole; files of collections no longer in the
    catalogue are left as they are."""
    catalog.normalize_hrefs(destination.rstrip("/"))
    io = _FsspecStacIO(destination)
    catalog.save(pystac.CatalogType.SELF_CONTAINED, stac_io=io)
    return io.written


class _FsspecStacIO(pystac.StacIO):
    """pystac's reads and writes through fsspec: the local file system or the S3 connection of
    the environment (pystac's own writes only local files)."""

    def __init__(self, destination: str) -> None:
        from ref_assets.store.s3 import S3Connection, is_s3

        if is_s3(destination):
            self.fs = S3Connection.from_environment().filesystem()
        else:
            import fsspec

            self.fs = fsspec.filesystem("file", auto_mkdir=True)
        self.written: list[str] = []

    def read_text(self, source, *args, **kwargs) -> str:
        with self.fs.open(str(source), "r", encoding="utf-8") as file:
            return file.read()

    def write_text(self, dest, txt: str, *args, **kwargs) -> None:
        with self.fs.open(str(dest), "w", encoding="utf-8") as file:
            file.write(txt)
        self.written.append(str(dest))
